"""Crashes: SIGKILL the PostgreSQL server in the middle of an operation, start it again, and
check the operation was all-or-nothing; a server that stops or dies is survived.

Every test here runs on its own embedded server in a temporary MEMORIX_DATA_DIR (never the
session's shared server), stops it, and the module checks that no postgres process serving
those directories is left. A kill is SIGKILL either to the whole server (the operation's backend,
every other backend, the postmaster: an OOM kill or power cut) or to the postmaster alone, as
``kill -9 <pid from embedded_server_status>`` does; its backends then run on until they notice,
and a busy one finishes its statement (it may even commit). The trials alternate the two and
wait for such orphans to exit before the next call.
PID 1 here does not always reap orphans: a killed postmaster can stay a zombie, which the
library must treat as dead.

The trials print a table (``pytest -s``); benchmarks/faults.py runs the same trials 20 times each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from memorix_pg import DatabaseUnavailable, HashEmbedder, MemoryAPI
from memorix_pg.server import embedded_server_status, ensure_embedded_server, stop_embedded_server
from tests.support.fault_lab import (
    FAST_CRASH_RECOVERY,
    Activity,
    FaultLab,
    OpThread,
    format_trials,
    kill_embedded_server,
)
from tests.support.helpers import pid_alive, postgres_processes, sql_exec, sql_value, unit_vectors, wait_for

TRIALS = 5
SEED = int(os.environ.get("MEMORIX_FAULT_SEED", "6"))
DIM = 8

_data_dirs: list[Path] = []


def _new_data_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _data_dirs.append(path)
    return path


def _tear_down(path: Path) -> list[object]:
    """Stop the server of ``path``; kill (and report) any postgres process still serving it."""
    stop_embedded_server(path)
    leftovers = postgres_processes(path / "pgdata")
    for proc in leftovers:
        proc.kill()
    shutil.rmtree(path, ignore_errors=True)
    return leftovers


@pytest.fixture(scope="module", autouse=True)
def no_postgres_left_behind() -> Iterator[None]:
    """After the module: no live postgres process serves any data dir these tests made."""
    yield
    left = [p for path in _data_dirs for p in postgres_processes(path / "pgdata")]
    for proc in left:
        proc.kill()
    assert not left, f"postgres processes outlived the fault tests: {left}"


@pytest.fixture(scope="module")
def lab_dir() -> Iterator[Path]:
    """The module's embedded server data dir (MEMORIX_DATA_DIR), stopped at the end."""
    path = _new_data_dir("mx-faults-")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMORIX_DATA_DIR", str(path))
        mp.delenv("MEMORIX_DATABASE_URL", raising=False)
        yield path
    leftovers = _tear_down(path)
    assert not leftovers, f"postgres outlived the module: {leftovers}"


