"""The embedders: the deterministic hash embedder and the offline sentence-transformers default."""

from __future__ import annotations

import json

import numpy as np
import pytest

from memorix_pg import ConfigurationError, HashEmbedder, SentenceTransformerEmbedder
from memorix_pg import embedders as embedders_module
from tests.support.helpers import python_env, run_python

SAMPLES = ["the cat sat on the mat", "Quarterly tax filing!", "ünïcödé text", "?!"]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# -- HashEmbedder -------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 32, 384])
def test_hash_embedder_gives_unit_float32_rows(dim: int) -> None:
    embedder = HashEmbedder(dim)
    assert (embedder.name, embedder.dim) == (f"hash-{dim}", dim)
    assert_unit_rows(embedder.embed(SAMPLES), len(SAMPLES), dim)
    assert embedder.embed([]).shape == (0, dim)


def test_hash_embedder_is_deterministic_across_processes() -> None:
    here = HashEmbedder(64).embed(SAMPLES)
    code = f"""
    import json
    from memorix_pg import HashEmbedder
    print(json.dumps(HashEmbedder(64).embed({SAMPLES!r}).tolist()))
    """
    # Another interpreter with another str hash seed must produce the same vectors.
    there = np.asarray(
        json.loads(run_python(code, env=python_env(PYTHONHASHSEED="12345")).stdout), np.float32
    )
    np.testing.assert_array_equal(here, there)
    np.testing.assert_array_equal(here, HashEmbedder(64).embed(SAMPLES))


def test_hash_embedder_similar_texts_are_closer_than_unrelated_ones() -> None:
    a, b, c = HashEmbedder().embed(
        ["the cat sat on the mat", "the cat sat on a mat", "quarterly tax filing deadline"]
    )
    assert cosine(a, b) > 0.7
    assert cosine(a, b) > cosine(a, c) + 0.4


@pytest.mark.parametrize("dim", [0, 7, 16.0, "16"])
def test_hash_embedder_rejects_a_bad_dim(dim: object) -> None:
    with pytest.raises(ConfigurationError):
        HashEmbedder(dim)  # type: ignore[arg-type]


# -- SentenceTransformerEmbedder ----------------------------------------------------------------


def test_the_default_model_dimension_is_known_without_loading_it() -> None:
    code = """
    import sys
    from memorix_pg import MemoryAPI, SentenceTransformerEmbedder
    from memorix_pg.embedders import resolve_embedder
    embedder = resolve_embedder("sentence-transformers")
    print(type(embedder).__name__, embedder.name, embedder.dim, SentenceTransformerEmbedder().dim)
    print("sentence_transformers" in sys.modules, "torch" in sys.modules)
    """
    lines = run_python(code).stdout.split("\n")
    assert lines[0] == "SentenceTransformerEmbedder sentence-transformers/all-MiniLM-L6-v2 384 384"
    assert lines[1] == "False False"


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    """The model on torch (the ONNX backend has its own tests in test_onnx_embedder.py)."""
    return SentenceTransformerEmbedder(backend="torch")


def test_the_default_model_embeds_unit_vectors_with_meaning(minilm: SentenceTransformerEmbedder) -> None:
    cat, kitten, tax = minilm.embed(["a cat sits on the mat", "a kitten on a rug", "quarterly tax filing"])
    assert_unit_rows(np.stack([cat, kitten, tax]), 3, 384)
    assert cosine(cat, kitten) > 0.4
    assert cosine(cat, kitten) > cosine(cat, tax) + 0.2
    assert_unit_rows(minilm.embed(["one", "two", "three", "four", "five"]), 5, 384)


def test_the_model_is_loaded_once_per_process(minilm: SentenceTransformerEmbedder) -> None:
    minilm.embed(["warm up"])
    loaded = embedders_module._load_sentence_transformer("all-MiniLM-L6-v2")
    other = SentenceTransformerEmbedder(backend="torch")
    other.embed(["again"])
    assert embedders_module._load_sentence_transformer("all-MiniLM-L6-v2") is loaded
    assert list(embedders_module._models) == ["all-MiniLM-L6-v2"]
    assert embedders_module._models["all-MiniLM-L6-v2"] is loaded
    # Both instances produce the same vectors from the one model.
    np.testing.assert_allclose(other.embed(["same text"]), minilm.embed(["same text"]), atol=1e-6)


def test_an_unknown_local_model_raises_configuration_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    embedder = SentenceTransformerEmbedder(str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigurationError, match="no-such-model"):
        embedder.embed(["x"])
