"""The embedded server (memorix_pg/server.py) and the choice of database, with real processes.

Every test that starts a server stops it in its fixture's teardown and checks that no
postgres process serving its data directory is left behind.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from memorix_pg import ConfigurationError, DatabaseUnavailable, MemoryAPI, PgvectorMissing
from memorix_pg.server import embedded_server_status, ensure_embedded_server, stop_embedded_server
from tests.support.helpers import (
    pid_alive,
    private_data_dir,
    run_python,
    spawn_python,
    sql_value,
    wait_for,
)

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
PG15_PORT = 54329

# Holds the embedded server: attaches, stores one row, says so, and sleeps until killed.
HOLDER = """
import os, time
from memorix_pg import MemoryAPI
api = MemoryAPI(embedder="hash", collection_name="shared")
api.store(f"held by {os.getpid()}")
print("ready", os.getpid(), flush=True)
time.sleep(600)
"""

# Starts the server for good and leaves.
KEEPER = """
from memorix_pg.server import ensure_embedded_server
print(ensure_embedded_server(keep_running=True))
"""

# Attaches, stores one row and reports what it sees as JSON.
ATTACH = """
import json, os
from memorix_pg import MemoryAPI
from memorix_pg.server import default_data_dir, embedded_server_status
api = MemoryAPI(embedder="hash", collection_name="shared")
api.store(f"attached {os.getpid()}")
pids = json.loads((default_data_dir() / "pgdata" / ".handle_pids.json").read_text())
print(json.dumps({"pid": os.getpid(), "pids": pids, "count": api.count(),
                  "postmaster": embedded_server_status().pid, "url": api.database_url}))
"""

# One of two concurrent writers: writes 50 rows, waits until the other's are visible too.
WRITER = """
import json, sys, time
from memorix_pg import MemoryAPI
from memorix_pg.server import embedded_server_status
tag = sys.argv[1]
api = MemoryAPI(embedder="hash", collection_name="shared")
for i in range(20):
    api.store(f"{tag} single {i}", {"writer": tag})
api.store_batch([f"{tag} batch {i}" for i in range(30)], [{"writer": tag}] * 30)
deadline = time.monotonic() + 60
while api.count() < 100 and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({"mine": api.count({"writer": tag}), "total": api.count(),
                  "postmaster": embedded_server_status().pid}), flush=True)
