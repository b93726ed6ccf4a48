"""Reading memories without ranking them: by id, counts, newest first, bounded counts.

Each statement is built once per shape (statements.py) and, without a tenant, runs as a single
statement in its own implicit transaction: one round trip.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .models import memories
from .scope import Scope
from .statements import Filter, cached, compile_where
from .steps import Operation, execute, fetch_all
from .vector_index import collection_predicate, stored_vectors

__all__ = [
    "MEMORY_COLUMNS",
    "ORDERS",
    "all_metadata",
    "bounded_count",
    "count",
    "exists",
    "get",
    "get_many",
    "newest",
    "page",
]

MEMORY_COLUMNS = (
    memories.c.id,
    memories.c.text,
    memories.c.metadata,
    memories.c.created_at,
    memories.c.updated_at,
)
_ALL = compile_where(None)


def _columns(scope: Scope, embeddings: bool) -> tuple[sa.ColumnElement[Any], ...]:
    """The memory columns, and the stored vector (as ``vector``) when asked for."""
    return (*MEMORY_COLUMNS, stored_vectors(scope.info)) if embeddings else MEMORY_COLUMNS


def get(scope: Scope, row_id: str, embeddings: bool = False) -> Operation[list[tuple[Any, ...]]]:
    """The live memory ``row_id`` of the scope, as (id, text, metadata, created_at, updated_at[,
    embedding]), or nothing."""
    query = cached(
        ("get", scope.key, embeddings),
        lambda _: sa.select(*_columns(scope, embeddings)).where(
            scope.live(), memories.c.id == sa.bindparam("id")
        ),
        _ALL,
        {**scope.params, "id": row_id},
    )
    return (yield from fetch_all(query, final=True))


def exists(scope: Scope, row_id: str) -> Operation[bool]:
    """Whether the scope holds a memory ``row_id``, expired or not."""
    query = cached(
        ("exists", scope.key),
        lambda _: sa.select(sa.exists().where(scope.rows(), memories.c.id == sa.bindparam("id"))),
        _ALL,
        {**scope.params, "id": row_id},
    )
    return bool((yield from fetch_all(query, final=True))[0][0])


def get_many(scope: Scope, row_ids: list[str], embeddings: bool = False) -> Operation[list[tuple[Any, ...]]]:
    """The live memories of the scope among ``row_ids`` (in no particular order), as ``get``
    returns them: one statement whatever the number of ids."""
    query = cached(
        ("get many", scope.key, embeddings),
        lambda _: sa.select(*_columns(scope, embeddings)).where(
            scope.live(), memories.c.id == sa.any_(sa.bindparam("ids", type_=sa.ARRAY(sa.Text)))
        ),
        _ALL,
        {**scope.params, "ids": row_ids},
    )
    return (yield from fetch_all(query, final=True))


def count(
    scope: Scope,
    f: Filter,
    extra: sa.ColumnElement[bool] | None = None,
    key: Any = None,
    params: dict[str, Any] | None = None,
) -> Operation[int]:
    """How many live memories match ``f`` (and ``extra``: its shape named by ``key``, its values
    bound by name through ``params``)."""

    def build(_: Any) -> sa.Select[Any]:
        where = scope.live(f) if extra is None else sa.and_(scope.live(f), extra)
        return sa.select(sa.func.count()).select_from(memories).where(where)

    query = cached(("count", scope.key, key), build, f, {**scope.params, **(params or {})})
    return int((yield from fetch_all(query, final=True))[0][0])


def newest(scope: Scope, f: Filter, k: int, embeddings: bool = False) -> Operation[list[tuple[Any, ...]]]:
    """The ``k`` newest live memories matching ``f`` (with their vectors when asked for)."""
    query = cached(
        ("newest", scope.key, embeddings),
        lambda _: (
            sa.select(*_columns(scope, embeddings))
            .where(scope.live(f))
            .order_by(memories.c.created_at.desc(), memories.c.id.desc())
            .limit(sa.bindparam("k"))
        ),
        f,
        {**scope.params, "k": k},
    )
    return (yield from fetch_all(query, final=True))


def bounded_count(scope: Scope, f: Filter, limit: int, live: bool = True) -> Operation[int]:
    """``min(count, limit + 1)``: stops reading once more than ``limit`` rows matched. With
    ``live=False``, of every row of the collection (any tenant, expired or not)."""

    def build(_: Any) -> sa.Select[Any]:
        where = scope.live(f) if live else sa.and_(collection_predicate(scope.info), f.expression)
        inner = (
            sa.select(sa.literal(1)).select_from(memories).where(where).limit(sa.bindparam("n")).subquery()
        )
        return sa.select(sa.func.count()).select_from(inner)

    params = {**scope.params, "n": limit + 1} if live else {"n": limit + 1}
    query = cached(("bounded", scope.key, live), build, f, params)
    return int((yield from execute(query))[0].rows[0][0])


# Creation time (then id), newest or oldest first; or last change (then id), latest first.
ORDERS = ("newest", "oldest", "updated")


def page(
    scope: Scope, f: Filter, limit: int, offset: int, cursor: Any, order: str, include_embeddings: bool
) -> Operation[list[tuple[Any, ...]]]:
    """Live memories matching ``f`` in a stable order (see ``ORDERS``), after the memory
    ``cursor`` when given: (id, text, metadata, created_at, updated_at, embedding or None,
    expires_at)."""
    descending = order != "oldest"
    time = memories.c.updated_at if order == "updated" else memories.c.created_at

    def build(_: Any) -> sa.Select[Any]:
        key = sa.tuple_(time, memories.c.id)
        where = scope.live(f)
        if cursor is not None:
            marked = sa.select(time).where(scope.rows(), memories.c.id == sa.bindparam("cursor"))
            mark = sa.tuple_(marked.scalar_subquery(), sa.bindparam("cursor", type_=memories.c.id.type))
            where = sa.and_(where, key < mark if descending else key > mark)
        vectors = stored_vectors(scope.info) if include_embeddings else sa.null()
        columns = (*MEMORY_COLUMNS, vectors, memories.c.expires_at)
        return (
            sa.select(*columns)
            .where(where)
            .order_by(*(c.desc() if descending else c.asc() for c in (time, memories.c.id)))
            .limit(sa.bindparam("limit"))
            .offset(sa.bindparam("offset"))
        )

    params = {**scope.params, "limit": limit, "offset": offset, "cursor": cursor}
    query = cached(("page", scope.key, order, cursor is not None, include_embeddings), build, f, params)
    return (yield from fetch_all(query, final=True))


def all_metadata(scope: Scope) -> Operation[list[tuple[Any, ...]]]:
    """(id, metadata) of every live memory of the scope, by id: what a schema check reads."""
    query = cached(
        ("all metadata", scope.key),
        lambda _: sa.select(memories.c.id, memories.c.metadata).where(scope.live()).order_by(memories.c.id),
        _ALL,
        scope.params,
    )
    return (yield from fetch_all(query, final=True))
