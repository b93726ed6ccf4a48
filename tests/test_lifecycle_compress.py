"""Memory lifecycle on a real PostgreSQL: compression of conversation windows into summaries.

Times are controlled by writing ``created_at`` / ``expires_at`` with SQL (it is a real
database); nothing here mocks the database. The helpers are in tests/support/lifecycle.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest

from memorix_pg import HashEmbedder, InvalidInput
from memorix_pg.lifecycle import extractive_summary
from tests.support.helpers import CountingEmbedder
from tests.support.lifecycle import session_tz, set_created_at

# SQLAlchemy deprecations become errors in its next major release: fail on them now.
pytestmark = pytest.mark.filterwarnings("error::sqlalchemy.exc.SADeprecationWarning")

# -- compression -----------------------------------------------------------------------------------


def _conversation(make_api, database_url, name: str = "chat", **kw: Any):
    """Session s1: 4 messages in hour 0 (stored out of time order), 3 in hour 1, 1 in hour 2;
    session s2: 3 messages in hour 0."""
    api = make_api(name, **kw)
    tz = session_tz(database_url)
    base = datetime(2025, 3, 10, 10, 0, tzinfo=tz)
    plan = [  # (text, session, minutes after base, role)
        ("h0 m40 the deploy finished after the retry", "s1", 40, "assistant"),
        ("h0 m10 the deploy to staging failed", "s1", 10, "user"),
        ("h0 m30 retrying the deploy with more memory", "s1", 30, "user"),
        ("h0 m20 the logs show an out of memory error", "s1", 20, "assistant"),
        ("h1 m05 now the database migration is slow", "s1", 65, "user"),
        ("h1 m15 the migration locks the orders table", "s1", 75, "assistant"),
        ("h1 m25 run the migration at night then", "s1", 85, "user"),
        ("h2 m10 a lonely message in its own hour", "s1", 130, "user"),
        ("other session h0 m11", "s2", 11, "user"),
        ("other session h0 m12", "s2", 12, "assistant"),
        ("other session h0 m13", "s2", 13, "user"),
    ]
    ids = api.store_batch(
        [p[0] for p in plan],
        [{"type": "conversation", "session_id": p[1], "role": p[3], "timestamp": f"t{p[2]}"} for p in plan],
    )
    set_created_at(database_url, ids, [base + timedelta(minutes=p[2]) for p in plan])
    return api, ids, base, plan


def test_compress_with_a_custom_summarizer(make_api, database_url):
    emb = CountingEmbedder(dim=64)
    api, ids, base, plan = _conversation(make_api, database_url, embedder=emb)
    calls: list[list[str]] = []

    def summarizer(texts: list[str]) -> str:
        calls.append(list(texts))
        return f"summary of {len(texts)}: " + " | ".join(t.split()[1] for t in texts)

    report = api.compress({"session_id": "s1"}, window=timedelta(hours=1), summarizer=summarizer)
    hour0 = [plan[i][0] for i in (1, 3, 2, 0)]  # time order: m10, m20, m30, m40
    hour1 = [plan[i][0] for i in (4, 5, 6)]
    assert calls == [hour0, hour1]
    assert report.windows == 2 and report.compressed == 7 and len(report.summary_ids) == 2

    first, second = (api.get(i) for i in report.summary_ids)
    assert first.text == "summary of 4: m10 | m20 | m30 | m40"
    meta = first.metadata
    assert meta["type"] == "conversation" and meta["session_id"] == "s1"
    assert "role" not in meta and "timestamp" not in meta  # not shared by all originals
    assert meta["compressed"] is True and meta["original_count"] == 4
    assert datetime.fromisoformat(meta["window_start"]) == base
    assert datetime.fromisoformat(meta["window_end"]) == base + timedelta(hours=1)
    assert meta["source_ids"] == [ids[i] for i in (1, 3, 2, 0)]
    assert second.metadata["original_count"] == 3
    assert second.metadata["source_ids"] == ids[4:7]
    assert datetime.fromisoformat(second.metadata["window_start"]) == base + timedelta(hours=1)

    for i in ids[:7]:
        assert api.get(i) is None
    assert api.get(ids[7]) is not None  # alone in its window: below min_group
    assert api.count({"session_id": "s2"}) == 3  # not matched by the filter
    assert api.count({"session_id": "s1"}) == 3

    # A session's context still finds the summaries.
    context = api.retrieve(
        "deploy failed out of memory", top_k=5, filter={"session_id": "s1", "type": "conversation"}
    )
    assert report.summary_ids[0] in [m.id for m in context]
    # The seed's filter excludes summaries: only the one original left is selected, and deleted.
    seed_filter = {"session_id": "s1", "type": "conversation", "compressed": {"$ne": True}}
    assert api.count(seed_filter) == 1
    assert api.delete_by_filter(seed_filter) == 1
    assert sorted(m.id for m in api.retrieve("", top_k=10, filter={"session_id": "s1"})) == sorted(
        report.summary_ids
    )
    # Summaries are not compressed again.
    again = api.compress({"session_id": "s1"}, window=timedelta(days=365), summarizer=summarizer)
    assert again.windows == 0 and again.compressed == 0


def test_min_group_and_window_size(make_api, database_url):
    api, _, _, plan = _conversation(make_api, database_url, name="chat_windows")
    day = timedelta(days=1)
    none = api.compress({"session_id": "s1"}, window=day, summarizer=lambda t: "x", min_group=9)
    assert none.windows == 0 and api.count({"session_id": "s1"}) == 8
    report = api.compress({"session_id": "s1"}, window=day, summarizer=lambda t: " / ".join(t), min_group=8)
    assert report.windows == 1 and report.compressed == 8
    [summary] = [api.get(i) for i in report.summary_ids]
    assert summary.text.split(" / ") == [plan[i][0] for i in (1, 3, 2, 0, 4, 5, 6, 7)]
    nothing = api.compress({"session_id": "s2"}, summarizer=lambda t: "x", min_group=4)
    assert nothing.windows == 0 and api.count({"session_id": "s2"}) == 3
    for bad in ({"window": timedelta(0)}, {"window": 60}, {"min_group": 0}, {"min_group": True}):
        with pytest.raises(InvalidInput):
            api.compress({"session_id": "s2"}, summarizer=lambda t: "x", **bad)
    assert api.count({"session_id": "s2"}) == 3


def test_a_failing_summarizer_leaves_that_window_untouched(make_api, database_url):
    api, ids, _, _ = _conversation(make_api, database_url, name="chat_fail")

    def summarizer(texts: list[str]) -> str:
        if texts[0].startswith("h1"):
            raise RuntimeError("the LLM is down")
        return "hour zero summary"

    with pytest.raises(RuntimeError, match="LLM is down"):
        api.compress({"session_id": "s1"}, summarizer=summarizer)
    # hour 0 was compressed (its own transaction); hour 1 is untouched.
    assert api.count({"compressed": True}) == 1
    for i in ids[4:7]:
        m = api.get(i)
        assert m is not None and "compressed" not in m.metadata
    assert api.count({"session_id": "s1"}) == 1 + 3 + 1

    # A summarizer that returns nothing usable is refused the same way.
    with pytest.raises(InvalidInput):
        api.compress({"session_id": "s1"}, summarizer=lambda texts: "   ")
    assert all(api.get(i) is not None for i in ids[4:7])
    assert api.count({"compressed": True}) == 1


def test_default_extractive_summary_keeps_central_messages_in_time_order(make_api, database_url):
    api = make_api("chat_extractive")
    tz = session_tz(database_url)
    base = datetime(2025, 3, 10, 14, 0, tzinfo=tz)
    texts = [
        "the staging database migration failed with a lock timeout",  # m5
        "I like pineapple pizza with extra cheese on fridays",  # m10: the outlier
        "retry the staging database migration with a longer lock timeout",  # m15
        "the database migration failed again on staging",  # m20
        "staging database migration succeeded after the lock timeout change",  # m25
    ]
    ids = api.store_batch(texts, [{"session_id": "x", "type": "conversation"}] * len(texts))
    set_created_at(database_url, ids, [base + timedelta(minutes=5 * (i + 1)) for i in range(len(texts))])
    vectors = HashEmbedder(384).embed(texts)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    centrality = (unit @ unit.T).mean(axis=1)
    assert int(np.argmin(centrality)) == 1  # the oracle agrees the pizza is off topic

    budget = 130
    report = api.compress({"session_id": "x"}, max_chars=budget)
    assert report.windows == 1 and report.compressed == 5
    summary = api.get(report.summary_ids[0]).text
    assert len(summary) <= budget
    lines = summary.split("\n")
    assert all(line in texts for line in lines)
    positions = [texts.index(line) for line in lines]
    assert positions == sorted(positions)  # time order
    assert texts[1] not in lines
    assert texts[int(np.argmax(centrality))] in lines
    assert len(lines) >= 2

    # With room for everything, the summary is every message in time order.
    assert extractive_summary(texts, vectors, 10_000) == "\n".join(texts)
    # A single over-long message is cut to the budget.
    assert extractive_summary(["y" * 50], vectors[:1], 20) == "y" * 20
    assert len(extractive_summary(["z" * 50, "w" * 50], vectors[:2], 20)) <= 20


def test_compress_keeps_sessions_apart_and_summaries_expire_with_their_memories(make_api, database_url):
    """Without a session filter, each session still gets its own summary (group_by defaults to
    session_id), so each session's context finds it; a window of expiring memories gives an
    expiring summary."""
    api = make_api("compress_sessions")
    api.store_batch(
        [f"s1 message {i}" for i in range(3)] + [f"s2 message {i}" for i in range(3)],
        [{"type": "conversation", "session_id": "s1"}] * 3
        + [{"type": "conversation", "session_id": "s2"}] * 3,
        ttl=timedelta(days=2),
    )
    report = api.compress(window=timedelta(days=1))
    assert report.windows == 2 and report.compressed == 6
    for session in ("s1", "s2"):
        [summary] = api.retrieve("", top_k=10, filter={"session_id": session})
        assert summary.metadata["compressed"] is True
        assert summary.metadata["original_count"] == 3
        assert all(line.startswith(session) for line in summary.text.splitlines())
    with psycopg.connect(database_url) as conn:
        expiries = conn.execute(
            "SELECT expires_at FROM memorix.memories WHERE metadata @> '{\"compressed\": true}'"
        ).fetchall()
    assert len(expiries) == 2 and all(e is not None for (e,) in expiries)
