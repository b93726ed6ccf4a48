"""What a move leaves behind, taken away: after a committed cutover the slot and the replica
identity at the source; after a failure everything, the copy at the destination included, so
that the source is left as it was."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from ..vector_index import drop_index_sql
from .state import COLLECTIONS, HISTORY, MEMORIES, POLL, Move, connect

__all__ = ["drop_subscription", "finish", "undo"]

logger = logging.getLogger("memorix_pg")


def drop_subscription(move: Move) -> None:
    """Detached from its slot first (the slot is dropped at the source): a subscription into
    the same cluster would otherwise wait for itself."""
    if not move.subscribed:
        return
    name = sql.Identifier(move.name)
    with connect(move.destination) as dst:
        dst.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(name))
        dst.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(name))
        dst.execute(sql.SQL("DROP SUBSCRIPTION {}").format(name))
    move.subscribed = False


def _drop_slots(move: Move) -> None:
    """The move's slot, and any table-sync slot an interrupted initial copy left, once their
    sender has gone (it exits shortly after the subscription is dropped)."""
    sync_slots = f"pg\\_{move.subscription_oid}\\_sync\\_%" if move.subscription_oid is not None else None
    deadline = time.monotonic() + 30
    with connect(move.source) as src:
        while True:
            rows = src.execute(
                "SELECT slot_name, active FROM pg_replication_slots "
                "WHERE slot_name = %s OR slot_name LIKE coalesce(%s, '')",
                (move.name, sync_slots),
            ).fetchall()
            for slot, active in rows:
                if not active:
                    with contextlib.suppress(psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                        src.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            if not any(active for _slot, active in rows) or time.monotonic() > deadline:
                break
            time.sleep(POLL)
    move.slot = False


def _restore_identity(move: Move) -> None:
    if move.previous_identity is None:
        return
    with connect(move.source) as src:
        src.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(MEMORIES, move.previous_identity))
    move.previous_identity = None


def finish(move: Move) -> None:
    """After a committed cutover: what is left at the source goes, whatever else fails."""
    _attempt(move, "drop the replication slot", lambda: _drop_slots(move))
    _attempt(move, "restore the replica identity of memorix.memories", lambda: _restore_identity(move))


def undo(move: Move) -> None:
    """After a failure: everything the move made goes, at the source and at the destination,
    whatever else fails."""
    _attempt(move, "drop the subscription", lambda: drop_subscription(move))
    _attempt(move, "drop the replication slots", lambda: _drop_slots(move) if move.slot else None)
    _attempt(move, "drop the publication", lambda: _drop_publication(move))
    _attempt(move, "restore the replica identity of memorix.memories", lambda: _restore_identity(move))
    _attempt(move, "remove the copy at the destination", lambda: _remove_copy(move))


def _drop_publication(move: Move) -> None:
    if move.publication:
        with connect(move.source) as src:
            src.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(move.name)))
        move.publication = False


def _remove_copy(move: Move) -> None:
    """The tenant's copied memories, the collections this move created and the history events
    it caused (the deletes' own included) go; the destination is as it was."""
    with connect(move.destination) as dst:
        with dst.transaction():
            dst.execute(sql.SQL("DELETE FROM {} WHERE tenant = %s").format(MEMORIES), (move.tenant,))
            if move.created:
                dst.execute(
                    sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(COLLECTIONS),
                    ([c.id for c in move.created],),
                )
            dst.execute(
                sql.SQL("DELETE FROM {} WHERE event_id > %s AND tenant = %s").format(HISTORY),
                (move.history_mark, move.tenant),
            )
        for collection in move.created:
            dst.execute(drop_index_sql(collection.info, concurrently=True))
    move.created = []


def _attempt(move: Move, what: str, step: Callable[[], object]) -> None:
    try:
        step()
    except Exception as exc:  # the move's own error, or its success, is what the caller sees
        logger.error("moving tenant %r: could not %s: %s", move.tenant, what, exc)
