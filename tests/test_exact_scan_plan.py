"""The exact scan's plan as PostgreSQL runs it: the statement the library sends is EXPLAINed with
its own parameters and settings.

A vector of 384 dimensions with a few hundred bytes of metadata and text makes a row longer
than PostgreSQL's TOAST threshold (~2 kB), so the vector is stored out of line and every
evaluation of the distance reads it again from the TOAST table. The scan must compute each
matching row's distance once (the sort key and the returned distance are one expression), read
the matches through the metadata indexes and never walk the HNSW index.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from memorix_pg.query_vector import register_query_vector
from memorix_pg.search import search_settings
from tests.support.helpers import CapturedSQL, unit_vectors

DIM = 384
N = 3000


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _explain(url: str, statement: str, params: dict[str, Any]) -> dict[str, Any]:
    """EXPLAIN (VERBOSE) of a captured statement, under the settings a search runs with."""
    with psycopg.connect(url) as conn:
        register_query_vector(conn)
        conn.execute(b"SET plan_cache_mode = force_custom_plan")
        for name, value in search_settings(None):
            conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        row = conn.execute("EXPLAIN (VERBOSE, FORMAT JSON) " + statement, params).fetchone()
        conn.rollback()
    assert row is not None
    return dict(row[0][0]["Plan"])


def _exact_scan(api: Any, url: str, flt: dict[str, Any], query: np.ndarray) -> dict[str, Any]:
    with CapturedSQL(url) as captured:
        api.retrieve(None, top_k=10, filter=flt, embedding=query, exact=True)
    [statement] = captured.containing("AS matching")
    params = captured.parameters[captured.statements.index(statement)]
    return _explain(url, statement, params)


@pytest.mark.parametrize(
    ("flt", "index"),
    [
        ({"g": 7}, "memories_metadata_gin_idx"),
        ({"bucket": {"$gte": 20, "$lt": 25}}, None),  # create_index's btree
    ],
    ids=["gin", "btree"],
)
def test_the_exact_scan_computes_each_distance_once_from_the_metadata_indexes(
    make_api, database_url: str, flt: dict[str, Any], index: str | None
) -> None:
    api = make_api("exact_plan", embedder=f"hash-{DIM}")
    vectors = unit_vectors(N, DIM, seed=11)
    noise = np.random.default_rng(13).bytes(250 * N).hex()  # does not compress: rows stay long
    metas = [{"g": i % 200, "bucket": i % 1000, "note": noise[500 * i : 500 * i + 400]} for i in range(N)]
    texts = [f"memory {i} {noise[500 * i + 400 : 500 * i + 500]}" for i in range(N)]
    api.store_batch(texts, metas, embeddings=vectors)
    index = index or api.create_index("bucket", "number")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(b"ANALYZE memorix.memories")
        toasted = conn.execute(
            b"SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = 'memorix.memories'::regclass"
        ).fetchone()
    assert toasted is not None and toasted[0] > 0  # the vectors are out of line, as at 100k

    plan = _exact_scan(api, database_url, flt, unit_vectors(1, DIM, seed=12)[0])
    nodes = list(_nodes(plan))
    for node in nodes:
        distances = [out for out in node.get("Output", []) if "<=>" in out]
        assert len(distances) <= 1, (node["Node Type"], distances)
    used = {node.get("Index Name") for node in nodes} - {None}
    assert index in used
    assert not any(name.startswith("memories_embedding") for name in used), used
    hits = api.retrieve(None, top_k=10, filter=flt, embedding=vectors[0], exact=True)
    assert len(hits) == 10
