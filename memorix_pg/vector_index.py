"""Per-collection HNSW indexes and the distance expressions that use them.

Collections differ in dimension, distance and precision, so the ``embedding`` column is an
untyped ``vector`` (``embedding_half``, an untyped ``halfvec``, for half precision) and each
collection gets a partial index
``USING hnsw ((embedding::vector(dim)) <opclass>) WHERE collection_id = <id>``. A query uses
it only when its ORDER BY expression is the same cast and its WHERE names the same
collection id as a literal, which :func:`distance_expression` and :func:`collection_predicate`
guarantee. A side effect we want: one collection's index never holds another's rows, so a
small collection inside a large table loses no recall to filtering.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from pgvector.sqlalchemy import HALFVEC, Vector
from psycopg import sql
from sqlalchemy import ColumnElement, Float, bindparam, cast
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import Grouping

from .models import SCHEMA, memories
from .query_vector import QueryVectorType

__all__ = [
    "OPERATORS",
    "QUERY_VECTOR",
    "CollectionInfo",
    "collection_literal",
    "collection_predicate",
    "create_expression_index",
    "create_vector_index",
    "distance_expression",
    "drop_vector_index",
    "embedding_column_name",
    "index_name",
    "metadata_index_name",
    "rebuild_vector_index_concurrently",
    "score_from_distance",
    "stored_embedding",
    "stored_vectors",
    "typed_embedding",
    "vector_index_state",
]

# pgvector's HNSW supports up to 2,000 dimensions for vector and 4,000 for halfvec.
MAX_FULL_INDEX_DIM = 2000

OPERATORS = {"cosine": "<=>", "l2": "<->", "ip": "<#>"}
_OPCLASS_SUFFIX = {"cosine": "cosine_ops", "l2": "l2_ops", "ip": "ip_ops"}

_TYPE_SQL = {"vector": sql.SQL("vector"), "halfvec": sql.SQL("halfvec")}

METADATA_GIN_INDEX = f"{SCHEMA}.memories_metadata_gin_idx"

# A better-connected graph than pgvector's default (16, 64): no query trapped away from its
# neighbours at ef_search 100 (recall@10 0.9995 vs 0.9915 at 100k; see memorix_pg.search).
HNSW_M = 20
HNSW_EF_CONSTRUCTION = 80


@dataclass(frozen=True)
class CollectionInfo:
    id: int
    name: str
    embedder: str
    dimension: int
    distance: str
    precision: str

    @property
    def index_type(self) -> str:
        """``halfvec`` when asked for, or when the dimension is past HNSW's limit for ``vector``."""
        return "halfvec" if self.precision == "half" or self.dimension > MAX_FULL_INDEX_DIM else "vector"


def embedding_column_name(info: CollectionInfo) -> str:
    """The column the collection's vectors live in: ``embedding_half`` for half precision."""
    return "embedding_half" if info.precision == "half" else "embedding"


def stored_embedding(info: CollectionInfo, table: sa.FromClause = memories) -> ColumnElement[Any]:
    """The collection's vector column in ``table`` (``memories`` or an alias of it)."""
    return table.c[embedding_column_name(info)]


def stored_vectors(info: CollectionInfo, table: sa.FromClause = memories) -> ColumnElement[Any]:
    """The collection's vectors read back as ``vector`` (numpy arrays), whatever their precision."""
    column = stored_embedding(info, table)
    return cast(column, Vector()) if info.precision == "half" else column


def index_name(info: CollectionInfo) -> str:
    return f"memories_embedding_hnsw_{info.id}"


def _vector_type(info: CollectionInfo) -> Any:
    return HALFVEC(info.dimension) if info.index_type == "halfvec" else Vector(info.dimension)


