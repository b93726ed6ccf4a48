"""Filters served by indexes, shown with EXPLAIN on the very SQL the library sends (50k memories)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from memorix_pg import FilterError, MemoryAPI
from memorix_pg.runner import watch_statements

N = 50_000


@pytest.fixture(scope="module")
def big(module_database_url: str) -> MemoryAPI:
    api = MemoryAPI(embedder="hash", collection_name="indexed", database_url=module_database_url)
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(N, 384)).astype(np.float32)
    api.store_batch(
        [f"memory {i}" for i in range(N)],
        [
            {
                "type": ["conversation", "knowledge", "episode"][i % 3],
                "user_id": f"u{i % 5000}",
                "tags": [f"t{i % 100}", "common"],
                "timestamp": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00",
                "importance": i % 1000,
            }
            for i in range(N)
        ],
        embeddings=vectors,
    )
    api.create_index("timestamp", type="text")
    api.create_index("importance", type="number")
    with psycopg.connect(module_database_url, autocommit=True) as conn:
        conn.execute("ANALYZE memorix.memories")
    return api


@pytest.fixture
def sent(big: MemoryAPI) -> Iterator[list[tuple[str, Any]]]:
    """Every statement (and its parameters) the library sends while the test runs."""
    with watch_statements(big.database_url) as statements:
        yield statements


def _plan_of_count(api: MemoryAPI, sent: list[tuple[str, Any]], filter: dict[str, Any]) -> tuple[int, str]:
    sent.clear()
    count = api.count(filter)
    statement, parameters = next((s, p) for s, p in sent if "count(" in s)
    with psycopg.connect(api.database_url) as conn:
        rows = conn.execute("EXPLAIN " + statement, parameters).fetchall()  # type: ignore[arg-type]
    return count, "\n".join(r[0] for r in rows)


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"user_id": "u42"}, N // 5000),
        ({"user_id": {"$in": ["u1", "u2", "u3"]}}, 3 * N // 5000),
        ({"tags": "t7"}, N // 100),
    ],
)
def test_equality_and_in_use_the_gin_index(
    big: MemoryAPI, sent: list[tuple[str, Any]], filter, expected
) -> None:  # type: ignore[no-untyped-def]
    count, plan = _plan_of_count(big, sent, filter)
    assert count == expected
    assert "memories_metadata_gin_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_text_range_uses_the_expression_index(big: MemoryAPI, sent: list[tuple[str, Any]]) -> None:
    count, plan = _plan_of_count(big, sent, {"timestamp": {"$gte": "2026-12-28"}})
    assert count == sum(1 for i in range(N) if i % 12 == 11 and i % 28 == 27)
    assert "memories_metadata_text_" in plan, plan


def test_number_range_uses_the_expression_index(big: MemoryAPI, sent: list[tuple[str, Any]]) -> None:
    count, plan = _plan_of_count(big, sent, {"importance": {"$gte": 995}})
    assert count == sum(1 for i in range(N) if i % 1000 >= 995)
    assert "memories_metadata_number_" in plan, plan


def test_create_index_is_idempotent_and_validates_its_arguments(big: MemoryAPI) -> None:
    assert big.create_index("timestamp") == big.create_index("timestamp", type="text")
    with pytest.raises(FilterError, match="index type"):
        big.create_index("timestamp", type="date")
    with pytest.raises(FilterError, match="top-level key"):
        big.create_index("source.kind")


def test_a_key_with_quotes_is_indexed_literally(big: MemoryAPI) -> None:
    name = big.create_index("it's; DROP TABLE x --", type="number")
    with psycopg.connect(big.database_url) as conn:
        definition = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (name,)).fetchone()
        assert conn.execute("SELECT to_regclass('memorix.memories')").fetchone() == ("memorix.memories",)
    assert definition is not None and "'it''s; DROP TABLE x --'" in definition[0]
