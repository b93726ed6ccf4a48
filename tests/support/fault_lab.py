"""The fault lab: SIGKILL an embedded server in the middle of an operation and check that the
operation was all-or-nothing (tests/test_faults.py, benchmarks/faults.py)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg

from tests.support.helpers import pid_alive, sql_exec, sql_rows, sql_value, unit_vectors, wait_for

# A crashed server fsyncs every file of its data directory before recovery (~1-3 s here);
# syncfs does the same durably with one call per file system (~0.2 s), so a trial costs less.
FAST_CRASH_RECOVERY = "ALTER SYSTEM SET recovery_init_sync_method = 'syncfs'"


def postmaster_pid(data_dir: Path) -> int:
    """The pid of the running postmaster of ``data_dir``'s embedded server, checked to be a
    postgres process serving that very directory (so nothing else is ever signalled)."""
    from memorix_pg.server import embedded_server_status

    pgdata = str(Path(data_dir).resolve() / "pgdata")
    pid = embedded_server_status(data_dir).pid
    if pid is None:
        raise RuntimeError(f"no embedded server is running in {data_dir}")
    postmaster = psutil.Process(pid)
    if postmaster.name() != "postgres" or pgdata not in " ".join(postmaster.cmdline()):
        raise RuntimeError(f"pid {pid} is not the postmaster of {pgdata}; not killing it")
    return pid


def kill_embedded_server(
    data_dir: Path,
    *,
    postmaster_only: bool = False,
    drain: bool = True,
    pid: int | None = None,
    first: Sequence[int] = (),
    timeout: float = 60,
) -> int:
    """SIGKILL the embedded server of ``data_dir`` and wait until it is dead; returns the postmaster pid.

    Whole server (default), as an OOM kill or a power cut: the operation's backends ``first``
    (nothing more of their statement runs), then every other child, then the postmaster. The
    postmaster is stopped (SIGSTOP) before its children are listed, so none is forked unseen.
    Killing its process group would not do: each PostgreSQL child calls setsid() and leads its
    own group. ``postmaster_only``: just the postmaster; its backends live on until they notice,
    and a busy one finishes its statement first (and may commit it). With ``drain`` this waits
    until they are gone too; without it, it returns while they may still run.

    ``pid`` is a postmaster pid checked earlier with :func:`postmaster_pid` (else checked here);
    ``first`` pids are killed only if they are that postmaster's children.
    """
    import signal

    if pid is None:
        pid = postmaster_pid(data_dir)
    postmaster = psutil.Process(pid)
    if not postmaster_only:
        for backend in first:
            with contextlib.suppress(psutil.Error):
                if psutil.Process(backend).ppid() == pid:
                    os.kill(backend, signal.SIGKILL)
    postmaster.send_signal(signal.SIGSTOP)  # forks nothing from here on; SIGKILL still works
    members = postmaster.children(recursive=True)
    if not postmaster_only:
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.send_signal(signal.SIGKILL)
    postmaster.send_signal(signal.SIGKILL)
    waited = members if drain or not postmaster_only else []
    if not wait_for(
        lambda: not pid_alive(pid) and not any(pid_alive(m.pid) for m in waited),
        timeout=timeout,
        interval=0.01,
    ):
        raise RuntimeError(f"the server of {data_dir} (postmaster {pid}) outlived SIGKILL for {timeout} s")
    return pid


class Activity:
    """What the library's backends are doing, seen from a separate autocommit connection."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.backends: list[int] = []  # the backends last seen doing what was asked

    def waiting_on_lock(self, *statements: str) -> str | None:
        """The statement of a library backend waiting for a lock, if one is (and it starts with
        one of ``statements``, when given: COPY, DELETE, ...)."""
        rows = self.conn.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE application_name = 'memorix-pg' "
            "AND state = 'active' AND wait_event_type = 'Lock'"
        ).fetchall()
        waiting = [r for r in rows if not statements or r[1].lstrip().upper().startswith(statements)]
        if not waiting:
            return None
        self.backends = [waiting[0][0]]
        return str(waiting[0][1])

    def running(self, *statements: str) -> str | None:
        """The statement of a library backend running one starting with one of ``statements``."""
        rows = self.conn.execute(
            "SELECT pid, query FROM pg_stat_activity "
            "WHERE application_name = 'memorix-pg' AND state = 'active'"
        ).fetchall()
        found = [r for r in rows if r[1].lstrip().upper().startswith(statements)]
        if not found:
            return None
        self.backends = [found[0][0]]
        return str(found[0][1])

    def copied(self) -> int | None:
        """Rows a running COPY FROM has read so far (None when no COPY runs)."""
        row = self.conn.execute(
            "SELECT pid, tuples_processed FROM pg_stat_progress_copy ORDER BY tuples_processed DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        self.backends = [row[0]]
        return int(row[1])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class OpThread(threading.Thread):
    """Runs one library call in a thread, keeping its result or exception and its duration."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.result: Any = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        start = time.perf_counter()
        try:
            self.result = self.call()
        except BaseException as exc:
            self.error = exc
        finally:
            self.seconds = time.perf_counter() - start


@dataclass
class Trial:
    """One crash trial: where the kill landed, what the operation saw, what survived."""

    op: str
    number: int
    point: str  # where the kill was aimed, e.g. "COPY 43%", "blocked in its FK check", "window 3/10"
    kill: str  # "server" (postmaster and backends) or "postmaster" (alone; backends drain on their own)
    delay_s: float  # random wait between reaching that point and the kill
    outcome: str  # "rolled back", "committed" (crash after commit), "completed", "4/10 windows", ...
    error: str | None  # what the operation raised (DatabaseUnavailable expected), None if it returned
    restart_s: float  # the first call after the crash, which started the server again
    restart_via: str  # "same object" or "new MemoryAPI"
    lost: int = 0  # rows that vanished: must be 0
    extra: int = 0  # rows that should not exist (half batches, summaries next to their sources): 0
    detail: str = ""

    @property
    def interrupted(self) -> bool:
        return self.error is not None

    def row(self) -> list[Any]:
        return [
            self.op, self.number, self.point, self.kill, f"{self.delay_s:.3f}", self.error or "-",
            self.outcome, self.lost, self.extra, f"{self.restart_s:.2f}", self.restart_via,
        ]  # fmt: skip


TRIAL_COLUMNS = [
    "operation", "trial", "kill point", "killed", "delay s", "raised", "outcome",
    "lost", "extra", "restart s", "restart by",
]  # fmt: skip


def format_trials(trials: Sequence[Trial]) -> str:
    rows = [TRIAL_COLUMNS, *[[str(c) for c in t.row()] for t in trials]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TRIAL_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


class FaultLab:
    """SIGKILL an embedded server in the middle of ``store_batch``, ``delete_by_filter``, ``archive``
    and ``compress``, let the library start it again, and check the operation was all-or-nothing.

    MEMORIX_DATA_DIR must point at ``data_dir`` and MEMORIX_DATABASE_URL be unset: every MemoryAPI
    here runs on that embedded server, which the lab kills. Kill points, per operation:

    - store_batch: ``copy`` kills when a random fraction of the rows went through COPY (watched in
      ``pg_stat_progress_copy``); ``blocked`` lets every row be written, then holds the collection's
      row so the statement's foreign-key check waits, and kills it there (uncommitted). ``+ids``
      gives ids, which takes the upsert path (COPY into a temporary table, then INSERT ... SELECT).
    - delete_by_filter: ``blocked`` locks one random matching row, so the DELETE stops part-way
      through its rows; ``timed`` kills a random 0-150 ms after the call starts (often after it ended).
    - archive: ``blocked`` holds the target collection's row, so the UPDATE has moved every row when
      its foreign-key check waits; ``timed`` kills a random 0-1 s after the call starts (the UPDATE,
      its commit, or the index rebuild after it).
    - compress: a summarizer that sleeps; the kill comes a random time after it starts on a random
      window, so earlier windows are committed and that one is open.

    A crash with a server still running somewhere else would be a bug in the lab: kills go to the
    process group of the postmaster named in ``data_dir``'s postmaster.pid, checked first.
    """

    OPS = ("store_batch", "delete_by_filter", "archive", "compress")

    def __init__(
        self,
        data_dir: Path,
        *,
        seed: int = 0,
        batch_rows: int = 20_000,
        bulk_rows: int = 10_000,
        windows: int = 10,
        per_window: int = 4,
        summarize_s: float = 0.1,
        dim: int = 8,
        keep_rows: int = 200,
    ) -> None:
        import random

        self.data_dir = Path(data_dir)
        self.rng = random.Random(seed)
        self.batch_rows = batch_rows
        self.bulk_rows = bulk_rows
        self.windows = windows
        self.per_window = per_window
        self.summarize_s = summarize_s
        self.dim = dim
        self.keep_rows = keep_rows
        self.apis: dict[str, Any] = {}
        self.trials: list[Trial] = []
        self.url = ""

    # -- setup ----------------------------------------------------------------------------

    def api(self, collection: str) -> Any:
        return self.apis[collection]

    def _open(self, collection: str) -> Any:
        from memorix_pg import HashEmbedder, MemoryAPI

        self.apis[collection] = MemoryAPI(embedder=HashEmbedder(self.dim), collection_name=collection)
        return self.apis[collection]

    def setup(self) -> None:
        """Start the server and seed the collections (one HNSW build per bulk collection)."""
        batch = self._open("fx_batch")
        self.url = batch.database_url
        sql_exec(self.url, FAST_CRASH_RECOVERY)
        self.batch_base = 100
        batch.store_batch(
            [f"base row {i}" for i in range(self.batch_base)],
            [{"base": True}] * self.batch_base,
            embeddings=unit_vectors(self.batch_base, self.dim, seed=1),
        )
        self._open("fx_delete")
        self.delete_keep = self._seed("fx_delete", "keep", self.keep_rows, extra="del")
        self._open("fx_source")
        self._open("fx_archive")
        self.source_keep = self._seed("fx_source", "keep", self.keep_rows, extra="arc")
        self.target_own = self._seed("fx_archive", "own", 100)
        self.archive_holder = "fx_source"
        self._open("fx_conversations")

    def _seed(self, collection: str, group: str, n: int, extra: str | None = None) -> set[str]:
        """Store ``n`` rows of ``group`` (and ``bulk_rows`` of ``extra`` in the same batch); the ids of
        the first group are returned, the others kept in ``self.<extra>_ids``."""
        texts = [f"{collection} {group} {i}" for i in range(n)]
        metas: list[dict[str, Any]] = [{"g": group, "i": i} for i in range(n)]
        if extra is not None:
            texts += [f"{collection} {extra} {i} {uuid.uuid4().hex[:6]}" for i in range(self.bulk_rows)]
            metas += [{"g": extra, "i": i} for i in range(self.bulk_rows)]
        seed = self.rng.randrange(1 << 30)
        vectors = unit_vectors(len(texts), self.dim, seed)
        ids = self.api(collection).store_batch(texts, metas, embeddings=vectors)
        if extra is not None:
            setattr(self, f"{extra}_ids", set(ids[n:]))
        return set(ids[:n])

    def _reseed_deletable(self) -> None:
        texts = [f"fx_delete del {i} {uuid.uuid4().hex[:6]}" for i in range(self.bulk_rows)]
        metas = [{"g": "del", "i": i} for i in range(self.bulk_rows)]
        vectors = unit_vectors(self.bulk_rows, self.dim, self.rng.randrange(1 << 30))
        self.del_ids = set(self.api("fx_delete").store_batch(texts, metas, embeddings=vectors))

    # -- the crash ------------------------------------------------------------------------

    def plan(self, op: str, trials: int, *, shuffle: bool = False) -> list[str]:
        """Kill points for ``trials`` trials of ``op``: mostly ones that must interrupt it.
        Unless shuffled, the timed ones (which may finish first) come last, so a finished
        delete or archive never has to be re-seeded within a short run."""
        if op == "store_batch":
            kinds = ["copy", "copy+ids", "blocked", "blocked+ids"]
            plan = [kinds[i % 4] if i < 4 else self.rng.choice(kinds) for i in range(trials)]
        elif op in ("delete_by_filter", "archive"):
            timed = max(1, trials // 4)
            plan = ["blocked"] * (trials - timed) + ["timed"] * timed
        else:
            plan = ["window"] * trials
        if shuffle:
            self.rng.shuffle(plan)
        return plan

    def run(self, op: str, number: int, how: str) -> Trial:
        """One trial; raises AssertionError when the operation was not all-or-nothing."""
        runner = {
            "store_batch": self._store_batch,
            "delete_by_filter": self._delete_by_filter,
            "archive": self._archive,
            "compress": self._compress,
        }[op]
        trial: Trial = runner(number, how)
        self.trials.append(trial)
        return trial

    @staticmethod
    def kill_mode(number: int) -> str:
        """Even trials kill the whole server, odd ones the postmaster alone."""
        return "postmaster" if number % 2 else "server"

    def _crash(
        self,
        call: Callable[[], Any],
        ready: Callable[[], bool],
        delay: float,
        mode: str,
        watch: Activity | None = None,
        timeout: float = 120,
    ) -> OpThread:
        """Run ``call`` in a thread; once ``ready()`` (or once it returned), wait ``delay`` and kill
        the server (``mode``: see kill_mode; the backends ``watch`` saw working die first).
        Returns the finished thread (result or exception)."""
        pid = postmaster_pid(self.data_dir)  # checked now, so the kill goes out at once
        op = OpThread(call)
        op.start()
        deadline = time.monotonic() + timeout
        while op.is_alive() and not ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"the operation neither reached its kill point nor ended in {timeout} s")
            time.sleep(0.003)
        time.sleep(delay)
        first = watch.backends if watch is not None else []
        kill_embedded_server(self.data_dir, pid=pid, first=first, postmaster_only=mode == "postmaster")
        op.join(60)
        if op.is_alive():
            raise AssertionError("the operation hung for 60 s after the server was killed")
        from memorix_pg import DatabaseUnavailable

        if op.error is not None and not isinstance(op.error, DatabaseUnavailable):
            raise AssertionError(
                f"the interrupted operation raised {type(op.error).__name__}, "
                f"not DatabaseUnavailable: {op.error}"
            ) from op.error
        return op

    def _restart(self, collection: str, number: int) -> tuple[Any, float, str]:
        """The first call after the crash starts the server again: on the same MemoryAPI object,
        or (every fifth trial) through a new one."""
        from memorix_pg.server import embedded_server_status

        start = time.perf_counter()
        if number % 5 == 3:
            api, via = self._open(collection), "new MemoryAPI"
        else:
            api, via = self.api(collection), "same object"
        api.count()
        assert embedded_server_status(self.data_dir).running
        return api, time.perf_counter() - start, via

    def _ids(self, collection: str, match: Mapping[str, Any]) -> set[str]:
        from psycopg.types.json import Jsonb

        rows = sql_rows(
            self.url,
            "SELECT m.id::text FROM memorix.memories m JOIN memorix.collections c ON c.id = m.collection_id "
            "WHERE c.name = %s AND m.metadata @> %s",
            (collection, Jsonb(dict(match))),
        )
        return {r[0] for r in rows}

    def _lock(self, query: str, params: Sequence[Any]) -> psycopg.Connection[Any]:
        """A transaction that holds the row lock of ``query`` until the server dies."""
        conn = psycopg.connect(self.url)
        assert conn.execute(query, params).fetchone() is not None, "nothing to lock"
        return conn

    def _lock_collection(self, collection: str) -> psycopg.Connection[Any]:
        return self._lock("SELECT id FROM memorix.collections WHERE name = %s FOR UPDATE", (collection,))

    # -- store_batch ----------------------------------------------------------------------

    def _store_batch(self, number: int, how: str) -> Trial:
        name = "fx_batch"
        api = self.api(name)
        n = self.batch_rows
        texts = [f"trial {number} row {i}" for i in range(n)]
        metas = [{"trial": number, "i": i} for i in range(n)]
        given = [str(uuid.uuid4()) for _ in range(n)] if how.endswith("+ids") else None
        vectors = unit_vectors(n, self.dim, seed=1000 + number)
        before = api.count()
        blocker = self._lock_collection(name) if how.startswith("blocked") else None
        watch = Activity(self.url)
        target = int(self.rng.uniform(0.1, 0.9) * n)
        state = {"seen": False, "copied": 0}

        def ready() -> bool:
            if blocker is not None:
                return watch.waiting_on_lock("COPY", "INSERT") is not None
            copied = watch.copied()
            if copied is None:  # not started yet, or over already (then crash now)
                return state["seen"]
            state.update(seen=True, copied=copied)
            return copied >= target

        delay = self.rng.uniform(0, 0.2) if blocker is not None else 0.0
        mode = self.kill_mode(number)
        try:
            call = lambda: api.store_batch(texts, metas, given, embeddings=vectors)  # noqa: E731
            op = self._crash(call, ready, delay, mode, watch)
        finally:
            watch.close()
            if blocker is not None:
                with contextlib.suppress(Exception):
                    blocker.close()
        if blocker is not None:
            point = "blocked in its FK check (every row written)"
        elif state["seen"]:
            point = f"COPY at {state['copied'] / n:.0%}"
        else:
            point = "COPY over before it was seen"
        point += " (ids: upsert)" if given else ""
        api, restart_s, via = self._restart(name, number)

        present = self._ids(name, {"trial": number})
        total = api.count()
        trial = Trial("store_batch", number, point, mode, delay, "", _error_name(op), restart_s, via)
        trial.extra = len(present) if len(present) < n else 0
        trial.lost = n - len(present) if present and len(present) < n else 0
        assert len(present) in (0, n), f"half a batch: {len(present)} of {n} rows of trial {number} exist"
        assert total == before + len(present), f"count {total}, expected {before} + {len(present)}"
        if given is not None and present:
            assert present == set(given), "the stored ids are not the given ones"
        if present:
            distinct = sql_value(
                self.url,
                "SELECT count(DISTINCT text) FROM memorix.memories WHERE metadata @> %s",
                (json.dumps({"trial": number}),),
            )
            assert distinct == n, f"{distinct} distinct texts for {n} rows"
        if op.error is None:
            assert len(present) == n and set(op.result) == present, "store_batch returned, rows missing"
        trial.outcome = "completed" if op.error is None else ("committed" if present else "rolled back")
        if present:  # every trial starts from the same base
            api.delete_by_filter({"trial": number})
        return trial

    # -- delete_by_filter -----------------------------------------------------------------

    def _delete_by_filter(self, number: int, how: str) -> Trial:
        name = "fx_delete"
        if not getattr(self, "del_ids", None):
            self._reseed_deletable()
        api = self.api(name)
        matching = set(self.del_ids)
        blocker = None
        watch = Activity(self.url)
        if how == "blocked":
            locked = self.rng.choice(sorted(matching))
            blocker = self._lock("SELECT id FROM memorix.memories WHERE id = %s FOR UPDATE", (locked,))
            delay = self.rng.uniform(0, 0.2)
        else:
            delay = self.rng.uniform(0, 0.15)

        def ready() -> bool:
            return blocker is None or watch.waiting_on_lock("DELETE") is not None

        mode = self.kill_mode(number)
        try:
            op = self._crash(lambda: api.delete_by_filter({"g": "del"}), ready, delay, mode, watch)
        finally:
            watch.close()
            if blocker is not None:
                with contextlib.suppress(Exception):
                    blocker.close()
        point = "DELETE blocked on a random matching row" if blocker is not None else "random time"
        api, restart_s, via = self._restart(name, number)

        present = self._ids(name, {"g": "del"})
        kept = self._ids(name, {"g": "keep"})
        trial = Trial("delete_by_filter", number, point, mode, delay, "", _error_name(op), restart_s, via)
        trial.lost = len(self.delete_keep - kept) + (len(matching - present) if present else 0)
        trial.extra = len(present - matching) + len(kept - self.delete_keep)
        assert kept == self.delete_keep, "rows that did not match were deleted"
        assert present in (matching, set()), f"part of the delete survived: {len(present)} of {len(matching)}"
        assert api.count() == len(kept) + len(present)
        if op.error is None:
            assert op.result == len(matching) and not present, f"returned {op.result}, {len(present)} left"
        trial.outcome = "rolled back" if present else ("completed" if op.error is None else "committed")
        if not present:
            self.del_ids = set()
        return trial

    # -- archive --------------------------------------------------------------------------

    def _archive(self, number: int, how: str) -> Trial:
        holder = self.archive_holder
        other = "fx_archive" if holder == "fx_source" else "fx_source"
        api = self.api(holder)
        matching = set(self.arc_ids)
        totals = api.count() + self.api(other).count()
        blocker = self._lock_collection(other) if how == "blocked" else None
        watch = Activity(self.url)
        delay = self.rng.uniform(0, 0.2) if blocker is not None else self.rng.uniform(0, 1.0)

        def ready() -> bool:
            return blocker is None or watch.waiting_on_lock("UPDATE") is not None

        mode = self.kill_mode(number)
        try:
            op = self._crash(lambda: api.archive({"g": "arc"}, to=other), ready, delay, mode, watch)
        finally:
            watch.close()
            if blocker is not None:
                with contextlib.suppress(Exception):
                    blocker.close()
        point = "UPDATE blocked in its FK check (every row moved)" if blocker is not None else "random time"
        point += f" ({holder} -> {other})"
        api, restart_s, via = self._restart(holder, number)

        here, there = self._ids(holder, {"g": "arc"}), self._ids(other, {"g": "arc"})
        trial = Trial("archive", number, point, mode, delay, "", _error_name(op), restart_s, via)
        trial.lost = len(matching - here - there)
        trial.extra = len(here & there) + len((here | there) - matching)
        assert not here & there, "a memory is in both collections"
        assert here | there == matching, f"{len(matching - here - there)} archived memories are in neither"
        assert here in (matching, set()), f"half an archive: {len(there)} of {len(matching)} moved"
        assert api.count() + self.api(other).count() == totals, "the two collections' total changed"
        assert self._ids("fx_source", {"g": "keep"}) == self.source_keep, "a non-matching memory moved"
        assert self._ids("fx_archive", {"g": "own"}) == self.target_own, "the target's own memories changed"
        if there:
            flagged = self._ids(other, {"g": "arc", "archived": True})
            assert flagged == there, f"{len(there - flagged)} moved memories lack archived: true"
        if op.error is None:
            assert op.result == len(matching) and there == matching, f"returned {op.result}"
        trial.outcome = "rolled back" if not there else ("completed" if op.error is None else "committed")
        if there:
            self.archive_holder = other
        return trial

    # -- compress -------------------------------------------------------------------------

    def _compress(self, number: int, how: str) -> Trial:
        from datetime import UTC, datetime, timedelta

        name = "fx_conversations"
        api = self.api(name)
        w_count, per = self.windows, self.per_window
        start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=number)
        texts, metas, times = [], [], []
        for w in range(w_count):
            for j in range(per):
                texts.append(f"trial {number} window {w} message {j}: notes about topic {w * per + j}")
                metas.append({"trial": number, "session_id": f"s{number}", "w": w})
                times.append(start + timedelta(hours=w, minutes=7 * j))
        ids = api.store_batch(texts, metas, created_at=times)
        windows = {w: set(ids[w * per : (w + 1) * per]) for w in range(w_count)}
        target = self.rng.randint(1, w_count - 1)
        delay = self.rng.uniform(0, 1.3 * self.summarize_s)
        calls = {"n": 0}
        reached = threading.Event()

        def summarizer(batch: list[str]) -> str:
            calls["n"] += 1
            if calls["n"] == target:
                reached.set()
            time.sleep(self.summarize_s)
            return f"{len(batch)} messages: " + " | ".join(t[:24] for t in batch)

        op = self._crash(
            lambda: api.compress(
                {"trial": number}, window=timedelta(hours=1), summarizer=summarizer, min_group=2
            ),
            reached.is_set,
            delay,
            self.kill_mode(number),
        )
        api, restart_s, via = self._restart(name, number)

        rows = sql_rows(
            self.url,
            "SELECT id::text, metadata FROM memorix.memories WHERE metadata @> %s",
            (json.dumps({"trial": number}),),
        )
        originals = {r[0] for r in rows if not r[1].get("compressed")}
        summaries = [r[1] for r in rows if r[1].get("compressed")]
        all_ids = set(ids)
        point = f"window {target}/{w_count}"
        trial = Trial(
            "compress", number, point, self.kill_mode(number), delay, "", _error_name(op), restart_s, via
        )
        done = 0
        covered: list[str] = [s for summary in summaries for s in summary["source_ids"]]
        trial.lost = len(all_ids - originals - set(covered))
        trial.extra = len(originals & set(covered)) + len(covered) - len(set(covered))
        assert originals <= all_ids, "an original that was never stored"
        for w, members in windows.items():
            covering = [s for s in summaries if set(s["source_ids"]) & members]
            if members <= originals:
                assert not covering, f"window {w}: a summary exists next to its sources"
            else:
                assert not members & originals, f"window {w}: half compressed"
                assert len(covering) == 1, f"window {w}: {len(covering)} summaries"
                assert set(covering[0]["source_ids"]) == members, f"window {w}: summary of other memories"
                assert covering[0]["original_count"] == per
                done += 1
        assert len(summaries) == done, f"{len(summaries)} summaries for {done} compressed windows"
        assert trial.lost == 0 and trial.extra == 0
        assert api.count({"trial": number}) == len(originals) + len(summaries)
        if op.error is None:
            assert done == w_count and op.result.windows == w_count, "compress returned, windows left"
        trial.outcome = "completed" if op.error is None else f"{done}/{w_count} windows"
        return trial

    # -- the end --------------------------------------------------------------------------

    def index_states(self) -> dict[str, str]:
        """Each lab collection's HNSW index: valid, invalid (a build killed half-way) or missing."""
        states = {}
        for name, api in self.apis.items():
            valid = sql_value(
                self.url,
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s",
                (f"memories_embedding_hnsw_{api.collection_id}",),
            )
            states[name] = "missing" if valid is None else ("valid" if valid else "invalid")
        return states


def _error_name(op: OpThread) -> str | None:
    return None if op.error is None else type(op.error).__name__
