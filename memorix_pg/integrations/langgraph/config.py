"""The store's index and TTL configuration, resolved and checked when the store is made: which
embeddings make the vectors, which paths of a value they embed, and TTLs in minutes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from langchain_core.embeddings import Embeddings
from langgraph.store.base import IndexConfig, TTLConfig, ensure_embeddings, tokenize_path

from ...embedders import Embedder
from ...errors import ConfigurationError, InvalidInput

__all__ = ["StoreIndex", "Unindexed", "Vectors", "resolve_index", "resolve_ttl", "ttl_minutes"]

Vectors = npt.NDArray[np.float32]
INDEX_KEYS = ("dims", "embed", "fields")
TTL_KEYS = ("default_ttl", "refresh_on_read", "sweep_interval_minutes", "omit_expired")


class Unindexed:
    """The collection's embedder when the store has no index: items get a one-dimensional zero
    vector that no search ranks (a memory needs a vector; a store without an index ranks nothing)."""

    name = "langgraph-unindexed"
    dim = 1

    def embed(self, texts: Sequence[str]) -> Vectors:
        return np.zeros((len(texts), 1), dtype=np.float32)


class _LangChainEmbedder:
    """A LangChain ``Embeddings`` seen as a memorix embedder, so that the collection records
    which embeddings its vectors come from (another one later is ``EmbedderMismatch``)."""

    def __init__(self, embeddings: Embeddings, name: str, dim: int) -> None:
        self.embeddings = embeddings
        self._name = name
        self._dim = dim

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        return np.asarray(self.embeddings.embed_documents(list(texts)), dtype=np.float32)


def _identity(embed: object) -> str:
    """What names an embeddings in the collection's catalog row: its provider string, or its
    class (with its model, when it says) or function."""
    if isinstance(embed, str):
        return embed
    if isinstance(embed, Embeddings):
        kind = type(embed)
        name = f"{kind.__module__}.{kind.__qualname__}"
        model = getattr(embed, "model", None) or getattr(embed, "model_name", None)
        return f"{name}:{model}" if isinstance(model, str) and model else name
    module = getattr(embed, "__module__", None) or type(embed).__module__
    qualname = getattr(embed, "__qualname__", None) or type(embed).__qualname__
    return f"{module}.{qualname}"


@dataclass(frozen=True)
class StoreIndex:
    """The store's index config, resolved: the dimension, the paths to embed, and the
    embeddings (LangChain's, or a memorix embedder)."""

    dims: int
    fields: tuple[tuple[str, str | list[str]], ...]
    embedder: Embedder  # the collection's (for a LangChain Embeddings: an adapter of it)
    embeddings: Embeddings | None  # None: a memorix embedder, which embeds documents and queries alike

    def paths(self, index: list[str] | None) -> Sequence[tuple[str, str | list[str]]]:
        return self.fields if index is None else [(p, _tokens(p)) for p in index]

    def documents(self, texts: list[str]) -> Vectors:
        if self.embeddings is None:
            return _vectors(self.embedder.embed(texts), len(texts))
        return _vectors(self.embeddings.embed_documents(texts), len(texts))

    async def adocuments(self, texts: list[str]) -> Vectors:
        if self.embeddings is None:
            return _vectors(await asyncio.to_thread(self.embedder.embed, texts), len(texts))
        return _vectors(await self.embeddings.aembed_documents(texts), len(texts))

    def queries(self, texts: list[str]) -> Vectors:
        if self.embeddings is None:
            return _vectors(self.embedder.embed(texts), len(texts))
        embeddings = self.embeddings
        return _vectors([embeddings.embed_query(t) for t in texts], len(texts))

    async def aqueries(self, texts: list[str]) -> Vectors:
        if self.embeddings is None:
            return _vectors(await asyncio.to_thread(self.embedder.embed, texts), len(texts))
        return _vectors(await asyncio.gather(*(self.embeddings.aembed_query(t) for t in texts)), len(texts))


def _vectors(raw: object, n: int) -> Vectors:
    """What the embeddings returned, as an (n, dim) array, or InvalidInput saying what it was."""
    try:
        vectors = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"the embeddings returned {type(raw).__name__}, not {n} vectors of numbers"
        ) from None
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise InvalidInput(f"the embeddings returned shape {vectors.shape} for {n} texts")
    return vectors


