"""``move_tenant``: one tenant's memories moved between two real servers by logical replication.

The source is a server of its own with ``wal_level = logical`` (tests/support/logical_server.py);
the destination is a fresh database on the session's server, which has the default
``wal_level = replica`` and so also serves as a source that must be refused.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from memorix_pg import ConfigurationError, InvalidInput, MemorixError, MemoryAPI, move_tenant
from memorix_pg.cli import main
from tests.support.helpers import db_fingerprint, sql_exec, sql_rows, sql_value, unit_vectors, wait_for

pytestmark = pytest.mark.embedded_server(
    "the session's server must reach the test's source server on 127.0.0.1"
)

DIM = 16


def _seed(url: str, tenant: str | None, collection: str, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    api = MemoryAPI(embedder=f"hash-{DIM}", collection_name=collection, database_url=url, tenant=tenant)
    vectors = unit_vectors(n, dim=DIM, seed=seed)
    ids = api.store_batch(
        [f"{tenant} {collection} {i}" for i in range(n)],
        [{"i": i, "who": tenant or "nobody"} for i in range(n)],
        embeddings=vectors,
    )
    return ids, vectors


def _replication_state(url: str) -> tuple[Any, ...]:
    """Publications, slots and subscriptions of the database, and the table's replica identity."""
    return tuple(
        sql_rows(
            url,
            """
            SELECT (SELECT count(*) FROM pg_publication),
                   (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()),
                   (SELECT count(*) FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid
                    WHERE d.datname = current_database()),
                   (SELECT relreplident FROM pg_class WHERE oid = to_regclass('memorix.memories'))
            """,
        )[0]
    )


def _history(url: str, tenant: str) -> list[tuple[Any, ...]]:
    return sql_rows(
        url,
        "SELECT memory_id, operation, at, actor, metadata::text FROM memorix.history WHERE tenant = %s "
        "ORDER BY at, memory_id, operation",
        (tenant,),
    )


def _everything(url: str) -> tuple[Any, ...]:
    """What a refused or undone move must leave exactly as it was."""
    history = sql_value(
        url, "SELECT md5(coalesce(string_agg(h::text, ',' ORDER BY event_id), '')) FROM memorix.history h"
    )
    return (db_fingerprint(url), history, _replication_state(url))


def _subscription_synced(url: str) -> bool:
    states = [r[0] for r in sql_rows(url, "SELECT srsubstate FROM pg_subscription_rel")]
    return bool(states) and all(s == "r" for s in states)


