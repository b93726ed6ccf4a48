"""Writing to ``memorix.memories`` partitioned by month of ``created_at`` (migration 0011).

A month's partition must exist before a row of that month is written: PostgreSQL has no
automatic partitions, and a default partition would have to be scanned whenever a month is
added. ``memorix.ensure_month_partitions(first, last)`` (SECURITY DEFINER, callable by every
role) creates the missing months, each without privileges for anyone but its owner. The
library calls it

* for the current and the next month, once per process and database each month
  (:func:`ensure_horizon`): the rows the server stamps land there, so the hot path sends
  nothing most of the time;
* for the months of rows that carry their own ``created_at`` (an import, a restore of exported
  lines), before writing them (:func:`ensure_months`);
* as a safety net, when a write fails with "no partition of relation ... found for row"
  (:func:`missing_partition`): the months are ensured and the write runs once more.

The key of a partitioned table must hold its partition key, so it is ``(tenant, collection_id,
id, created_at)`` and ``ON CONFLICT (tenant, collection_id, id)`` has no unique index to use. An
upsert is therefore an UPDATE of the ids present (in whatever month they were stored) and an
INSERT of the rest, in one statement, under a transaction-scoped advisory lock on the tenant's
collection, so two upserts of one new id cannot both insert it. Ids the library generates
(UUID4) cannot collide and take neither.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from psycopg import errors as pg_errors
from psycopg import sql

from .models import SCHEMA
from .steps import Operation, Query, execute

__all__ = [
    "ensure_horizon",
    "ensure_months",
    "missing_partition",
    "upsert_lock",
    "upsert_statement",
]

_HORIZON = Query(b"SELECT memorix.ensure_month_partitions(now(), now() + interval '1 month')", prepare=True)
_MONTHS = Query(
    b"SELECT memorix.ensure_month_partitions(m, m) FROM unnest(%(months)s::timestamptz[]) AS m ORDER BY m",
)
_LOCK = (
    b"SELECT pg_advisory_xact_lock(hashtextextended("
    b"'memorix.upsert:' || %(collection_id)s::bigint::text || ':' || %(tenant)s::text, 0))"
)

# The (year, month) through whose next month each database's partitions were ensured.
_horizons: dict[str, tuple[int, int]] = {}
_horizons_lock = threading.Lock()


def _this_month() -> tuple[int, int]:
    now = datetime.now(UTC)
    return now.year, now.month


def ensure_horizon(database: str) -> Operation[None]:
    """The current and the next month's partitions exist: sends nothing once this process has
    ensured them for ``database`` this month. Run inside the write's transaction: creating a
    month attaches it, which waits for no reader or writer."""
    month = _this_month()
    with _horizons_lock:
        if _horizons.get(database) == month:
            return
    yield from execute(_HORIZON)
    with _horizons_lock:
        _horizons[database] = month


def ensure_months(stamps: Sequence[datetime]) -> Operation[None]:
    """The partitions of the months of ``stamps`` exist (one statement)."""
    utc = [t.astimezone(UTC) for t in stamps]
    months = sorted({datetime(t.year, t.month, 1, tzinfo=UTC) for t in utc})
    if months:
        yield from execute(Query(_MONTHS.text, {"months": months}))


def missing_partition(exc: BaseException) -> bool:
    """The write failed because a row's month has no partition: SQLSTATE 23514 like a CHECK
    constraint, but naming no constraint (the message itself may be translated)."""
    return isinstance(exc, pg_errors.CheckViolation) and exc.diag.constraint_name is None


def upsert_lock(collection_id: int, tenant: str) -> Query:
    """Serialise the writes of caller-given ids into one tenant's collection until commit."""
    return Query(_LOCK, {"collection_id": collection_id, "tenant": tenant})


def upsert_statement(
    source: sql.Composable, columns: Sequence[str], embedding_column: str, prefix: sql.Composable
) -> sql.Composed:
    """Update the rows of ``source`` whose (tenant, collection_id, id) is stored already, in
    whatever month, and insert the others; returns the ids written. ``source`` (a table or a CTE
    named in ``prefix``, ``WITH ...,`` or empty) has ``columns``, the target's names."""
    table = sql.Identifier(SCHEMA, "memories")
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = s.{0}").format(sql.Identifier(c))
        for c in ("text", embedding_column, "metadata", "content_hash", "expires_at", "updated_at")
    )
    return sql.SQL(
        "{prefix} updated AS (UPDATE {table} AS m SET {updates} FROM {source} AS s "
        "WHERE m.tenant = s.tenant AND m.collection_id = s.collection_id AND m.id = s.id RETURNING m.id), "
        "inserted AS (INSERT INTO {table} ({names}) SELECT {names} FROM {source} AS s "
        "WHERE NOT EXISTS (SELECT 1 FROM updated WHERE updated.id = s.id) RETURNING id) "
        "SELECT id FROM updated UNION ALL SELECT id FROM inserted"
    ).format(prefix=prefix, table=table, updates=updates, source=source, names=names)
