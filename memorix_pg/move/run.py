"""The move from start to end: :func:`move_tenant` checks its arguments, then runs the steps of
the package docstring in order and undoes them on failure."""

from __future__ import annotations

import time

import psycopg

from ..database import libpq_url, resolve_database
from ..errors import ConfigurationError, InvalidInput, MemorixError, PermissionDenied
from ..validation import check_tenant
from .cleanup import finish, undo
from .cutover import check_and_cut_over
from .preconditions import preflight
from .receipt import MoveReceipt
from .replication import build_indexes, prepare_destination, start_replication, wait_for_initial_sync
from .state import Move

__all__ = ["DEFAULT_TIMEOUT", "move_tenant"]

DEFAULT_TIMEOUT = 600.0


def move_tenant(
    tenant: str,
    to: str,
    database_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    source_conninfo: str | None = None,
    clean_source: bool = True,
) -> MoveReceipt:
    """Move every memory of ``tenant`` from the database at ``database_url`` (else
    ``MEMORIX_DATABASE_URL``, else the embedded server) to the database at ``to``, online.

    The copy is checked (counts and checksums per collection) before the tenant is deleted at
    the source; on any failure the source is left as it was and the destination cleaned.
    ``timeout`` (seconds) bounds the wait for the copy to catch up and match. ``source_conninfo``
    is how the destination *server* reaches the source (default: the source URL).
    ``clean_source=False`` copies and checks but keeps the tenant at the source.
    """
    checked = check_tenant(tenant)
    if checked is None:
        raise InvalidInput("move_tenant needs a tenant: memories without a tenant cannot be moved alone")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(to, str) or not to:
        raise ConfigurationError("move_tenant needs the destination's database URL (to=)")
    if source_conninfo is not None and (not isinstance(source_conninfo, str) or not source_conninfo):
        raise ConfigurationError(
            f"source_conninfo must be a non-empty connection string, got {source_conninfo!r}"
        )
    if not isinstance(clean_source, bool):
        raise InvalidInput(f"clean_source must be a bool, got {clean_source!r}")
    destination = libpq_url(to)
    source = resolve_database(database_url).url
    started = time.monotonic()
    deadline = started + float(timeout)
    try:
        move = preflight(checked, source, destination, source_conninfo)
        history_events = _run(move, deadline, clean_source)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied(
            f"moving a tenant needs a superuser, or the tables' owner with the REPLICATION attribute at "
            f"the source and pg_create_subscription at the destination: {str(exc).strip()}"
        ) from None
    except psycopg.Error as exc:  # e.g. no free replication slot, a connection lost half-way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MemorixError(
            f"moving tenant {checked!r} stopped: {reason}; nothing of the move is left and the source "
            "is unchanged"
        ) from None
    return MoveReceipt(
        tenant=checked,
        collections={c.config["name"]: move.moved.get(c.id, 0) for c in move.collections},
        history_events=history_events,
        seconds=round(time.monotonic() - started, 3),
        source_cleaned=clean_source,
    )


def _run(move: Move, deadline: float, clean_source: bool) -> int:
    committed = False
    try:
        prepare_destination(move)
        start_replication(move)
        wait_for_initial_sync(move, deadline)
        build_indexes(move)
        history_events = check_and_cut_over(move, deadline, clean_source)
        committed = True
    finally:
        if not committed:
            undo(move)
    finish(move)
    return history_events
