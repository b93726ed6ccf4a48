"""LangGraph long-term memory on memorix-pg: :class:`MemorixStore`, a ``langgraph.store.base.BaseStore``.

Needs the optional extra: ``pip install 'memorix-pg[langgraph]'``.

One memorix collection holds the store; each item is one memory:

- **id**: a UUID derived (uuid5) from the collection, the tenant, the namespace and the key, so
  putting the same (namespace, key) again replaces the item in place: ``created_at`` stays,
  ``updated_at`` moves.
- **text**: the value as JSON text. The value is read back from it, exactly as it was put
  (JSONB would sort the keys and turn a float such as ``1e16`` or ``-0.0`` into an int).
- **metadata**: ``{"ns": "a.b", "prefixes": ["a", "a.b"], "key": ..., "value": {...},
  "indexed": bool, "ttl_minutes": m}``, where filters and namespace listings run in SQL. LangGraph
  forbids periods in namespace labels, so labels joined by ``.`` are unambiguous, and a search
  under a namespace prefix is one GIN-indexed containment test on ``prefixes``.
- **embedding**: the mean of the embeddings of the item's indexed texts; a zero vector when the
  item is not indexed (``index=False``, no text at the index paths, or a store without an
  index), which is then left out of ranked searches by ``indexed: false``.

``batch`` runs on :class:`~memorix_pg.MemoryAPI`, ``abatch`` on
:class:`~memorix_pg.AsyncMemoryAPI`. Both run the same plan (a generator of calls, like the
core's operations); only the driver differs, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import uuid
import weakref
from collections import defaultdict
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from langchain_core.embeddings import Embeddings
from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
    validate_op_namespace,
)

from ...aio import AsyncMemoryAPI
from ...api import MemoryAPI
from ...core import MAX_TOP_K
from ...embedders import Embedder
from ...errors import ConfigurationError, FilterError, InvalidInput, MemorixError
from ...memory import Memory
from ...validation import check_embedding, check_text, clean_metadata

__all__ = ["MemorixStore"]

T = TypeVar("T")
Vectors = npt.NDArray[np.float32]

# The uuid5 namespace of item ids (any fixed UUID would do; this one must never change).
ITEM_IDS = uuid.UUID("6f2b51a4-2f0e-5b8c-9a55-0d3c7e1f4a90")
INDEX_KEYS = ("dims", "embed", "fields")
TTL_KEYS = ("default_ttl", "refresh_on_read", "sweep_interval_minutes", "omit_expired")
# Options of MemoryAPI that the store sets itself, or that would break it.
OWN_OPTIONS = ("vector_store", "embedder", "collection_name", "database_url")


# -- embeddings -------------------------------------------------------------------------------


class _Unindexed:
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
class _Index:
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


def _resolve_index(index: IndexConfig | None) -> _Index | None:
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
        return _Index(embed.dim, tokenized, embed, None)
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise ConfigurationError(f"index 'dims' must be a positive int (the embeddings' size), got {dims!r}")
    try:
        embeddings = ensure_embeddings(embed)
    except (ValueError, ImportError) as exc:
        raise ConfigurationError(f"index 'embed' {embed!r}: {exc}") from exc
    adapter = _LangChainEmbedder(embeddings, f"langchain:{_identity(embed)}", dims)
    return _Index(dims, tokenized, adapter, embeddings)


def _resolve_ttl(ttl: TTLConfig | None) -> TTLConfig | None:
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
            _minutes(default, "ttl default_ttl")
        except InvalidInput as exc:
            raise ConfigurationError(str(exc)) from None
    refresh = ttl.get("refresh_on_read", True)
    if not isinstance(refresh, bool):
        raise ConfigurationError(f"ttl refresh_on_read must be True or False, got {refresh!r}")
    return ttl


def _minutes(value: object, where: str) -> timedelta:
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


# -- what the plan asks of the database and the embeddings ---------------------------------------


@dataclass(frozen=True)
class _Call:
    """One method call on the MemoryAPI (or, awaited, the AsyncMemoryAPI)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Each:
    """Calls that do not depend on each other: one after the other when sync, gathered when async."""

    calls: tuple[_Call, ...]


@dataclass(frozen=True)
class _Embed:
    """Embed ``texts`` as documents or as queries: one call of the embeddings."""

    texts: list[str]
    query: bool


_Request = _Call | _Each | _Embed
_Plan = Generator[_Request, Any, T]


# -- checking operations ------------------------------------------------------------------------


