"""Memory lifecycle on a real PostgreSQL: stats, the seed's analytics and the analytics views.

Times are controlled by writing ``created_at`` / ``expires_at`` with SQL (it is a real
database); nothing here mocks the database. The helpers are in tests/support/lifecycle.py.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest

from memorix_pg import FilterError, MemoryAPI
from tests.support.helpers import unit_vectors
from tests.support.lifecycle import captured_sql, expire, session_tz, set_created_at, sql

# SQLAlchemy deprecations become errors in its next major release: fail on them now.
pytestmark = pytest.mark.filterwarnings("error::sqlalchemy.exc.SADeprecationWarning")

SEED = __import__("pathlib").Path(__file__).resolve().parent / "seed" / "memory-management.md"

# -- stats, the seed's analytics, the views --------------------------------------------------------


def _seed_namespace() -> dict[str, Any]:
    blocks = re.findall(r"^```python\n(.*?)^```", SEED.read_text(), flags=re.S | re.M)
    code = "\n\n".join(blocks)
    code = code.replace("from memorix import MemoryAPI", "from memorix_pg import MemoryAPI")
    code = code.replace('vector_store="chroma"', 'vector_store="pgvector"')
    namespace: dict[str, Any] = {"__name__": "memory_management_seed"}
    exec(compile(code, str(SEED), "exec"), namespace)
    return namespace


def _analytics_data(n: int = 240) -> tuple[list[str], list[dict[str, Any]], np.ndarray]:
    rng = np.random.default_rng(7)
    now = datetime.now()
    types = ["conversation", "knowledge", "episode", None]
    texts, metas = [], []
    for i in range(n):
        meta: dict[str, Any] = {
            "timestamp": (
                now - timedelta(days=int(rng.integers(0, 60)), minutes=int(rng.integers(0, 1440)))
            ).isoformat(),
        }
        t = types[i % 4] if i % 11 else None
        if t is not None:
            meta["type"] = t
        if i % 3:
            meta["category"] = ["work", "home", "travel"][i % 3]
        texts.append(f"analytics memory {i}")
        metas.append(meta)
    return texts, metas, unit_vectors(n, seed=11)


def test_stats_count_only_the_memories_matching_the_filter(make_api):
    api = make_api("stats_filtered")
    api.store_batch(
        [f"note {i}" for i in range(7)],
        [{"type": "a" if i % 2 else "b", "user": "u1" if i < 4 else "u2"} for i in range(7)],
    )
    assert api.stats("type", {"user": "u1"}) == {"total": 4, "groups": {"a": 2, "b": 2}}
    assert api.stats("type", {"user": "u2", "type": "b"}) == {"total": 2, "groups": {"b": 2}}
    assert api.stats(filter={"user": "u2"}) == {"total": 3, "groups": {}}
    assert api.stats("type", {"user": "nobody"}) == {"total": 0, "groups": {}}
    with pytest.raises(FilterError, match=r"\$bogus"):
        api.stats("type", {"user": {"$bogus": 1}})


def test_stats_match_the_seeds_analytics_and_the_views(make_api, database_url, monkeypatch):
    monkeypatch.setenv("MEMORIX_DATABASE_URL", database_url)
    seed = _seed_namespace()
    name = "analytics"
    texts, metas, vectors = _analytics_data()
    # The seed's classes use the default sentence-transformers embedder; vectors are given, so
    # no model is loaded here.
    api = MemoryAPI(embedder="sentence-transformers", collection_name=name, database_url=database_url)
    ids = api.store_batch(texts, metas, embeddings=vectors)
    # Expired memories are never counted.
    gone = api.store_batch(
        ["expired a", "expired b"],
        [{"type": "knowledge", "category": "work", "timestamp": datetime.now().isoformat()}] * 2,
        embeddings=vectors[:2],
        ttl=timedelta(hours=1),
    )
    expire(database_url, gone)

    types = Counter(m.get("type") for m in metas)
    categories = Counter(m.get("category") for m in metas)
    with captured_sql(api) as statements:
        stats = api.stats("type")
    assert len([s for s in statements if "GROUP BY" in s.upper()]) == 1 and len(statements) == 1
    assert stats == {"total": len(texts), "groups": dict(types)}
    assert api.stats("category") == {"total": len(texts), "groups": dict(categories)}
    assert api.stats("no_such_key") == {"total": len(texts), "groups": {None: len(texts)}}
    assert api.stats() == {"total": len(texts), "groups": {}}
    assert sum(api.stats("type")["groups"].values()) == api.count()
    for value, n in types.items():
        if value is not None:
            assert api.count({"type": value}) == n

    manager = seed["MemoryManager"](name)
    assert manager.get_memory_stats() == {
        "total": stats["total"],
        "conversations": stats["groups"]["conversation"],
        "knowledge": stats["groups"]["knowledge"],
        "episodes": stats["groups"]["episode"],
    }
    analytics = seed["MemoryAnalytics"](manager.memory)
    everything = analytics.get_usage_stats(days=365)
    assert everything["total_memories"] == stats["total"]
    assert everything["by_type"] == {("unknown" if k is None else k): v for k, v in types.items()}
    assert everything["by_category"] == {("unknown" if k is None else k): v for k, v in categories.items()}
    recent = analytics.get_usage_stats(days=30)
    cutoff = (datetime.now() - timedelta(days=30)).isoformat()
    in_window = [m for m in metas if m["timestamp"] >= cutoff]
    assert recent["total_memories"] == len(in_window) == api.count({"timestamp": {"$gte": cutoff}})
    assert recent["by_type"] == dict(Counter(m.get("type", "unknown") for m in in_window))

    # Views: per collection and per day, equal to count() for the same data.
    tz = session_tz(database_url)
    days = [datetime(2025, 1, 1 + (i % 10), 12, 0, tzinfo=tz) for i in range(len(ids))]
    set_created_at(database_url, ids, days)
    empty = make_api("analytics_empty")
    rows = dict(
        (r[0], r[1:])
        for r in sql(
            database_url,
            "SELECT collection, memories, bytes, oldest, newest, embedder, dimension "
            "FROM memorix.collection_stats",
        )
    )
    count, size, oldest, newest, embedder, dim = rows[name]
    assert count == api.count() == len(texts)
    assert size > 0 and oldest == min(days) and newest == max(days)
    assert (embedder, dim) == (api.embedder.name, 384)
    assert rows["analytics_empty"][:2] == (0, 0) and empty.count() == 0
    daily = sql(
        database_url, "SELECT day, type, memories FROM memorix.daily_counts WHERE collection = %s", (name,)
    )
    assert sum(r[2] for r in daily) == api.count()
    expected = Counter((d.date(), m.get("type")) for d, m in zip(days, metas, strict=True))
    assert {(r[0].astimezone(tz).date(), r[1]): r[2] for r in daily} == dict(expected)
    for t in ("conversation", "knowledge", "episode"):
        assert sum(r[2] for r in daily if r[1] == t) == api.count({"type": t})

    # The seed's retention policy (timestamp metadata, delete_by_filter) agrees with count().
    old_cutoff = (datetime.now() - timedelta(days=30)).isoformat()
    old = api.count({"timestamp": {"$lt": old_cutoff}})
    assert old == sum(m["timestamp"] < old_cutoff for m in metas)
    assert manager.cleanup_old_memories(days_old=30) == old
    assert api.count() == len(texts) - old