@pytest.fixture(scope="module")
def lab(lab_dir: Path) -> FaultLab:
    lab = FaultLab(lab_dir, seed=SEED, batch_rows=20_000, bulk_rows=10_000, windows=10, dim=DIM)
    lab.setup()
    return lab


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private MEMORIX_DATA_DIR for one test, its server stopped afterwards."""
    path = _new_data_dir("mx-fault-")
    monkeypatch.setenv("MEMORIX_DATA_DIR", str(path))
    monkeypatch.delenv("MEMORIX_DATABASE_URL", raising=False)
    yield path
    leftovers = _tear_down(path)
    assert not leftovers, f"postgres outlived the test: {leftovers}"


def embedded_api(collection: str = "faults") -> MemoryAPI:
    api = MemoryAPI(embedder=HashEmbedder(DIM), collection_name=collection)
    sql_exec(api.database_url, FAST_CRASH_RECOVERY)
    return api


# -- all-or-nothing under SIGKILL ---------------------------------------------------------


@pytest.mark.parametrize("op", FaultLab.OPS)
def test_an_operation_killed_mid_way_is_all_or_nothing(lab: FaultLab, op: str) -> None:
    """Five kills per operation at random points; each trial checks (inside FaultLab) exact
    counts, no half batch, every id in exactly one collection, per-window compression."""
    trials = [lab.run(op, n, how) for n, how in enumerate(lab.plan(op, TRIALS))]
    table = format_trials(trials)
    print(f"\n{table}")
    interrupted = [t for t in trials if t.interrupted]
    assert len(interrupted) >= 3, f"only {len(interrupted)} of {TRIALS} trials interrupted {op}:\n{table}"
    assert {t.error for t in interrupted} == {"DatabaseUnavailable"}, table
    assert sum(t.lost for t in trials) == 0 and sum(t.extra for t in trials) == 0, table
    # The kill points were mid-operation: most interrupted trials had nothing committed.
    undone = [t for t in interrupted if t.outcome == "rolled back" or t.outcome.startswith(("0/", "1/"))]
    if op != "compress":
        assert len(undone) >= 3, f"too few trials rolled back:\n{table}"
    else:
        partial = [t for t in interrupted if not t.outcome.startswith("0/")]
        assert partial, f"no trial had some windows committed and others not:\n{table}"
    assert {t.restart_via for t in trials} == {"same object", "new MemoryAPI"}
    assert {t.kill for t in trials} == {"server", "postmaster"}


def test_the_lab_left_no_memory_behind(lab: FaultLab) -> None:
    """After every trial the collections hold exactly their seeds (the trials reset themselves)."""
    assert lab.trials, "run the trial tests first (same module)"
    assert lab.api("fx_batch").count() == lab.batch_base
    assert lab.api("fx_delete").count({"g": "keep"}) == lab.keep_rows
    holder = lab.archive_holder
    assert lab.api(holder).count({"g": "arc"}) == len(lab.arc_ids)
    assert lab.api("fx_source").count({"g": "keep"}) == lab.keep_rows
    assert lab.api("fx_archive").count({"g": "own"}) == 100


# -- a server that stops or dies ----------------------------------------------------------


def test_a_dead_embedded_server_is_started_again_by_the_next_call(data_dir: Path) -> None:
    api = embedded_api()
    ids = api.store_batch(["before the crash", "also before"], [{"n": 1}, {"n": 2}])
    first = embedded_server_status(data_dir).pid
    assert first is not None

    killed = kill_embedded_server(data_dir)
    # A killed postmaster may linger as a zombie: it still counts as dead.
    assert not embedded_server_status(data_dir).running
    assert (data_dir / "pgdata" / "postmaster.pid").exists()  # stale lock file left by the crash
    assert api.count() == 2  # the same object starts it again
    second = embedded_server_status(data_dir).pid
    assert second not in (None, killed)
    assert api.get(ids[0]).text == "before the crash"  # type: ignore[union-attr]
    api.store("after the restart", {"n": 3})
    assert [m.text for m in api.retrieve("after the restart", top_k=1)] == ["after the restart"]

    # A clean stop: the next new MemoryAPI starts it, and the old object keeps working too.
    assert stop_embedded_server(data_dir) is True
    assert wait_for(lambda: not pid_alive(second))  # type: ignore[arg-type]
    assert MemoryAPI(embedder=HashEmbedder(DIM), collection_name="faults").count() == 3
    assert api.count({"n": {"$gte": 2}}) == 2
    assert api.delete_by_filter({"n": 3}) == 1


def test_pooled_connections_are_replaced_after_a_restart(data_dir: Path) -> None:
    """Connections pooled before a restart are dead; each is found dead and replaced."""
    api = embedded_api()
    api.store("pooled")
    barrier = threading.Barrier(4)

    def hold_one() -> int:  # four connections checked out at once fill the pool with four
        barrier.wait(timeout=30)
        n = api.count()
        barrier.wait(timeout=30)
        return n

    def four_at_once() -> list[OpThread]:
        threads = [OpThread(hold_one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return threads

    assert [t.result for t in four_at_once()] == [1, 1, 1, 1]
    pooled = sql_value(  # the pool is what this test is about: four connections stay open in it
        api.database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'memorix-pg' AND state = 'idle'",
    )
    assert pooled >= 4

    kill_embedded_server(data_dir)
    assert api.count() == 1  # one call starts the server again
    threads = four_at_once()  # every stale pooled connection is checked and replaced
    assert [t.error for t in threads] == [None] * 4
    assert [t.result for t in threads] == [1, 1, 1, 1]


def test_a_server_that_is_down_raises_database_unavailable_with_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A URL (not the embedded default) whose server stops: DatabaseUnavailable naming the URL
    with the password hidden and what to check, no psycopg traceback; nothing is restarted.
    When the server is back, the same object works again (pre-ping replaced its connections)."""
    other = _new_data_dir("mx-fault-url-")
    try:
        admin = ensure_embedded_server(other)
        url = admin.replace("postgresql://postgres:@", "postgresql://postgres:s3cret@", 1)
        monkeypatch.delenv("MEMORIX_DATABASE_URL", raising=False)
        api = MemoryAPI(embedder=HashEmbedder(DIM), collection_name="by-url", database_url=url)
        assert api.embedded is False
        api.store("stored through a URL")

        assert stop_embedded_server(other) is True
        for call in (api.count, lambda: api.store("while down"), lambda: api.retrieve("anything")):
            with pytest.raises(DatabaseUnavailable) as excinfo:
                call()
            message = str(excinfo.value)
            assert "s3cret" not in message
            assert url.replace(":s3cret@", ":***@") in message
            assert "Check that the server is running" in message
            assert excinfo.value.__cause__ is None and not isinstance(excinfo.value, psycopg.Error)
        assert not embedded_server_status(other).running  # a URL's server is not ours to start

        ensure_embedded_server(other)
        assert api.count() == 1
        assert api.store("after the server came back")
        assert api.count() == 2
    finally:
        leftovers = _tear_down(other)
    assert not leftovers


