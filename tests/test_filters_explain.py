"""EXPLAIN on a 50k-row table: compiled filters use the GIN index and the expression indexes.

The table mirrors memorix.memories' metadata column and its GIN ``jsonb_path_ops`` index; the
two btree indexes are created on exactly ``index_expression(key, "number" | "text")``, compiled
with literal binds, as ``create_index`` does.  Queries run through psycopg with bound parameters
(as the library runs them), so the planner sees the values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Integer, column, select, table
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB

from memorix_pg.filters import compile_filter, index_expression

ROWS = 50_000
mem = table("mem", column("id", Integer), column("metadata", JSONB))
DIALECT = postgresql.dialect()


def _ddl(expr: Any) -> str:
    return str(expr.compile(dialect=DIALECT, compile_kwargs={"literal_binds": True}))


@pytest.fixture(scope="module")
def conn(module_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(module_database_url, autocommit=True) as c:
        c.execute("CREATE TABLE mem (id int PRIMARY KEY, metadata jsonb NOT NULL)")
        c.execute(
            f"""
            INSERT INTO mem
            SELECT i, jsonb_build_object(
                'user', 'u' || (i % 5000),
                'n', i,
                'name', 'name' || lpad(i::text, 6, '0'),
                'tags', jsonb_build_array('t' || (i % 100), 't' || (i % 7)),
                'src', jsonb_build_object('kind', 'k' || (i % 1000)),
                'importance', i % 5)
            FROM generate_series(1, {ROWS}) AS i
            """
        )
        # A few list-valued rows so the array branch of range predicates has work to do.
        c.execute(
            'UPDATE mem SET metadata = metadata || \'{"n": [3, 49999], "name": ["zz"]}\' WHERE id % 5000 = 0'
        )
        c.execute("CREATE INDEX mem_metadata_gin ON mem USING gin (metadata jsonb_path_ops)")
        c.execute(
            f"CREATE INDEX mem_n_number ON mem (({_ddl(index_expression('n', 'number', mem.c.metadata))}))"
        )
        c.execute(
            f"CREATE INDEX mem_name_text ON mem (({_ddl(index_expression('name', 'text', mem.c.metadata))}))"
        )
        c.execute("ANALYZE mem")
        yield c


def _plan(conn: psycopg.Connection[Any], flt: dict[str, Any]) -> tuple[dict[str, Any], int]:
    compiled = select(mem.c.id).where(compile_filter(flt, mem.c.metadata)).compile(dialect=DIALECT)
    row = conn.execute("EXPLAIN (FORMAT JSON) " + str(compiled), compiled.params).fetchone()
    assert row is not None
    count = len(conn.execute(str(compiled), compiled.params).fetchall())
    return row[0][0]["Plan"], count


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _index_scans(plan: dict[str, Any]) -> set[tuple[str, str]]:
    return {(n["Node Type"], n["Index Name"]) for n in _nodes(plan) if "Index Name" in n}


def _seq_scans(plan: dict[str, Any]) -> int:
    return sum(1 for n in _nodes(plan) if n["Node Type"] == "Seq Scan")


@pytest.mark.parametrize(
    ("flt", "expected_count"),
    [
        ({"user": "u42"}, 10),
        ({"user": {"$in": ["u1", "u2", "u3"]}}, 30),
        ({"src.kind": "k7"}, 50),
        ({"importance": 3, "user": "u8"}, 10),
        ({"user": {"$all": ["u9"]}}, 10),
    ],
)
def test_equality_and_in_use_the_gin_index(
    conn: psycopg.Connection[Any], flt: dict[str, Any], expected_count: int
) -> None:
    plan, count = _plan(conn, flt)
    assert count == expected_count
    assert ("Bitmap Index Scan", "mem_metadata_gin") in _index_scans(plan), plan
    assert _seq_scans(plan) == 0


@pytest.mark.parametrize(
    ("flt", "index", "expected_count"),
    [
        ({"n": {"$gt": 49_990}}, "mem_n_number", 9 + 10),  # 49991..49999, and the 10 lists (49999)
        # MongoDB tests each operator on its own against array elements: [3, 49999] matches.
        ({"n": {"$gte": 100, "$lt": 110}}, "mem_n_number", 10 + 10),
        ({"n": {"$between": [5, 9]}}, "mem_n_number", 5 + 10),  # the lists hold 3 and 49999
        ({"n": {"$lte": 2}}, "mem_n_number", 2),
        ({"name": {"$gte": "name049000", "$lt": "name049010"}}, "mem_name_text", 10),
        ({"name": {"$lt": "name000005"}}, "mem_name_text", 4),
        ({"name": {"$gt": "name049995"}}, "mem_name_text", 4 + 10),  # "zz" in the lists
    ],
)
def test_ranges_use_the_expression_index(
    conn: psycopg.Connection[Any], flt: dict[str, Any], index: str, expected_count: int
) -> None:
    plan, count = _plan(conn, flt)
    assert count == expected_count
    assert index in {name for _, name in _index_scans(plan)}, plan
    assert _seq_scans(plan) == 0
