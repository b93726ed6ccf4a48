"""Which database to use, one pooled engine per URL, and the checks made before first use.

Order of precedence: the ``database_url`` argument, then ``MEMORIX_DATABASE_URL``, then the
embedded server (:mod:`memorix_pg.server`). Engines are shared per URL within a process so
that many ``MemoryAPI`` objects (one per user, say) share one connection pool.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from .errors import ConfigurationError, DatabaseUnavailable, PgvectorMissing
from .query_vector import register_query_vector
from .server import default_data_dir, ensure_embedded_server

__all__ = [
    "ResolvedDatabase",
    "check_pgvector",
    "dispose_engine",
    "get_engine",
    "libpq_url",
    "redact_url",
    "resolve_database",
    "sqlalchemy_url",
]

ENV_URL = "MEMORIX_DATABASE_URL"

PGVECTOR_INSTALL_HINT = (
    "Install pgvector on the server (Debian/Ubuntu: `apt install postgresql-<major>-pgvector`; "
    "macOS: `brew install pgvector`; Docker: the `pgvector/pgvector:pg17` image, see docker-compose.yml), "
    "or unset MEMORIX_DATABASE_URL to use the embedded server, which ships pgvector."
)


@dataclass(frozen=True)
class ResolvedDatabase:
    url: str  # libpq form: postgresql://user:pass@host/db
    embedded: bool
    data_dir: Path | None = None  # the embedded server's, to start it again if it dies


def resolve_database(database_url: str | None = None) -> ResolvedDatabase:
    """The argument, else ``MEMORIX_DATABASE_URL``, else the embedded server (started if needed)."""
    url = database_url or os.environ.get(ENV_URL) or None
    if url:
        return ResolvedDatabase(url=libpq_url(url), embedded=False)
    data_dir = default_data_dir()
    return ResolvedDatabase(url=ensure_embedded_server(data_dir), embedded=True, data_dir=data_dir)


def libpq_url(url: str) -> str:
    """``postgresql://…`` (what psql and psycopg take), from any SQLAlchemy-style URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(f"not a database URL: {redact_url(url)!r}") from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):  # libpq takes both
        raise ConfigurationError(
            f"memorix-pg needs a PostgreSQL URL (postgresql://…), got {redact_url(url)!r}"
        )
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme != "postgresql" else url


def sqlalchemy_url(url: str) -> str:
    """The same URL with the psycopg 3 driver named, for SQLAlchemy."""
    return "postgresql+psycopg://" + libpq_url(url).split("://", 1)[1]


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    return url


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    register_query_vector(dbapi_connection)


def get_engine(url: str) -> Engine:
    """A pooled engine for ``url``; connections are pinged before use so a restarted server is survived."""
    key = libpq_url(url)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = sa.create_engine(
                sqlalchemy_url(key),
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=10,
                # Never prepared server-side: after 5 runs psycopg prepares a statement, and
                # PostgreSQL may then switch it to a generic plan that cannot see the filter's
                # values (measured 30-190 ms instead of 1-3 ms: a sequential scan instead of the
                # GIN/btree indexes). Each statement is planned with its values.
                connect_args={
                    "connect_timeout": 10,
                    "application_name": "memorix-pg",
                    "prepare_threshold": None,
                },
            )
            sa.event.listen(engine, "connect", _on_connect)
            # Disposing the engine (to make new sessions pick up a changed setting) renews the
            # library's own pools for the URL too.
            sa.event.listen(engine, "engine_disposed", lambda _engine, url=key: _close_pools(url))
            _engines[key] = engine
    return engine


def _close_pools(url: str) -> None:
    from .connections import close_pools

    close_pools(url)


def dispose_engine(url: str) -> None:
    """Close the pooled connections to ``url``, the library's pools' too (the next use opens new ones)."""
    with _engines_lock:
        engine = _engines.pop(libpq_url(url), None)
    if engine is not None:
        engine.dispose()
    _close_pools(libpq_url(url))


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    """The error raised when the server cannot be reached, naming the URL without its password."""
    reason = (
        str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
    )
    return DatabaseUnavailable(
        f"cannot connect to PostgreSQL at {redact_url(url)}: {reason}. "
        "Check that the server is running and reachable, and that the URL's host, port, user, "
        "password and database are right (MEMORIX_DATABASE_URL or database_url=)."
    )


def check_pgvector(engine: Engine, url: str) -> None:
    """Fail with install instructions when the server has no pgvector extension available."""
    try:
        with engine.connect() as conn:
            available = conn.execute(
                sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
            ).first()
            version = conn.execute(sa.text("SHOW server_version")).scalar()
    except OperationalError as exc:
        raise unavailable(url, exc) from None
    except DBAPIError as exc:
        raise unavailable(url, exc) from None
    if available is None:
        raise PgvectorMissing(
            f"the PostgreSQL server at {redact_url(url)} (version {version}) has no pgvector extension "
            f"('vector' is not in pg_available_extensions). {PGVECTOR_INSTALL_HINT}"
        )
