"""The state of one collection under both façades, and how an operation becomes a call.

:class:`CoreBase` opens the collection on first use (migrating the database and repairing an
index a crash left behind), scopes every operation to the collection and tenant, and turns a
result row into a :class:`~memorix_pg.memory.Memory`. The concerns built on it (writing,
reading, retrieval, maintenance, governance) are mixins in their own modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from .. import reads, time_partitions
from .. import reembed as reembedding
from ..cache import CacheInfo
from ..catalog import drop_collection, open_collection, read_metadata_schema, write_metadata_schema
from ..crypto import Sealer, TextCipher
from ..database import resolve_database
from ..embedders import Embedder, resolve_embedder
from ..embedding import Embedding
from ..errors import CollectionNotFound, ConfigurationError
from ..memory import Memory
from ..planner import Planner, planner_for
from ..schemas import MetadataSchema, check_strict_filters
from ..scope import Scope, tenant_settings
from ..server import ensure_embedded_server
from ..statements import Filter, compile_where
from ..steps import Call, Operation, Query, offload, set_local
from ..validation import check_collection_name, check_tenant
from ..vector_index import CollectionInfo, read_vector, repair
from .arguments import positive_timedelta
from .database import ACTOR_SETTING, labelled, prepare_database

__all__ = ["VECTOR_STORES", "CoreBase", "done", "no_memories", "nothing"]

T = TypeVar("T")

VECTOR_STORES = ("pgvector", "postgres", "postgresql")


class CoreBase:
    """One collection of one database, for one tenant (or none): the state both façades share,
    opening the collection on first use and wrapping operations into calls."""

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
        self.pending: reembedding.Pending | None = None  # a re-embedding filling the collection
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
            positive_timedelta(history_retention, "history_retention")
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
        self.pending = yield from reembedding.pending_run(info)
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

    def scoped(
        self, body: Any, idempotent: bool = False, operation: str | None = None, read: bool = False
    ) -> Call[Any]:
        """``body(scope)`` after the collection is open; ``operation`` names its writes in the history;
        ``read``: it only reads, so it may run on a standby."""

        def make() -> Operation[Any]:
            info = yield from self.opened()
            if info.time_partitioned and not read:  # this month's and next month's partitions
                yield from time_partitions.ensure_horizon(self.url)
            try:
                return (yield from body(self.scope))
            except GeneratorExit:
                # Abandoned mid-way (a dead connection, a cancelled task): a deferred load may have
                # left the index dropped, so the next call opens the collection again and repairs it.
                self.info = None
                raise

        return Call(make, idempotent=idempotent, settings=labelled(operation), read=read)

    def compiled_filter(self, filter: Mapping[str, Any] | None) -> Filter:
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

    def read_row(self, row: Sequence[Any], vectors: bool) -> Memory:
        """A row of ``reads.get`` / ``get_many`` / ``newest``: its vector after the memory columns."""
        return self.memory(row, embedding=row[len(reads.MEMORY_COLUMNS)] if vectors else None)

    def drop(self) -> Call[bool]:
        """Drop the collection, its memories and its HNSW index (the ``create_index`` expression
        indexes are shared by every collection and stay)."""

        def body(scope: Scope) -> Operation[bool]:
            dropped = yield from drop_collection(scope.info, self.tenant)
            self.info, self.dropped = None, True
            return dropped

        return self.scoped(body, operation="drop")


def nothing() -> Operation[list[str]]:
    return []
    yield  # pragma: no cover - makes this a generator


def no_memories() -> Operation[list[Memory]]:
    return []
    yield  # pragma: no cover - makes this a generator


def done(value: T) -> Operation[T]:
    """An operation that sends nothing and returns ``value``."""
    return value
    yield  # pragma: no cover - makes this a generator
