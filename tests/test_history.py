"""History: an event per memory written, changed or removed, recorded in the same statement."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

import memorix_pg
from memorix_pg import InvalidInput
from memorix_pg.database import dispose_engine
from tests.support.helpers import unit_vectors


def _sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _history_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM memorix.history").fetchone()
        assert row is not None
        return int(row[0])


def test_a_memory_s_events_from_store_to_delete(make_api) -> None:
    api = make_api("h_one", actor="svc-ingest")
    row_id = api.store("first text", {"user_id": "u1"})
    api.update(row_id, metadata={"mood": "calm"})
    api.update(row_id, text="second text", metadata={"mood": None})
    api.delete(row_id)
    events = api.history(row_id)
    assert [e.operation for e in events] == ["store", "update", "update", "delete"]
    assert [e.text_hash_before for e in events] == [
        None,
        _sha("first text"),
        _sha("first text"),
        _sha("second text"),
    ]
    assert [e.text_hash_after for e in events] == [
        _sha("first text"),
        _sha("first text"),
        _sha("second text"),
        None,
    ]
    assert [e.metadata for e in events] == [
        {"user_id": "u1"},
        {"user_id": "u1", "mood": "calm"},
        {"user_id": "u1"},
        None,
    ]
    assert {e.actor for e in events} == {"svc-ingest"}
    assert {e.collection for e in events} == {"h_one"} and not any(e.forgotten for e in events)
    assert events[0].at <= events[-1].at
    default = make_api("h_one")
    other = default.store("by the role")
    assert default.history(other)[0].actor == "postgres"  # the database role by default


def test_bulk_operations_record_every_row_under_their_name(make_api) -> None:
    api = make_api("h_bulk", embedder="hash-16")
    n = 1200  # large enough for the binary COPY path
    api.store_batch(
        [f"m{i}" for i in range(n)],
        [{"i": i, "session_id": "s"} for i in range(n)],
        embeddings=unit_vectors(n, dim=16, seed=3),
    )
    assert len(api.history(limit=5000)) == n
    assert api.delete_by_filter({"i": {"$gte": 1000}}) == 200
    assert api.archive({"i": {"$lt": 10}}, to="h_bulk_archive") == 10
    api.set_ttl([m.id for m in api.list({"i": {"$gte": 10, "$lt": 15}})], timedelta(microseconds=1))
    assert api.purge_expired() == 5
    report = api.compress({"i": {"$gte": 900}}, window=timedelta(days=1))
    assert report.compressed == 100
    counts: dict[str, int] = {}
    for e in api.history(limit=10_000):
        counts[e.operation] = counts.get(e.operation, 0) + 1
    # compress: 100 originals removed and one summary stored
    assert counts == {"store": n, "delete": 200, "ttl": 5, "purge": 5, "compress": 101}
    archived = make_api("h_bulk_archive", embedder="hash-16").history(limit=100)
    assert len(archived) == 10 and {e.operation for e in archived} == {"archive"}
    assert all(e.metadata is not None and e.metadata["archived"] is True for e in archived)


def test_filters_since_and_limit(make_api) -> None:
    api = make_api("h_query")
    api.store("a", {"user_id": "u1"})
    cut = datetime.now(UTC)
    b = api.store("b", {"user_id": "u2"})
    api.store("c", {"user_id": "u1"})
    assert [e.metadata["user_id"] for e in api.history(filter={"user_id": "u1"})] == ["u1", "u1"]
    assert len(api.history(since=cut)) == 2
    assert [e.memory_id for e in api.history(limit=1)] != [b] and len(api.history(limit=1)) == 1
    with pytest.raises(InvalidInput, match="not both"):
        api.history(b, filter={"user_id": "u1"})


def test_history_is_written_only_with_the_write(make_api, database_url: str) -> None:
    api = make_api("h_tx")
    api.store("kept")
    before = _history_rows(database_url)
    with psycopg.connect(database_url) as conn:  # direct SQL: recorded as well, and rolled back with it
        conn.execute("DELETE FROM memorix.memories")
        assert conn.execute("SELECT count(*) FROM memorix.history").fetchone() == (before + 1,)
        conn.rollback()
    assert _history_rows(database_url) == before
    with pytest.raises(memorix_pg.SchemaViolation):
        make_api("h_tx", schema={"required": ["x"]}).store("refused")
    assert _history_rows(database_url) == before


def test_retention(make_api, database_url: str) -> None:
    api = make_api("h_keep", history_retention=timedelta(days=30))
    api.store("new")
    old = api.store("old")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE memorix.history SET at = now() - interval '40 days' WHERE memory_id = %s", (old,)
        )
    api.purge_expired()  # with history_retention: the 40-day-old event goes
    assert api.history(old) == [] and len(api.history()) == 1
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE memorix.history SET at = now() - interval '2 days'")
    assert api.prune_history(timedelta(days=3)) == 0
    assert api.prune_history(timedelta(days=1)) == 1
    assert api.history() == []


def test_forget_turns_the_subject_s_events_into_tombstones(make_api, database_url: str) -> None:
    api = make_api("h_forget")
    kept = api.store("someone else", {"user_id": "u2"})
    gone = api.store("subject's note", {"user_id": "u-gone"})
    api.update(gone, metadata={"topic": "x"})
    receipt = api.forget({"user_id": "u-gone"})
    assert receipt.history == 2 and receipt.total == 1
    assert api.history(gone) == []
    events = api.history(limit=10)
    tombs = [e for e in events if e.forgotten]
    assert len(tombs) == 3  # store, update, and the forget itself
    assert all(e.memory_id is None and e.metadata is None and e.text_hash_before is None for e in tombs)
    assert {e.operation for e in tombs} == {"store", "update", "forget"}
    assert [e.operation for e in api.history(kept)] == ["store"]
    with psycopg.connect(database_url) as conn:
        hits = conn.execute(
            "SELECT count(*) FROM memorix.history "
            "WHERE strpos(metadata::text, 'u-gone') > 0 OR memory_id = %s",
            (gone,),
        ).fetchone()
    assert hits == (0,)


def test_tenants_see_only_their_events_also_under_row_level_security(make_api, database_url: str) -> None:
    acme = make_api("h_rls", tenant="acme")
    globex = make_api("h_rls", tenant="globex")
    acme.store("acme's")
    globex.store("globex's")
    assert [e.tenant for e in acme.history()] == ["acme"]
    role = f"hist_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA memorix TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON memorix.history TO {}").format(sql.Identifier(role)))
    app = database_url.replace("postgresql://postgres:@", f"postgresql://{role}:@", 1)
    try:
        with psycopg.connect(app) as conn:
            conn.execute("SELECT set_config('memorix.tenant', 'acme', false)")
            tenants = conn.execute("SELECT DISTINCT tenant FROM memorix.history").fetchall()
        assert tenants == [("acme",)]
    finally:
        dispose_engine(app)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_bad_history_arguments(make_api) -> None:
    api = make_api("h_bad")
    with pytest.raises(InvalidInput, match="limit"):
        api.history(limit=0)
    with pytest.raises(memorix_pg.ConfigurationError, match="actor"):
        make_api("h_bad", actor="")
    with pytest.raises(InvalidInput, match="older_than"):
        api.prune_history(timedelta(0))
