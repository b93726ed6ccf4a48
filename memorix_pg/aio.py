"""``AsyncMemoryAPI``: ``MemoryAPI`` with every method a coroutine, on psycopg's async connections.

It shares the core (arguments, statements, planner, transactions) with ``MemoryAPI``; only the
runner differs. The collection is opened on first use, or by ``async with``. Cancelling a call
(``task.cancel()``, ``asyncio.timeout``) rolls its transaction back: a cancelled
``store_batch`` leaves nothing behind, and the connection goes back to the pool clean.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload
from uuid import UUID

import numpy as np
import numpy.typing as npt

from .cache import CacheInfo
from .connections import PoolOptions, async_source
from .core import Core
from .embedders import Embedder
from .errors import InvalidInput, MemorixError
from .history import HistoryEvent
from .hybrid import Fusion
from .lifecycle import CompressionReport, DuplicatePair, ForgetReceipt, Summarizer
from .memory import Memory
from .recall import RecallReport
from .reembed import ReembedReport
from .replicas import AsyncRouter, ReadReplicas
from .rerank import Reranker
from .runner import AsyncRunner
from .schemas import SchemaProblem
from .scoring import Scoring
from .search import SearchPlan
from .steps import Call

__all__ = ["AsyncMemoryAPI"]

T = TypeVar("T")


class AsyncMemoryAPI:
    """Store, retrieve, update and delete memories in one collection.

    ``database_url`` (else ``MEMORIX_DATABASE_URL``, else an embedded server) picks the
    database. ``distance`` (cosine, l2, ip), ``precision`` (full, half) and
    ``text_search_config`` (PostgreSQL's text search configuration for ``mode="text"`` and
    ``"hybrid"`` and ``$text``: ``simple`` by default, or e.g. ``english``) apply when the
    collection is created and are fixed after. ``dedupe=True`` makes ``store`` return the
    existing id for a text already in the collection; ``cache_size`` bounds the LRU cache
    of embeddings (0 disables it). ``tenant`` scopes every read and write to one tenant,
    enforced by PostgreSQL row-level security for roles that do not own the table.
    ``encryption_key`` encrypts texts (and the ``encrypted_metadata`` keys' values) with
    AES-GCM before they leave the process; embeddings stay searchable. ``schema`` (a JSON
    Schema) is stored with the collection and checks the metadata of every write;
    ``strict_filters`` (``"error"``, ``"warn"``, ``"off"``) says what a filter on a key the
    schema does not declare does. ``actor`` names who writes in the history (default: the
    database role); ``history_retention`` makes ``purge_expired`` also delete older events.

    Connections come from one pool per process and URL, shared by every ``MemoryAPI``
    (``pool_size``, ``max_overflow``, ``pool_timeout``, ``connect_timeout`` configure it), or
    from ``pool=``: a ``psycopg_pool.ConnectionPool`` or a SQLAlchemy ``Engine`` of yours.
    ``read_url`` (or a ``database_url`` of several hosts with ``target_session_attrs``) sends
    the reads to a standby; with ``read_your_writes`` a read waits up to
    ``read_your_writes_timeout`` seconds for the standby to replay this object's writes, then
    reads the primary (see replicas.py).
    """

    def __init__(
        self,
        vector_store: str = "pgvector",
        embedder: str | Embedder = "sentence-transformers",
        collection_name: str = "default",
        database_url: str | None = None,
        *,
        distance: str | None = None,
        precision: str | None = None,
        text_search_config: str | None = None,
        auto_migrate: bool = True,
        dedupe: bool = False,
        cache_size: int = 1024,
        tenant: str | None = None,
        encryption_key: str | bytes | None = None,
        encrypted_metadata: Sequence[str] = (),
        schema: Mapping[str, Any] | None = None,
        strict_filters: str = "warn",
        actor: str | None = None,
        history_retention: timedelta | None = None,
        pool: Any = None,
        pool_size: int = 5,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        read_url: str | None = None,
        read_your_writes: bool = False,
        read_your_writes_timeout: float = 1.0,
    ) -> None:
        self._replicas = ReadReplicas(database_url, read_url, read_your_writes, read_your_writes_timeout)
        self._core = Core(
            vector_store,
            embedder,
            collection_name,
            self._replicas.database_url,
            distance=distance,
            precision=precision,
            text_search_config=text_search_config,
            auto_migrate=auto_migrate,
            dedupe=dedupe,
            cache_size=cache_size,
            tenant=tenant,
            encryption_key=encryption_key,
            encrypted_metadata=encrypted_metadata,
            schema=schema,
            strict_filters=strict_filters,
            actor=actor,
            history_retention=history_retention,
        )
        self._options = PoolOptions(pool_size, max_overflow, pool_timeout, connect_timeout)
        self._pool = pool
        self._runner: AsyncRunner | AsyncRouter | None = None
        self._closed = False

    async def _run(self, call: Call[T]) -> T:
        if self._closed:
            raise MemorixError(f"{self!r} is closed; make a new AsyncMemoryAPI")
        if self._runner is None:
            await asyncio.to_thread(self._core.resolve)
            source = async_source(self._core.url, self._options, self._pool)
            self._runner = self._replicas.async_runner(
                AsyncRunner(source, self._core.url, self._core.settings, self._core.restart),
                self._core,
                self._options,
            )
        return await self._runner.run(call)

    async def open(self) -> AsyncMemoryAPI:
        """Open the collection now (creating it when absent) rather than on first use."""
        await self._run(self._core.open())
        return self

    # -- plumbing -------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        """The libpq URL in use (known once the object has been used or opened)."""
        return self._core.url

    @property
    def embedded(self) -> bool:
        return self._core.embedded

    @property
    def embedder(self) -> Embedder:
        return self._core.embedding.embedder

    @property
    def collection_name(self) -> str:
        return self._core.collection_name

    @property
    def tenant(self) -> str | None:
        return self._core.tenant

    @property
    def dedupe(self) -> bool:
        return self._core.dedupe

    @property
    def encrypted_metadata(self) -> tuple[str, ...]:
        return self._core.sealer.encrypted_keys

    @property
    def collection_id(self) -> int:
        """The collection's id in ``memorix.collections`` (once the object has been used or opened)."""
        if self._core.info is None:
            raise MemorixError("the collection is not open yet: await open() or make a call first")
        return self._core.info.id

    @property
    def distance(self) -> str:
        """The collection's distance (``"cosine"``, ``"l2"`` or ``"ip"``), fixed when it was created
        (known once the object has been used or opened)."""
        if self._core.info is None:
            raise MemorixError("the collection is not open yet: await open() or make a call first")
        return self._core.info.distance

    def cache_info(self) -> CacheInfo:
        """Hits, misses, maximum and current size of the embedding cache."""
        return self._core.cache_info()

    async def close(self) -> None:
        """Stop using this object: later calls raise. Its connections are already back in the
        pool; the shared pool stays for other objects, and a ``pool=`` of yours is yours to close."""
        self._closed = True

    async def __aenter__(self) -> AsyncMemoryAPI:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writing --------------------------------------------------------------------------

    async def store(
        self,
        text: str,
        metadata: Mapping[str, Any] | None = None,
        id: str | UUID | None = None,
        *,
        ttl: timedelta | None = None,
        dedupe: bool | None = None,
    ) -> str:
        """Store one memory and return its id. An existing id of the collection is replaced.

        ``id`` is any non-empty string of up to 512 characters without NUL (a ``uuid.UUID``
        becomes its string), kept exactly as given; without one, a new UUID4 string is made.

        ``ttl`` makes it expire; with ``dedupe`` an identical text already in the collection
        is not stored again and its id is returned.
        """
        return (
            await self.store_batch(
                [text],
                [metadata] if metadata is not None else None,
                [id] if id is not None else None,
                ttl=ttl,
                dedupe=dedupe,
            )
        )[0]

    async def store_batch(
        self,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str | UUID] | None = None,
        embeddings: Sequence[Sequence[float]] | npt.NDArray[np.floating[Any]] | None = None,
        *,
        ttl: timedelta | None = None,
        dedupe: bool | None = None,
        progress: bool = False,
        created_at: Sequence[datetime] | None = None,
    ) -> builtins.list[str]:
        """Store many memories in one transaction: all of them, or none if any is invalid.

        Large batches are written with binary COPY; a load that dwarfs the collection builds
        its HNSW index once afterwards instead of row by row. Given ``ids`` are upserted, so a
        re-run import neither loses nor duplicates anything. ``created_at`` keeps the original
        times of imported memories (default: now).
        """
        return await self._run(
            self._core.store_batch(texts, metadatas, ids, embeddings, ttl, dedupe, progress, created_at)
        )

    async def update(
        self, id: str, text: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Memory:
        """Merge ``metadata`` into the stored metadata (a key set to None is removed) and,
        when ``text`` is given, replace the text and its embedding. Returns the updated memory."""
        return await self._run(self._core.update(id, text, metadata))

    async def delete(self, id: str | UUID) -> bool:
        """Delete one memory; False when it did not exist."""
        return await self._run(self._core.delete(id))

    async def delete_by_filter(self, filter: Mapping[str, Any]) -> int:
        """Delete every memory matching ``filter`` in one statement; ``{}`` deletes the whole collection."""
        return await self._run(self._core.delete_by_filter(filter))

    # -- reading --------------------------------------------------------------------------

    @overload
    async def get(self, id: str | UUID, *, include_embeddings: bool = False) -> Memory | None: ...

    @overload
    async def get(
        self, id: None = None, *, ids: Sequence[str | UUID], include_embeddings: bool = False
    ) -> builtins.list[Memory]: ...

    async def get(
        self,
        id: str | UUID | None = None,
        *,
        ids: Sequence[str | UUID] | None = None,
        include_embeddings: bool = False,
    ) -> Memory | builtins.list[Memory] | None:
        """``get(id)``: the memory, or None. ``get(ids=[...])``: the memories that exist, in the
        order of ``ids`` (missing ones skipped), in one round trip. ``include_embeddings=True``
        fills ``Memory.embedding``."""
        if id is None and ids is None:
            raise InvalidInput("id is None: get takes an id, or ids=[...]")
        if id is not None and ids is not None:
            raise InvalidInput("id and ids=[...] were both given: get takes one of them")
        if ids is not None:
            return await self._run(self._core.get_many(ids, include_embeddings))
        assert id is not None
        return await self._run(self._core.get(id, include_embeddings))

    async def list(
        self,
        filter: Mapping[str, Any] | None = None,
        limit: int = 100,
        *,
        cursor: str | UUID | None = None,
        offset: int = 0,
        order: str = "newest",
        include_embeddings: bool = False,
    ) -> builtins.list[Memory]:
        """Page through the collection in a stable order (``"newest"`` or ``"oldest"`` first, by
        creation time then id; ``"updated"``: last replaced or updated first, by ``updated_at``
        then id). ``cursor`` is the id of the last memory of the previous page (keyset paging: no
        row is skipped or repeated while others are written, though under ``"updated"`` a memory
        changed meanwhile moves to the front); ``offset`` skips rows. A cursor that names no
        memory (deleted since) is InvalidInput, not an empty page. ``include_embeddings=True``
        fills ``Memory.embedding``."""
        return await self._run(self._core.page(filter, limit, cursor, offset, order, include_embeddings))

    async def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """How many memories match ``filter`` (all of the collection's without one): one COUNT."""
        return await self._run(self._core.count(filter))

    async def retrieve(
        self,
        query: str | None,
        top_k: int = 5,
        filter: Mapping[str, Any] | None = None,
        embedding: Sequence[float] | npt.NDArray[np.floating[Any]] | None = None,
        *,
        mode: str = "vector",
        rrf_k: float = 60.0,
        vector_weight: float = 1.0,
        text_weight: float = 1.0,
        text_cutoff: float = 0.67,
        recency_weight: float = 0.0,
        half_life: timedelta = timedelta(days=1),
        importance_key: str | None = None,
        importance_weight: float = 0.0,
        importance_scale: tuple[float, float] = (1.0, 10.0),
        similarity_weight: float = 1.0,
        min_score: float | None = None,
        mmr: bool = False,
        fetch_k: int | None = None,
        lambda_mult: float = 0.5,
        reranker: Reranker | None = None,
        ranks: bool = False,
        exact: bool | None = None,
        ef_search: int | None = None,
        include_embeddings: bool = False,
    ) -> builtins.list[Memory]:
        """The ``top_k`` memories most similar to ``query`` among those matching ``filter``.

        ``mode="vector"`` ranks by embedding similarity; ``"text"`` by full text search of the
        query's words (rare words weigh more; quotes and ``-word`` are taken as websearch
        syntax); ``"hybrid"`` fuses both rankings by reciprocal rank (``rrf_k``, and the arms'
        ``vector_weight`` / ``text_weight``; the text arm ranks only the rows scoring at least
        ``text_cutoff`` times its best, 0 ranks every match). In mode vector, ``recency_weight`` and
        ``importance_weight`` make the score ``similarity_weight * similarity + recency_weight *
        0.5 ** (age / half_life) + importance_weight * importance`` (the metadata value at
        ``importance_key`` scaled from ``importance_scale`` to 0..1), and the top k is exact for
        it. ``min_score`` drops results scoring less. ``ranks=True`` fills ``Memory.ranks`` with
        each arm's rank and score (or the score's parts). ``mmr=True`` picks the ``top_k`` of
        ``fetch_k`` candidates (20 by default) by maximal marginal relevance (``lambda_mult``: 1
        is pure similarity, 0 pure diversity); ``reranker`` (a callable ``(query, memories) ->
        scores``, e.g. :class:`~memorix_pg.rerank.CrossEncoderReranker`) orders the candidates
        by its scores, which become ``Memory.score``. With an empty query and no
        ``embedding`` nothing is ranked (and nothing embedded): the matching memories come back
        newest first, with ``score`` None.
        ``include_embeddings=True`` fills ``Memory.embedding``.
        """
        call = self._core.retrieve(
            query,
            top_k,
            filter,
            embedding,
            exact,
            ef_search,
            include_embeddings,
            mode=mode,
            fusion=Fusion(rrf_k, vector_weight, text_weight, text_cutoff),
            ranks=ranks,
            scoring=Scoring(
                similarity_weight,
                recency_weight,
                half_life,
                importance_key,
                importance_weight,
                importance_scale,
            ),
            min_score=min_score,
            mmr=mmr,
            fetch_k=fetch_k,
            lambda_mult=lambda_mult,
            reranker=reranker,
        )
        return (await self._run(call))[0]

    async def explain_retrieve(
        self,
        query: str | None,
        top_k: int = 5,
        filter: Mapping[str, Any] | None = None,
        embedding: Sequence[float] | npt.NDArray[np.floating[Any]] | None = None,
        *,
        mode: str = "vector",
        rrf_k: float = 60.0,
        vector_weight: float = 1.0,
        text_weight: float = 1.0,
        text_cutoff: float = 0.67,
        exact: bool | None = None,
        ef_search: int | None = None,
    ) -> SearchPlan:
        """Which search path ``retrieve`` takes for these arguments, and why."""
        call = self._core.retrieve(
            query,
            top_k,
            filter,
            embedding,
            exact,
            ef_search,
            mode=mode,
            fusion=Fusion(rrf_k, vector_weight, text_weight, text_cutoff),
            explain=True,
        )
        return (await self._run(call))[1]

    async def check_recall(
        self,
        queries: int = 100,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        *,
        target: float = 0.99,
    ) -> RecallReport:
        """Measure this collection's search recall on its own data: ``queries`` stored vectors as
        queries, against exact search; reports the worst queries and a suggested ``ef_search``."""
        return await self._run(self._core.check_recall(queries, top_k, filter, target))

    # -- lifecycle ------------------------------------------------------------------------

    async def cleanup(self, older_than: timedelta, filter: Mapping[str, Any] | None = None) -> int:
        """Delete memories stored more than ``older_than`` ago (and matching ``filter``): one DELETE."""
        return await self._run(self._core.cleanup(older_than, filter))

    async def count_older_than(self, older_than: timedelta, filter: Mapping[str, Any] | None = None) -> int:
        """What ``cleanup`` would delete (for a dry run)."""
        return await self._run(self._core.count_older_than(older_than, filter))

    async def set_ttl(self, ids: Sequence[str], ttl: timedelta | None) -> int:
        """Make the memories ``ids`` expire ``ttl`` from now (``None``: never): one UPDATE.

        Returns how many were found; an id that is unknown or already expired is skipped (an
        expired memory stays expired). Their ``updated_at`` does not change.
        """
        return await self._run(self._core.set_ttl(ids, ttl))

    async def purge_expired(self) -> int:
        """Delete this collection's memories whose TTL has passed."""
        return await self._run(self._core.purge_expired())

    async def archive(self, filter: Mapping[str, Any], to: str) -> int:
        """Move the matching memories to collection ``to`` in one statement, embeddings kept.

        Sets ``archived: true`` and ``archived_at`` in their metadata. The target is created
        with this collection's embedder when absent; another embedder is EmbedderMismatch.
        Atomic: if anything fails, nothing moved.
        """
        return await self._run(self._core.archive(filter, to))

    async def compress(
        self,
        filter: Mapping[str, Any] | None = None,
        window: timedelta = timedelta(hours=1),
        summarizer: Summarizer | None = None,
        min_group: int = 2,
        max_chars: int = 1000,
        group_by: Sequence[str] = ("session_id",),
    ) -> CompressionReport:
        """Replace each time window's matching memories with one summary memory.

        Windows are ``date_bin(window, created_at)`` groups of at least ``min_group``
        memories; memories with different ``group_by`` values (by default the session) never
        share one. The summary keeps the metadata all originals share (so ``type`` and
        ``session_id`` survive) plus ``compressed``, ``original_count``, ``window_start``,
        ``window_end`` and ``source_ids``; each window is stored and its originals deleted in
        one transaction. The default summarizer is extractive (no LLM): the most central
        messages by embedding similarity, in time order, within ``max_chars``.
        """
        return await self._run(
            self._core.compress(filter, window, summarizer, min_group, max_chars, group_by)
        )

    async def find_duplicates(
        self, threshold: float = 0.95, limit: int = 100, neighbours: int = 5
    ) -> builtins.list[DuplicatePair]:
        """Pairs of memories whose similarity (the score ``retrieve`` reports) is at least
        ``threshold``, most similar first, found through the collection's index."""
        return await self._run(self._core.find_duplicates(threshold, limit, neighbours))

    # -- governance -----------------------------------------------------------------------

    async def history(
        self,
        id: str | UUID | None = None,
        *,
        filter: Mapping[str, Any] | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> builtins.list[HistoryEvent]:
        """``history(id)``: the events of one memory, oldest first (in any collection: an archive
        moves it). Otherwise this collection's events whose metadata (after the change) matches
        ``filter``, at or after ``since``, newest first. Each event: operation, text hashes
        before/after, metadata, actor and time, written in the same statement as the change."""
        return await self._run(self._core.history(id, filter, since, limit))

    async def prune_history(self, older_than: timedelta) -> int:
        """Delete this collection's history events older than ``older_than``; returns how many."""
        return await self._run(self._core.prune_history(older_than))

    async def forget(
        self, filter: Mapping[str, Any], all_collections: bool = True, *, dry_run: bool = False
    ) -> ForgetReceipt:
        """Erase a person: the memories matching ``filter`` (of this object's tenant) in every
        collection (only this one with ``all_collections=False``), archives included, and the
        compressed summaries built from them, in one transaction. Returns the receipt."""
        return await self._run(self._core.forget(filter, all_collections, dry_run))

    async def set_schema(self, schema: Mapping[str, Any] | None) -> None:
        """Store ``schema`` (a JSON Schema for metadata; None removes it) with the collection:
        every later write, from any process that opens the collection, is checked against it.
        Memories already stored are not checked; ``validate_existing()`` lists those that break it."""
        await self._run(self._core.set_schema(schema))

    async def get_schema(self) -> dict[str, Any] | None:
        """The collection's metadata schema, or None."""
        return await self._run(self._core.get_schema())

    async def validate_existing(self) -> builtins.list[SchemaProblem]:
        """The stored memories (of this tenant) whose metadata breaks the schema: one
        ``SchemaProblem(id, path, message)`` per broken rule, by id."""
        return await self._run(self._core.validate_existing())

    async def drop(self) -> bool:
        """Drop the collection: its memories (of every tenant) and its HNSW index, in one
        transaction and then one ``DROP INDEX CONCURRENTLY``. Nothing else refers to a collection,
        so no other collection is affected. With a ``tenant``, refuses (``PermissionDenied``)
        while the collection holds memories of anyone else. Afterwards every call on this object
        raises ``CollectionNotFound``; a new object recreates the collection empty. Returns False
        when the collection was already gone."""
        return await self._run(self._core.drop())

    async def rotate_key(
        self,
        new_key: str | bytes | None,
        batch: int = 1000,
        *,
        encrypted_metadata: Sequence[str] | None = None,
    ) -> int:
        """Re-encrypt this collection's memories (of this tenant) under ``new_key``, in one transaction.

        Values stored in plaintext are encrypted too (so this also turns encryption on for
        existing data); ``new_key=None`` decrypts everything. The dedup hashes are recomputed
        under the new key. Returns how many memories were rewritten; afterwards this object
        uses the new key. ``encrypted_metadata`` names the metadata keys to encrypt under the new
        key (default: those encrypted now).
        """
        return await self._run(self._core.rotate_key(new_key, batch, encrypted_metadata))

    async def reembed(
        self,
        embedder: str | Embedder,
        batch: int = 256,
        *,
        limit: int | None = None,
        progress: bool = False,
    ) -> ReembedReport:
        """Re-embed the collection with another embedder, online, and switch to it atomically.

        Reads and writes go on meanwhile with the current embedder. The new vectors fill a second
        slot ``batch`` memories per transaction; the new HNSW index is built beside the old one;
        then one transaction switches the collection (the dimension may change) and the old
        vectors and index go. A run that was interrupted, or stopped after ``limit`` memories, is
        resumed by calling again with the same embedder. Every tenant's memories are re-embedded:
        call it without ``tenant``, as the schema's owner; an encrypted collection needs its key.
        Afterwards this object uses the new embedder (others must be made anew).
        """
        return await self._run(self._core.reembed(embedder, batch, limit, progress))

    async def create_index(self, key: str, type: str = "text") -> str:
        """Create the btree expression index that range filters on metadata ``key`` use.

        ``type="text"`` serves string ranges (ISO timestamps: ``{"timestamp": {"$gte": ...}}``),
        ``type="number"`` numeric ones. Equality and ``$in`` need no index of their own: the GIN
        index on metadata serves them. Built CONCURRENTLY (writers are not blocked), shared by
        every collection, idempotent. Returns the index name.
        """
        return await self._run(self._core.create_index(key, type))

    async def stats(
        self, group_by: str | None = None, filter: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """``{"total": n, "groups": {value: count}}``: one GROUP BY over a metadata key, of the
        memories matching ``filter``.

        Memories without the key (or with a null) count under ``None``.
        """
        return await self._run(self._core.stats(group_by, filter))

    def __repr__(self) -> str:
        return f"AsyncMemoryAPI(collection_name={self.collection_name!r}, embedder={self.embedder.name!r})"
