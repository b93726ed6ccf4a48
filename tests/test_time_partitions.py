"""Memories partitioned by month of created_at (migration 0011, ``MEMORIX_TIME_PARTITIONS=month``).

Every test runs on a new database migrated with the variable. The months are made on demand
by ``memorix.ensure_month_partitions`` (no partition exists before its first row, except the
current and the next month), an upsert finds its id in whatever month it was stored, cleanup
drops whole months that hold only its collection's rows, and no role but the owner can read a
month directly.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from memorix_pg import MemorixError
from memorix_pg.database import dispose_engine, get_engine
from memorix_pg.migrate import current_revision, downgrade, head_revision, upgrade
from tests.support.helpers import app_role_url, sql_rows, sql_value, unit_vectors

DIM = 16
APP_ROLE = "memorix_timeparts_app"
ENV = "MEMORIX_TIME_PARTITIONS"


@pytest.fixture
def partitioned(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new database migrated with MEMORIX_TIME_PARTITIONS=month."""
    monkeypatch.setenv(ENV, "month")
    upgrade(database_url)
    monkeypatch.delenv(ENV)
    return database_url


def _month_name(when: datetime) -> str:
    when = when.astimezone(UTC)
    return f"memories_{when.year:04d}_{when.month:02d}"


def _months_ago(n: int, day: int = 15) -> datetime:
    """Noon on ``day`` of the month ``n`` months before this one (UTC)."""
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 - n
    return datetime(index // 12, index % 12 + 1, day, 12, tzinfo=UTC)


def _partitions(url: str) -> list[str]:
    rows = sql_rows(
        url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'memorix.memories'::regclass ORDER BY 1",
    )
    return [str(r[0]) for r in rows]


def _grants(url: str, partition: str) -> list[str]:
    """Every privilege on ``partition`` held by a role that is not its owner."""
    rows = sql_rows(
        url,
        "SELECT coalesce(r.rolname, 'PUBLIC') || ':' || a.privilege_type "
        "FROM pg_class c, aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE c.oid = %s::regclass AND a.grantee <> c.relowner",
        (f"memorix.{partition}",),
    )
    return [str(r[0]) for r in rows]


def _nearest(vectors: np.ndarray, ids: list[str], query: np.ndarray, k: int, keep: Any = None) -> list[str]:
    """Brute force: the ``k`` ids nearest ``query`` by cosine (unit vectors), among ``keep``."""
    order = np.argsort(-(vectors @ query), kind="stable")
    return [ids[i] for i in order if keep is None or keep(i)][:k]


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, DIM))
    v = centres[rng.integers(0, 8, n)] + 0.4 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_the_migration_partitions_a_new_database_by_month(partitioned: str) -> None:
    url = partitioned
    assert sql_value(url, "SELECT relkind FROM pg_class WHERE oid = 'memorix.memories'::regclass") == "p"
    assert sql_value(url, "SELECT pg_get_partkeydef('memorix.memories'::regclass)") == "RANGE (created_at)"
    assert (
        sql_value(
            url,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'memories_pkey' "
            "AND conrelid = 'memorix.memories'::regclass",
        )
        == "PRIMARY KEY (tenant, collection_id, id, created_at)"
    )
    # The current and the next month exist, and nobody but their owner may touch them.
    assert _partitions(url) == [_month_name(_months_ago(0)), _month_name(_months_ago(-1))]
    for partition in _partitions(url):
        assert _grants(url, partition) == []
        assert sql_value(
            url, "SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", (f"memorix.{partition}",)
        )
    bounds = sql_value(
        url,
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = %s::regclass",
        (f"memorix.{_month_name(_months_ago(0))}",),
    )
    start = _months_ago(0, day=1).replace(hour=0)
    end = _months_ago(-1, day=1)
    assert bounds == f"FOR VALUES FROM ('{start:%Y-%m-%d} 00:00:00+00') TO ('{end:%Y-%m-%d} 00:00:00+00')"
    assert sql_value(
        url, "SELECT prosecdef FROM pg_proc WHERE oid = 'memorix.ensure_month_partitions'::regproc"
    )
    with pytest.raises(MemorixError, match="partitioned by month"):
        downgrade(url, "0010")
    assert current_revision(get_engine(url)) == head_revision()