def test_a_stopped_embedded_server_mid_call_is_database_unavailable_then_restarted(data_dir: Path) -> None:
    """An operation in flight when the server stops cleanly (pg_ctl stop -m fast) fails with
    DatabaseUnavailable and rolls back; the next call starts the server again."""
    api = embedded_api("stopped")
    api.store_batch(["keep me"], [{"keep": True}])
    n = 8_000
    # Hold the collection's row: the COPY writes every row, then waits in its foreign-key check.
    blocker = psycopg.connect(api.database_url)
    blocker.execute("SELECT id FROM memorix.collections WHERE name = 'stopped' FOR UPDATE")
    watch = Activity(api.database_url)
    op = OpThread(
        lambda: api.store_batch([f"row {i}" for i in range(n)], embeddings=unit_vectors(n, DIM, seed=3))
    )
    op.start()
    try:
        assert wait_for(lambda: watch.waiting_on_lock("COPY") is not None, timeout=60, interval=0.003)
    finally:
        watch.close()
    stop_embedded_server(data_dir)
    op.join(60)
    blocker.close()
    assert isinstance(op.error, DatabaseUnavailable), op.error
    assert api.count() == 1
    assert api.count({"keep": True}) == 1


def test_a_crash_during_the_index_rebuild_after_a_load_keeps_the_load(data_dir: Path) -> None:
    """A load into a small collection commits, then rebuilds the HNSW index it dropped. A crash
    in that rebuild: the load stays (it committed) and the call raises DatabaseUnavailable, not
    SQLAlchemy's PendingRollbackError (fixed in vector_index.rebuild_vector_index_concurrently)."""
    api = embedded_api("rebuild")
    n = 6_000  # >= DEFER_INDEX_MIN_ROWS into an empty collection
    watch = Activity(api.database_url)
    op = OpThread(lambda: api.store_batch([f"row {i}" for i in range(n)], embeddings=unit_vectors(n, DIM)))
    op.start()
    try:
        assert wait_for(
            lambda: not op.is_alive() or watch.running("CREATE INDEX CONCURRENTLY") is not None,
            timeout=60,
            interval=0.003,
        )
        assert op.is_alive(), "the load and its index build ended before the kill"
        kill_embedded_server(data_dir, first=watch.backends)
    finally:
        watch.close()
    op.join(60)
    assert isinstance(op.error, DatabaseUnavailable), repr(op.error)
    assert api.count() == n


