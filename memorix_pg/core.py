"""The engine under ``MemoryAPI`` and ``AsyncMemoryAPI``: arguments checked, operations built.

Each public method of the façades is one call here: it validates the arguments and returns a
:class:`~memorix_pg.steps.Call`, which the façade runs with its sync or async runner. The
statements, the planner and the transactions live in the operations (reads, writes, search,
lifecycle), written once for both.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import numpy as np
import numpy.typing as npt

from . import history as history_events
from . import hybrid, lifecycle, reads, recall, writes
from .cache import CacheInfo
from .catalog import (
    CollectionSummary,
    collection_summaries,
    drop_collection,
    open_collection,
    read_metadata_schema,
    write_metadata_schema,
)
from .crypto import Sealer, TextCipher
from .database import check_pgvector, get_engine, resolve_database
from .embedders import Embedder, resolve_embedder
from .embedding import Embedding
from .errors import CollectionNotFound, ConfigurationError, FilterError, InvalidInput, MemoryNotFound
from .filters import compile_filter, index_expression
from .hybrid import MODES, Fusion
from .memory import Memory
from .models import history
from .rerank import Reranker, mmr_order, rerank_scores
from .schemas import MetadataSchema, SchemaProblem, check_strict_filters
from .scope import Scope, tenant_settings
from .scoring import Scoring, rank_scored
from .search import DISTANCE, Planner, SearchPlan, planner_for, search
from .server import ensure_embedded_server
from .statements import Filter, compile_where
from .steps import Call, Operation, Query, offload, set_local
from .validation import (
    check_batch_lengths,
    check_collection_name,
    check_embedding,
    check_id,
    check_tenant,
    check_text,
    check_timestamp,
    clean_metadata,
    new_id,
)
from .vector_index import (
    CollectionInfo,
    create_expression_index,
    metadata_index_name,
    read_vector,
    repair,
    score_from_distance,
)

__all__ = [
    "MAX_TOP_K",
    "VECTOR_STORES",
    "Core",
    "forget_database",
    "forget_everywhere",
    "list_collections",
]

T = TypeVar("T")

VECTOR_STORES = ("pgvector", "postgres", "postgresql")
MAX_TOP_K = 2**31 - 1  # LIMIT takes a bigint; nothing sensible asks for more than int4
FETCH_K = 20  # candidates for mmr and rerankers when fetch_k is not given
MAX_RECALL_QUERIES = 10_000  # check_recall runs an exact scan per query
MAX_RECALL_TOP_K = 1000  # pgvector's largest ef_search: a walk returns no more

_prepared: set[str] = set()
_prepared_lock = threading.Lock()


def prepare_database(url: str, auto_migrate: bool) -> None:
    """Once per URL per process: check pgvector is there and bring the schema to head."""
    with _prepared_lock:
        if url in _prepared:
            return
        from .migrate import current_revision, head_revision, upgrade  # alembic: only when first used

        engine = get_engine(url)
        check_pgvector(engine, url)
        if current_revision(engine) != head_revision():
            if not auto_migrate:
                raise ConfigurationError(
                    "the memorix schema is not at the latest revision; run `memorix-pg migrate` "
                    "(or `alembic upgrade head`) with a role that may create tables, "
                    "or pass auto_migrate=True"
                )
            upgrade(url)
        _prepared.add(url)


def list_collections(url: str) -> Call[list[CollectionSummary]]:
    """The collections of the database at ``url`` (brought to the latest schema first, as
    ``MemoryAPI`` does), with their live memories counted."""

    def make() -> Operation[list[CollectionSummary]]:
        yield from offload(prepare_database, url, True)
        return (yield from collection_summaries())

    return Call(make, idempotent=True, scoped=False)


OPERATION_SETTING = "memorix.operation"
ACTOR_SETTING = "memorix.actor"


def _labelled(operation: str | None) -> tuple[Query, ...]:
    """The setting the history triggers (migration 0007) read the operation's name from."""
    return (set_local(OPERATION_SETTING, operation),) if operation is not None else ()


def _subject(filter: Mapping[str, Any] | None) -> Filter:
    if not filter or not isinstance(filter, Mapping):
        raise FilterError(
            "forget needs a non-empty filter naming the subject, e.g. {'user_id': 'u1'} "
            "(to delete everything, drop the collections)"
        )
    return compile_where(filter)


def forget_everywhere(
    url: str, filter: Mapping[str, Any] | None, tenant: str | None, dry_run: bool
) -> Call[lifecycle.ForgetReceipt]:
    """Every memory matching ``filter`` in every collection of the database (of ``tenant``
    only, when given), and the summaries built from them: one statement."""
    f = _subject(filter)
    in_history = compile_filter(filter, history.c.metadata)
    _check_bool(dry_run, "dry_run")

    def make() -> Operation[lifecycle.ForgetReceipt]:
        yield from offload(prepare_database, url, True)
        return (
            yield from lifecycle.forget(
                f, in_history, tenant=tenant, every_tenant=True, collection_id=None, dry_run=dry_run
            )
        )

    return Call(make, settings=_labelled("forget"))