def _tokens(path: str) -> str | list[str]:
    return path if path == "$" else tokenize_path(path)


def resolve_index(index: IndexConfig | None) -> StoreIndex | None:
    """LangGraph's ``IndexConfig`` checked and resolved (None: a store without semantic search)."""
    if index is None:
        return None
    if not isinstance(index, Mapping):
        raise ConfigurationError(
            f"index must be a dict with dims, embed and fields, got {type(index).__name__}"
        )
    unknown = sorted(set(index) - set(INDEX_KEYS))
    if unknown:
        raise ConfigurationError(
            f"index has unknown keys {unknown}; MemorixStore reads {', '.join(INDEX_KEYS)} "
            "(pass distance= or precision= to MemorixStore for the vector column)"
        )
    embed = index.get("embed")
    if embed is None:
        raise ConfigurationError(
            "index needs 'embed': a LangChain Embeddings, a function, or a memorix embedder"
        )
    dims = index.get("dims")
    fields = index.get("fields") or ["$"]
    if isinstance(fields, str) or not all(isinstance(f, str) and f for f in fields):
        raise ConfigurationError(f"index 'fields' must be a list of paths (str), got {fields!r}")
    tokenized = tuple((f, _tokens(f)) for f in fields)
    if not isinstance(embed, Embeddings) and isinstance(embed, Embedder):
        if dims is None:
            dims = embed.dim
        if dims != embed.dim:
            raise ConfigurationError(f"index dims is {dims!r} but embedder {embed.name!r} makes {embed.dim}")
        return StoreIndex(embed.dim, tokenized, embed, None)
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise ConfigurationError(f"index 'dims' must be a positive int (the embeddings' size), got {dims!r}")
    try:
        embeddings = ensure_embeddings(embed)
    except (ValueError, ImportError) as exc:
        raise ConfigurationError(f"index 'embed' {embed!r}: {exc}") from exc
    adapter = _LangChainEmbedder(embeddings, f"langchain:{_identity(embed)}", dims)
    return StoreIndex(dims, tokenized, adapter, embeddings)


def resolve_ttl(ttl: TTLConfig | None) -> TTLConfig | None:
    """LangGraph's ``TTLConfig`` checked: unknown keys and bad values fail when the store is made."""
    if ttl is None:
        return None
    if not isinstance(ttl, Mapping):
        raise ConfigurationError(f"ttl must be a TTLConfig dict, got {type(ttl).__name__}")
    unknown = sorted(set(ttl) - set(TTL_KEYS))
    if unknown:
        raise ConfigurationError(f"ttl has unknown keys {unknown}; accepted: {', '.join(TTL_KEYS)}")
    default = ttl.get("default_ttl")
    if default is not None:
        try:
            ttl_minutes(default, "ttl default_ttl")
        except InvalidInput as exc:
            raise ConfigurationError(str(exc)) from None
    refresh = ttl.get("refresh_on_read", True)
    if not isinstance(refresh, bool):
        raise ConfigurationError(f"ttl refresh_on_read must be True or False, got {refresh!r}")
    return ttl


def ttl_minutes(value: object, where: str) -> timedelta:
    """A TTL in minutes (LangGraph's unit) as a timedelta, checked like memorix's own TTLs."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidInput(f"{where} must be a positive number of minutes, got {value!r}")
    try:
        ttl = timedelta(minutes=value)
        datetime.now(UTC) + ttl
    except OverflowError:
        raise InvalidInput(f"{where} {value!r} minutes puts the expiry past the year 9999") from None
    return ttl
