"""The collections table: find, create, list and drop collections; check one fits the embedder.

Nothing outside a collection refers to it: the only foreign key to ``collections`` is its own
memories' (ON DELETE CASCADE); an archive moves rows into another collection and keeps no link,
and a compressed summary's ``source_ids`` name memories of its own collection. Dropping a
collection therefore never breaks another one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from .errors import ConfigurationError, EmbedderMismatch, PermissionDenied
from .index_builds import drop_index
from .models import DISTANCES, collections, memories
from .scope import live_predicate
from .statements import adhoc
from .steps import Operation, Query, execute, fetch_all, fetch_one
from .vector_index import (
    CollectionInfo,
    create_index_sql,
    create_vector_index,
    drop_vector_index,
    index_name,
    vector_index_state,
)

__all__ = [
    "CollectionSummary",
    "check_matches",
    "check_options",
    "collection_infos",
    "collection_summaries",
    "drop_collection",
    "ensure_vector_indexes",
    "open_collection",
    "read_metadata_schema",
    "write_metadata_schema",
]

PRECISIONS = ("full", "half")
logger = logging.getLogger("memorix_pg")


_COLUMNS: tuple[sa.ColumnElement[Any], ...] = (
    collections.c.id,
    collections.c.name,
    collections.c.embedder,
    collections.c.dimension,
    collections.c.distance,
    collections.c.precision,
    collections.c.text_search_config,
    collections.c.vector_slot,
    # Whether memories is partitioned by month (migration 0011; time_partitions.py).
    sa.literal_column(
        "EXISTS (SELECT 1 FROM pg_catalog.pg_partitioned_table p "
        "WHERE p.partrelid = 'memorix.memories'::regclass AND p.partstrat = 'r')"
    ).label("time_partitioned"),
)


def collection_infos(conn: Connection) -> list[CollectionInfo]:
    return [_info_from(row) for row in conn.execute(sa.select(*_COLUMNS).order_by(collections.c.name))]


@dataclass(frozen=True)
class CollectionSummary:
    """One collection of a database, as :func:`memorix_pg.list_collections` reports it.

    ``count`` is the number of live (not expired) memories that the connecting role can see:
    every tenant's for the table's owner, as the ``collection_stats`` view counts them.
    """

    name: str
    embedder: str
    dimensions: int
    distance: str
    precision: str
    count: int
    created_at: datetime


def collection_summaries() -> Operation[list[CollectionSummary]]:
    """Every collection with its live memories counted, by name: one statement."""
    counted = (
        sa.select(sa.func.count())
        .where(memories.c.collection_id == collections.c.id, live_predicate())
        .scalar_subquery()
    )
    statement = sa.select(
        collections.c.name,
        collections.c.embedder,
        collections.c.dimension,
        collections.c.distance,
        collections.c.precision,
        counted,
        collections.c.created_at,
    ).order_by(collections.c.name)
    rows = yield from fetch_all(adhoc(statement), final=True)
    return [CollectionSummary(*row) for row in rows]


def drop_collection(info: CollectionInfo, tenant: str | None) -> Operation[bool]:
    """Delete the collection and its memories in one transaction (the foreign key cascades),
    then its HNSW index, CONCURRENTLY so other collections are never blocked. With ``tenant``,
    refuses while the collection holds memories of anyone else. False when it was gone already."""
    gone = sa.delete(collections).where(collections.c.id == sa.bindparam("id"))
    params: dict[str, Any] = {"id": info.id}
    if tenant is not None:
        others = sa.select(memories.c.id).where(
            memories.c.collection_id == sa.bindparam("id"),
            memories.c.tenant.is_distinct_from(sa.bindparam("tenant")),
        )
        gone = gone.where(~sa.exists(others))
        params["tenant"] = tenant
    deleted = (yield from execute(adhoc(gone.returning(collections.c.id), params), final=True))[0].rows
    if not deleted and tenant is not None:
        still_there = yield from fetch_one(_select_collection(info.name), final=True)
        if still_there is not None and still_there[0] == info.id:
            raise PermissionDenied(
                f"collection {info.name!r} holds memories of other tenants (or without a tenant); a "
                f"MemoryAPI with tenant {tenant!r} may not drop it"
            )
    other_slot = dataclasses.replace(info, slot=1 - info.slot)  # a re-embedding's, if one was under way
    yield from drop_index(index_name(info))
    yield from drop_index(index_name(other_slot))
    return bool(deleted)


def check_compatible(info: CollectionInfo, embedder_name: str, dimension: int) -> None:
    if info.embedder != embedder_name or info.dimension != dimension:
        raise EmbedderMismatch(
            f"collection {info.name!r} was created with embedder {info.embedder!r} "
            f"({info.dimension} dims); it cannot be used with {embedder_name!r} ({dimension} dims). "
            "Use the same embedder, or another collection_name."
        )


def ensure_vector_indexes(conn: Connection) -> list[str]:
    """Build the HNSW index of every collection that lacks one; returns their names."""
    built = []
    for info in collection_infos(conn):
        if vector_index_state(conn, info) != "valid":
            drop_vector_index(conn, info)
            create_vector_index(conn, info)
            built.append(info.name)
    return built


def check_options(distance: str | None, precision: str | None) -> None:
    if distance is not None and distance not in DISTANCES:
        raise ConfigurationError(f"distance {distance!r} is not one of {', '.join(DISTANCES)}")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigurationError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")


def check_matches(
    info: CollectionInfo,
    embedder_name: str,
    dimension: int,
    distance: str | None,
    precision: str | None,
    text_search_config: str | None = None,
) -> None:
    """The collection fits the embedder and the options asked for (fixed at creation)."""
    check_compatible(info, embedder_name, dimension)
    for option, wanted, actual in (
        ("distance", distance, info.distance),
        ("precision", precision, info.precision),
        ("text_search_config", text_search_config, info.text_search_config),
    ):
        if wanted is not None and wanted != actual:
            raise ConfigurationError(
                f"collection {info.name!r} uses {option} {actual!r}; it is fixed when the collection is "
                f"created (asked for {wanted!r})"
            )


# -- as operations ---------------------------------------------------------------------------


def _select_collection(name: str) -> Query:
    return adhoc(sa.select(*_COLUMNS).where(collections.c.name == sa.bindparam("name")), {"name": name})


def _create_index_unless_refused(info: CollectionInfo, name: str) -> Operation[None]:
    try:
        yield from execute(Query(b"SAVEPOINT memorix_index"), Query(create_index_sql(info)))
    except pg_errors.InsufficientPrivilege:
        yield from execute(Query(b"ROLLBACK TO SAVEPOINT memorix_index"))
        # An application role that does not own the table cannot build indexes: the
        # collection works (searched exactly) until the owner runs `memorix-pg migrate`.
        logger.warning(
            "collection %r created without its HNSW index (this role may not create indexes); "
            "run `memorix-pg migrate` as the schema owner to build it",
            name,
        )


def open_collection(
    name: str,
    embedder_name: str,
    dimension: int,
    distance: str | None = None,
    precision: str | None = None,
    text_search_config: str | None = None,
) -> Operation[CollectionInfo]:
    """The collection ``name``, created (with its HNSW index) when absent. Safe to race."""
    check_options(distance, precision)
    row = yield from fetch_one(_select_collection(name), final=True)
    if row is None:
        config = text_search_config or "simple"
        known = yield from fetch_one(
            Query(
                b"SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_ts_config c JOIN pg_catalog.pg_namespace n "
                b"ON n.oid = c.cfgnamespace WHERE (c.cfgname = %(config)s AND "
                b"pg_catalog.pg_ts_config_is_visible(c.oid)) OR n.nspname || '.' || c.cfgname = %(config)s)",
                {"config": config},
            ),
            final=True,
        )
        if not (known and known[0]):
            raise ConfigurationError(
                f"text_search_config {config!r} is not a text search configuration of this server "
                "(see \\dF in psql; e.g. 'simple', 'english')"
            )
        statement = (
            insert(collections)
            .values(
                name=sa.bindparam("name"),
                embedder=sa.bindparam("embedder"),
                dimension=sa.bindparam("dimension"),
                distance=sa.bindparam("distance"),
                precision=sa.bindparam("precision"),
                text_search_config=sa.bindparam("text_search_config"),
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
        params = {
            "name": name,
            "embedder": embedder_name,
            "dimension": dimension,
            "distance": distance or "cosine",
            "precision": precision or "full",
            "text_search_config": config,
        }
        yield from execute(adhoc(statement, params))
        row = yield from fetch_one(_select_collection(name))
        assert row is not None
        yield from _create_index_unless_refused(_info_from(row), name)
        yield from execute(final=True)
    info = _info_from(row)
    check_matches(info, embedder_name, dimension, distance, precision, text_search_config)
    return info


def _info_from(row: Sequence[Any]) -> CollectionInfo:
    """A row of ``_COLUMNS`` (from either driver path) as the collection's description."""
    return CollectionInfo(*row)


def read_metadata_schema(info: CollectionInfo) -> Operation[dict[str, Any] | None]:
    """The collection's stored metadata schema, or None."""
    statement = sa.select(collections.c.metadata_schema).where(collections.c.id == sa.bindparam("id"))
    row = yield from fetch_one(adhoc(statement, {"id": info.id}), final=True)
    return dict(row[0]) if row is not None and row[0] is not None else None


def write_metadata_schema(info: CollectionInfo, schema: dict[str, Any] | None) -> Operation[None]:
    """Store ``schema`` (None: remove it) with the collection."""
    statement = (
        sa.update(collections)
        .where(collections.c.id == sa.bindparam("id"))
        .values(metadata_schema=sa.bindparam("schema", type_=collections.c.metadata_schema.type))
    )
    value = Jsonb(schema) if schema is not None else None
    yield from execute(adhoc(statement, {"id": info.id, "schema": value}), final=True)
