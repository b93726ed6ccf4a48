"""Memory lifecycle on a real PostgreSQL: TTL, retention (cleanup, delete_by_filter) and archive.

Times are controlled by writing ``created_at`` / ``expires_at`` with SQL (it is a real
database); nothing here mocks the database. The helpers are in tests/support/lifecycle.py.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from memorix_pg import EmbedderMismatch, InvalidInput, MemoryAPI, MemoryNotFound
from tests.support.helpers import CountingEmbedder
from tests.support.lifecycle import captured_sql, dml, expire, rows_in_table, set_created_at, sql, sql_value

# SQLAlchemy deprecations become errors in its next major release: fail on them now.
pytestmark = pytest.mark.filterwarnings("error::sqlalchemy.exc.SADeprecationWarning")

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
            database_url, "SELECT expires_at FROM memorix.memories WHERE id = %s", (i,)
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


def test_set_ttl_moves_the_expiry_of_live_memories_only(make_api, database_url):
    api = make_api("ttl_set")
    a, b, c = api.store_batch(["first note", "second note", "third note"], ttl=timedelta(minutes=5))
    other = make_api("ttl_set_other").store("another collection's note")
    gone = api.store("expired note", ttl=timedelta(minutes=5))
    expire(database_url, [gone])
    updated_before = api.get(a).updated_at

    def expiry(i: str) -> datetime | None:
        return sql_value(
            database_url, "SELECT expires_at FROM memorix.memories WHERE id = %s", (i,)
        )

    before = datetime.now(UTC)
    assert api.set_ttl([a, b, gone, other, str(uuid.uuid4())], timedelta(hours=2)) == 2
    after = datetime.now(UTC)
    for i in (a, b):
        assert before + timedelta(hours=2) <= expiry(i) <= after + timedelta(hours=2)
    assert expiry(c) < before + timedelta(minutes=6)  # not named: unchanged
    assert expiry(gone) < datetime.now(UTC) and api.get(gone) is None  # an expired memory stays expired
    assert expiry(other) is None  # another collection's memory is not touched
    assert api.get(a).updated_at == updated_before  # the content did not change

    assert api.set_ttl([c], None) == 1 and expiry(c) is None
    assert api.set_ttl([], timedelta(hours=1)) == 0
    with pytest.raises(InvalidInput, match="ttl"):
        api.set_ttl([a], timedelta(0))
    with pytest.raises(InvalidInput, match=r"ids\[1\]"):
        api.set_ttl([a, ""], timedelta(hours=1))
    with pytest.raises(InvalidInput, match="ids"):
        api.set_ttl(a, timedelta(hours=1))
    assert (
        before + timedelta(hours=2) <= expiry(a) <= after + timedelta(hours=2)
    )  # the bad calls wrote nothing


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
        sql_value(database_url, "SELECT expires_at FROM memorix.memories WHERE id = %s", (i,))
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
            (list(ids),),
        )
    )
    t0 = datetime.now(UTC)
    with captured_sql(api) as statements:
        moved = api.archive({"session_id": "old"}, to="inbox_archive")
    assert moved == 9
    assert dml(statements).count("UPDATE") == 1
    # DELETE: the target's memories with the moving ids (none here), replaced as store would;
    # INSERT: the target collection row
    assert [d for d in dml(statements) if d != "UPDATE"] in (["DELETE"], ["INSERT", "DELETE"])
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
            (list(ids),),
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
            database_url, "SELECT embedding::text FROM memorix.memories WHERE id = %s", (ids[3],)
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
        f"IF OLD.id = '{victim}' THEN RAISE EXCEPTION 'archive blocked for %', OLD.id; END IF; "
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