def test_partitions_by_month_are_refused_where_they_cannot_apply(  # type: ignore[no-untyped-def]
    make_api, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrade(database_url, "0010")
    make_api("old", embedder=f"hash-{DIM}").store("kept", id="x")  # migrates to head without the variable
    downgrade(database_url, "0010")
    monkeypatch.setenv(ENV, "week")
    with pytest.raises(MemorixError, match=f"{ENV} accepts only 'month'"):
        upgrade(database_url)
    monkeypatch.setenv(ENV, "month")
    with pytest.raises(
        MemorixError, match=r"new databases only: memorix\.memories holds rows.*memorix-pg export"
    ):
        upgrade(database_url)
    assert current_revision(get_engine(database_url)) == "0010"
    assert (
        sql_value(database_url, "SELECT relkind FROM pg_class WHERE oid = 'memorix.memories'::regclass")
        == "r"
    )
    monkeypatch.delenv(ENV)
    upgrade(database_url)  # without it, the same database upgrades and changes nothing
    assert sql_value(database_url, "SELECT to_regproc('memorix.ensure_month_partitions') IS NULL")
    assert make_api("old", embedder=f"hash-{DIM}").get("x").text == "kept"


def test_partitions_by_month_are_refused_on_tenant_partitions(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMORIX_TENANT_PARTITIONS", "2")
    monkeypatch.setenv(ENV, "month")
    with pytest.raises(MemorixError, match="partitioned by tenant"):
        upgrade(database_url)
    # The refusal rolled the whole upgrade back: not even 0010 stayed.
    assert sql_value(database_url, "SELECT to_regclass('memorix.memories') IS NULL")


def test_every_call_works_on_month_partitions(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    """Memories spread over six months: every call, and searches that equal brute force."""
    url = partitioned
    n = 300
    api = make_api("months", embedder=f"hash-{DIM}")
    ids = [f"m{i}" for i in range(n)]
    vectors = _clustered(n, seed=3)
    stamps = [_months_ago(i % 6, day=1 + i % 27) + timedelta(minutes=i) for i in range(n)]
    metadatas = [{"i": i, "even": i % 2 == 0, "month": i % 6} for i in range(n)]
    texts = [f"memory {i}" for i in range(n)]
    assert api.store_batch(texts, metadatas, ids=ids, embeddings=vectors, created_at=stamps) == ids  # COPY
    assert sorted(_partitions(url)) == sorted(
        {_month_name(t) for t in stamps} | {_month_name(_months_ago(-1))}
    )
    placed = dict(sql_rows(url, "SELECT tableoid::regclass::text, count(*) FROM memorix.memories GROUP BY 1"))
    assert placed == {f"memorix.{_month_name(_months_ago(k))}": n // 6 for k in range(6)}

    assert api.count() == n and api.count({"even": True}) == n // 2
    assert api.get("m5").text == "memory 5"
    assert [m.text for m in api.get(ids=["m9", "nope", "m2"])] == ["memory 9", "memory 2"]
    oldest = sorted(range(n), key=lambda i: (stamps[i], i))
    assert [m.id for m in api.list(limit=5, order="oldest")] == [ids[i] for i in oldest[:5]]

    # Searches across the months: exact, planned, walked (a Merge Append of each month's HNSW), filtered.
    for q in (7, 150, 299):
        query = vectors[q] + 0.05 * unit_vectors(1, dim=DIM, seed=q)[0]
        query = query / np.linalg.norm(query)
        expected = _nearest(vectors, ids, query, 10)
        for exact in (True, None, False):
            found = api.retrieve(None, top_k=10, embedding=query, exact=exact, ef_search=400)
            assert [m.id for m in found] == expected, (q, exact)
        assert api.explain_retrieve(None, top_k=10, embedding=query, exact=False).path == "hnsw"
        recent = _nearest(vectors, ids, query, 10, keep=lambda i: i % 6 == 0)
        assert [m.id for m in api.retrieve(None, 10, {"month": 0}, query)] == recent
        assert [
            m.id for m in api.retrieve(None, 10, {"month": 0}, query, exact=False, ef_search=400)
        ] == recent
    hybrid = api.retrieve("memory 7", top_k=5, embedding=vectors[7], mode="hybrid")
    assert hybrid[0].id == "m7"
    assert api.retrieve("memory 11", top_k=3, mode="text")[0].id == "m11"

    # Writes find their row in whatever month it lives.
    assert api.update("m3", metadata={"changed": True}).metadata["changed"] is True
    assert api.delete("m4") is True and api.get("m4") is None
    assert api.delete_by_filter({"i": {"$gte": n - 10}}) == 10
    assert api.set_ttl(["m1", "m2"], timedelta(microseconds=1)) == 2
    time.sleep(0.01)
    assert api.purge_expired() == 2
    assert api.count() == n - 13
    assert api.stats("month")["total"] == n - 13
    assert api.archive({"i": {"$gte": 0, "$lt": 10}}, to="months_archive") == 7  # m0..m9 less m1, m2, m4
    assert make_api("months_archive", embedder=f"hash-{DIM}").get("m0").text == "memory 0"
    report = api.compress({"i": {"$gte": 200, "$lt": 212}}, window=timedelta(days=400))
    assert report.compressed == 12 and api.count({"compressed": True}) == report.windows
    assert [p.id_a for p in api.find_duplicates(threshold=0.99999, limit=10)] == []
    assert api.forget({"i": 100}).memories == {"months": 1}
    assert [e.operation for e in api.history("m3")] == ["store", "update", "archive"]
    assert api.check_recall(queries=3, top_k=2).recall == 1.0


def test_an_id_stored_again_is_updated_in_its_month(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    """The key holds created_at, so only the library keeps an id unique: storing it again
    updates the row where it lies, in the INSERT path and in the COPY path, per tenant."""
    url = partitioned
    alice = make_api("upserts", embedder=f"hash-{DIM}", tenant="alice")
    bob = make_api("upserts", embedder=f"hash-{DIM}", tenant="bob")
    old = _months_ago(5)
    alice.store_batch(["first"], ids=["x"], created_at=[old])
    assert alice.store("second", {"v": 2}, id="x") == "x"  # stamped now: another month
    bob.store("bob's x", id="x")
    rows = sql_rows(
        url, "SELECT tenant, text, created_at, tableoid::regclass::text FROM memorix.memories ORDER BY 1"
    )
    assert [(t, text) for t, text, _, _ in rows] == [("alice", "second"), ("bob", "bob's x")]
    assert rows[0][2] == old and rows[0][3] == f"memorix.{_month_name(old)}"
    assert alice.get("x").metadata == {"v": 2}

    # The COPY path: 300 ids, a third stored before in three older months.
    ids = [f"c{i}" for i in range(300)]
    alice.store_batch(
        [f"old {i}" for i in range(100)],
        ids=ids[:100],
        created_at=[_months_ago(1 + i % 3) for i in range(100)],
    )
    assert alice.store_batch([f"new {i}" for i in range(300)], ids=ids) == ids
    assert alice.count() == 301
    assert (
        sql_value(
            url,
            "SELECT count(*) FROM (SELECT tenant, id FROM memorix.memories "
            "GROUP BY 1, 2 HAVING count(*) > 1) d",
        )
        == 0
    )
    assert [m.text for m in alice.get(ids=["c0", "c99", "c100"])] == ["new 0", "new 99", "new 100"]
    assert alice.get("c0").created_at == _months_ago(1)
    assert [e.operation for e in alice.history("c0")] == ["store", "update"]
    # Two writers of the same new ids at once: the advisory lock lets one insert, the other update.
    results: list[Any] = []

    def write(label: str) -> None:
        api = make_api("upserts", embedder=f"hash-{DIM}", tenant="carol")
        results.append(api.store_batch([f"{label} {i}" for i in range(20)], ids=[f"r{i}" for i in range(20)]))

    threads = [threading.Thread(target=write, args=(w,)) for w in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    assert sql_value(url, "SELECT count(*) FROM memorix.memories WHERE tenant = 'carol'") == 20


def test_cleanup_drops_the_old_months_it_alone_holds(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    url = partitioned
    api = make_api("aging", embedder=f"hash-{DIM}")
    other = make_api("other", embedder=f"hash-{DIM}")
    # Three rows in each of the months 1 to 6 ago; another collection shares month 5.
    ids = [f"a{k}_{j}" for k in range(1, 7) for j in range(3)]
    api.store_batch(
        ids, ids=ids, created_at=[_months_ago(k, day=10 + j) for k in range(1, 7) for j in range(3)]
    )
    other.store_batch(["shared"], ids=["o"], created_at=[_months_ago(5)])
    api.set_ttl(["a6_0"], timedelta(microseconds=1))  # expired: not counted, dropped with its month
    time.sleep(0.01)
    today = api.store("today")
    # The cutoff falls on the 12th of three months ago: months 4 to 6 lie wholly before it.
    now = datetime.now(UTC)
    age = now - _months_ago(3, day=12).replace(hour=0)
    assert api.count_older_than(age) == 3 * 3 - 1 + 2  # months 4-6 less the expired, and 2 of month 3
    before = _partitions(url)
    assert api.cleanup(age) == 10
    after = _partitions(url)
    gone = sorted(set(before) - set(after))
    assert gone == sorted({_month_name(_months_ago(4)), _month_name(_months_ago(6))})  # 5 is shared
    assert _month_name(_months_ago(5)) in after and _month_name(_months_ago(3)) in after
    kept = ["a3_2", "a2_0", "a2_1", "a2_2", "a1_0", "a1_1", "a1_2", today]
    assert sorted(m.id for m in api.list(limit=100)) == sorted(kept)
    assert other.get("o").text == "shared"
    # Each dropped memory has the event the DELETE would have written.
    events = dict(
        sql_rows(
            url,
            "SELECT memory_id, operation FROM memorix.history WHERE operation IN ('cleanup', 'purge')",
        )
    )
    expected = {i: "cleanup" for i in ids if i[1] in "456" and i != "a6_0"} | {
        "a3_0": "cleanup",
        "a3_1": "cleanup",
    }
    assert events == {**expected, "a6_0": "purge"}
    # A filter never drops: the months stay and only its rows go.
    api.store_batch(
        ["x", "y"],
        ids=["x", "y"],
        created_at=[_months_ago(8), _months_ago(8)],
        metadatas=[{"k": 1}, {"k": 2}],
    )
    assert api.cleanup(age, filter={"k": 1}) == 1
    assert _month_name(_months_ago(8)) in _partitions(url)
    assert api.cleanup(age) == 1
    assert _month_name(_months_ago(8)) not in _partitions(url)
    # A month made again by a later import is an ordinary month.
    api.store_batch(["back"], ids=["back"], created_at=[_months_ago(6)])
    assert api.get("back").text == "back" and _month_name(_months_ago(6)) in _partitions(url)


def test_cleanup_falls_back_to_delete_when_the_month_is_locked(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    url = partitioned
    api = make_api("locked", embedder=f"hash-{DIM}")
    api.store_batch(["a", "b"], ids=["a", "b"], created_at=[_months_ago(4), _months_ago(4)])
    month = _month_name(_months_ago(4))
    with psycopg.connect(url) as holder:  # a reader of that month holds its lock
        holder.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("memorix", month)))
        assert api.cleanup(timedelta(days=62)) == 2
        holder.rollback()
    assert month in _partitions(url)  # kept, emptied by the DELETE
    assert (
        sql_value(
            url, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("memorix", month)).as_string()
        )
        == 0
    )
    assert sql_value(url, "SELECT count(*) FROM memorix.history WHERE operation = 'cleanup'") == 2


def test_a_missing_month_is_made_and_the_write_retried(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    url = partitioned
    api = make_api("made", embedder=f"hash-{DIM}")
    api.store("first")  # this process has ensured the current month
    current = _month_name(_months_ago(0))
    with psycopg.connect(url, autocommit=True) as conn:  # it goes away behind the library's back
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("memorix", current)))
    assert api.store("second") and api.count() == 1
    assert current in _partitions(url) and _grants(url, current) == []
    # The same for the COPY path, with generated ids and with given ones (through its staging table).
    for ids in (None, [f"c{i}" for i in range(300)]):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("memorix", current)))
        assert len(api.store_batch([f"bulk {i}" for i in range(300)], ids=ids)) == 300
        assert api.count() == 300 and current in _partitions(url)


def test_an_import_makes_the_months_of_its_lines(partitioned: str, tmp_path: Any) -> None:
    """Export, then import into another collection: the lines' old months are made for them."""
    from memorix_pg import MemoryAPI
    from memorix_pg.transfer import export_jsonl, import_jsonl

    ancient = datetime(1999, 12, 31, 23, 59, tzinfo=UTC)
    source = MemoryAPI(embedder=f"hash-{DIM}", collection_name="source", database_url=partitioned)
    source.store_batch(["ancient", "recent"], ids=["z", "r"], created_at=[ancient, _months_ago(1)])
    path = tmp_path / "memories.jsonl"
    with path.open("w") as out:
        assert export_jsonl(source, out) == 2
    with psycopg.connect(partitioned, autocommit=True) as conn:  # the old months go with the source
        conn.execute("DROP TABLE memorix.memories_1999_12")
    target = MemoryAPI(embedder=f"hash-{DIM}", collection_name="target", database_url=partitioned)
    assert import_jsonl(target, path) == 2
    assert target.get("z").created_at == ancient
    assert "memories_1999_12" in _partitions(partitioned) and _grants(partitioned, "memories_1999_12") == []


@pytest.mark.embedded_server("the application role logs in without a password")
def test_an_app_role_cannot_read_around_the_policy_through_a_month(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    url = partitioned
    make_api("guarded", embedder=f"hash-{DIM}", tenant="alice").store("alice's secret")
    make_api("guarded", embedder=f"hash-{DIM}", tenant="bob").store("bob's secret")
    role = sql.Identifier(APP_ROLE)
    app_url = app_role_url(url, APP_ROLE)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT SELECT ON memorix.collections, memorix.alembic_version TO {}").format(role)
        )
        # Default privileges would grant every new table: a new month must still get none.
        conn.execute(
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA memorix GRANT SELECT ON TABLES TO {}").format(role)
        )
    try:
        # The app role writes an old memory through the library: its month is made for it.
        app = make_api("guarded", embedder=f"hash-{DIM}", tenant="alice", database_url=app_url)
        app.store_batch(["alice's old note"], ids=["old"], created_at=[_months_ago(7)])
        assert _month_name(_months_ago(7)) in _partitions(url)
        assert _grants(url, _month_name(_months_ago(7))) == []
        assert app.cleanup(timedelta(days=150)) == 1  # not the owner: the DELETE, no drop
        assert _month_name(_months_ago(7)) in _partitions(url)
        with psycopg.connect(app_url, autocommit=True) as conn:
            conn.execute("SELECT set_config('memorix.tenant', 'alice', false)")
            assert [r[0] for r in conn.execute("SELECT text FROM memorix.memories")] == ["alice's secret"]
            for partition in _partitions(url):  # no month may be read directly
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql.SQL("SELECT text FROM {}").format(sql.Identifier("memorix", partition)))
            # The function makes months and nothing else.
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 1200 months"):
                conn.execute("SELECT memorix.ensure_month_partitions('1900-01-01', '2200-01-01')")
    finally:
        dispose_engine(app_url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(role))


def test_a_write_completes_while_an_index_is_built(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    """Each month's index is built CONCURRENTLY: the build waits for an old snapshot, a store
    does not wait for the build."""
    url = partitioned
    api = make_api("building", embedder=f"hash-{DIM}")
    api.store_batch(["a", "b"], metadatas=[{"n": 1}, {"n": 2}], created_at=[_months_ago(2), _months_ago(0)])
    with psycopg.connect(url) as snapshot:
        snapshot.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        snapshot.execute("SELECT count(*) FROM memorix.collections")
        builder = make_api("building", embedder=f"hash-{DIM}")
        built: list[str] = []
        thread = threading.Thread(target=lambda: built.append(builder.create_index("n", type="number")))
        thread.start()
        assert not _wait(lambda: bool(built), 1.0)  # held up by the snapshot
        started = time.monotonic()
        api.store("written during the build", {"n": 3})
        assert time.monotonic() - started < 5 and thread.is_alive()
        snapshot.rollback()
    thread.join(60)
    assert built and sql_value(
        url, "SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", (f"memorix.{built[0]}",)
    )
    parts = sql_value(
        url, "SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass", (f"memorix.{built[0]}",)
    )
    assert parts == len(_partitions(url))
    assert api.count({"n": 3}) == 1


def _wait(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.embedded_server("the session's server must reach the test's source server on 127.0.0.1")
def test_a_tenant_moves_between_databases_partitioned_by_month(
    logical_database_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """move_tenant publishes via the root and makes the tenant's months at the destination."""
    from memorix_pg import MemoryAPI, move_tenant

    source, destination = logical_database_url, database_url
    monkeypatch.setenv(ENV, "month")
    upgrade(source)
    upgrade(destination)
    monkeypatch.delenv(ENV)
    stamps = [_months_ago(k, day=3) + timedelta(minutes=k) for k in (14, 9, 2)]
    alice = MemoryAPI(embedder=f"hash-{DIM}", collection_name="notes", database_url=source, tenant="a")
    alice.store_batch(["old", "older", "recent"], ids=["o1", "o2", "o3"], created_at=stamps)
    alice.store("now")
    MemoryAPI(embedder=f"hash-{DIM}", collection_name="notes", database_url=source, tenant="b").store("b's")
    receipt = move_tenant("a", to=destination, database_url=source, timeout=120)
    assert receipt.collections == {"notes": 4} and receipt.source_cleaned
    moved = MemoryAPI(embedder=f"hash-{DIM}", collection_name="notes", database_url=destination, tenant="a")
    assert moved.count() == 4
    assert [m.created_at for m in moved.get(ids=["o1", "o2", "o3"])] == stamps
    assert {_month_name(t) for t in stamps} <= set(_partitions(destination))
    assert sql_value(source, "SELECT count(*) FROM memorix.memories WHERE tenant = 'a'") == 0
    assert sql_value(source, "SELECT count(*) FROM memorix.memories WHERE tenant = 'b'") == 1


def test_a_cleanup_that_fails_half_way_leaves_every_month_and_row(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    url = partitioned
    api = make_api("atomic", embedder=f"hash-{DIM}")
    api.store_batch(
        ["a", "b", "boom", "c"],
        ids=["a", "b", "boom", "c"],
        created_at=[_months_ago(3, day=20), _months_ago(5), _months_ago(6), _months_ago(7)],
    )
    with psycopg.connect(url, autocommit=True) as conn:  # the drop of month 6 fails at its history event
        conn.execute(
            "CREATE FUNCTION memorix.refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.memory_id = 'boom' AND NEW.operation = 'cleanup' THEN RAISE EXCEPTION 'boom'; END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON memorix.history FOR EACH ROW "
            "EXECUTE FUNCTION memorix.refuse_boom()"
        )
    before = _partitions(url)
    with pytest.raises(psycopg.errors.RaiseException, match="boom"):
        api.cleanup(datetime.now(UTC) - _months_ago(3, day=25))
    assert _partitions(url) == before and api.count() == 4
    assert sql_value(url, "SELECT count(*) FROM memorix.history WHERE operation = 'cleanup'") == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER refuse_boom ON memorix.history")
    assert api.cleanup(datetime.now(UTC) - _months_ago(3, day=25)) == 4
    assert not {_month_name(_months_ago(k)) for k in (5, 6, 7)} & set(_partitions(url))


def test_a_backup_restores_its_months_and_later_months_are_made(
    partitioned: str, pg_server_url: str, tmp_path: Any
) -> None:
    """pg_dump / pg_restore carry the months, their (absent) grants and the function; the
    restored database makes the months of later writes itself."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import memorix_pg
    from memorix_pg import MemoryAPI

    notes = MemoryAPI(embedder=f"hash-{DIM}", collection_name="notes", database_url=partitioned)
    notes.store_batch(["old", "new"], ids=["o", "n"], created_at=[_months_ago(9), _months_ago(0)])
    memorix_pg.backup(tmp_path / "b.dump", database_url=partitioned)
    name = f"r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(pg_server_url)._replace(path=f"/{name}"))
    try:
        restored = memorix_pg.restore(tmp_path / "b.dump", database_url=url)
        assert restored.memories == 2
        assert _partitions(url) == _partitions(partitioned)
        assert all(_grants(url, p) == [] for p in _partitions(url))
        copy = MemoryAPI(embedder=f"hash-{DIM}", collection_name="notes", database_url=url)
        assert copy.get("o").created_at == _months_ago(9)
        copy.store_batch(["older"], ids=["o2"], created_at=[_months_ago(20)])
        copy.store("again", id="o")  # the upsert finds it in its month
        assert _month_name(_months_ago(20)) in _partitions(url)
        assert copy.count() == 3 and copy.get("o").text == "again"
    finally:
        dispose_engine(url)
        memorix_pg.api.forget_database(url)
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