def _check_count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{where} must be an int >= 0, got {value!r}")
    return value


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidInput(f"an item key must be a str, got {type(key).__name__}")
    return key


def _joined(labels: Sequence[str]) -> str:
    return ".".join(labels)


def _on_value(filter: Mapping[str, Any] | None) -> dict[str, Any]:
    """A filter over the item's value (LangGraph's ``{field: value | {"$op": value}}``, or any
    memorix filter) as a filter over the memory's metadata, where the value lives under ``value``."""
    if filter is None:
        return {}
    if not isinstance(filter, Mapping):
        raise FilterError(f"a search filter must be a dict, got {type(filter).__name__}")
    out: dict[str, Any] = {}
    for key, condition in filter.items():
        if not isinstance(key, str):
            raise FilterError(f"filter keys must be strings, got {key!r}")
        if key in ("$and", "$or", "$nor") and isinstance(condition, list | tuple):
            out[key] = [_on_value(c) if isinstance(c, Mapping) else c for c in condition]
        elif key == "$not" and isinstance(condition, Mapping):
            out[key] = _on_value(condition)
        elif key.startswith("$"):
            out[key] = condition  # the filter compiler names what is wrong with it
        else:
            out[f"value.{key}"] = condition
    return out


def _matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """A namespace against a prefix or suffix pattern, where ``*`` matches any one label."""
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    part = (
        namespace[: len(path)]
        if condition.match_type == "prefix"
        else namespace[len(namespace) - len(path) :]
    )
    return all(p == "*" or p == label for p, label in zip(path, part, strict=True))


@dataclass(frozen=True)
class _Put:
    """A put, checked and turned into a memory (its vector comes later, from ``texts``)."""

    id: str
    namespace: tuple[str, ...]
    key: str
    text: str | None  # the value as JSON; None deletes the item
    metadata: dict[str, Any]
    texts: list[str]  # what to embed for it (empty: not indexed)
    ttl: float | None


# -- the store ------------------------------------------------------------------------------------


