"""The collections table: find or create a collection, and check it fits the embedder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from psycopg import errors as pg_errors
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from .errors import ConfigurationError, EmbedderMismatch
from .models import DISTANCES, collections
from .statements import adhoc
from .steps import Operation, Query, execute, fetch_one
from .vector_index import (
    CollectionInfo,
    create_index_sql,
    create_vector_index,
    drop_vector_index,
    vector_index_state,
)

__all__ = [
    "check_matches",
    "check_options",
    "ensure_vector_indexes",
    "list_collections",
    "open_collection",
]

PRECISIONS = ("full", "half")
logger = logging.getLogger("memorix_pg")


_COLUMNS = (
    collections.c.id,
    collections.c.name,
    collections.c.embedder,
    collections.c.dimension,
    collections.c.distance,
    collections.c.precision,
)


def list_collections(conn: Connection) -> list[CollectionInfo]:
    return [_info_from(row) for row in conn.execute(sa.select(*_COLUMNS).order_by(collections.c.name))]


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
    for info in list_collections(conn):
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
    info: CollectionInfo, embedder_name: str, dimension: int, distance: str | None, precision: str | None
) -> None:
    """The collection fits the embedder and the options asked for (fixed at creation)."""
    check_compatible(info, embedder_name, dimension)
    for option, wanted, actual in (
        ("distance", distance, info.distance),
        ("precision", precision, info.precision),
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
) -> Operation[CollectionInfo]:
    """The collection ``name``, created (with its HNSW index) when absent. Safe to race."""
    check_options(distance, precision)
    row = yield from fetch_one(_select_collection(name), final=True)
    if row is None:
        statement = (
            insert(collections)
            .values(
                name=sa.bindparam("name"),
                embedder=sa.bindparam("embedder"),
                dimension=sa.bindparam("dimension"),
                distance=sa.bindparam("distance"),
                precision=sa.bindparam("precision"),
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
        params = {
            "name": name,
            "embedder": embedder_name,
            "dimension": dimension,
            "distance": distance or "cosine",
            "precision": precision or "full",
        }
        yield from execute(adhoc(statement, params))
        row = yield from fetch_one(_select_collection(name))
        assert row is not None
        yield from _create_index_unless_refused(_info_from(row), name)
        yield from execute(final=True)
    info = _info_from(row)
    check_matches(info, embedder_name, dimension, distance, precision)
    return info


def _info_from(row: Sequence[Any]) -> CollectionInfo:
    """A row of ``_COLUMNS`` (from either driver path) as the collection's description."""
    return CollectionInfo(*row)