# -- regressions: bugs these trials found, now fixed ----------------------------------------


def test_archive_as_the_first_call_after_a_crash_starts_the_server_again(data_dir: Path) -> None:
    api = embedded_api("arch-src")
    api.store_batch(["a", "b"], [{"x": 1}, {"x": 1}])
    kill_embedded_server(data_dir)
    assert api.archive({"x": 1}, to="arch-dst") == 2


def test_threads_calling_into_a_dead_server_all_get_through(data_dir: Path) -> None:
    api = embedded_api("threads")
    api.store("x")
    for _ in range(3):
        kill_embedded_server(data_dir)
        barrier = threading.Barrier(4)

        def count(barrier: threading.Barrier = barrier) -> int:
            barrier.wait(timeout=30)
            return api.count()

        threads = [OpThread(count) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        errors = [repr(t.error)[:200] for t in threads if t.error is not None]
        # Leave a running server for the teardown whatever happened.
        wait_for(lambda: _count_or_none(api) == 1, timeout=30, interval=0.5)
        assert not errors, errors


def _count_or_none(api: MemoryAPI) -> int | None:
    try:
        return api.count()
    except Exception:
        return None


def test_a_postmaster_killed_alone_is_restarted_once_its_backends_are_gone(data_dir: Path) -> None:
    api = embedded_api("orphans")
    api.store("before")
    busy = OpThread(
        lambda: (
            psycopg.connect(api.database_url, autocommit=True)
            .execute("SELECT count(*) FROM generate_series(1, 40000000)")
            .fetchone()
        )
    )
    busy.start()
    running = (
        "SELECT count(*) FROM pg_stat_activity WHERE strpos(query, 'generate_series(1, 4') > 0 "
        "AND state = 'active' AND pid <> pg_backend_pid()"
    )
    assert wait_for(lambda: sql_value(api.database_url, running) == 1)
    kill_embedded_server(data_dir, postmaster_only=True, drain=False)
    try:
        # The backend still runs its query; the next call must not fail with anything but
        # DatabaseUnavailable (ideally, it waits for the backend and starts the server).
        try:
            outcome: object = api.count()
        except DatabaseUnavailable:
            outcome = "unavailable"
        assert outcome in (1, "unavailable")
    finally:
        busy.join(120)
        assert wait_for(lambda: _count_or_none(api) == 1, timeout=60, interval=0.5)
    assert api.count() == 1


def test_a_crash_during_a_deferred_index_load_leaves_the_index_in_place(data_dir: Path) -> None:
    api = embedded_api("deferred")
    n = 6_000  # >= DEFER_INDEX_MIN_ROWS into an empty collection: the index is rebuilt after the load
    watch = Activity(api.database_url)
    op = OpThread(lambda: api.store_batch([f"row {i}" for i in range(n)], embeddings=unit_vectors(n, DIM)))
    op.start()
    try:
        assert wait_for(
            lambda: not op.is_alive() or (watch.copied() or 0) > n // 3, timeout=60, interval=0.003
        )
    finally:
        watch.close()
    kill_embedded_server(data_dir)
    op.join(60)
    assert isinstance(op.error, DatabaseUnavailable)
    reopened = MemoryAPI(embedder=HashEmbedder(DIM), collection_name="deferred")
    assert reopened.count() == 0  # the load itself rolled back
    valid = sql_value(
        reopened.database_url,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
        (f"memories_embedding_hnsw_{reopened.collection_id}",),
    )
    assert valid is True, f"HNSW index after the crash: {'missing' if valid is None else 'invalid'}"


def test_no_zombie_is_mistaken_for_a_server(data_dir: Path) -> None:
    """Kill twice in a row: each time the dead postmaster (maybe a zombie, with its
    postmaster.pid and socket lock still there) is cleaned away and a new one starts."""
    api = embedded_api("zombies")
    api.store("one")
    seen = set()
    for _ in range(2):
        seen.add(kill_embedded_server(data_dir))
        started = time.perf_counter()
        assert api.count() == 1
        assert time.perf_counter() - started < 30
    now = embedded_server_status(data_dir).pid
    assert now is not None and now not in seen