class MemorixStore(BaseStore):
    """LangGraph's long-term memory store on PostgreSQL + pgvector, in one memorix collection.

    ``database_url`` (else ``MEMORIX_DATABASE_URL``, else the embedded server) picks the
    database and ``collection_name`` the collection. ``index`` (``dims``, ``embed``, ``fields``)
    turns on semantic search: ``embed`` is a LangChain ``Embeddings``, a function of a list of
    texts (sync or async), a ``"provider:model"`` string that ``langchain`` resolves, or a
    memorix embedder (``SentenceTransformerEmbedder()`` runs offline). ``ttl`` is LangGraph's
    ``TTLConfig`` (``default_ttl`` and ``refresh_on_read``). Other keyword arguments go to
    ``MemoryAPI`` / ``AsyncMemoryAPI`` (``tenant``, ``distance``, ``precision``, ``pool``, ...).

    Use it as a context manager (``with`` or ``async with``), or call ``close()``.
    """

    supports_ttl = True

    def __init__(
        self,
        database_url: str | None = None,
        *,
        collection_name: str = "langgraph_store",
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        **memory_options: Any,
    ) -> None:
        taken = sorted(set(memory_options) & set(OWN_OPTIONS))
        if taken:
            raise ConfigurationError(f"MemorixStore sets {', '.join(taken)} itself; do not pass them")
        if memory_options.get("dedupe"):
            raise ConfigurationError("dedupe cannot be used: it would merge items whose values are equal")
        self._index = _resolve_index(index)
        self.index_config = index
        self.ttl_config = _resolve_ttl(ttl)
        self._options: dict[str, Any] = {
            **memory_options,
            "embedder": self._index.embedder if self._index else _Unindexed(),
            "collection_name": collection_name,
            "database_url": database_url,
        }
        # Built now, without I/O, so bad options fail here; it serves the first event loop.
        self._first_async: AsyncMemoryAPI | None = AsyncMemoryAPI(**self._options)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncMemoryAPI] = (
            weakref.WeakKeyDictionary()
        )
        self._sync: MemoryAPI | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.collection_name = self._first_async.collection_name
        self._tenant = self._first_async.tenant

    @classmethod
    def from_conn_string(
        cls,
        conn_string: str,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        **options: Any,
    ) -> MemorixStore:
        """A store on ``conn_string``; use it as ``with`` (or ``async with``) to close it after."""
        return cls(conn_string, index=index, ttl=ttl, **options)

    # -- plumbing -------------------------------------------------------------------------

    def _memory_api(self) -> MemoryAPI:
        """The sync API, made on first sync use (it opens the collection, which is I/O)."""
        if self._closed:
            raise MemorixError(f"{self!r} is closed; make a new MemorixStore")
        with self._lock:
            if self._sync is None:
                self._sync = MemoryAPI(**self._options)
            return self._sync

    def _async_api(self) -> AsyncMemoryAPI:
        """The async API of the running event loop (asyncio connections belong to one loop)."""
        if self._closed:
            raise MemorixError(f"{self!r} is closed; make a new MemorixStore")
        loop = asyncio.get_running_loop()
        with self._lock:
            api = self._async.get(loop)
            if api is None:
                api, self._first_async = self._first_async or AsyncMemoryAPI(**self._options), None
                self._async[loop] = api
            return api

    def close(self) -> None:
        """Stop using the store: later calls raise. Connections are already back in their pool
        after each call."""
        self._closed = True
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        self.close()
        for api in list(self._async.values()):
            await api.close()

    def __enter__(self) -> MemorixStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> MemorixStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"MemorixStore(collection_name={self.collection_name!r})"

    def sweep_ttl(self) -> int:
        """Delete the rows of expired items (they are never returned anyway): one DELETE."""
        return self._memory_api().purge_expired()

    async def asweep_ttl(self) -> int:
        return await self._async_api().purge_expired()

    # -- BaseStore --------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` on the MemoryAPI. As LangGraph's stores do, the reads (get, search,
        list_namespaces) see the store as it was before the batch; then its puts and deletes
        run, the last one winning for each (namespace, key)."""
        api = self._memory_api()
        plan = self._plan(ops)
        reply: Any = None
        try:
            while True:
                try:
                    request = plan.send(reply)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                reply = self._answer(api, request)
        finally:
            plan.close()

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """``batch`` on the AsyncMemoryAPI of the running event loop."""
        api = self._async_api()
        plan = self._plan(ops)
        reply: Any = None
        try:
            while True:
                try:
                    request = plan.send(reply)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                reply = await self._aanswer(api, request)
        finally:
            plan.close()

    def _answer(self, api: MemoryAPI, request: _Request) -> Any:
        if isinstance(request, _Call):
            return getattr(api, request.method)(*request.args, **request.kwargs)
        if isinstance(request, _Each):
            return [self._answer(api, call) for call in request.calls]
        assert self._index is not None
        return self._index.queries(request.texts) if request.query else self._index.documents(request.texts)

    async def _aanswer(self, api: AsyncMemoryAPI, request: _Request) -> Any:
        if isinstance(request, _Call):
            return await getattr(api, request.method)(*request.args, **request.kwargs)
        if isinstance(request, _Each):
            return list(await asyncio.gather(*(self._aanswer(api, call) for call in request.calls)))
        assert self._index is not None
        if request.query:
            return await self._index.aqueries(request.texts)
        return await self._index.adocuments(request.texts)

    # -- the plan ----------------------------------------------------------------------------

    def _plan(self, ops: Iterable[Op]) -> _Plan[list[Result]]:
        """Check every op, embed, read, refresh the TTLs read, then write: nothing is written
        when any op is invalid."""
        ops = list(ops)
        puts: dict[tuple[tuple[str, ...], str], _Put] = {}
        for op in ops:
            if isinstance(op, PutOp):
                put = self._check_put(op)
                puts[(put.namespace, put.key)] = put
            elif isinstance(op, GetOp | SearchOp | ListNamespacesOp):
                self._check_read(op)
            else:
                raise InvalidInput(f"unknown store operation {type(op).__name__}")
        queries = sorted(
            {op.query for op in ops if isinstance(op, SearchOp) and op.query} if self._index else set()
        )
        query_vectors = (
            dict(zip(queries, (yield _Embed(queries, query=True)), strict=True)) if queries else {}
        )
        vectors = yield from self._embed_puts(list(puts.values()))

        results: list[Result] = [None] * len(ops)
        refresh: dict[float, set[str]] = defaultdict(set)
        gets = [(i, op) for i, op in enumerate(ops) if isinstance(op, GetOp)]
        if gets:
            ids = list(dict.fromkeys(self._item_id(tuple(op.namespace), op.key) for _, op in gets))
            found = dict(zip(ids, (yield _Each(tuple(_Call("get", (i,)) for i in ids))), strict=True))
            for i, op in gets:
                memory = found[self._item_id(tuple(op.namespace), op.key)]
                if memory is not None:
                    results[i] = _item(memory)
                    if op.refresh_ttl:
                        _note_refresh(refresh, memory)
        for i, op in enumerate(ops):
            if isinstance(op, SearchOp):
                vector = query_vectors.get(op.query) if op.query else None
                found_items = yield from self._search(op, vector)
                results[i] = [item for item, _ in found_items]
                if op.refresh_ttl:
                    for _, memory in found_items:
                        _note_refresh(refresh, memory)
            elif isinstance(op, ListNamespacesOp):
                results[i] = yield from self._list_namespaces(op)
        if refresh:
            yield _Each(
                tuple(_Call("set_ttl", (sorted(ids), timedelta(minutes=m))) for m, ids in refresh.items())
            )
        yield from self._write(list(puts.values()), vectors)
        return results

    def _item_id(self, namespace: tuple[str, ...], key: str) -> str:
        """The item's memory id: stable for (collection, tenant, namespace, key)."""
        name = json.dumps([self.collection_name, self._tenant, list(namespace), key], ensure_ascii=False)
        return str(uuid.uuid5(ITEM_IDS, name))

    def _check_read(self, op: GetOp | SearchOp | ListNamespacesOp) -> None:
        validate_op_namespace(op)
        if isinstance(op, GetOp):
            _check_key(op.key)
        elif isinstance(op, SearchOp):
            if _check_count(op.limit, "search limit") + _check_count(op.offset, "search offset") > MAX_TOP_K:
                raise InvalidInput(
                    f"search offset + limit must be at most {MAX_TOP_K}, got {op.offset + op.limit}"
                )
            if op.query is not None and not isinstance(op.query, str):
                raise InvalidInput(f"a search query must be a str or None, got {type(op.query).__name__}")
            _on_value(op.filter)
        else:
            _check_count(op.limit, "list_namespaces limit")
            _check_count(op.offset, "list_namespaces offset")
            if op.max_depth is not None and (
                isinstance(op.max_depth, bool) or not isinstance(op.max_depth, int) or op.max_depth < 1
            ):
                raise InvalidInput(f"max_depth must be an int >= 1 or None, got {op.max_depth!r}")
            for condition in op.match_conditions or ():
                if condition.match_type not in ("prefix", "suffix"):
                    raise InvalidInput(
                        f"match_type must be 'prefix' or 'suffix', got {condition.match_type!r}"
                    )

    def _check_put(self, op: PutOp) -> _Put:
        validate_op_namespace(op)
        namespace = tuple(op.namespace)
        if not namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        if namespace[0] == "langgraph":
            raise InvalidNamespaceError(f'Root label for namespace cannot be "langgraph". Got: {namespace}')
        key = _check_key(op.key)
        item_id = self._item_id(namespace, key)
        where = f"put {namespace} {key!r}"
        if op.value is None:
            return _Put(item_id, namespace, key, None, {}, [], None)
        if not isinstance(op.value, Mapping):
            raise InvalidInput(f"{where}: the value must be a dict, got {type(op.value).__name__}")
        if (
            op.index is not None
            and op.index is not False
            and (isinstance(op.index, str) or not all(isinstance(p, str) for p in op.index))
        ):
            raise InvalidInput(f"{where}: index must be False, None or a list of paths, got {op.index!r}")
        if op.ttl is not None:
            _minutes(op.ttl, f"{where}: ttl")
        metadata: dict[str, Any] = {
            "ns": _joined(namespace),
            "prefixes": [_joined(namespace[:n]) for n in range(1, len(namespace) + 1)],
            "key": key,
            "value": op.value,
        }
        if op.ttl is not None:
            metadata["ttl_minutes"] = op.ttl
        try:
            metadata = clean_metadata(metadata, "metadata")
            text = check_text(json.dumps(metadata["value"], ensure_ascii=False), "the value as JSON")
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        texts: list[str] = []
        if self._index is not None and op.index is not False:
            for _, tokens in self._index.paths(op.index):
                texts += get_text_at_path(metadata["value"], tokens)
        metadata["indexed"] = bool(texts)
        return _Put(item_id, namespace, key, text, metadata, texts, op.ttl)

    def _embed_puts(self, puts: list[_Put]) -> _Plan[list[Vectors]]:
        """One vector per put: the mean of its texts' embeddings, or zeros (not indexed)."""
        dim = self._index.dims if self._index is not None else 1
        texts = [t for put in puts for t in put.texts]
        embedded: Vectors = (yield _Embed(texts, query=False)) if texts else np.zeros((0, dim), np.float32)
        vectors, start = [], 0
        for put in puts:
            if put.texts:
                part = embedded[start : start + len(put.texts)]
                start += len(put.texts)
                where = f"the embedding of put {put.namespace} {put.key!r}"
                vectors.append(check_embedding(part.mean(axis=0), dim, where))
            else:
                vectors.append(np.zeros(dim, dtype=np.float32))
        return vectors

    def _write(self, puts: list[_Put], vectors: list[Vectors]) -> _Plan[None]:
        """Upserts (one ``store_batch`` per TTL among them), then deletes."""
        groups: dict[float | None, list[int]] = defaultdict(list)
        for n, put in enumerate(puts):
            if put.text is not None:
                groups[put.ttl].append(n)
        for ttl, members in groups.items():
            yield _Call(
                "store_batch",
                ([puts[n].text for n in members], [puts[n].metadata for n in members]),
                {
                    "ids": [puts[n].id for n in members],
                    "embeddings": np.stack([vectors[n] for n in members]),
                    "ttl": timedelta(minutes=ttl) if ttl is not None else None,
                },
            )
        deletes = tuple(_Call("delete", (put.id,)) for put in puts if put.text is None)
        if deletes:
            yield _Each(deletes)

    def _search(self, op: SearchOp, vector: Vectors | None) -> _Plan[list[tuple[SearchItem, Memory]]]:
        """Ranked by similarity when there is a query (and an index), the indexed items first
        then the others unranked; else the matches, last updated first."""
        if op.limit == 0:
            return []
        where = _on_value(op.filter)
        if op.namespace_prefix:
            where["prefixes"] = _joined(tuple(op.namespace_prefix))
        if vector is None:
            memories = yield _Call(
                "list", (where,), {"limit": op.limit, "offset": op.offset, "order": "updated"}
            )
            return [(_search_item(m), m) for m in memories]
        top = op.offset + op.limit
        ranked = yield _Call(
            "retrieve", (None, top), {"filter": {**where, "indexed": True}, "embedding": vector}
        )
        found = [(_search_item(m), m) for m in ranked[op.offset :]]
        if len(ranked) < top:  # every indexed match is in; the unindexed ones follow, unscored
            skip = max(0, op.offset - len(ranked))
            rest = yield _Call(
                "list",
                ({**where, "indexed": False},),
                {"limit": top - max(len(ranked), op.offset), "offset": skip, "order": "updated"},
            )
            found += [(_search_item(m), m) for m in rest]
        return found

    def _list_namespaces(self, op: ListNamespacesOp) -> _Plan[list[tuple[str, ...]]]:
        """One GROUP BY over ``ns`` (narrowed in SQL to the literal start of the prefix
        conditions), then the patterns, ``max_depth`` and paging over the distinct namespaces."""
        if op.limit == 0:
            return []
        conditions = tuple(op.match_conditions or ())
        leads = []
        for condition in conditions:
            if condition.match_type == "prefix":
                lead = []
                for label in condition.path:
                    if label == "*":
                        break
                    lead.append(label)
                if lead:
                    leads.append(_joined(lead))
        narrowed = {"prefixes": {"$all": leads}} if leads else None
        stats = yield _Call("stats", ("ns",), {"filter": narrowed})
        namespaces = {tuple(ns.split(".")) for ns in stats["groups"] if isinstance(ns, str)}
        matching = {ns for ns in namespaces if all(_matches(c, ns) for c in conditions)}
        if op.max_depth is not None:
            matching = {ns[: op.max_depth] for ns in matching}
        return sorted(matching)[op.offset : op.offset + op.limit]


def _item(memory: Memory) -> Item:
    meta = memory.metadata
    return Item(
        value=json.loads(memory.text),
        key=meta["key"],
        namespace=tuple(meta["ns"].split(".")),
        created_at=_stamp(memory.created_at),
        updated_at=_stamp(memory.updated_at),
    )


def _search_item(memory: Memory) -> SearchItem:
    meta = memory.metadata
    return SearchItem(
        namespace=tuple(meta["ns"].split(".")),
        key=meta["key"],
        value=json.loads(memory.text),
        created_at=_stamp(memory.created_at),
        updated_at=_stamp(memory.updated_at),
        score=memory.score,
    )


def _stamp(value: datetime | None) -> datetime:
    assert value is not None, "memories read from the database carry their times"
    return value


def _note_refresh(refresh: dict[float, set[str]], memory: Memory) -> None:
    ttl = memory.metadata.get("ttl_minutes")
    if ttl is not None:
        refresh[float(ttl)].add(memory.id)
