"""An LRU cache of embeddings, so repeated queries and texts are embedded once.

Keyed by the embedder's name and a hash of the text: two embedders never share vectors,
and the key stays small however long the text is.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["CacheInfo", "EmbeddingCache"]

Vectors = npt.NDArray[np.float32]


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int
    currsize: int


class EmbeddingCache:
    """Thread-safe LRU of text → vector; ``maxsize=0`` disables it (every call embeds)."""

    def __init__(self, maxsize: int = 1024) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            from .errors import ConfigurationError

            raise ConfigurationError(f"cache_size must be an int >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        self._entries: OrderedDict[tuple[str, bytes], Vectors] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(model: str, text: str) -> tuple[str, bytes]:
        return model, hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def embed(self, model: str, texts: Sequence[str], embed: Callable[[list[str]], Vectors]) -> list[Vectors]:
        """Vectors for ``texts``; only the texts not cached are passed to ``embed`` (once each)."""
        keys = [self._key(model, t) for t in texts]
        found: dict[tuple[str, bytes], Vectors] = {}
        with self._lock:
            for key in keys:
                vector = self._entries.get(key)
                if vector is not None:
                    self._entries.move_to_end(key)
                    found[key] = vector
        missing: dict[tuple[str, bytes], str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in found:
                missing.setdefault(key, text)
        if missing:
            computed = embed(list(missing.values()))
            for key, vector in zip(missing, computed, strict=True):
                found[key] = vector
        with self._lock:
            self.hits += len(texts) - len(missing)
            self.misses += len(missing)
            if self.maxsize:
                for key in missing:
                    self._entries[key] = found[key]
                    self._entries.move_to_end(key)
                while len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
        return [found[key] for key in keys]

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self.hits, self.misses, self.maxsize, len(self._entries))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0
