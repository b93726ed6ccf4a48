"""Near-duplicates: each memory's nearest neighbours through the collection's own HNSW index."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ..models import memories
from ..scope import Scope, live_predicate
from ..statements import cached, compile_where
from ..steps import Operation, fetch_all
from ..vector_index import OPERATORS, CollectionInfo, stored_embedding, typed_embedding

__all__ = ["find_duplicates", "similarity_sql"]


def similarity_sql(info: CollectionInfo, distance: sa.ColumnElement[float]) -> sa.ColumnElement[float]:
    """The score ``retrieve`` reports, from the collection's distance: cosine similarity, the
    inner product (pgvector's ``<#>`` is its negative), or minus the L2 distance."""
    if info.distance == "cosine":
        return 1 - distance
    return -distance


def _statement(scope: Scope, neighbours: int) -> sa.Select[Any]:
    info = scope.info
    a, b = memories.alias("a"), memories.alias("b")
    distance = typed_embedding(info, stored_embedding(info, b)).op(
        OPERATORS[info.distance], return_type=sa.Float()
    )(typed_embedding(info, stored_embedding(info, a)))
    near = (
        sa.select(b.c.id, b.c.text, distance.label("d"))
        .where(scope.rows(b), b.c.tenant == a.c.tenant, b.c.id != a.c.id, live_predicate(b))
        .order_by(distance)
        .limit(neighbours)
        .lateral("near")
    )
    similarity = similarity_sql(info, near.c.d).label("similarity")
    return (
        sa.select(a.c.id, near.c.id, similarity, a.c.text, near.c.text)
        .select_from(a.join(near, sa.true()))
        .where(scope.rows(a), live_predicate(a), a.c.id < near.c.id, similarity >= sa.bindparam("threshold"))
        .order_by(similarity.desc(), a.c.id)
        .limit(sa.bindparam("limit"))
    )


def find_duplicates(
    scope: Scope, threshold: float, limit: int, neighbours: int
) -> Operation[list[tuple[Any, ...]]]:
    """(id_a, id_b, similarity, text_a, text_b), most similar first. Each memory's nearest
    ``neighbours`` are looked up through the index (a LATERAL k-NN join, written with the
    collection's distance operator so l2 and ip collections use their index too)."""
    query = cached(
        ("duplicates", scope.key, neighbours),
        lambda _: _statement(scope, neighbours),
        compile_where(None),
        {**scope.params, "threshold": float(threshold), "limit": limit},
    )
    return (yield from fetch_all(query, final=True))
