"""The store itself: :class:`MemorixStore`, its sync and async drivers, and the plan they run."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import numpy as np
from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    get_text_at_path,
    validate_op_namespace,
)

from ...aio import AsyncMemoryAPI
from ...api import MemoryAPI
from ...core import MAX_TOP_K
from ...errors import ConfigurationError, InvalidInput, MemorixError
from ...memory import Memory
from ...validation import check_embedding, check_text, clean_metadata
from .config import Unindexed, Vectors, resolve_index, resolve_ttl, ttl_minutes
from .items import (
    Put,
    check_count,
    check_key,
    joined,
    namespace_matches,
    note_refresh,
    on_value,
    to_item,
    to_search_item,
)
from .requests import Call, Each, Embed, Plan, Request

__all__ = ["MemorixStore"]

# The uuid5 namespace of item ids (any fixed UUID would do; this one must never change).
ITEM_IDS = uuid.UUID("6f2b51a4-2f0e-5b8c-9a55-0d3c7e1f4a90")
# Options of MemoryAPI that the store sets itself, or that would break it.
OWN_OPTIONS = ("vector_store", "embedder", "collection_name", "database_url")


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
        self._index = resolve_index(index)
        self.index_config = index
        self.ttl_config = resolve_ttl(ttl)
        self._options: dict[str, Any] = {
            **memory_options,
            "embedder": self._index.embedder if self._index else Unindexed(),
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

    def _answer(self, api: MemoryAPI, request: Request) -> Any:
        if isinstance(request, Call):
            return getattr(api, request.method)(*request.args, **request.kwargs)
        if isinstance(request, Each):
            return [self._answer(api, call) for call in request.calls]
        assert self._index is not None
        return self._index.queries(request.texts) if request.query else self._index.documents(request.texts)

    async def _aanswer(self, api: AsyncMemoryAPI, request: Request) -> Any:
        if isinstance(request, Call):
            return await getattr(api, request.method)(*request.args, **request.kwargs)
        if isinstance(request, Each):
            return list(await asyncio.gather(*(self._aanswer(api, call) for call in request.calls)))
        assert self._index is not None
        if request.query:
            return await self._index.aqueries(request.texts)
        return await self._index.adocuments(request.texts)

    # -- the plan ----------------------------------------------------------------------------

    def _plan(self, ops: Iterable[Op]) -> Plan[list[Result]]:
        """Check every op, embed, read, refresh the TTLs read, then write: nothing is written
        when any op is invalid."""
        ops = list(ops)
        puts: dict[tuple[tuple[str, ...], str], Put] = {}
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
        query_vectors = dict(zip(queries, (yield Embed(queries, query=True)), strict=True)) if queries else {}
        vectors = yield from self._embed_puts(list(puts.values()))

        results: list[Result] = [None] * len(ops)
        refresh: dict[float, set[str]] = defaultdict(set)
        gets = [(i, op) for i, op in enumerate(ops) if isinstance(op, GetOp)]
        if gets:
            ids = list(dict.fromkeys(self._item_id(tuple(op.namespace), op.key) for _, op in gets))
            found = dict(zip(ids, (yield Each(tuple(Call("get", (i,)) for i in ids))), strict=True))
            for i, op in gets:
                memory = found[self._item_id(tuple(op.namespace), op.key)]
                if memory is not None:
                    results[i] = to_item(memory)
                    if op.refresh_ttl:
                        note_refresh(refresh, memory)
        for i, op in enumerate(ops):
            if isinstance(op, SearchOp):
                vector = query_vectors.get(op.query) if op.query else None
                found_items = yield from self._search(op, vector)
                results[i] = [item for item, _ in found_items]
                if op.refresh_ttl:
                    for _, memory in found_items:
                        note_refresh(refresh, memory)
            elif isinstance(op, ListNamespacesOp):
                results[i] = yield from self._list_namespaces(op)
        if refresh:
            yield Each(
                tuple(Call("set_ttl", (sorted(ids), timedelta(minutes=m))) for m, ids in refresh.items())
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
            check_key(op.key)
        elif isinstance(op, SearchOp):
            if check_count(op.limit, "search limit") + check_count(op.offset, "search offset") > MAX_TOP_K:
                raise InvalidInput(
                    f"search offset + limit must be at most {MAX_TOP_K}, got {op.offset + op.limit}"
                )
            if op.query is not None and not isinstance(op.query, str):
                raise InvalidInput(f"a search query must be a str or None, got {type(op.query).__name__}")
            on_value(op.filter)
        else:
            check_count(op.limit, "list_namespaces limit")
            check_count(op.offset, "list_namespaces offset")
            if op.max_depth is not None and (
                isinstance(op.max_depth, bool) or not isinstance(op.max_depth, int) or op.max_depth < 1
            ):
                raise InvalidInput(f"max_depth must be an int >= 1 or None, got {op.max_depth!r}")
            for condition in op.match_conditions or ():
                if condition.match_type not in ("prefix", "suffix"):
                    raise InvalidInput(
                        f"match_type must be 'prefix' or 'suffix', got {condition.match_type!r}"
                    )

    def _check_put(self, op: PutOp) -> Put:
        validate_op_namespace(op)
        namespace = tuple(op.namespace)
        if not namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        if namespace[0] == "langgraph":
            raise InvalidNamespaceError(f'Root label for namespace cannot be "langgraph". Got: {namespace}')
        key = check_key(op.key)
        item_id = self._item_id(namespace, key)
        where = f"put {namespace} {key!r}"
        if op.value is None:
            return Put(item_id, namespace, key, None, {}, [], None)
        if not isinstance(op.value, Mapping):
            raise InvalidInput(f"{where}: the value must be a dict, got {type(op.value).__name__}")
        if (
            op.index is not None
            and op.index is not False
            and (isinstance(op.index, str) or not all(isinstance(p, str) for p in op.index))
        ):
            raise InvalidInput(f"{where}: index must be False, None or a list of paths, got {op.index!r}")
        if op.ttl is not None:
            ttl_minutes(op.ttl, f"{where}: ttl")
        metadata: dict[str, Any] = {
            "ns": joined(namespace),
            "prefixes": [joined(namespace[:n]) for n in range(1, len(namespace) + 1)],
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
        return Put(item_id, namespace, key, text, metadata, texts, op.ttl)

    def _embed_puts(self, puts: list[Put]) -> Plan[list[Vectors]]:
        """One vector per put: the mean of its texts' embeddings, or zeros (not indexed)."""
        dim = self._index.dims if self._index is not None else 1
        texts = [t for put in puts for t in put.texts]
        embedded: Vectors = (yield Embed(texts, query=False)) if texts else np.zeros((0, dim), np.float32)
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

    def _write(self, puts: list[Put], vectors: list[Vectors]) -> Plan[None]:
        """Upserts (one ``store_batch`` per TTL among them), then deletes."""
        groups: dict[float | None, list[int]] = defaultdict(list)
        for n, put in enumerate(puts):
            if put.text is not None:
                groups[put.ttl].append(n)
        for ttl, members in groups.items():
            yield Call(
                "store_batch",
                ([puts[n].text for n in members], [puts[n].metadata for n in members]),
                {
                    "ids": [puts[n].id for n in members],
                    "embeddings": np.stack([vectors[n] for n in members]),
                    "ttl": timedelta(minutes=ttl) if ttl is not None else None,
                },
            )
        deletes = tuple(Call("delete", (put.id,)) for put in puts if put.text is None)
        if deletes:
            yield Each(deletes)

    def _search(self, op: SearchOp, vector: Vectors | None) -> Plan[list[tuple[SearchItem, Memory]]]:
        """Ranked by similarity when there is a query (and an index), the indexed items first
        then the others unranked; else the matches, last updated first."""
        if op.limit == 0:
            return []
        where = on_value(op.filter)
        if op.namespace_prefix:
            where["prefixes"] = joined(tuple(op.namespace_prefix))
        if vector is None:
            memories = yield Call(
                "list", (where,), {"limit": op.limit, "offset": op.offset, "order": "updated"}
            )
            return [(to_search_item(m), m) for m in memories]
        top = op.offset + op.limit
        ranked = yield Call(
            "retrieve", (None, top), {"filter": {**where, "indexed": True}, "embedding": vector}
        )
        found = [(to_search_item(m), m) for m in ranked[op.offset :]]
        if len(ranked) < top:  # every indexed match is in; the unindexed ones follow, unscored
            skip = max(0, op.offset - len(ranked))
            rest = yield Call(
                "list",
                ({**where, "indexed": False},),
                {"limit": top - max(len(ranked), op.offset), "offset": skip, "order": "updated"},
            )
            found += [(to_search_item(m), m) for m in rest]
        return found

    def _list_namespaces(self, op: ListNamespacesOp) -> Plan[list[tuple[str, ...]]]:
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
                    leads.append(joined(lead))
        narrowed = {"prefixes": {"$all": leads}} if leads else None
        stats = yield Call("stats", ("ns",), {"filter": narrowed})
        namespaces = {tuple(ns.split(".")) for ns in stats["groups"] if isinstance(ns, str)}
        matching = {ns for ns in namespaces if all(namespace_matches(c, ns) for c in conditions)}
        if op.max_depth is not None:
            matching = {ns[: op.max_depth] for ns in matching}
        return sorted(matching)[op.offset : op.offset + op.limit]