"""


def attach() -> dict:
    return json.loads(run_python(ATTACH).stdout.strip().splitlines()[-1])


def start_holder(spawn: Callable[..., subprocess.Popen[str]]) -> subprocess.Popen[str]:
    holder = spawn(HOLDER)
    line = holder.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("ready"):
        pytest.fail(f"holder did not start: {line!r} {holder.communicate()[1]}")
    return holder


def handle_pids(data_dir: Path) -> list[int]:
    return json.loads((data_dir / "pgdata" / ".handle_pids.json").read_text() or "[]")


def assert_stops(data_dir: Path, postmaster: int) -> None:
    assert wait_for(lambda: not embedded_server_status(data_dir).running), "server still running"
    assert wait_for(lambda: not pid_alive(postmaster)), f"postmaster {postmaster} still alive"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """An empty MEMORIX_DATA_DIR, no MEMORIX_DATABASE_URL; the server is stopped afterwards."""
    with private_data_dir("mx-srv-") as path:
        yield path


@pytest.fixture
def spawn(data_dir: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start python subprocesses on ``data_dir``; any still running at the end are killed
    (before the server is stopped)."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        started.append(spawn_python(code, *args))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_memory_api_starts_an_embedded_server_in_the_data_dir(data_dir: Path) -> None:
    api = MemoryAPI(embedder="hash")
    assert api.embedded is True
    status = embedded_server_status(data_dir)
    assert status.running and status.pid is not None and pid_alive(status.pid)
    assert status.data_dir == data_dir.resolve()
    assert f"host={data_dir.resolve()}" in api.database_url
    assert "/memorix?" in api.database_url
    api.store("embedded row")
    assert sql_value(api.database_url, "SELECT count(*) FROM memorix.memories") == 1
    assert sql_value(status.url, "SELECT current_database()") == "memorix"  # type: ignore[arg-type]

    assert stop_embedded_server(data_dir) is True
    assert_stops(data_dir, status.pid)
    assert stop_embedded_server(data_dir) is False
    # The next call on the existing object starts it again, and the data is still there.
    assert api.count() == 1
    restarted = embedded_server_status(data_dir)
    assert restarted.running and restarted.pid != status.pid
    assert MemoryAPI(embedder="hash").count() == 1


def test_a_new_data_dir_is_tuned_for_search_and_an_existing_one_keeps_its_settings(data_dir: Path) -> None:
    url = MemoryAPI(embedder="hash").database_url
    assert sql_value(url, "SHOW shared_buffers") != "128MB"
    assert sql_value(url, "SHOW jit") == "off"
    # A user's own setting survives restarts: only a new data dir is tuned.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_buffers = '64MB'")
    assert stop_embedded_server(data_dir) is True
    assert sql_value(MemoryAPI(embedder="hash").database_url, "SHOW shared_buffers") == "64MB"


def test_processes_share_one_server_and_the_last_one_stops_it(data_dir: Path, spawn) -> None:
    writers = [spawn(WRITER, tag) for tag in ("w1", "w2")]
    reports = []
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert [(r["mine"], r["total"]) for r in reports] == [(50, 100), (50, 100)]
    assert reports[0]["postmaster"] == reports[1]["postmaster"] is not None
    assert_stops(data_dir, reports[0]["postmaster"])
    assert handle_pids(data_dir) == []
    after = attach()
    assert after["count"] == 101


def test_a_holder_killed_with_sigkill_is_forgotten(data_dir: Path, spawn) -> None:
    holder = start_holder(spawn)
    postmaster = embedded_server_status(data_dir).pid
    assert postmaster is not None
    assert holder.pid in handle_pids(data_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # Nobody stopped the server, and the dead pid is still listed.
    assert embedded_server_status(data_dir).running
    assert holder.pid in handle_pids(data_dir)

    report = attach()
    assert holder.pid not in report["pids"]
    assert report["pid"] in report["pids"]
    assert report["count"] == 2
    assert report["postmaster"] == postmaster
    # The new process was the last holder: its exit stopped the server.
    assert_stops(data_dir, postmaster)
    assert handle_pids(data_dir) == []


def test_a_postmaster_killed_with_sigkill_is_restarted(data_dir: Path, spawn) -> None:
    holder = start_holder(spawn)
    status = embedded_server_status(data_dir)
    assert status.pid is not None
    children = psutil.Process(status.pid).children()
    os.kill(status.pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(status.pid))
    assert wait_for(lambda: not any(pid_alive(c.pid) for c in children))
    holder.kill()
    holder.wait()
    # The lock file of the dead (maybe zombie) postmaster is left behind.
    assert (data_dir / "pgdata" / "postmaster.pid").exists()
    assert not embedded_server_status(data_dir).running

    report = attach()
    assert report["count"] == 2  # the holder's committed row survived crash recovery
    assert report["postmaster"] not in (None, status.pid)
    assert holder.pid not in report["pids"]
    assert_stops(data_dir, report["postmaster"])


def test_keep_running_outlives_the_process_until_stopped(data_dir: Path) -> None:
    url = run_python(KEEPER).stdout.strip()
    status = embedded_server_status(data_dir)
    assert status.running and status.keep_running
    assert sql_value(url, "SELECT current_database()") == "memorix"
    # Attaching and leaving again does not stop it either.
    assert ensure_embedded_server(keep_running=False) == url
    assert attach()["url"] == url
    assert embedded_server_status(data_dir).running

    assert stop_embedded_server(data_dir) is True
    assert_stops(data_dir, status.pid)  # type: ignore[arg-type]
    assert not embedded_server_status(data_dir).keep_running
    assert stop_embedded_server(data_dir) is False


def test_memorix_database_url_selects_another_server(
    data_dir: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMORIX_DATABASE_URL", database_url)
    api = MemoryAPI(embedder="hash", collection_name="elsewhere")
    assert api.embedded is False
    assert api.database_url == database_url
    api.store("stored on the other server")
    assert sql_value(database_url, "SELECT text FROM memorix.memories") == "stored on the other server"
    assert not (data_dir / "pgdata").exists()
    assert not embedded_server_status(data_dir).running


@pytest.mark.parametrize("scheme", ["postgres", "postgresql+psycopg"])
def test_other_spellings_of_a_postgresql_url_are_accepted(database_url: str, scheme: str) -> None:
    """libpq takes postgres:// as well as postgresql://; SQLAlchemy users write +psycopg."""
    spelled = database_url.replace("postgresql://", f"{scheme}://", 1)
    api = MemoryAPI(embedder="hash", database_url=spelled)
    assert api.database_url == database_url
    api.store("reached through another spelling")
    assert sql_value(database_url, "SELECT count(*) FROM memorix.memories") == 1


