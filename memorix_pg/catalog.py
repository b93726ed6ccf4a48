"""The collections table: find or create a collection, and check it fits the embedder."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ProgrammingError

from .errors import CollectionNotFound, ConfigurationError, EmbedderMismatch
from .models import DISTANCES, collections
from .vector_index import CollectionInfo, create_vector_index, drop_vector_index, vector_index_state

__all__ = [
    "ensure_collection",
    "ensure_vector_indexes",
    "get_collection",
    "list_collections",
    "require_collection",
]

PRECISIONS = ("full", "half")
logger = logging.getLogger("memorix_pg")


def _info(row: Any) -> CollectionInfo:
    return CollectionInfo(
        id=row.id,
        name=row.name,
        embedder=row.embedder,
        dimension=row.dimension,
        distance=row.distance,
        precision=row.precision,
    )


_COLUMNS = (
    collections.c.id,
    collections.c.name,
    collections.c.embedder,
    collections.c.dimension,
    collections.c.distance,
    collections.c.precision,
)


def get_collection(conn: Connection, name: str) -> CollectionInfo | None:
    row = conn.execute(sa.select(*_COLUMNS).where(collections.c.name == name)).first()
    return _info(row) if row is not None else None


def require_collection(conn: Connection, name: str) -> CollectionInfo:
    info = get_collection(conn, name)
    if info is None:
        raise CollectionNotFound(f"no collection named {name!r}")
    return info


def list_collections(conn: Connection) -> list[CollectionInfo]:
    return [_info(row) for row in conn.execute(sa.select(*_COLUMNS).order_by(collections.c.name))]


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


def ensure_collection(
    engine: Engine,
    name: str,
    embedder_name: str,
    dimension: int,
    distance: str | None = None,
    precision: str | None = None,
) -> CollectionInfo:
    """The collection ``name``, created (with its HNSW index) when absent. Safe to race."""
    if distance is not None and distance not in DISTANCES:
        raise ConfigurationError(f"distance {distance!r} is not one of {', '.join(DISTANCES)}")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigurationError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    with engine.begin() as conn:
        info = get_collection(conn, name)
        if info is None:
            conn.execute(
                insert(collections)
                .values(
                    name=name,
                    embedder=embedder_name,
                    dimension=dimension,
                    distance=distance or "cosine",
                    precision=precision or "full",
                )
                .on_conflict_do_nothing(index_elements=["name"])
            )
            info = get_collection(conn, name)
            assert info is not None
            try:
                with conn.begin_nested():
                    create_vector_index(conn, info)
            except ProgrammingError as exc:
                if getattr(exc.orig, "sqlstate", None) != "42501":  # insufficient_privilege
                    raise
                # An application role that does not own the table cannot build indexes: the
                # collection works (searched exactly) until the owner runs `memorix-pg migrate`.
                logger.warning(
                    "collection %r created without its HNSW index (this role may not create indexes); "
                    "run `memorix-pg migrate` as the schema owner to build it",
                    name,
                )
    check_compatible(info, embedder_name, dimension)
    for option, wanted, actual in (
        ("distance", distance, info.distance),
        ("precision", precision, info.precision),
    ):
        if wanted is not None and wanted != actual:
            raise ConfigurationError(
                f"collection {name!r} uses {option} {actual!r}; it is fixed when the collection is created "
                f"(asked for {wanted!r})"
            )
    return info
