"""Cleanup by dropping months, on memories partitioned by month of created_at (migration 0011).

Dropping a month removes its rows without dead tuples, VACUUM or WAL for each row (measured at
100k rows: 0.054 s and no WAL against a DELETE's 0.05 s plus VACUUM's 85 s and 95 MB of WAL).
``cleanup(older_than)`` without a filter drops every month whose upper bound is at or before
the cutoff and which holds rows of this tenant's collection only; the other months past the
cutoff (the one the cutoff falls in, and those shared with other collections or tenants) get
the ordinary DELETE. The result is what the DELETE alone would have done:

* it returns the number of live memories removed, as the DELETE counts them; a dropped month's
  expired memories go too, recorded as the ``purge`` that ``purge_expired`` would have made;
* when the history trigger is on, each dropped memory gets its event in the same transaction,
  before the drop, as the DELETE's statement trigger would have written it (a DROP fires none);
* everything is one transaction: a failure leaves every month and row in place.

"Holds no other rows" is two index probes on the key's leading ``(tenant, collection_id)``, one
below and one above this scope's. Only the table's owner may drop a month, and only when the
month enforces no row-level security on it (else the probes could miss other tenants' rows): any
other role gets the DELETE. The DELETE runs first, the drops last: a drop takes an ACCESS
EXCLUSIVE lock on ``memories`` until the commit, so it is held for the drops only, and each
waits at most ``DROP_LOCK_TIMEOUT`` for it; a month whose lock is not granted in time gets the
DELETE instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from psycopg import errors as pg_errors
from psycopg import sql

from ..models import SCHEMA, memories
from ..planner import Planner
from ..scope import Scope
from ..statements import Filter, cached
from ..steps import Operation, Query, execute, fetch_all, fetch_one

__all__ = ["DROP_LOCK_TIMEOUT", "cleanup_by_drop"]

DROP_LOCK_TIMEOUT = "200ms"

_OLDER = memories.c.created_at < sa.func.now() - sa.bindparam("age", type_=sa.Interval())

# Months wholly before the cutoff that this role may drop and whose rows it sees all of.
_MONTHS = Query(
    b"SELECT p.relname, p.bounds[1]::timestamptz, p.bounds[2]::timestamptz FROM ("
    b"  SELECT c.relname, regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),"
    b"    'FROM \\(''([^'']*)''\\) TO \\(''([^'']*)''\\)') AS bounds"
    b"  FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid"
    b"  JOIN pg_catalog.pg_class parent ON parent.oid = i.inhparent"
    b"  WHERE i.inhparent = 'memorix.memories'::regclass AND c.relkind = 'r'"
    b"    AND pg_catalog.pg_has_role(c.relowner, 'USAGE')"
    b"    AND pg_catalog.pg_has_role(parent.relowner, 'USAGE')"
    b"    AND NOT c.relforcerowsecurity AND NOT parent.relforcerowsecurity"
    b") p WHERE p.bounds IS NOT NULL AND p.bounds[2]::timestamptz <= now() - %(age)s::interval "
    b"ORDER BY 2"
)
_HISTORY_ON = Query(
    b"SELECT coalesce(bool_or(tgenabled <> 'D'), false) FROM pg_catalog.pg_trigger "
    b"WHERE tgrelid = 'memorix.memories'::regclass AND tgname = 'memories_history_delete'"
)
# The history events the DELETE's trigger (migration 0010's record_history) would write.
_EVENTS = (
    "INSERT INTO memorix.history (collection_id, memory_id, tenant, operation, text_hash_before, actor) "
    "SELECT m.collection_id, m.id, m.tenant, "
    "CASE WHEN m.expires_at IS NULL OR m.expires_at > now() "
    "THEN coalesce(nullif(current_setting('memorix.operation', true), ''), 'delete') ELSE 'purge' END, "
    "m.content_hash, coalesce(nullif(current_setting('memorix.actor', true), ''), session_user) FROM {} AS m"
)


def _others(month: sql.Identifier) -> sql.Composed:
    """Whether ``month`` holds a row of another tenant or collection: the first key below this
    scope's and the first above, each one probe of the key's index."""
    return sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM {0} WHERE (tenant, collection_id) < (%(tenant)s::text, %(cid)s::int8)) "
        "OR EXISTS (SELECT 1 FROM {0} WHERE (tenant, collection_id) > (%(tenant)s::text, %(cid)s::int8))"
    ).format(month)


_IN_MONTHS = (
    "EXISTS (SELECT 1 FROM unnest(CAST(:months_from AS timestamptz[]), CAST(:months_to AS timestamptz[])) "
    "AS r(lo, hi) WHERE memorix.memories.created_at >= r.lo AND memorix.memories.created_at < r.hi)"
)

_NOT_IN_MONTHS = "NOT " + _IN_MONTHS


def _in_months(
    ranges: list[tuple[datetime, datetime]], inside: bool = True
) -> tuple[sa.ColumnElement[bool], dict[str, Any]]:
    """``created_at`` in one of ``ranges`` (or, not ``inside``, in none), and the bounds to bind."""
    bounds = {"months_from": [lo for lo, _ in ranges], "months_to": [hi for _, hi in ranges]}
    return sa.and_(sa.text(_IN_MONTHS if inside else _NOT_IN_MONTHS)), bounds


def _delete(
    scope: Scope, where: sa.ColumnElement[bool], f: Filter, key: str, params: dict[str, Any]
) -> Operation[int]:
    """The ordinary cleanup DELETE (limited by ``where``), without committing: the drops follow."""
    query = cached(("cleanup by drop", scope.key, key), lambda _: sa.delete(memories).where(where), f, params)
    return int((yield from execute(query))[0].rowcount)


def _drop(scope: Scope, name: str, history: bool) -> Operation[int | None]:
    """Drop one month in a savepoint: the live memories it held, or None when it could not be
    (its lock not granted in time, or another tenant's or collection's row arrived)."""
    month = sql.Identifier(SCHEMA, name)
    params = {**scope.params, "cid": scope.info.id}
    try:
        yield from execute(
            Query(b"SAVEPOINT memorix_drop"),
            Query(b"SELECT set_config('lock_timeout', %(timeout)s, true)", {"timeout": DROP_LOCK_TIMEOUT}),
            # The parent first, as the DROP would take it (and as writers do).
            Query(
                sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.Identifier(SCHEMA, "memories")
                )
            ),
            Query(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(month)),
        )
    except pg_errors.LockNotAvailable:
        yield from execute(
            Query(b"ROLLBACK TO SAVEPOINT memorix_drop"), Query(b"RELEASE SAVEPOINT memorix_drop")
        )
        return None
    others = yield from fetch_one(Query(_others(month), params))
    if others is None or others[0]:
        yield from execute(
            Query(b"ROLLBACK TO SAVEPOINT memorix_drop"), Query(b"RELEASE SAVEPOINT memorix_drop")
        )
        return None
    live = sql.SQL("SELECT count(*) FROM {} AS m WHERE ").format(month) + sql.SQL(
        "m.expires_at IS NULL OR m.expires_at > now()"
    )
    queries = [Query(live)]
    if history:
        queries.append(Query(sql.SQL(_EVENTS).format(month)))
    queries += [
        Query(sql.SQL("DROP TABLE {}").format(month)),
        Query(b"RELEASE SAVEPOINT memorix_drop"),
    ]
    results = yield from execute(*queries)
    return int(results[0].rows[0][0])


def cleanup_by_drop(scope: Scope, planner: Planner, f: Filter, age: timedelta) -> Operation[int]:
    """``cleanup`` without a filter on a table partitioned by month (see the module's docstring)."""
    params: dict[str, Any] = {**scope.params, "cid": scope.info.id, "age": age}
    months = yield from fetch_all(Query(_MONTHS.text, {"age": age}))
    droppable: list[tuple[str, datetime, datetime]] = []
    if months:
        probes = yield from execute(*(Query(_others(sql.Identifier(SCHEMA, m[0])), params) for m in months))
        droppable = [
            (m[0], m[1], m[2]) for m, probe in zip(months, probes, strict=True) if not probe.rows[0][0]
        ]
    older = sa.and_(scope.live(f), _OLDER)
    skip, skip_params = _in_months([(lo, hi) for _, lo, hi in droppable], inside=False)
    removed = yield from _delete(scope, sa.and_(older, skip), f, "outside", {**params, **skip_params})
    if not droppable:
        yield from execute(final=True)
        planner.changed_rows(removed)
        return removed
    history_on = yield from fetch_one(_HISTORY_ON)
    timeout = yield from fetch_one(Query(b"SELECT current_setting('lock_timeout')"))
    assert history_on is not None and timeout is not None
    left: list[tuple[datetime, datetime]] = []
    dropped = 0
    for name, lo, hi in droppable:
        count = yield from _drop(scope, name, bool(history_on[0]))
        if count is None:
            left.append((lo, hi))
        else:
            dropped += count
    yield from execute(Query(b"SELECT set_config('lock_timeout', %(old)s, true)", {"old": timeout[0]}))
    if left:  # the DELETE for the months that could not be dropped
        within, within_params = _in_months(left)
        removed += yield from _delete(scope, sa.and_(older, within), f, "within", {**params, **within_params})
    yield from execute(final=True)
    planner.changed_rows(removed + dropped)
    return removed + dropped