def test_a_url_of_another_database_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="PostgreSQL URL") as excinfo:
        MemoryAPI(embedder="hash", database_url="mysql://u:s3cret@localhost/db")
    assert "s3cret" not in str(excinfo.value)


@pytest.mark.parametrize("via", ["argument", "environment"])
def test_an_unreachable_server_raises_database_unavailable_without_the_password(
    via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql://u:s3cret@/db?host=/tmp/nonexistent-dir"
    if via == "environment":
        monkeypatch.setenv("MEMORIX_DATABASE_URL", url)
    with pytest.raises(DatabaseUnavailable) as excinfo:
        MemoryAPI(embedder="hash", database_url=url if via == "argument" else None)
    message = str(excinfo.value)
    assert "s3cret" not in message
    assert "postgresql://u:***@/db?host=/tmp/nonexistent-dir" in message
    assert excinfo.value.__cause__ is None


@pytest.fixture
def postgres15_url() -> Iterator[str]:
    """A real PostgreSQL 15 without pgvector (Debian's binaries), on a unix socket in a temp dir."""
    if not (PG15_BIN / "initdb").exists():
        pytest.skip(f"Debian's PostgreSQL 15 server binaries are not installed ({PG15_BIN})")
    root = Path(tempfile.mkdtemp(prefix="mx-pg15-"))
    pgdata, sockets = root / "data", root / "sock"
    sockets.mkdir()
    run_as: dict = {}
    if os.geteuid() == 0:
        account = pwd.getpwnam("pgserver")
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        for path in (root, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)

    def pg(tool: str, *args: str) -> None:
        subprocess.run([str(PG15_BIN / tool), *args], check=True, capture_output=True, timeout=60, **run_as)

    try:
        pg("initdb", "-D", str(pgdata), "-U", "postgres", "--auth=trust")
        pg(
            "pg_ctl", "-D", str(pgdata), "-w", "-l", str(root / "log"),
            "-o", f"-k {sockets} -p {PG15_PORT} -c listen_addresses=''", "start",
        )  # fmt: skip
        yield f"postgresql://postgres@/postgres?host={sockets}&port={PG15_PORT}"
    finally:
        if (pgdata / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(pgdata), "-w", "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_a_server_without_pgvector_raises_pgvector_missing(postgres15_url: str) -> None:
    assert sql_value(postgres15_url, "SHOW server_version").startswith("15.")
    with pytest.raises(PgvectorMissing) as excinfo:
        MemoryAPI(embedder="hash", database_url=postgres15_url)
    message = str(excinfo.value)
    assert "pgvector" in message
    assert "apt install postgresql-<major>-pgvector" in message
    assert "(version 15." in message
    assert "Traceback" not in message and "\n" not in message
    assert excinfo.value.__cause__ is None and excinfo.value.__context__ is None
    # Nothing was created on that server.
    assert sql_value(postgres15_url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'memorix'") == 0