def forget_database(url: str) -> None:
    """Check and migrate ``url`` again on next use (after it was dropped and recreated)."""
    with _prepared_lock:
        _prepared.discard(url)


def _positive_timedelta(value: object, name: str) -> timedelta:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise InvalidInput(f"{name} must be a positive timedelta, got {value!r}")
    return value


def _expiry(ttl: timedelta | None) -> datetime | None:
    if ttl is None:
        return None
    _positive_timedelta(ttl, "ttl")
    try:
        return datetime.now(UTC) + ttl
    except OverflowError:
        raise InvalidInput(f"ttl {ttl!r} puts the expiry past the year 9999") from None


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be True or False, got {value!r:.80}")
    return value


def _check_number(value: object, name: str, positive: bool = False, signed: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number, got {value!r:.80}")
    if signed:
        return float(value)
    if value < 0 or (positive and value == 0):
        raise InvalidInput(f"{name} must be {'positive' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _check_scoring(scoring: object) -> Scoring:
    if not isinstance(scoring, Scoring):
        raise InvalidInput(f"scoring must be a Scoring, got {type(scoring).__name__}")
    key = scoring.importance_key
    if key is not None and (not isinstance(key, str) or not key or any(not p for p in key.split("."))):
        raise InvalidInput(f"importance_key must be a metadata key (dotted for nested ones), got {key!r:.80}")
    scale = scoring.importance_scale
    if (
        not isinstance(scale, tuple | list)
        or len(scale) != 2
        or _check_number(scale[0], "importance_scale[0]", signed=True)
        >= _check_number(scale[1], "importance_scale[1]", signed=True)
    ):
        raise InvalidInput(f"importance_scale must be (low, high) numbers with low < high, got {scale!r:.80}")
    return Scoring(
        _check_number(scoring.similarity_weight, "similarity_weight"),
        _check_number(scoring.recency_weight, "recency_weight"),
        _positive_timedelta(scoring.half_life, "half_life"),
        key,
        _check_number(scoring.importance_weight, "importance_weight"),
        (float(scale[0]), float(scale[1])),
    )


def _vector(memory: Memory) -> npt.NDArray[np.float32]:
    assert memory.embedding is not None  # fetched with include_embeddings
    return memory.embedding


def _at_least(found: tuple[list[Memory], SearchPlan], floor: float) -> tuple[list[Memory], SearchPlan]:
    """``min_score``: the results scoring below ``floor`` dropped (an unranked result is kept)."""
    memories, plan = found
    return [m for m in memories if m.score is None or m.score >= floor], plan


def _check_fusion(fusion: object) -> Fusion:
    if not isinstance(fusion, Fusion):
        raise InvalidInput(f"fusion must be a Fusion, got {type(fusion).__name__}")
    return Fusion(
        _check_number(fusion.rrf_k, "rrf_k"),
        _check_number(fusion.w_vector, "vector_weight"),
        _check_number(fusion.w_text, "text_weight"),
    )


def _check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise InvalidInput(f"{name} must be an int {bound}, got {value!r}")
    return value


class Core:
    """One collection of one database, for one tenant (or none): the state both façades share."""

    def __init__(
        self,
        vector_store: str,
        embedder: str | Embedder,
        collection_name: str,
        database_url: str | None,
        *,
        distance: str | None,
        precision: str | None,
        text_search_config: str | None,
        auto_migrate: bool,
        dedupe: bool,
        cache_size: int,
        tenant: str | None,
        encryption_key: str | bytes | None,
        encrypted_metadata: Sequence[str],
        schema: Mapping[str, Any] | None = None,
        strict_filters: str = "warn",
        actor: str | None = None,
        history_retention: timedelta | None = None,
    ) -> None:
        if vector_store not in VECTOR_STORES:
            raise ConfigurationError(
                f"vector_store {vector_store!r} is not supported; memorix-pg accepts "
                + ", ".join(repr(v) for v in VECTOR_STORES)
            )
        self.embedding = Embedding(resolve_embedder(embedder), cache_size)
        self.dedupe = dedupe
        self.tenant = check_tenant(tenant)
        cipher = TextCipher(encryption_key) if encryption_key is not None else None
        self.sealer = Sealer(cipher, tuple(encrypted_metadata))
        self.collection_name = check_collection_name(collection_name)
        self.distance = distance
        self.precision = precision
        if text_search_config is not None and (
            not isinstance(text_search_config, str) or not text_search_config.strip()
        ):
            raise ConfigurationError(
                f"text_search_config must be a non-empty str, got {text_search_config!r:.80}"
            )
        self.text_search_config = text_search_config
        self.auto_migrate = auto_migrate
        self.requested_url = database_url
        self.url = ""
        self.embedded = False
        self.data_dir: Path | None = None
        self.info: CollectionInfo | None = None
        self.dropped = False  # by drop(): every later call raises CollectionNotFound
        self.settings: tuple[Query, ...] = tenant_settings(self.tenant)
        # A schema given here replaces the stored one when the collection opens; without one,
        # the stored schema (if any) is read then.
        self.schema = MetadataSchema(schema) if schema is not None else None
        self.schema_given = schema is not None
        self.strict_filters = check_strict_filters(strict_filters)
        if actor is not None:
            if not isinstance(actor, str) or not actor.strip() or "\x00" in actor:
                raise ConfigurationError(f"actor must be a non-empty str, got {actor!r:.80}")
            self.settings += (set_local(ACTOR_SETTING, actor),)
        self.history_retention = (
            _positive_timedelta(history_retention, "history_retention")
            if history_retention is not None
            else None
        )

    # -- opening ------------------------------------------------------------------------

    def resolve(self) -> None:
        """Find the database (starting the embedded server when none is configured): blocking."""
        resolved = resolve_database(self.requested_url)
        self.url, self.embedded, self.data_dir = resolved.url, resolved.embedded, resolved.data_dir

    def restart(self) -> None:
        """Start a dead embedded server again (the runners call this before retrying)."""
        if self.embedded:
            ensure_embedded_server(self.data_dir)
            self.info = None  # opened again (and its index repaired) by the next call

    def _open(self) -> Operation[CollectionInfo]:
        if self.dropped:
            raise CollectionNotFound(
                f"collection {self.collection_name!r} was dropped by this object; make a new "
                "MemoryAPI (or AsyncMemoryAPI) to create it again"
            )
        yield from offload(prepare_database, self.url, self.auto_migrate)
        info = yield from open_collection(
            self.collection_name,
            self.embedding.name,
            self.embedding.dim,
            self.distance,
            self.precision,
            self.text_search_config,
        )
        yield from repair(info)
        stored = yield from read_metadata_schema(info)
        if self.schema_given:
            assert self.schema is not None
            if stored != self.schema.document:  # an unchanged schema needs no UPDATE privilege
                yield from write_metadata_schema(info, self.schema.document)
            self.schema_given = False  # written once; later opens read it back
        else:
            self.schema = MetadataSchema(stored) if stored is not None else None
        self.info = info
        return info

    def opened(self) -> Operation[CollectionInfo]:
        """The collection, opened on first use (and again after a restart of the server)."""
        if self.info is not None and not self.dropped:
            return self.info
        return (yield from self._open())

    def open(self) -> Call[CollectionInfo]:
        return Call(self._open, idempotent=True, scoped=False)

    @property
    def scope(self) -> Scope:
        assert self.info is not None, "the collection is not open yet"
        return Scope(self.info, self.tenant)

    @property
    def planner(self) -> Planner:
        assert self.info is not None
        return planner_for(self.url, self.info.id)

    def _call(
        self, body: Any, idempotent: bool = False, operation: str | None = None, read: bool = False
    ) -> Call[Any]:
        """``body(scope)`` after the collection is open; ``operation`` names its writes in the history;
        ``read``: it only reads, so it may run on a standby."""

        def make() -> Operation[Any]:
            yield from self.opened()
            try:
                return (yield from body(self.scope))
            except GeneratorExit:
                # Abandoned mid-way (a dead connection, a cancelled task): a deferred load may have
                # left the index dropped, so the next call opens the collection again and repairs it.
                self.info = None
                raise

        return Call(make, idempotent=idempotent, settings=_labelled(operation), read=read)

    def _where(self, filter: Mapping[str, Any] | None) -> Filter:
        compiled = compile_where(filter)  # first: it bounds the filter's depth for check_filter
        self.sealer.check_filter(filter)
        if self.schema is not None:
            self.schema.check_filter(filter, self.strict_filters)
        return compiled

    def memory(
        self,
        row: Sequence[Any],
        score: float | None = None,
        embedding: Any = None,
        expires_at: Any = None,
        ranks: dict[str, Any] | None = None,
    ) -> Memory:
        """A result row (id, text, metadata, created_at, updated_at, ...) as the caller sees it."""
        row_id = row[0]
        return Memory(
            id=row_id,
            text=self.sealer.open_text(row_id, row[1]),
            metadata=self.sealer.open_metadata(row_id, dict(row[2])),
            score=score,
            created_at=row[3],
            collection=self.collection_name,
            updated_at=row[4],
            embedding=read_vector(embedding) if embedding is not None else None,
            expires_at=expires_at,
            ranks=ranks,
        )

    def cache_info(self) -> CacheInfo:
        return self.embedding.info()

    # -- writing ------------------------------------------------------------------------

    def store_batch(
        self,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None,
        ids: Sequence[str | UUID] | None,
        embeddings: Sequence[Sequence[float]] | npt.NDArray[np.floating[Any]] | None,
        ttl: timedelta | None,
        dedupe: bool | None,
        progress: bool,
        created_at: Sequence[datetime] | None,
    ) -> Call[list[str]]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInput("texts must be a list of str")
        check_batch_lengths(texts, metadatas=metadatas, ids=ids, embeddings=embeddings, created_at=created_at)
        times = (
            [check_timestamp(t, f"created_at[{i}]") for i, t in enumerate(created_at)] if created_at else None
        )
        expires_at = _expiry(ttl)
        if not texts:
            return Call(_nothing)
        clean_texts = [check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
        clean_metas = [
            clean_metadata(m, f"metadatas[{i}]") for i, m in enumerate(metadatas or [None] * len(texts))
        ]
        row_ids = [check_id(v, f"ids[{i}]") for i, v in enumerate(ids)] if ids else [new_id() for _ in texts]
        first: dict[str, int] = {}
        for i, row_id in enumerate(row_ids):
            if (j := first.setdefault(row_id, i)) != i:
                raise InvalidInput(f"ids[{i}] repeats ids[{j}] ({row_id!r:.80}): the same id more than once")
        vectors = (
            np.stack(
                [check_embedding(e, self.embedding.dim, f"embeddings[{i}]") for i, e in enumerate(embeddings)]
            )
            if embeddings is not None
            else None
        )
        new = writes.NewMemories(
            texts=clean_texts,
            metadatas=clean_metas,
            ids=row_ids,
            hashes=[self.sealer.content_hash(t) for t in clean_texts],
            vectors=vectors,
            created_at=times,
            expires_at=expires_at,
            upsert=ids is not None,
        )
        deduping = self.dedupe if dedupe is None else dedupe

        def body(scope: Scope) -> Operation[list[str]]:
            if self.schema is not None:
                for i, m in enumerate(clean_metas):
                    self.schema.check(m, i, f"metadatas[{i}]")
            stored = yield from writes.store(
                scope, self.planner, new, self.sealer, self.embedding, dedupe=deduping, progress=progress
            )
            return stored

        return self._call(body)

    def update(self, id: str | UUID, text: str | None, metadata: Mapping[str, Any] | None) -> Call[Memory]:
        row_id = check_id(id)
        patch = clean_metadata(metadata)
        removed = [k for k, v in patch.items() if v is None]
        kept = self.sealer.seal_metadata(row_id, {k: v for k, v in patch.items() if v is not None})
        new_text = check_text(text) if text is not None else None

        def body(scope: Scope) -> Operation[Memory]:
            if self.schema is not None:
                current = yield from writes.locked_metadata(scope, row_id)
                if current is None:
                    raise MemoryNotFound(
                        f"no memory with id {row_id!r} in collection {self.collection_name!r}"
                    )
                merged = self.sealer.open_metadata(row_id, current)
                merged.update((k, v) for k, v in patch.items() if v is not None)
                for key in removed:
                    merged.pop(key, None)
                self.schema.check(merged, 0, "metadata")
            replacement = None
            if new_text is not None:
                vector = (yield from offload(self.embedding.embed, [new_text]))[0]
                replacement = (
                    self.sealer.seal_text(row_id, new_text),
                    vector,
                    self.sealer.content_hash(new_text),
                )
            row = yield from writes.update(scope, row_id, kept, removed, replacement)
            if row is None:
                raise MemoryNotFound(f"no memory with id {row_id!r} in collection {self.collection_name!r}")
            return self.memory(row)

        return self._call(body)

    def delete(self, id: str | UUID) -> Call[bool]:
        row_id = check_id(id)
        return self._call(lambda scope: writes.delete(scope, self.planner, row_id))

    def delete_by_filter(self, filter: Mapping[str, Any]) -> Call[int]:
        if filter is None:
            raise FilterError(
                "delete_by_filter needs a filter; pass {} to delete every memory in the collection"
            )
        f = self._where(filter)
        return self._call(
            lambda scope: writes.delete_where(scope, self.planner, scope.live(f), f, "filter", {})
        )

    # -- reading ------------------------------------------------------------------------

    def get(self, id: str | UUID, include_embeddings: bool = False) -> Call[Memory | None]:
        row_id = check_id(id)
        vectors = _check_bool(include_embeddings, "include_embeddings")

        def body(scope: Scope) -> Operation[Memory | None]:
            rows = yield from reads.get(scope, row_id, vectors)
            return self._read(rows[0], vectors) if rows else None

        return self._call(body, idempotent=True, read=True)

    def get_many(self, ids: Sequence[str | UUID], include_embeddings: bool = False) -> Call[list[Memory]]:
        """The memories that exist among ``ids``, in their order (an id given twice comes back
        twice), missing ones skipped: one statement."""
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
            raise InvalidInput(f"ids must be a list of ids, got {type(ids).__name__}")
        row_ids = [check_id(v, f"ids[{i}]") for i, v in enumerate(ids)]
        vectors = _check_bool(include_embeddings, "include_embeddings")
        if not row_ids:
            return Call(_no_memories)

        def body(scope: Scope) -> Operation[list[Memory]]:
            rows = yield from reads.get_many(scope, list(dict.fromkeys(row_ids)), vectors)
            found = {row[0]: self._read(row, vectors) for row in rows}
            return [found[i] for i in row_ids if i in found]

        return self._call(body, idempotent=True, read=True)

    def _read(self, row: Sequence[Any], vectors: bool) -> Memory:
        """A row of ``reads.get`` / ``get_many`` / ``newest``: its vector after the memory columns."""
        return self.memory(row, embedding=row[len(reads.MEMORY_COLUMNS)] if vectors else None)

    def page(
        self,
        filter: Mapping[str, Any] | None,
        limit: int,
        cursor: str | UUID | None,
        offset: int,
        order: str,
        include_embeddings: bool,
    ) -> Call[list[Memory]]:
        _check_int(limit, "limit", 1, MAX_TOP_K)
        _check_int(offset, "offset", 0, MAX_TOP_K)
        if order not in reads.ORDERS:
            raise InvalidInput(f"order must be one of {', '.join(map(repr, reads.ORDERS))}, got {order!r}")
        after = check_id(cursor, "cursor") if cursor is not None else None
        vectors = _check_bool(include_embeddings, "include_embeddings")
        f = self._where(filter)

        def body(scope: Scope) -> Operation[list[Memory]]:
            rows = yield from reads.page(scope, f, limit, offset, after, order, vectors)
            if not rows and after is not None and not (yield from reads.exists(scope, after)):
                # Keyset paging needs the cursor's row: without it the page would silently be
                # empty, and a caller would take that for the end of the collection.
                raise InvalidInput(
                    f"cursor {after!r:.80} is not the id of a memory of collection "
                    f"{self.collection_name!r} (was it deleted since the previous page?)"
                )
            return [self.memory(r, embedding=r[5], expires_at=r[6]) for r in rows]

        return self._call(body, idempotent=True, read=True)

    def count(self, filter: Mapping[str, Any] | None) -> Call[int]:
        f = self._where(filter)
        return self._call(lambda scope: reads.count(scope, f), idempotent=True, read=True)

    def retrieve(
        self,
        query: str | None,
        top_k: int,
        filter: Mapping[str, Any] | None,
        embedding: Sequence[float] | npt.NDArray[np.floating[Any]] | None,
        exact: bool | None,
        ef_search: int | None,
        include_embeddings: bool = False,
        mode: str = "vector",
        fusion: Fusion | None = None,
        ranks: bool = False,
        scoring: Scoring | None = None,
        min_score: float | None = None,
        mmr: bool = False,
        fetch_k: int | None = None,
        lambda_mult: float = 0.5,
        reranker: Reranker | None = None,
    ) -> Call[tuple[list[Memory], SearchPlan]]:
        _check_int(top_k, "top_k", 1, MAX_TOP_K)
        if mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r:.80}")
        if mode != "vector":
            self.sealer.check_text_search(mode)
        fused = _check_fusion(fusion or Fusion())
        _check_bool(ranks, "ranks")
        scores = _check_scoring(scoring or Scoring())
        if scores.active and mode != "vector":
            raise InvalidInput(
                "recency_weight and importance_weight combine with the similarity of mode='vector'; "
                f"mode={mode!r} ranks by fused ranks"
            )
        floor = None if min_score is None else _check_number(min_score, "min_score", signed=True)
        _check_bool(mmr, "mmr")
        if reranker is not None and not callable(reranker):
            raise InvalidInput(
                f"reranker must be a callable (query, memories) -> scores, got {reranker!r:.80}"
            )
        if fetch_k is not None:
            _check_int(fetch_k, "fetch_k", 1, MAX_TOP_K)
        lam = _check_number(lambda_mult, "lambda_mult")
        if lam > 1:
            raise InvalidInput(f"lambda_mult must be in [0, 1], got {lambda_mult!r}")
        reranking = mmr or reranker is not None
        if mmr and mode == "text":
            raise InvalidInput("mmr needs the vectors of the candidates: use mode='vector' or 'hybrid'")
        if reranking and not query and embedding is None:
            raise InvalidInput("mmr and reranker need a query (an empty one ranks nothing)")
        if reranker is not None and not query:
            raise InvalidInput("a reranker needs the query text")
        fetch = max(fetch_k or FETCH_K, top_k) if reranking else top_k
        call = self._retrieve(
            query,
            fetch,
            filter,
            embedding,
            exact,
            ef_search,
            include_embeddings or mmr,
            mode,
            fused,
            ranks,
            scores,
        )
        if not reranking and floor is None:
            return call
        given = check_embedding(embedding, self.embedding.dim) if embedding is not None else None

        def after() -> Operation[tuple[list[Memory], SearchPlan]]:
            found, plan = yield from call.make()
            if mmr:
                q = given if given is not None else (yield from offload(self.embedding.one, query))
                vectors = np.stack([_vector(m) for m in found]) if found else np.empty((0, 1), np.float32)
                picked = mmr_order(q, vectors, top_k if reranker is None else fetch, lam)
                found = [found[i] for i in picked]
                if not include_embeddings:
                    found = [dataclasses.replace(m, embedding=None) for m in found]
            if reranker is not None:
                assert query is not None
                scored = yield from offload(rerank_scores, reranker, query, found)
                order = sorted(range(len(found)), key=lambda i: -scored[i])
                found = [
                    dataclasses.replace(
                        found[i],
                        score=scored[i],
                        ranks={
                            **(found[i].ranks or {}),
                            "before_rerank": i + 1,
                            "ranking_score": found[i].score,
                        }
                        if ranks
                        else None,
                    )
                    for i in order
                ]
            found = found[:top_k]
            return _at_least((found, plan), floor) if floor is not None else (found, plan)

        return Call(after, idempotent=call.idempotent, read=call.read)

    def _retrieve(
        self,
        query: str | None,
        top_k: int,
        filter: Mapping[str, Any] | None,
        embedding: Sequence[float] | npt.NDArray[np.floating[Any]] | None,
        exact: bool | None,
        ef_search: int | None,
        include_embeddings: bool,
        mode: str,
        fused: Fusion,
        ranks: bool,
        scores: Scoring,
    ) -> Call[tuple[list[Memory], SearchPlan]]:
        vectors = _check_bool(include_embeddings, "include_embeddings")
        if ef_search is not None:
            _check_int(ef_search, "ef_search", 1)
        if exact is not None and not isinstance(exact, bool):
            raise InvalidInput(f"exact must be True, False or None, got {exact!r}")
        if query is not None and not isinstance(query, str):
            raise InvalidInput(f"query must be a str or None, got {type(query).__name__}")
        f = self._where(filter)
        vector = check_embedding(embedding, self.embedding.dim) if embedding is not None else None
        text = check_text(query, "query") if vector is None and query else None
        if mode != "vector":
            return self._ranked(query, top_k, f, vector, mode, fused, exact, ef_search, vectors, ranks)

        def body(scope: Scope) -> Operation[tuple[list[Memory], SearchPlan]]:
            if vector is None and text is None:
                rows = yield from reads.newest(scope, f, top_k, vectors)
                recent = SearchPlan("recent", "empty query: newest first", None)
                return [self._read(r, vectors) for r in rows], recent
            q = vector if vector is not None else (yield from offload(self.embedding.one, text))
            if scores.active:
                return (yield from self._scored(scope, f, q, top_k, scores, exact, ef_search, vectors, ranks))
            rows, plan = yield from search(
                scope, self.planner, f, q, top_k, exact=exact, ef_search=ef_search, embeddings=vectors
            )
            distance = scope.info.distance
            return [
                self.memory(
                    r,
                    score_from_distance(distance, float(r[DISTANCE])),
                    embedding=r[DISTANCE + 1] if vectors else None,
                    ranks={"vector_rank": i + 1} if ranks else None,
                )
                for i, r in enumerate(rows)
            ], plan

        return self._call(body, idempotent=True, read=True)

    def _scored(
        self,
        scope: Scope,
        f: Filter,
        q: npt.NDArray[np.float32],
        top_k: int,
        scores: Scoring,
        exact: bool | None,
        ef_search: int | None,
        vectors: bool,
        ranks: bool,
    ) -> Operation[tuple[list[Memory], SearchPlan]]:
        def metadata_of(row: Sequence[Any]) -> Mapping[str, Any]:
            return self.sealer.open_metadata(row[0], dict(row[2]))

        found, plan = yield from rank_scored(
            scope,
            self.planner,
            f,
            q,
            top_k,
            scores,
            metadata_of,
            exact=exact,
            ef_search=ef_search,
            embeddings=vectors,
        )
        return [
            self.memory(
                s.row,
                s.score,
                embedding=s.row[DISTANCE + 1] if vectors else None,
                ranks=dict(s.parts) if ranks else None,
            )
            for s in found
        ], plan

    def _ranked(
        self,
        query: str | None,
        top_k: int,
        f: Filter,
        vector: npt.NDArray[np.float32] | None,
        mode: str,
        fusion: Fusion,
        exact: bool | None,
        ef_search: int | None,
        vectors: bool,
        ranks: bool,
    ) -> Call[tuple[list[Memory], SearchPlan]]:
        """``retrieve`` in mode text or hybrid: the query's words are needed (an embedding alone
        cannot be searched as text); an empty query lists the newest, as in mode vector."""
        text = check_text(query, "query") if query else None
        if text is None and vector is not None:
            raise InvalidInput(f"mode={mode!r} needs the query text (an embedding alone has no words)")

        def body(scope: Scope) -> Operation[tuple[list[Memory], SearchPlan]]:
            if text is None:
                rows = yield from reads.newest(scope, f, top_k, vectors)
                recent = SearchPlan("recent", "empty query: newest first", None)
                return [self._read(r, vectors) for r in rows], recent
            q = None
            if mode == "hybrid":
                q = vector if vector is not None else (yield from offload(self.embedding.one, text))
            found, plan = yield from hybrid.rank(
                scope,
                self.planner,
                f,
                text,
                q,
                top_k,
                fusion,
                exact=exact,
                ef_search=ef_search,
                embeddings=vectors,
            )
            distance = scope.info.distance
            memories = []
            for r in found:
                detail = dict(r.ranks)
                if r.distance is not None:
                    detail["similarity"] = score_from_distance(distance, r.distance)
                memories.append(
                    self.memory(r.row, r.score, embedding=r.embedding, ranks=detail if ranks else None)
                )
            return memories, plan

        return self._call(body, idempotent=True, read=True)

    def check_recall(
        self, queries: int, top_k: int, filter: Mapping[str, Any] | None, target: float
    ) -> Call[recall.RecallReport]:
        _check_int(queries, "queries", 1, MAX_RECALL_QUERIES)
        _check_int(top_k, "top_k", 1, MAX_RECALL_TOP_K)
        if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
            raise InvalidInput(f"target must be a number in (0, 1], got {target!r}")
        f = self._where(filter)
        return self._call(
            lambda scope: recall.check_recall(scope, self.planner, f, queries, top_k, float(target)),
            idempotent=True,
            read=True,
        )

    # -- lifecycle ----------------------------------------------------------------------

    def cleanup(self, older_than: timedelta, filter: Mapping[str, Any] | None) -> Call[int]:
        age = _positive_timedelta(older_than, "older_than")
        f = self._where(filter)
        return self._call(lambda scope: lifecycle.cleanup(scope, self.planner, f, age), operation="cleanup")

    def count_older_than(self, older_than: timedelta, filter: Mapping[str, Any] | None) -> Call[int]:
        age = _positive_timedelta(older_than, "older_than")
        f = self._where(filter)
        return self._call(lambda scope: lifecycle.count_older_than(scope, f, age), idempotent=True, read=True)

    def set_ttl(self, ids: Sequence[str], ttl: timedelta | None) -> Call[int]:
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise InvalidInput(f"ids must be a list of ids, got {type(ids).__name__}")
        row_ids = [check_id(v, f"ids[{i}]") for i, v in enumerate(ids)]
        expires_at = _expiry(ttl)
        if not row_ids:
            return Call(lambda: _done(0))
        return self._call(lambda scope: writes.set_expiry(scope, row_ids, expires_at), operation="ttl")

    def purge_expired(self) -> Call[int]:
        def body(scope: Scope) -> Operation[int]:
            purged = yield from lifecycle.purge_expired(scope, self.planner)
            if self.history_retention is not None:
                yield from history_events.prune(scope, self.history_retention)
            return purged

        return self._call(body, operation="purge")

    def archive(self, filter: Mapping[str, Any], to: str) -> Call[int]:
        if filter is None:
            raise FilterError("archive needs a filter; pass {} to archive the whole collection")
        target_name = check_collection_name(to)
        if target_name == self.collection_name:
            raise InvalidInput(f"cannot archive collection {to!r} into itself")
        f = self._where(filter)

        def body(scope: Scope) -> Operation[int]:
            info = scope.info
            # Created with this collection's embedder and options when absent; checked when present.
            target = yield from open_collection(
                target_name,
                self.embedding.name,
                self.embedding.dim,
                info.distance,
                info.precision,
                info.text_search_config,
            )
            return (
                yield from lifecycle.archive(scope, self.planner, planner_for(self.url, target.id), f, target)
            )

        return self._call(body, operation="archive")

    def compress(
        self,
        filter: Mapping[str, Any] | None,
        window: timedelta,
        summarizer: lifecycle.Summarizer | None,
        min_group: int,
        max_chars: int,
        group_by: Sequence[str],
    ) -> Call[lifecycle.CompressionReport]:
        size = _positive_timedelta(window, "window")
        _check_int(min_group, "min_group", 1)
        f = self._where(filter)
        return self._call(
            lambda scope: lifecycle.compress(
                scope,
                self.planner,
                f,
                self.sealer,
                self.embedding,
                window=size,
                summarizer=summarizer,
                min_group=min_group,
                max_chars=max_chars,
                group_by=group_by,
            ),
            operation="compress",
        )

    def find_duplicates(
        self, threshold: float, limit: int, neighbours: int
    ) -> Call[list[lifecycle.DuplicatePair]]:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not -1.0 <= threshold <= 1.0
        ):
            raise InvalidInput(f"threshold must be a number in [-1, 1], got {threshold!r}")

        def body(scope: Scope) -> Operation[list[lifecycle.DuplicatePair]]:
            rows = yield from lifecycle.find_duplicates(scope, threshold, limit, neighbours)
            open_text = self.sealer.open_text
            return [
                lifecycle.DuplicatePair(a, b, float(s), open_text(a, ta), open_text(b, tb))
                for a, b, s, ta, tb in rows
            ]

        return self._call(body, idempotent=True, read=True)

    def stats(self, group_by: str | None, filter: Mapping[str, Any] | None) -> Call[dict[str, Any]]:
        f = self._where(filter)
        if group_by is None:

            def total(scope: Scope) -> Operation[dict[str, Any]]:
                return {"total": (yield from reads.count(scope, f)), "groups": {}}

            return self._call(total, idempotent=True, read=True)
        self.sealer.check_group_key(group_by)

        def grouped(scope: Scope) -> Operation[dict[str, Any]]:
            groups = yield from lifecycle.group_counts(scope, group_by, f)
            return {"total": sum(groups.values()), "groups": groups}

        return self._call(grouped, idempotent=True, read=True)

    def create_index(self, key: str, type: str) -> Call[str]:
        index_expression(key, type)  # validates the key and the type before anything runs
        name = metadata_index_name(key, type)

        def body(scope: Scope) -> Operation[str]:
            yield from create_expression_index(name, lambda column: index_expression(key, type, column))
            return name

        return self._call(body, idempotent=True)

    # -- governance ---------------------------------------------------------------------

    def forget(
        self, filter: Mapping[str, Any] | None, all_collections: bool, dry_run: bool
    ) -> Call[lifecycle.ForgetReceipt]:
        f = _subject(filter)
        self.sealer.check_filter(filter)
        everywhere = _check_bool(all_collections, "all_collections")
        _check_bool(dry_run, "dry_run")

        def body(scope: Scope) -> Operation[lifecycle.ForgetReceipt]:
            receipt = yield from lifecycle.forget(
                f,
                compile_filter(filter, history.c.metadata),
                tenant=self.tenant,
                every_tenant=False,
                collection_id=None if everywhere else scope.info.id,
                dry_run=dry_run,
            )
            self.planner.changed_rows(receipt.memories.get(self.collection_name, 0))
            return receipt

        return self._call(body, operation="forget")

    def history(
        self, id: str | UUID | None, filter: Mapping[str, Any] | None, since: datetime | None, limit: int
    ) -> Call[list[history_events.HistoryEvent]]:
        row_id = check_id(id) if id is not None else None
        if row_id is not None and filter is not None:
            raise InvalidInput("history takes an id or a filter, not both")
        _check_int(limit, "limit", 1, MAX_TOP_K)
        after = check_timestamp(since, "since") if since is not None else None
        where = compile_filter(filter, history.c.metadata)

        def body(scope: Scope) -> Operation[list[history_events.HistoryEvent]]:
            if row_id is not None:
                rows = yield from history_events.events_of(scope, row_id, limit)
            else:
                rows = yield from history_events.events(scope, where, after, limit)
            return [self._event(r) for r in rows]

        return self._call(body, idempotent=True, read=True)

    def _event(self, row: Sequence[Any]) -> history_events.HistoryEvent:
        event = history_events.HistoryEvent(*row)
        if event.metadata is not None and event.memory_id is not None:
            opened = self.sealer.open_metadata(event.memory_id, dict(event.metadata))
            event = dataclasses.replace(event, metadata=opened)
        return event

    def prune_history(self, older_than: timedelta) -> Call[int]:
        age = _positive_timedelta(older_than, "older_than")
        return self._call(lambda scope: history_events.prune(scope, age))

    def set_schema(self, schema: Mapping[str, Any] | None) -> Call[None]:
        checked = MetadataSchema(schema) if schema is not None else None

        def body(scope: Scope) -> Operation[None]:
            yield from write_metadata_schema(scope.info, checked.document if checked else None)
            self.schema = checked

        return self._call(body)

    def get_schema(self) -> Call[dict[str, Any] | None]:
        def body(scope: Scope) -> Operation[dict[str, Any] | None]:
            return dict(self.schema.document) if self.schema is not None else None
            yield  # pragma: no cover - makes this a generator

        return self._call(body, idempotent=True, read=True)

    def validate_existing(self) -> Call[list[SchemaProblem]]:
        def body(scope: Scope) -> Operation[list[SchemaProblem]]:
            if self.schema is None:
                return []
            rows = yield from reads.all_metadata(scope)
            problems: list[SchemaProblem] = []
            for row_id, metadata in rows:
                problems += self.schema.problems(row_id, self.sealer.open_metadata(row_id, dict(metadata)))
            return problems

        return self._call(body, idempotent=True, read=True)

    def drop(self) -> Call[bool]:
        """Drop the collection, its memories and its HNSW index (the ``create_index`` expression
        indexes are shared by every collection and stay)."""

        def body(scope: Scope) -> Operation[bool]:
            dropped = yield from drop_collection(scope.info, self.tenant)
            self.info, self.dropped = None, True
            return dropped

        return self._call(body, operation="drop")

    def rotate_key(
        self, new_key: str | bytes | None, batch: int, encrypted_metadata: Sequence[str] | None
    ) -> Call[int]:
        _check_int(batch, "batch", 1)
        keys = tuple(encrypted_metadata) if encrypted_metadata is not None else self.sealer.encrypted_keys
        new = Sealer(TextCipher(new_key), keys) if new_key is not None else Sealer(None)

        def body(scope: Scope) -> Operation[int]:
            rewritten = yield from writes.rotate(scope, self.sealer, new, batch)
            self.sealer = new
            return rewritten

        return self._call(body, operation="rotate_key")


def _nothing() -> Operation[list[str]]:
    return []
    yield  # pragma: no cover - makes this a generator


def _no_memories() -> Operation[list[Memory]]:
    return []
    yield  # pragma: no cover - makes this a generator


def _done(value: T) -> Operation[T]:
    """An operation that sends nothing and returns ``value``."""
    return value
    yield  # pragma: no cover - makes this a generator
