"""Index builds on ``memorix.memories`` that work whether the table is partitioned or not.

PostgreSQL refuses ``CREATE INDEX CONCURRENTLY`` and ``DROP INDEX CONCURRENTLY`` on a
partitioned table. A table partitioned by tenant (``MEMORIX_TENANT_PARTITIONS``, migration 0010;
docs/scaling.md) gets its index in three steps that block no writer for long: the index is
created ``ON ONLY`` the parent (instant, and invalid while it lacks a partition), each
partition's index is built ``CONCURRENTLY``, then attached with ``ALTER INDEX ... ATTACH
PARTITION``; the parent's index becomes valid when the last one is attached. An interrupted
build is resumed by running it again: partitions built already are kept, an invalid leftover
is dropped and built again. Dropping such an index cannot be concurrent: it takes the table's
lock for the (short) time the catalog change needs.

Everything runs on the admin (autocommit) connection.
"""

from __future__ import annotations

import hashlib
from typing import Any

from psycopg import sql

from .models import SCHEMA
from .steps import Admin, Operation, Query

__all__ = ["build_concurrently", "drop_index", "memories_partitions", "partition_index_name"]

_PARTITIONS = Query(
    b"SELECT c.relname FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid "
    b"WHERE i.inhparent = to_regclass(%(table)s) ORDER BY c.relname",
    {"table": f"{SCHEMA}.memories"},
)
_VALID = (
    b"SELECT i.indisvalid FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
    b"JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    b"WHERE n.nspname = %(schema)s AND c.relname = %(name)s"
)
MAX_NAME = 63  # PostgreSQL's identifier length


def _admin(*queries: Query) -> Operation[list[Any]]:
    results: list[Any] = yield Admin(queries)
    return results


def memories_partitions() -> Operation[list[str]]:
    """The partitions of ``memorix.memories`` (none when it is a plain table)."""
    rows = (yield from _admin(_PARTITIONS))[0].rows
    return [str(r[0]) for r in rows]


def partition_index_name(index: str, partition: str) -> str:
    """The name of ``index``'s part on ``partition`` (hashed past PostgreSQL's 63 characters)."""
    name = f"{index}_{partition}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=6).hexdigest()
    return f"{name[: MAX_NAME - len(digest) - 1]}_{digest}"


def build_concurrently(name: str, definition: sql.Composable, partitions: list[str]) -> Operation[None]:
    """``CREATE INDEX name ON memorix.memories <definition>`` on a partitioned table, without
    blocking writers: ``definition`` is everything after the table (``USING ... (...) WITH ...
    WHERE ...``)."""
    parent = sql.Identifier(SCHEMA, "memories")
    yield from _admin(
        Query(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON ONLY {} {}").format(
                sql.Identifier(name), parent, definition
            ),
            {},
        )
    )
    for partition in partitions:
        child = partition_index_name(name, partition)
        state = (yield from _admin(Query(_VALID, {"schema": SCHEMA, "name": child})))[0].rows
        if state and not state[0][0]:  # an interrupted build's invalid leftover (never attached)
            yield from _admin(
                Query(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(SCHEMA, child)))
            )
        yield from _admin(
            Query(
                sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} {}").format(
                    sql.Identifier(child), sql.Identifier(SCHEMA, partition), definition
                ),
                {},
            )
        )
        yield from _admin(  # on its own: a pipeline would make the build one transaction with it
            Query(
                sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
                    sql.Identifier(SCHEMA, name), sql.Identifier(SCHEMA, child)
                )
            )
        )


def drop_index(name: str) -> Operation[None]:
    """``DROP INDEX``: CONCURRENTLY (blocking nobody) unless the table is partitioned."""
    partitioned = bool((yield from memories_partitions()))
    how = sql.SQL("" if partitioned else "CONCURRENTLY ")
    yield from _admin(Query(sql.SQL("DROP INDEX {}IF EXISTS {}").format(how, sql.Identifier(SCHEMA, name))))
