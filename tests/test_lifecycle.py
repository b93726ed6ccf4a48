"""Memory lifecycle on a real PostgreSQL: TTL, retention, archive, compression, dedupe,
near-duplicates, the embedding cache, stats and the analytics views.

Times are controlled by writing ``created_at`` / ``expires_at`` with SQL (it is a real
database); nothing here mocks the database.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pytest
from sqlalchemy import event

from memorix_pg import (
    DatabaseUnavailable,
    EmbedderMismatch,
    HashEmbedder,
    InvalidInput,
    MemoryAPI,
    MemoryNotFound,
)
from memorix_pg.cache import EmbeddingCache
from memorix_pg.database import get_engine
from memorix_pg.lifecycle import extractive_summary
from tests.support.helpers import CountingEmbedder, unit_vectors

# SQLAlchemy deprecations become errors in its next major release: fail on them now.
pytestmark = pytest.mark.filterwarnings("error::sqlalchemy.exc.SADeprecationWarning")

SEED = __import__("pathlib").Path(__file__).resolve().parent / "seed" / "memory-management.md"

# -- helpers ---------------------------------------------------------------------------------------


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
            conn.execute("UPDATE memorix.memories SET created_at = %s WHERE id = %s", (t, uuid.UUID(i)))


def expire(url: str, ids: Sequence[str]) -> None:
    sql(
        url,
        "UPDATE memorix.memories SET expires_at = now() - interval '1 second' WHERE id = ANY(%s)",
        ([uuid.UUID(i) for i in ids],),
    )


def rows_in_table(url: str, collection_id: int) -> int:
    return int(
        sql_value(url, "SELECT count(*) FROM memorix.memories WHERE collection_id = %s", (collection_id,))
    )


@contextmanager
def captured_sql(api: MemoryAPI) -> Iterator[list[str]]:
    """Every statement the library sends through its engine while the block runs."""
    engine = get_engine(api.database_url)
    statements: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


def dml(statements: list[str]) -> list[str]:
    return [
        s.split(None, 1)[0].upper() for s in statements if re.match(r"\s*(INSERT|UPDATE|DELETE)\b", s, re.I)
    ]


def session_tz(url: str) -> ZoneInfo:
    return ZoneInfo(sql_value(url, "SHOW timezone"))


# -- TTL -------------------------------------------------------------------------------------------


def test_ttl_sets_expires_at_on_insert_and_copy_paths(make_api, database_url):
    api = make_api("ttl_paths")
    before = datetime.now(UTC)
    forever = api.store("a permanent note")
    one = api.store("a note for one hour", ttl=timedelta(hours=1))
    many = api.store_batch([f"temporary batch note {i}" for i in range(300)], ttl=timedelta(days=2))  # COPY
    few = api.store_batch(["x one", "x two"], ttl=timedelta(minutes=5))  # INSERT
    after = datetime.now(UTC)

    def expiry(i: str) -> datetime | None:
        return sql_value(
            database_url, "SELECT expires_at FROM memorix.memories WHERE id = %s", (uuid.UUID(i),)
        )

    assert expiry(forever) is None
    assert before + timedelta(hours=1) <= expiry(one) <= after + timedelta(hours=1)
    for i in (many[0], many[150], many[-1]):
        assert before + timedelta(days=2) <= expiry(i) <= after + timedelta(days=2)
    for i in few:
        assert before + timedelta(minutes=5) <= expiry(i) <= after + timedelta(minutes=5)
    assert api.count() == 1 + 1 + 300 + 2


@pytest.mark.parametrize("bad", [timedelta(0), timedelta(seconds=-5), 3600, "1h"])
def test_ttl_must_be_a_positive_timedelta(make_api, bad):
    api = make_api("ttl_bad")
    with pytest.raises(InvalidInput, match="ttl"):
        api.store("never stored", ttl=bad)
    with pytest.raises(InvalidInput, match="ttl"):
        api.store_batch(["never", "stored"], ttl=bad)
    assert api.count() == 0


def test_expired_memories_are_never_returned_or_counted_and_purge_deletes_them(make_api, database_url):
    api = make_api("ttl_live")
    keep = api.store("kubernetes deployment notes, permanent", {"type": "knowledge", "k": 1})
    temp = api.store(
        "kubernetes deployment notes, temporary", {"type": "knowledge", "k": 1}, ttl=timedelta(hours=1)
    )
    batch = api.store_batch(
        [f"kubernetes deployment batch {i}" for i in range(299)],
        [{"type": "conversation"}] * 299,
        ttl=timedelta(days=1),
    )
    other = make_api("ttl_other")
    other_temp = other.store("another collection's temporary memory", ttl=timedelta(hours=1))
    assert api.count() == 301
    expire(database_url, [temp, *batch, other_temp])

    assert api.count() == 1
    assert api.count({"type": "knowledge"}) == 1
    assert api.get(temp) is None
    assert api.get(keep) is not None
    for exact in (True, False, None):
        hits = api.retrieve("kubernetes deployment notes", top_k=50, exact=exact)
        assert [m.id for m in hits] == [keep], exact
    assert [m.id for m in api.retrieve("", top_k=50)] == [keep]
    assert api.stats("type") == {"total": 1, "groups": {"knowledge": 1}}
    assert api.stats() == {"total": 1, "groups": {}}
    assert api.count_older_than(timedelta(seconds=0.001)) == 1
    assert api.find_duplicates(threshold=-1.0) == []
    with pytest.raises(MemoryNotFound):
        api.update(temp, metadata={"x": 1})
    view = sql(
        database_url, "SELECT memories FROM memorix.collection_stats WHERE collection = %s", ("ttl_live",)
    )
    assert view == [(1,)]
    daily = sql_value(
        database_url, "SELECT sum(memories) FROM memorix.daily_counts WHERE collection = %s", ("ttl_live",)
    )
    assert daily == 1
    # Deduplication ignores an expired copy: the text is stored again.
    assert api.store("kubernetes deployment notes, temporary", dedupe=True) != temp

    assert rows_in_table(database_url, api.collection_id) == 302  # expired rows still in the table
    assert api.purge_expired() == 300
    assert rows_in_table(database_url, api.collection_id) == 2
    assert api.purge_expired() == 0
    # Another collection's expired memories are its own business.
    assert rows_in_table(database_url, other.collection_id) == 1
    assert other.purge_expired() == 1


def test_a_real_ttl_runs_out(make_api):
    api = make_api("ttl_clock")
    api.store("blink and you miss it", ttl=timedelta(seconds=1))
    api.store("stays")
    assert api.count() == 2
    time.sleep(1.2)
    assert api.count() == 1
    assert api.purge_expired() == 1


def test_restoring_an_id_without_ttl_clears_its_expiry(make_api, database_url):
    api = make_api("ttl_upsert")
    [i] = api.store_batch(["temporary"], ids=[str(uuid.uuid4())], ttl=timedelta(hours=1))
    api.store("now permanent", id=i)
    assert (
        sql_value(database_url, "SELECT expires_at FROM memorix.memories WHERE id = %s", (uuid.UUID(i),))
        is None
    )
    assert api.get(i).text == "now permanent"


# -- retention -------------------------------------------------------------------------------------


def test_cleanup_deletes_by_created_at_in_one_delete(make_api, database_url):
    api = make_api("retention")
    other = make_api("retention_other")
    ids = api.store_batch(
        [f"memory number {i}" for i in range(30)],
        [{"type": "knowledge" if i % 2 else "conversation", "n": i} for i in range(30)],
    )
    other_ids = other.store_batch([f"other memory {i}" for i in range(5)])
    now = datetime.now(UTC)
    set_created_at(database_url, ids[:10], now - timedelta(days=40))
    set_created_at(database_url, ids[10:20], now - timedelta(days=10))
    set_created_at(database_url, other_ids, now - timedelta(days=400))

    assert api.count_older_than(timedelta(days=30)) == 10
    assert api.count_older_than(timedelta(days=30), filter={"type": "knowledge"}) == 5
    assert api.count_older_than(timedelta(days=5)) == 20
    with captured_sql(api) as statements:
        assert api.cleanup(timedelta(days=30), filter={"type": "knowledge"}) == 5
    assert dml(statements) == ["DELETE"]
    assert api.cleanup(older_than=timedelta(days=30)) == 5
    assert api.count() == 20
    assert {m.metadata["n"] for m in api.retrieve("", top_k=100)} == set(range(10, 30))
    assert api.cleanup(timedelta(days=5)) == 10
    assert api.cleanup(timedelta(days=5)) == 0
    assert api.count() == 10
    assert other.count() == 5  # another collection's old memories are untouched

    for bad in (30, timedelta(0), timedelta(days=-1), None):
        with pytest.raises(InvalidInput):
            api.cleanup(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            api.count_older_than(bad)  # type: ignore[arg-type]
    assert api.count() == 10


def test_delete_by_filter_is_one_delete(make_api):
    api = make_api("retention_filter")
    cutoff = datetime(2025, 6, 1)
    stamps = [cutoff - timedelta(days=d) for d in range(-20, 40, 3)]
    api.store_batch(
        [f"seed style memory {i}" for i in range(len(stamps))],
        [{"timestamp": s.isoformat(), "type": "conversation"} for s in stamps],
    )
    expected = sum(s < cutoff for s in stamps)
    with captured_sql(api) as statements:
        deleted = api.delete_by_filter({"timestamp": {"$lt": cutoff.isoformat()}})
    assert deleted == expected
    assert dml(statements) == ["DELETE"]
    assert [s for s in statements if re.match(r"\s*SELECT", s, re.I)] == []
    assert api.count() == len(stamps) - expected


# -- archive ---------------------------------------------------------------------------------------


def _archive_fixture(
    make_api, embedder: CountingEmbedder, name: str = "inbox"
) -> tuple[MemoryAPI, list[str]]:
    api = make_api(name, embedder=embedder)
    texts = [f"message {i} about {'billing' if i % 3 == 0 else 'shipping'} issues" for i in range(24)]
    metas = [
        {"type": "conversation", "session_id": "old" if i < 9 else "new", "n": i, "tags": ["a", "b"]}
        for i in range(24)
    ]
    return api, api.store_batch(texts, metas)


def test_archive_moves_in_one_update_keeping_embeddings(make_api, database_url):
    emb = CountingEmbedder()
    api, ids = _archive_fixture(make_api, emb)
    embedded_before = emb.embedded
    vectors_before = dict(
        sql(
            database_url,
            "SELECT id::text, embedding::text FROM memorix.memories WHERE id = ANY(%s)",
            ([uuid.UUID(i) for i in ids],),
        )
    )
    t0 = datetime.now(UTC)
    with captured_sql(api) as statements:
        moved = api.archive({"session_id": "old"}, to="inbox_archive")
    assert moved == 9
    assert dml(statements).count("UPDATE") == 1
    assert [d for d in dml(statements) if d != "UPDATE"] in (
        [],
        ["INSERT"],
    )  # INSERT: the target collection row
    assert emb.embedded == embedded_before  # nothing re-embedded

    archive = make_api("inbox_archive", embedder=emb)
    assert api.count() == 15 and archive.count() == 9
    assert archive.count({"archived": True}) == 9
    assert api.count({"session_id": "old"}) == 0
    row = sql(
        database_url,
        "SELECT embedder, dimension, distance FROM memorix.collections WHERE name = 'inbox_archive'",
    )
    assert row == [(emb.name, emb.dim, "cosine")]
    vectors_after = dict(
        sql(
            database_url,
            "SELECT id::text, embedding::text FROM memorix.memories WHERE id = ANY(%s)",
            ([uuid.UUID(i) for i in ids],),
        )
    )
    assert vectors_after == vectors_before
    for memory in archive.retrieve("", top_k=100):
        assert memory.id in ids[:9]
        meta = memory.metadata
        assert meta["archived"] is True
        assert meta["session_id"] == "old" and meta["type"] == "conversation" and meta["tags"] == ["a", "b"]
        stamp = datetime.fromisoformat(meta["archived_at"])
        assert stamp.tzinfo is not None and t0 - timedelta(seconds=5) <= stamp <= datetime.now(UTC)
    # The moved rows are searchable in the target through its own index, by their kept vectors.
    vec = np.array(
        sql_value(
            database_url, "SELECT embedding::text FROM memorix.memories WHERE id = %s", (uuid.UUID(ids[3]),)
        )
        .strip("[]")
        .split(","),
        dtype=np.float32,
    )
    for exact in (True, False):
        assert archive.retrieve(None, top_k=1, embedding=vec, exact=exact)[0].id == ids[3]
    assert emb.embedded == embedded_before

    # Archiving more into an existing target adds to it; nothing matching moves nothing.
    assert api.archive({"n": {"$in": [20, 21]}}, to="inbox_archive") == 2
    assert archive.count() == 11
    assert api.archive({"session_id": "nobody"}, to="inbox_archive") == 0
    with pytest.raises(InvalidInput):
        api.archive({}, to="inbox")
    assert api.count() == 13


def test_archive_into_a_collection_of_another_embedder_is_refused(make_api, database_url):
    emb = CountingEmbedder()
    api, _ = _archive_fixture(make_api, emb)
    make_api("wrong_archive", embedder="hash-64").store("already here")
    with pytest.raises(EmbedderMismatch):
        api.archive({"session_id": "old"}, to="wrong_archive")
    assert api.count() == 24
    assert make_api("wrong_archive", embedder="hash-64").count() == 1


def test_a_failing_archive_moves_nothing(make_api, database_url):
    emb = CountingEmbedder()
    api, ids = _archive_fixture(make_api, emb)
    victim = ids[7]  # one of the 9 "old" memories, late in the table
    uuid.UUID(victim)  # a literal uuid goes into the function body
    sql(
        database_url,
        "CREATE FUNCTION memorix_test_block() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF OLD.id = '{victim}'::uuid THEN RAISE EXCEPTION 'archive blocked for %', OLD.id; END IF; "
        "RETURN NEW; END $$",
    )
    sql(
        database_url,
        "CREATE TRIGGER memorix_test_block BEFORE UPDATE ON memorix.memories "
        "FOR EACH ROW EXECUTE FUNCTION memorix_test_block()",
    )
    try:
        with pytest.raises(Exception, match="archive blocked"):
            api.archive({"session_id": "old"}, to="blocked_archive")
    finally:
        sql(database_url, "DROP TRIGGER memorix_test_block ON memorix.memories")
        sql(database_url, "DROP FUNCTION memorix_test_block()")
    target = make_api("blocked_archive", embedder=emb)
    assert api.count() == 24 and api.count({"session_id": "old"}) == 9
    assert target.count() == 0
    assert api.count({"archived": True}) == 0
    # With the trigger gone the same archive goes through.
    assert api.archive({"session_id": "old"}, to="blocked_archive") == 9
    assert target.count() == 9


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


# -- dedupe ----------------------------------------------------------------------------------------


def test_dedupe_returns_the_existing_id(make_api):
    emb = CountingEmbedder()
    api = make_api("dedupe", embedder=emb, dedupe=True)
    a = api.store("the same text", {"n": 1})
    assert api.store("the same text", {"n": 2}) == a
    assert api.count() == 1 and api.get(a).metadata == {"n": 1}
    assert api.store("another text") != a
    assert api.store("the same text", dedupe=False) != a  # per-call override
    assert api.count() == 3

    plain = make_api("dedupe_plain")
    p = plain.store("hello")
    assert plain.store("hello") != p  # off by default
    assert plain.store("hello", dedupe=True) == p  # the oldest copy
    assert plain.count() == 2
    # Per collection: the same text elsewhere is stored.
    assert make_api("dedupe_elsewhere", dedupe=True).store("the same text") != a


@pytest.mark.parametrize("n", [5, 400])  # INSERT and COPY paths
def test_dedupe_within_a_batch(make_api, n):
    emb = CountingEmbedder()
    api = make_api(f"dedupe_batch_{n}", embedder=emb)
    api.store("t0")
    texts = [f"t{i % (n // 2)}" for i in range(n)]
    ids = api.store_batch(texts, dedupe=True)
    assert len(ids) == n
    assert api.count() == n // 2
    by_text: dict[str, str] = {}
    for text, i in zip(texts, ids, strict=True):
        assert by_text.setdefault(text, i) == i
    assert sorted(t for c in emb.calls for t in c) == sorted({f"t{i}" for i in range(n // 2)})  # each once
    assert api.get(ids[0]).text == "t0"


def test_concurrent_dedupe_stores_store_once(make_api, database_url):
    apis = [make_api("dedupe_race", dedupe=True) for _ in range(2)]
    rounds = 15
    results: list[list[str]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(k: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait(timeout=30)
                results[k].append(apis[k].store(f"raced text {r}", {"by": k}))
                results[k].append(apis[k].store_batch([f"raced batch {r}", f"raced text {r}"])[0])
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results[0] == results[1]
    assert apis[0].count() == 2 * rounds
    dupes = sql(
        database_url,
        "SELECT text, count(*) FROM memorix.memories WHERE collection_id = %s "
        "GROUP BY text HAVING count(*) > 1",
        (apis[0].collection_id,),
    )
    assert dupes == []


def test_dedupe_of_a_large_batch(make_api):
    """Dedupe must not take one lock per text: 20,000 advisory locks overflow PostgreSQL's shared
    lock table (max_locks_per_transaction x max_connections = 6,400 by default)."""
    api = make_api("dedupe_large", embedder="hash-8")
    n = 20_000
    texts = [f"bulk text {i % (n - 10)}" for i in range(n)]  # the last 10 repeat the first 10
    ids = api.store_batch(texts, embeddings=unit_vectors(n, dim=8, seed=4), dedupe=True)
    assert ids[-10:] == ids[:10]
    assert api.count() == n - 10


def test_a_failing_query_is_not_reported_as_an_unreachable_server(make_api, database_url):
    """A lock or statement timeout is not 'cannot connect to PostgreSQL ... check the server is running'."""
    api = make_api("timeouts")
    api.store("x")
    dbname = urlsplit(database_url).path.lstrip("/")
    sql(database_url, f"ALTER DATABASE {dbname} SET lock_timeout = '300ms'")
    get_engine(api.database_url).dispose()  # new sessions pick the setting up
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE memorix.memories IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(Exception, match="lock timeout") as info:
            api.count()
        holder.rollback()
    assert not isinstance(info.value, DatabaseUnavailable), info.value
    sql(database_url, f"ALTER DATABASE {dbname} RESET lock_timeout")
    get_engine(api.database_url).dispose()
    assert api.count() == 1


def test_find_duplicates_by_cosine_similarity(make_api):
    api = make_api("near_dupes")
    base = unit_vectors(30, seed=3)
    partners = [
        with_similarity(base[0], 0.99, 1),
        with_similarity(base[1], 0.97, 2),
        with_similarity(base[2], 0.90, 3),
    ]
    vectors = np.vstack([base, partners])
    texts = [f"memory {i}" for i in range(30)] + ["partner of 0", "partner of 1", "partner of 2"]
    ids = api.store_batch(texts, embeddings=vectors)
    pair = {0: frozenset((ids[0], ids[30])), 1: frozenset((ids[1], ids[31])), 2: frozenset((ids[2], ids[32]))}

    found = api.find_duplicates(threshold=0.95)
    assert [frozenset((d.id_a, d.id_b)) for d in found] == [pair[0], pair[1]]
    assert found[0].similarity == pytest.approx(0.99, abs=1e-4)
    assert found[1].similarity == pytest.approx(0.97, abs=1e-4)
    assert {found[0].text_a, found[0].text_b} == {"memory 0", "partner of 0"}
    assert [frozenset((d.id_a, d.id_b)) for d in api.find_duplicates(threshold=0.95, limit=1)] == [pair[0]]
    assert {frozenset((d.id_a, d.id_b)) for d in api.find_duplicates(threshold=0.85)} == set(pair.values())
    assert api.find_duplicates(threshold=0.995) == []
    # An expired partner is no longer a duplicate.
    expire(api.database_url, [ids[30]])
    assert [frozenset((d.id_a, d.id_b)) for d in api.find_duplicates(threshold=0.95)] == [pair[1]]
    for bad in (1.5, -2, "high"):
        with pytest.raises(InvalidInput):
            api.find_duplicates(threshold=bad)  # type: ignore[arg-type]


# -- embedding cache -------------------------------------------------------------------------------


def test_embedding_cache_avoids_re_embedding(make_api):
    emb = CountingEmbedder()
    api = make_api("cache", embedder=emb)
    assert api.cache_info() == (0, 0, 1024, 0)
    api.store("a cached memory")
    for _ in range(3):
        api.retrieve("a cached memory", top_k=1)
        api.retrieve("some question", top_k=1)
    assert emb.embedded == 2
    info = api.cache_info()
    assert (info.hits, info.misses, info.currsize) == (5, 2, 2)
    api.store_batch(["a cached memory", "new text", "new text"])  # one cached, one new (embedded once)
    assert emb.embedded == 3
    # hits: the cached text, and the batch's repeat of "new text"
    assert api.cache_info().hits == 7 and api.cache_info().misses == 3


def test_cache_is_lru_and_size_zero_disables_it(make_api):
    emb = CountingEmbedder()
    api = make_api("cache_lru", embedder=emb, cache_size=2)
    for q in ("a", "b", "c"):
        api.retrieve(q, top_k=1)
    api.retrieve("c", top_k=1)  # hit
    api.retrieve("a", top_k=1)  # evicted: embedded again
    assert [c for call in emb.calls for c in call] == ["a", "b", "c", "a"]
    assert api.cache_info() == (1, 4, 2, 2)

    off = CountingEmbedder()
    api0 = make_api("cache_off", embedder=off, cache_size=0)
    for _ in range(3):
        api0.retrieve("same question", top_k=1)
    assert off.embedded == 3
    assert api0.cache_info() == (0, 3, 0, 0)

    with pytest.raises(Exception, match="cache_size"):
        make_api("cache_bad", cache_size=-1)


def test_cache_is_keyed_by_model():
    cache = EmbeddingCache(10)
    seen: list[str] = []

    def embed(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return np.ones((len(texts), 4), dtype=np.float32)

    cache.embed("model-a", ["x"], embed)
    cache.embed("model-b", ["x"], embed)
    cache.embed("model-a", ["x"], embed)
    assert seen == ["x", "x"]
    assert cache.info() == (1, 2, 10, 2)


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
