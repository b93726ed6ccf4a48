"""SQLAlchemy 2 models of the schema that the alembic migrations create.

The migrations in ``migrations/`` own the schema; these classes describe it for queries.
One ``memories`` table holds every collection. Its ``embedding`` column is an untyped
``vector`` so collections may use embedders of different dimensions; a collection created
with ``precision="half"`` stores its vectors in ``embedding_half`` (``halfvec``, half the
bytes) instead, and each row fills exactly one of the two. A memory's id is an opaque string,
unique within its tenant's collection: the primary key is ``(tenant, collection_id, id)``, led by
the tenant so the table can be distributed (Citus) or hash-partitioned by it (migration 0010;
``''`` is "no tenant"). Each collection gets its own
partial HNSW index over ``embedding::vector(dim)`` or ``embedding_half::halfvec(dim)`` (see
:mod:`memorix_pg.vector_index`), which keeps a small collection's search exact and a large
one's fast.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import HALFVEC, Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    func,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.dialects.postgresql import JSONB, REGCONFIG, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "memorix"
DISTANCES = ("cosine", "l2", "ip")
TS_CONFIG_SETTING = "memorix.ts_config"
TS_CONFIG_DEFAULT = "coalesce(nullif(current_setting('memorix.ts_config', true), ''), 'simple')::regconfig"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Collection(Base):
    """A named set of memories sharing one embedder, dimension and distance."""

    __tablename__ = "collections"
    __table_args__ = (
        CheckConstraint("distance IN ('cosine', 'l2', 'ip')", name="collections_distance_check"),
        CheckConstraint("precision IN ('full', 'half')", name="collections_precision_check"),
        CheckConstraint("dimension BETWEEN 1 AND 16000", name="collections_dimension_check"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    embedder: Mapped[str] = mapped_column(Text, nullable=False)
    dimension: Mapped[int] = mapped_column(Integer, nullable=False)
    distance: Mapped[str] = mapped_column(Text, nullable=False, server_default="cosine")
    precision: Mapped[str] = mapped_column(Text, nullable=False, server_default="full")
    # The text search configuration of its memories' ``text_search`` (migration 0008).
    text_search_config: Mapped[str] = mapped_column(Text, nullable=False, server_default="simple")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    # The JSON Schema every memory's metadata must satisfy (migration 0006); NULL: none.
    metadata_schema: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    # Which columns hold its vectors: 0 ``embedding``/``embedding_half``, 1 their ``_alt`` twins.
    # A re-embedding fills the other slot and switches this (migration 0009).
    vector_slot: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="0")


class MemoryRecord(Base):
    """One stored memory: text, its embedding and a JSONB metadata document."""

    __tablename__ = "memories"
    __table_args__ = (
        # Ids are unique per tenant and collection; a distributed key must hold the tenant.
        PrimaryKeyConstraint("tenant", "collection_id", "id", name="memories_pkey"),
        Index("memories_collection_created_idx", "collection_id", "created_at"),
        Index("memories_collection_hash_idx", "collection_id", "content_hash"),
        # Full-precision collections fill ``embedding``, half-precision ones ``embedding_half``.
        # A vector per slot at most, one at least: a re-embedding fills the other slot (0009).
        CheckConstraint(
            "num_nonnulls(embedding, embedding_half) <= 1 "
            "AND num_nonnulls(embedding_alt, embedding_half_alt) <= 1 "
            "AND num_nonnulls(embedding, embedding_half, embedding_alt, embedding_half_alt) >= 1",
            name="memories_one_embedding_check",
        ),
        Index("memories_expires_at_idx", "expires_at", postgresql_where=sql_text("expires_at IS NOT NULL")),
        Index(
            "memories_metadata_gin_idx",
            "metadata",
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        ),
        Index("memories_text_search_idx", "text_search", postgresql_using="gin"),
    )

    # Compared byte by byte (collation "C"): ids are opaque keys, ordered the same on every server.
    id: Mapped[str] = mapped_column(Text(collation="C"), nullable=False)
    collection_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False
    )
    text: Mapped[str] = mapped_column(Text, nullable=False)
    embedding: Mapped[Any] = mapped_column(Vector(), nullable=True)
    embedding_half: Mapped[Any] = mapped_column(HALFVEC(), nullable=True)
    # Slot 1 of the vectors (migration 0009): see ``Collection.vector_slot``.
    embedding_alt: Mapped[Any] = mapped_column(Vector(), nullable=True)
    embedding_half_alt: Mapped[Any] = mapped_column(HALFVEC(), nullable=True)
    # ``metadata`` is reserved on declarative classes, so the attribute is ``metadata_``.
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=sql_text("'{}'::jsonb")
    )
    content_hash: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    # Set from a TTL; an expired memory is never returned or counted, and purge_expired() deletes it.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Row-level security restricts rows to the ``memorix.tenant`` setting (migration 0003);
    # '' is "no tenant" (migration 0010: a distribution column is never NULL).
    tenant: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    # The collection's text search configuration, from the ``memorix.ts_config`` setting (0008).
    ts_config: Mapped[str] = mapped_column(
        REGCONFIG, nullable=False, server_default=sql_text(TS_CONFIG_DEFAULT)
    )
    text_search: Mapped[Any] = mapped_column(
        TSVECTOR, Computed("to_tsvector(ts_config, text)", persisted=True), nullable=True
    )


class HistoryEvent(Base):
    """One memory written, changed or removed: recorded by triggers on ``memories`` (0007)."""

    __tablename__ = "history"
    __table_args__ = (
        PrimaryKeyConstraint("tenant", "event_id", name="history_pkey"),
        Index("history_memory_idx", "memory_id", "event_id"),
        Index("history_collection_at_idx", "collection_id", "at"),
        Index(
            "history_metadata_gin_idx",
            "metadata",
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        ),
    )

    event_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True))
    collection_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    memory_id: Mapped[str | None] = mapped_column(Text(collation="C"), nullable=True)
    tenant: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    operation: Mapped[str] = mapped_column(Text, nullable=False)
    text_hash_before: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    text_hash_after: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The memory's metadata after the change (None for a removal or a tombstone).
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB, nullable=True)
    actor: Mapped[str] = mapped_column(Text, nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    forgotten: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=sql_text("false"))


class ReembedRun(Base):
    """A re-embedding in progress (migration 0009): its target, phase and the last id filled."""

    __tablename__ = "reembed_runs"

    collection_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    embedder: Mapped[str] = mapped_column(Text, nullable=False)
    dimension: Mapped[int] = mapped_column(Integer, nullable=False)
    slot: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    phase: Mapped[str] = mapped_column(Text, nullable=False, server_default="filling")
    after_id: Mapped[str] = mapped_column(Text(collation="C"), nullable=False, server_default="")
    filled: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


memories: Table = MemoryRecord.__table__  # type: ignore[assignment]
collections: Table = Collection.__table__  # type: ignore[assignment]
history: Table = HistoryEvent.__table__  # type: ignore[assignment]
reembed_runs: Table = ReembedRun.__table__  # type: ignore[assignment]
metadata_column = memories.c.metadata