class _HeldSnapshot:
    """An open transaction with a snapshot on the destination: a ``CREATE INDEX CONCURRENTLY``
    there waits for it to end, which holds the move after its initial copy (it builds the new
    collections' HNSW indexes then) for as long as the test needs."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url)
        self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        self.conn.execute("SELECT 1").fetchone()

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


class _WriterDuringCopy:
    """Once the initial copy is done (the move is held before its check, see _HeldSnapshot),
    update a memory of tenant "a" and one of "b" and delete another of "a" at the source, then
    let the move go on. With ``wait_for_arrival``, the update and the delete must first reach
    the destination by replication alone."""

    def __init__(
        self,
        source: str,
        destination: str,
        updated: str,
        other: str,
        deleted: str,
        *,
        wait_for_arrival: bool,
        new_collection: str | None = None,
    ) -> None:
        self.source, self.destination = source, destination
        self.updated, self.other, self.deleted = updated, other, deleted
        self.wait_for_arrival = wait_for_arrival
        self.new_collection = new_collection
        self.stored_late: str | None = None
        self.held = _HeldSnapshot(destination)
        self.error: BaseException | None = None
        self.identity_during: str | None = None
        self.arrived: bool | None = None
        self.thread = threading.Thread(target=self._run)

    def _arrived(self) -> bool:
        during = sql_value(
            self.destination,
            "SELECT metadata->>'during' FROM memorix.memories WHERE id = %s",
            (self.updated,),
        )
        gone = sql_value(
            self.destination, "SELECT count(*) FROM memorix.memories WHERE id = %s", (self.deleted,)
        )
        return during == "1" and gone == 0

    def _run(self) -> None:
        try:
            assert wait_for(lambda: _subscription_synced(self.destination), timeout=60)
            self.identity_during = _replication_state(self.source)[3]
            change = (
                "UPDATE memorix.memories SET metadata = metadata || %s::jsonb WHERE tenant = %s AND id = %s"
            )
            with psycopg.connect(self.source) as conn:
                conn.execute(change, ('{"during": 1}', "a", self.updated))
                conn.execute(change, ('{"during": 1}', "b", self.other))
                conn.execute("DELETE FROM memorix.memories WHERE tenant = 'a' AND id = %s", (self.deleted,))
            if self.new_collection is not None:  # a collection the tenant starts to use now
                late = MemoryAPI(
                    embedder=f"hash-{DIM}",
                    collection_name=self.new_collection,
                    database_url=self.source,
                    tenant="a",
                )
                self.stored_late = late.store("stored during the move", {"late": True})
            if self.wait_for_arrival:
                self.arrived = wait_for(self._arrived, timeout=30)
        except BaseException as exc:  # reported by the test body
            self.error = exc
        finally:
            self.held.release()

    def __enter__(self) -> _WriterDuringCopy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(90)
        self.held.release()
        assert self.error is None, self.error
        if self.wait_for_arrival:
            assert self.arrived, (
                "the update and the delete made during the copy did not reach the destination"
            )


def test_a_tenant_moves_with_its_collections_history_and_a_write_made_during_the_copy(
    make_api, logical_database_url: str, database_url: str
) -> None:
    source, destination = logical_database_url, database_url
    notes_a, notes_vectors = _seed(source, "a", "notes", 120, seed=1)
    facts_a, facts_vectors = _seed(source, "a", "facts", 40, seed=2)
    notes_b, _ = _seed(source, "b", "notes", 60, seed=3)
    _seed(source, None, "notes", 30, seed=4)
    identity_before = _replication_state(source)[3]
    history_before = _history(source, "a")
    b_before = sql_rows(
        source,
        "SELECT id, text, metadata FROM memorix.memories WHERE tenant = 'b' ORDER BY collection_id, id",
    )
    query_notes, query_facts = notes_vectors[0] + 0.3 * notes_vectors[1], facts_vectors[5]

    on_source = make_api("notes", embedder=f"hash-{DIM}", database_url=source, tenant="a")
    expected_notes = [m.id for m in on_source.retrieve(None, top_k=10, embedding=query_notes)]
    facts_source = make_api("facts", embedder=f"hash-{DIM}", database_url=source, tenant="a")
    expected_facts = [m.id for m in facts_source.retrieve(None, top_k=5, embedding=query_facts)]
    updated, deleted = notes_a[0], next(i for i in reversed(notes_a) if i not in expected_notes)
    expected_notes = expected_notes[:5]
    writer = _WriterDuringCopy(
        source, destination, updated, notes_b[0], deleted, wait_for_arrival=False, new_collection="late"
    )
    with writer:
        receipt = move_tenant("a", to=destination, database_url=source, timeout=120)
    assert writer.identity_during == identity_before  # no REPLICA IDENTITY FULL (text_search)

    assert receipt.collections == {"facts": 40, "late": 1, "notes": 119}
    assert receipt.total == 160 and receipt.source_cleaned and receipt.seconds > 0
    assert receipt.history_events == len(history_before) + 3
    late = make_api("late", embedder=f"hash-{DIM}", database_url=destination, tenant="a")
    assert late.get(writer.stored_late).text == "stored during the move"

    on_destination = make_api("notes", embedder=f"hash-{DIM}", database_url=destination, tenant="a")
    assert [m.id for m in on_destination.retrieve(None, top_k=5, embedding=query_notes)] == expected_notes
    facts_destination = make_api("facts", embedder=f"hash-{DIM}", database_url=destination, tenant="a")
    assert [m.id for m in facts_destination.retrieve(None, top_k=5, embedding=query_facts)] == expected_facts
    assert on_destination.count() == 119 and facts_destination.count() == 40
    moved = on_destination.get(updated, include_embeddings=True)
    assert moved is not None and moved.metadata == {"i": 0, "who": "a", "during": 1}
    np.testing.assert_allclose(moved.embedding, notes_vectors[0], rtol=1e-6)
    assert on_destination.get(deleted) is None
    assert facts_destination.get(facts_a[7]).text == "a facts 7"

    # The source keeps "b" and the memories without a tenant, and nothing of "a".
    assert sql_value(source, "SELECT count(*) FROM memorix.memories WHERE tenant = 'a'") == 0
    assert sql_value(source, "SELECT count(*) FROM memorix.history WHERE tenant = 'a'") == 0
    b_after = sql_rows(
        source,
        "SELECT id, text, metadata FROM memorix.memories WHERE tenant = 'b' ORDER BY collection_id, id",
    )
    assert [row for row in b_after if row[0] != notes_b[0]] == [
        row for row in b_before if row[0] != notes_b[0]
    ]
    assert dict((r[0], r[2]) for r in b_after)[notes_b[0]]["during"] == 1
    assert sql_value(source, "SELECT count(*) FROM memorix.memories WHERE coalesce(tenant, '') = ''") == 30
    assert (
        MemoryAPI(embedder=f"hash-{DIM}", collection_name="notes", database_url=source, tenant="b").count()
        == 60
    )

    # History travelled with its times; the copy itself wrote none at the destination.
    moved_history = _history(destination, "a")
    assert set(history_before) < set(moved_history)
    assert sorted((e[0], e[1]) for e in set(moved_history) - set(history_before)) == sorted(
        [(updated, "update"), (deleted, "delete"), (writer.stored_late, "store")]
    )
    assert len(moved_history) == receipt.history_events

    # Nothing of the move is left behind: publication, slot, subscription, replica identity.
    assert _replication_state(source) == (0, 0, 0, identity_before)
    assert _replication_state(destination)[:3] == (0, 0, 0)
    ids = sql_rows(source, "SELECT name, id FROM memorix.collections ORDER BY name")
    assert sql_rows(destination, "SELECT name, id FROM memorix.collections ORDER BY name") == ids
    built = sql_rows(
        destination,
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE starts_with(c.relname, 'memories_embedding_hnsw_') ORDER BY 1",
    )
    assert built == sorted((f"memories_embedding_hnsw_{i}", True) for _name, i in ids)
    # A collection created at the destination afterwards never takes a moved one's id.
    other = MemoryAPI(embedder=f"hash-{DIM}", collection_name="later", database_url=destination)
    other.store("x", {})
    assert sql_value(destination, "SELECT id FROM memorix.collections WHERE name = 'later'") > max(
        r[0] for r in sql_rows(source, "SELECT id FROM memorix.collections")
    )


@pytest.mark.parametrize("schema", ["tenant in the primary key", "no stored generated column"])
def test_updates_and_deletes_replicate_when_the_replica_identity_can_cover_the_tenant(
    schema: str, logical_database_url: str, database_url: str
) -> None:
    source, destination = logical_database_url, database_url
    notes_a, _ = _seed(source, "a", "notes", 30, seed=1)
    notes_b, _ = _seed(source, "b", "notes", 10, seed=2)
    if schema == "tenant in the primary key":
        # The layout with ``tenant`` leading the key: the default identity covers it as it is.
        key = sql_value(
            source,
            "SELECT conname FROM pg_constraint WHERE conrelid = 'memorix.memories'::regclass "
            "AND contype = 'p'",
        )
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "ALTER TABLE memorix.memories DROP CONSTRAINT {}, "
                    "ADD PRIMARY KEY (tenant, collection_id, id)"
                ).format(sql.Identifier(key))
            )
        identity_during = "d"
    else:
        # A key without ``tenant`` (the layout before migration 0010) on a table without stored
        # generated columns (PostgreSQL 17 and older do not check them): the move sets REPLICA
        # IDENTITY FULL, and puts the default back afterwards.
        sql_exec(source, "ALTER TABLE memorix.memories DROP COLUMN text_search")
        sql_exec(source, "ALTER TABLE memorix.memories DROP CONSTRAINT memories_pkey")
        sql_exec(source, "ALTER TABLE memorix.memories ADD PRIMARY KEY (collection_id, id)")
        identity_during = "f"
    with _WriterDuringCopy(
        source, destination, notes_a[0], notes_b[0], notes_a[1], wait_for_arrival=True
    ) as writer:
        receipt = move_tenant("a", destination, source, timeout=120)
    assert writer.identity_during == identity_during
    assert receipt.collections == {"notes": 29}
    assert _replication_state(source) == (0, 0, 0, "d")
    assert sql_rows(
        destination, "SELECT id, metadata FROM memorix.memories WHERE id = %s", (notes_a[0],)
    ) == [(notes_a[0], {"i": 0, "who": "a", "during": 1})]
    assert (
        sql_value(source, "SELECT metadata->>'during' FROM memorix.memories WHERE id = %s", (notes_b[0],))
        == "1"
    )
    assert sql_value(source, "SELECT count(*) FROM memorix.memories WHERE tenant = 'b'") == 10


def test_a_move_that_cannot_finish_in_time_is_undone_on_both_sides(
    logical_database_url: str, database_url: str
) -> None:
    source, destination = logical_database_url, database_url
    _seed(source, "a", "notes", 50, seed=1)
    _seed(source, "b", "notes", 20, seed=2)
    _seed(destination, "c", "notes", 5, seed=3)  # the same collection (id, configuration) as at the source
    before = (_everything(source), _everything(destination))
    held = _HeldSnapshot(destination)
    timeout = 6.0
    blocked: dict[str, Any] = {}
    ended = threading.Event()  # the move returned or raised

    def hold_a_write_open() -> None:
        """An uncommitted write of the tenant at the source, held until the move ends: its final
        check, which needs writes paused, can never run. (Held for a fixed time, it could end
        before a slow move's last lock attempt, which then succeeded.)"""
        try:
            if not wait_for(lambda: ended.is_set() or _subscription_synced(destination), timeout=120):
                return
            if ended.is_set():
                return  # the initial copy alone outlasted the timeout: undone all the same
            with psycopg.connect(source) as conn:
                conn.execute(
                    "UPDATE memorix.memories SET metadata = metadata || '{\"x\": 1}' WHERE tenant = 'a'"
                )
                held.release()
                ended.wait(120)
                conn.rollback()
        except BaseException as exc:
            blocked["error"] = exc
        finally:
            held.release()

    writer = threading.Thread(target=hold_a_write_open)
    writer.start()
    try:
        with pytest.raises(MemorixError, match="within the timeout") as raised:
            move_tenant("a", destination, source, timeout=timeout)
    finally:
        ended.set()
        writer.join(60)
    assert "error" not in blocked, blocked.get("error")
    assert "source is unchanged" in str(raised.value)
    assert (_everything(source), _everything(destination)) == before


def _refused(
    source: str,
    destination: str,
    error: type[Exception],
    match: str,
    tenant: str = "a",
    timeout: float = 30,
    source_conninfo: str | None = None,
) -> None:
    before = (_everything(source), _everything(destination))
    with pytest.raises(error, match=match):
        move_tenant(tenant, destination, source, timeout=timeout, source_conninfo=source_conninfo)
    assert (_everything(source), _everything(destination)) == before


def test_a_source_without_logical_wal_is_refused(logical_database_url: str, database_url: str) -> None:
    _seed(database_url, "a", "notes", 10, seed=1)
    _seed(logical_database_url, "c", "other", 3, seed=2)
    assert sql_value(database_url, "SHOW wal_level") != "logical"
    _refused(database_url, logical_database_url, ConfigurationError, "wal_level = logical")


def test_a_collection_configured_otherwise_at_the_destination_is_refused(
    logical_database_url: str, database_url: str
) -> None:
    _seed(logical_database_url, "a", "notes", 10, seed=1)
    MemoryAPI(embedder="hash-32", collection_name="notes", database_url=database_url).store("x", {})
    _refused(
        logical_database_url, database_url, ConfigurationError, r"collection 'notes' \(id 1\).*dimension 32"
    )


def test_a_collection_with_another_id_at_the_destination_is_refused(
    logical_database_url: str, database_url: str
) -> None:
    _seed(logical_database_url, "a", "notes", 10, seed=1)
    MemoryAPI(embedder=f"hash-{DIM}", collection_name="first", database_url=database_url)
    MemoryAPI(embedder=f"hash-{DIM}", collection_name="notes", database_url=database_url)
    _refused(
        logical_database_url,
        database_url,
        ConfigurationError,
        "conflicts with a collection at the destination",
    )


def test_an_unknown_or_invalid_tenant_and_the_same_database_are_refused(
    logical_database_url: str, database_url: str
) -> None:
    _seed(logical_database_url, "a", "notes", 10, seed=1)
    _seed(database_url, "c", "notes", 3, seed=2)
    _refused(
        logical_database_url, database_url, InvalidInput, "tenant 'nobody' has no memories", tenant="nobody"
    )
    _refused(logical_database_url, database_url, InvalidInput, "tenant must be a non-empty str", tenant="")
    _refused(logical_database_url, logical_database_url, ConfigurationError, "the same database")
    _refused(logical_database_url, database_url, InvalidInput, "timeout must be a positive", timeout=0)


def test_the_tenant_already_at_the_destination_or_an_id_taken_there_is_refused(
    logical_database_url: str, database_url: str
) -> None:
    ids, _ = _seed(logical_database_url, "a", "notes", 10, seed=1)
    MemoryAPI(embedder=f"hash-{DIM}", collection_name="notes", database_url=database_url, tenant="z").store(
        "taken", {}, id=ids[3]
    )
    key_has_tenant = sql_value(
        database_url,
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY (i.indkey::int2[]) WHERE i.indrelid = 'memorix.memories'::regclass "
        "AND i.indisprimary AND a.attname = 'tenant')",
    )
    if not key_has_tenant:  # ids unique per collection: another tenant's id there is a clash
        _refused(
            logical_database_url,
            database_url,
            InvalidInput,
            f"memory id '{ids[3]}'.*is taken at the destination",
        )
    MemoryAPI(embedder=f"hash-{DIM}", collection_name="notes", database_url=database_url, tenant="a").store(
        "x", {}
    )
    _refused(logical_database_url, database_url, InvalidInput, "already has 1 memories at the destination")


def test_the_cli_moves_a_tenant_and_prints_the_receipt(logical_database_url: str, database_url: str) -> None:
    _seed(logical_database_url, "a", "notes", 25, seed=1)
    _seed(logical_database_url, "b", "notes", 5, seed=2)
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["move-tenant", "a", "--to", database_url, "--database-url", logical_database_url, "--timeout", "60"],
    )
    assert result.exit_code == 0, result.output
    receipt = json.loads(result.output)
    assert receipt["collections"] == {"notes": 25} and receipt["total"] == 25 and receipt["source_cleaned"]
    assert sql_value(database_url, "SELECT count(*) FROM memorix.memories WHERE tenant = 'a'") == 25
    assert sql_value(logical_database_url, "SELECT count(*) FROM memorix.memories WHERE tenant = 'a'") == 0

    refused = runner.invoke(
        main, ["move-tenant", "a", "--to", database_url, "--database-url", logical_database_url]
    )
    assert refused.exit_code == 1
    assert "InvalidInput: tenant 'a' has no memories" in refused.output and "Traceback" not in refused.output

    # --keep-source: copied and checked, and still at the source.
    kept = runner.invoke(
        main,
        ["move-tenant", "b", "--to", database_url, "--database-url", logical_database_url, "--keep-source"],
    )
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.output)["source_cleaned"] is False
    for url in (database_url, logical_database_url):
        assert sql_value(url, "SELECT count(*) FROM memorix.memories WHERE tenant = 'b'") == 5
    assert _replication_state(logical_database_url)[:3] == (0, 0, 0)


def test_a_destination_that_cannot_reach_the_source_is_refused_and_undone(
    logical_database_url: str, database_url: str
) -> None:
    """The publication and the slot exist by then, and the collection was created at the
    destination: all of it goes again."""
    _seed(logical_database_url, "b", "first", 2, seed=1)  # id 1, as "elsewhere" has at the destination
    _seed(logical_database_url, "a", "notes", 10, seed=1)  # id 2: created at the destination
    _seed(database_url, "c", "elsewhere", 2, seed=2)
    _refused(
        logical_database_url,
        database_url,
        ConfigurationError,
        "could not connect to the source.*source_conninfo",
        source_conninfo="postgresql://postgres@127.0.0.1:1/nowhere",
    )
