"""Helpers of the lifecycle tests (tests/test_lifecycle_*.py): vectors of a given similarity,
plain SQL, moving ``created_at`` / ``expires_at`` (it is a real database; nothing mocks it), and
the statements the library sends."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg

from memorix_pg import MemoryAPI
from memorix_pg.runner import watch_statements


def with_similarity(v: np.ndarray, similarity: float, seed: int) -> np.ndarray:
    """A unit vector whose cosine similarity to unit vector ``v`` is exactly ``similarity``."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(v.shape[0])
    u -= (u @ v) * v
    u /= np.linalg.norm(u)
    return (similarity * v + np.sqrt(1 - similarity**2) * u).astype(np.float32)


def sql(url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def sql_value(url: str, query: str, params: Sequence[Any] = ()) -> Any:
    rows = sql(url, query, params)
    return rows[0][0] if rows else None


def set_created_at(url: str, ids: Sequence[str], when: datetime | Sequence[datetime]) -> None:
    times = [when] * len(ids) if isinstance(when, datetime) else list(when)
    with psycopg.connect(url, autocommit=True) as conn:
        for i, t in zip(ids, times, strict=True):
            conn.execute("UPDATE memorix.memories SET created_at = %s WHERE id = %s", (t, i))


def expire(url: str, ids: Sequence[str]) -> None:
    sql(
        url,
        "UPDATE memorix.memories SET expires_at = now() - interval '1 second' WHERE id = ANY(%s)",
        (list(ids),),
    )


def rows_in_table(url: str, collection_id: int) -> int:
    return int(
        sql_value(url, "SELECT count(*) FROM memorix.memories WHERE collection_id = %s", (collection_id,))
    )


@contextmanager
def captured_sql(api: MemoryAPI) -> Iterator[list[str]]:
    """Every statement the library sends while the block runs."""
    with watch_statements(api.database_url) as sent:
        statements: list[str] = []
        yield statements
        statements.extend(s for s, _ in sent)


def dml(statements: list[str]) -> list[str]:
    return [
        s.split(None, 1)[0].upper() for s in statements if re.match(r"\s*(INSERT|UPDATE|DELETE)\b", s, re.I)
    ]


def session_tz(url: str) -> ZoneInfo:
    return ZoneInfo(sql_value(url, "SHOW timezone"))
