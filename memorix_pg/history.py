"""Reading and pruning the history that the triggers of migration 0007 write.

Every statement that inserts, updates or deletes memories records one event per row in the
same statement (a trigger over its transition tables), so the history cannot miss a write
nor record one that rolled back. Here are the reads (a memory's events, a collection's
events by filter and time) and the retention delete.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .models import collections, history
from .scope import Scope
from .statements import adhoc
from .steps import Operation, execute, fetch_all

__all__ = ["HistoryEvent", "events", "events_of", "prune"]

_COLUMNS = (
    history.c.event_id,
    history.c.memory_id,
    collections.c.name,
    sa.func.nullif(history.c.tenant, sa.literal_column("''")).label("tenant"),  # '' is no tenant: None
    history.c.operation,
    history.c.text_hash_before,
    history.c.text_hash_after,
    history.c.metadata,
    history.c.actor,
    history.c.at,
    history.c.forgotten,
)


@dataclass(frozen=True)
class HistoryEvent:
    """One memory written, changed or removed. Texts appear only as their content hash
    (SHA-256, or an HMAC under the key when encrypted); ``metadata`` is the document after the
    change (None for a removal). A tombstone (``forgotten``) keeps only the operation, the
    collection, the actor and the time."""

    event_id: int
    memory_id: str | None
    collection: str | None  # None once the collection was dropped
    tenant: str | None
    operation: str
    text_hash_before: bytes | None
    text_hash_after: bytes | None
    metadata: dict[str, Any] | None
    actor: str
    at: datetime
    forgotten: bool


def _tenant(scope: Scope) -> sa.ColumnElement[bool]:
    return scope.tenant_rows(history)


def _select() -> sa.Select[Any]:
    joined = history.outerjoin(collections, collections.c.id == history.c.collection_id)
    return sa.select(*_COLUMNS).select_from(joined)


def events_of(scope: Scope, memory_id: str, limit: int) -> Operation[list[tuple[Any, ...]]]:
    """The events of memory ``memory_id`` (in any collection: an archive moves it), oldest first."""
    statement = (
        _select()
        .where(history.c.memory_id == sa.bindparam("id"), _tenant(scope))
        .order_by(history.c.event_id)
        .limit(sa.bindparam("limit"))
    )
    return (
        yield from fetch_all(adhoc(statement, {**scope.params, "id": memory_id, "limit": limit}), final=True)
    )


def events(
    scope: Scope, where: sa.ColumnElement[bool], since: datetime | None, limit: int
) -> Operation[list[tuple[Any, ...]]]:
    """The collection's events whose document matches ``where`` (over ``history.metadata``),
    at or after ``since``, newest first."""
    conditions = [history.c.collection_id == sa.bindparam("cid"), _tenant(scope), where]
    params: dict[str, Any] = {**scope.params, "cid": scope.info.id, "limit": limit}
    if since is not None:
        conditions.append(history.c.at >= sa.bindparam("since", type_=history.c.at.type))
        params["since"] = since
    statement = _select().where(*conditions).order_by(history.c.event_id.desc()).limit(sa.bindparam("limit"))
    return (yield from fetch_all(adhoc(statement, params), final=True))


def prune(scope: Scope, older_than: timedelta) -> Operation[int]:
    """Delete the collection's events older than ``older_than``: one DELETE."""
    statement = sa.delete(history).where(
        history.c.collection_id == sa.bindparam("cid"),
        _tenant(scope),
        history.c.at < sa.func.now() - sa.bindparam("age", type_=sa.Interval()),
    )
    params = {**scope.params, "cid": scope.info.id, "age": older_than}
    return int((yield from execute(adhoc(statement, params), final=True))[0].rowcount)