def typed_embedding(info: CollectionInfo, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """``column::vector(dim)`` (or halfvec): the expression the collection's index is built on."""
    return cast(column, _vector_type(info))


def collection_literal(info: CollectionInfo) -> ColumnElement[int]:
    """The collection id as an inline literal (see :func:`collection_predicate`)."""
    return bindparam("collection_literal", int(info.id), literal_execute=True, unique=True)


QUERY_VECTOR = "query_vector"


def distance_expression(
    info: CollectionInfo,
    query: npt.NDArray[np.float32] | None,
    column: ColumnElement[Any] | None = None,
) -> ColumnElement[float]:
    """The distance from each row to ``query``, written exactly as the index expression.

    With ``query=None`` the vector is bound at execution: parameter ``QUERY_VECTOR``, a
    :class:`~memorix_pg.query_vector.QueryVector`.
    """
    vector_type = _vector_type(info)
    typed = typed_embedding(info, stored_embedding(info) if column is None else column)
    if query is None:
        # Bound at execution as a QueryVector (binary); the cast names its type.
        param = cast(bindparam(QUERY_VECTOR, type_=QueryVectorType()), vector_type)
    else:
        param = cast(bindparam(QUERY_VECTOR, query, type_=vector_type), vector_type)
    return typed.op(OPERATORS[info.distance], return_type=Float())(param)


def collection_predicate(info: CollectionInfo) -> ColumnElement[bool]:
    """``collection_id = <id>`` with the id rendered inline, so the partial index predicate is provable.

    The id is an integer read from our own catalog, never caller input.
    """
    return memories.c.collection_id == collection_literal(info)


def score_from_distance(distance: str, value: float) -> float:
    """Cosine similarity for cosine; the inner product for ip; minus the distance for l2."""
    if distance == "cosine":
        return 1.0 - value
    return -value


def create_vector_index(conn: Connection, info: CollectionInfo, *, concurrently: bool = False) -> None:
    """Build the collection's HNSW index (no-op when it exists)."""
    kind = info.index_type
    statement = sql.SQL(
        "CREATE INDEX {how}IF NOT EXISTS {name} ON {table} USING hnsw "
        "(({column}::{kind}({dim})) {opclass}) WITH (m = {m}, ef_construction = {efc}) "
        "WHERE collection_id = {cid}"
    ).format(
        how=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=sql.Identifier(index_name(info)),
        table=sql.Identifier(SCHEMA, "memories"),
        column=sql.Identifier(embedding_column_name(info)),
        kind=_TYPE_SQL[kind],
        dim=sql.Literal(int(info.dimension)),
        opclass=sql.Identifier(f"{kind}_{_OPCLASS_SUFFIX[info.distance]}"),
        m=sql.Literal(HNSW_M),
        efc=sql.Literal(HNSW_EF_CONSTRUCTION),
        cid=sql.Literal(int(info.id)),
    )
    conn.exec_driver_sql(statement.as_string(conn.connection.driver_connection))


def drop_vector_index(conn: Connection, info: CollectionInfo, *, concurrently: bool = False) -> None:
    """Drop the collection's index; ``concurrently`` (autocommit only) blocks no reader or writer."""
    statement = sql.SQL("DROP INDEX {how}IF EXISTS {name}").format(
        how=sql.SQL("CONCURRENTLY " if concurrently else ""), name=sql.Identifier(SCHEMA, index_name(info))
    )
    conn.exec_driver_sql(statement.as_string(conn.connection.driver_connection))


def metadata_index_name(key: str, type: str) -> str:
    """A stable name for the expression index on a metadata key (hashed: keys may hold any character)."""
    digest = hashlib.blake2b(f"{type}:{key}".encode(), digest_size=6).hexdigest()
    return f"memories_metadata_{type}_{digest}"


def create_expression_index(
    conn: Connection, name: str, build: Callable[[ColumnElement[Any]], ColumnElement[Any]]
) -> None:
    """``CREATE INDEX CONCURRENTLY`` on ``build(metadata)`` over ``memorix.memories`` (autocommit ``conn``).

    SQLAlchemy's DDL compiler renders the expression (DDL takes no bound parameters, so it
    escapes the values as literals). The index is declared on a throwaway table object so the
    models' metadata never gains it. An invalid leftover of an interrupted build is replaced.
    """
    column = sa.Column("metadata", JSONB)
    # Parenthesised: CREATE INDEX takes a bare function call but not a bare CASE.
    index = sa.Index(name, Grouping(build(column)), postgresql_concurrently=True)
    sa.Table("memories", sa.MetaData(), column, index, schema=SCHEMA)
    if _index_state(conn, name) == "invalid":
        index.drop(conn)
    index.create(conn, checkfirst=True)


def _index_state(conn: Connection, name: str) -> str:
    valid = conn.execute(
        sa.text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :schema AND c.relname = :name"
        ),
        {"schema": SCHEMA, "name": name},
    ).scalar()
    return "missing" if valid is None else ("valid" if valid else "invalid")


def vector_index_state(conn: Connection, info: CollectionInfo) -> str:
    """``"valid"``, ``"invalid"`` (a CONCURRENTLY build that died half-way) or ``"missing"``."""
    return _index_state(conn, index_name(info))


def rebuild_vector_index_concurrently(conn: Connection, info: CollectionInfo, maintenance_mem: str) -> None:
    """Build the collection's index without blocking other collections (``conn`` in autocommit).

    Replaces an invalid leftover of an interrupted build, then refreshes the planner's
    statistics, which a bulk load leaves stale, and merges the metadata GIN index's pending
    list (left to autovacuum, it costs every filtered search 1-2 ms until then).
    """
    if vector_index_state(conn, info) == "invalid":
        drop_vector_index(conn, info, concurrently=True)
    conn.execute(sa.text("SELECT set_config('maintenance_work_mem', :v, false)"), {"v": maintenance_mem})
    try:
        create_vector_index(conn, info, concurrently=True)
    finally:
        if not conn.invalidated:  # the server died mid-build: let its error through, not PendingRollbackError
            conn.execute(sa.text("RESET maintenance_work_mem"))
    conn.exec_driver_sql(
        sql.SQL("ANALYZE {}")
        .format(sql.Identifier(SCHEMA, "memories"))
        .as_string(conn.connection.driver_connection)
    )
    try:
        conn.execute(sa.select(sa.func.gin_clean_pending_list(sa.func.to_regclass(METADATA_GIN_INDEX))))
    except sa.exc.ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42501":  # only the table's owner may merge it
            raise
