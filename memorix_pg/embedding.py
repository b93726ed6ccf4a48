"""Turning texts into vectors: the embedder behind an LRU cache, in batches, with its output checked.

An embedder is the user's code as often as ours, so what it returns is checked (shape, finite
values) before anything is written. The cache keys on the embedder's name, so two embedders
never share vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .cache import CacheInfo, EmbeddingCache
from .embedders import Embedder
from .errors import InvalidInput

__all__ = ["EMBED_BATCH", "Embedding"]

# Texts per embedder call. A model sorts a call's texts by length and pads each of its batches
# to the longest, so larger calls pad less: MiniLM took 4.0 s for 3,000 texts in calls of 128,
# against 3.45 s in one call. A text load's overlap chunk (writes.OVERLAP_CHUNK) is one call.
EMBED_BATCH = 1024

Vectors = npt.NDArray[np.float32]


class Embedding:
    def __init__(self, embedder: Embedder, cache_size: int) -> None:
        self.embedder = embedder
        self.cache = EmbeddingCache(cache_size)

    @property
    def name(self) -> str:
        return self.embedder.name

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def _uncached(self, texts: list[str]) -> Vectors:
        vectors = np.asarray(self.embedder.embed(texts), dtype=np.float32)
        if vectors.shape != (len(texts), self.embedder.dim):
            raise InvalidInput(
                f"embedder {self.embedder.name!r} returned shape {vectors.shape}, "
                f"expected ({len(texts)}, {self.embedder.dim})"
            )
        if not np.all(np.isfinite(vectors)):
            raise InvalidInput(f"embedder {self.embedder.name!r} returned NaN or Infinity")
        return vectors

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Vectors for ``texts`` through the cache, at most EMBED_BATCH texts per embedder call."""
        if not texts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        out: list[Vectors] = []
        for start in range(0, len(texts), EMBED_BATCH):
            out.extend(
                self.cache.embed(self.embedder.name, texts[start : start + EMBED_BATCH], self._uncached)
            )
        return np.stack(out)

    def one(self, text: str) -> Vectors:
        vectors: Vectors = self.embed([text])
        return vectors[0]  # type: ignore[no-any-return]

    def info(self) -> CacheInfo:
        return self.cache.info()
