"""Steps 4 and 5 of a move (see the package docstring): the check repeated until it matches, the
last one under a lock against writes at the source, then the switch: subscription dropped,
history copied, and the tenant deleted at the source, in one source transaction."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .cleanup import drop_subscription
from .replication import adopt_new_collections, wait_for_catch_up
from .state import HISTORY, MEMORIES, Move, connect, scalar, timed_out
from .verification import checksums, differing_collections, reconcile

__all__ = ["check_and_cut_over"]

_HISTORY_COLUMNS = (
    "collection_id",
    "memory_id",
    "tenant",
    "operation",
    "text_hash_before",
    "text_hash_after",
    "metadata",
    "actor",
    "at",
    "forgotten",
)


def check_and_cut_over(move: Move, deadline: float, clean_source: bool) -> int:
    """Catch up, check and reconcile, then try the locked final check and cutover, until it
    matches or the deadline passes: the number of history events copied."""
    while True:
        # Unlocked first: writers go on while the copy catches up with them.
        with connect(move.source) as src:
            lsn = str(scalar(src, "SELECT pg_current_wal_lsn()"))
        wait_for_catch_up(move, lsn, deadline)
        with connect(move.source) as src:
            adopt_new_collections(move, src)
            differing = differing_collections(move, checksums(src, move.tenant))
            if differing:
                reconcile(move, src, differing, complete=False)
        moved = _cut_over(move, deadline, clean_source)
        if moved is not None:
            return moved
        if time.monotonic() > deadline:
            raise timed_out(move, "the copy's counts and checksums did not match the source's")


def _cut_over(move: Move, deadline: float, clean_source: bool) -> int | None:
    """Under a lock against writes at the source: the last check, then the switch. None when
    the check failed (writes arrived in between): the caller waits and tries again."""
    events: int | None = None
    with connect(move.source, autocommit=False) as src:
        with src.transaction():
            remaining = max(deadline - time.monotonic(), 1.0)
            src.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(remaining * 1000)}ms",))
            try:
                src.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(MEMORIES))
            except psycopg.errors.LockNotAvailable:
                raise timed_out(move, "the source's writes did not pause for the final check") from None
            lsn = str(scalar(src, "SELECT pg_current_wal_lsn()"))
            source_sums = checksums(src, move.tenant)
            adopt_new_collections(move, src)
            wait_for_catch_up(move, lsn, deadline)
            differing = differing_collections(move, source_sums)
            if differing:
                # Nothing is in flight now: what still differs is an update or a delete that an
                # insert-only publication does not carry.
                reconcile(move, src, differing, complete=True)
                if differing_collections(move, source_sums):
                    raise psycopg.Rollback()
            drop_subscription(move)
            move.moved = {collection_id: count for collection_id, (count, _sum) in source_sums.items()}
            events = _copy_history(src, move)
            src.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(move.name)))
            if clean_source:
                src.execute("SELECT set_config('memorix.operation', 'move', true)")
                src.execute(sql.SQL("DELETE FROM {} WHERE tenant = %s").format(MEMORIES), (move.tenant,))
                # After the memories: their deletion's own events go too.
                src.execute(sql.SQL("DELETE FROM {} WHERE tenant = %s").format(HISTORY), (move.tenant,))
    if events is not None:
        move.publication = False
    return events


def _copy_history(src: psycopg.Connection[Any], move: Move) -> int:
    """The tenant's events, oldest first, appended at the destination (new event ids)."""
    columns = sql.SQL(", ").join(map(sql.Identifier, _HISTORY_COLUMNS))
    copied = 0
    select = sql.SQL("SELECT {} FROM {} WHERE tenant = %s ORDER BY event_id").format(columns, HISTORY)
    with connect(move.destination, autocommit=False) as dst, dst.transaction():
        with (
            src.cursor(name=f"{move.name}_history") as events,
            dst.cursor() as target,
            target.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(HISTORY, columns)) as copy,
        ):
            events.execute(select, (move.tenant,))
            for row in events:
                copy.write_row([Jsonb(v) if isinstance(v, (dict, list)) else v for v in row])
                copied += 1
    return copied
