"""Forgetting a person: every memory matching a filter, and every summary built from them.

One statement, so one transaction: a recursive CTE collects the matching memories (of every
collection, archives included, or of one), then the compressed summaries whose ``source_ids``
name any of them, then summaries of those summaries; one DELETE removes them all and the
receipt counts them per collection. In the same statement the person's history events (those
whose metadata matches the filter, every event of those memories, and of the memories removed
now) become tombstones; the trigger records the removals themselves as tombstones.

Summaries are deleted, not rebuilt: compression deleted their originals, so a summary cannot
be rebuilt without the subject's part. A summary whose originals all carried the filter's keys
shares them and matches the filter itself; a summary of several people that shares no such
key cannot be traced (compress with ``group_by`` including the subject's key to avoid those).
Links through ``source_ids`` cross collections (an archived summary keeps its sources' ids),
which may delete a summary of another collection that names an equal id: for an erasure,
deleting too much derived text is the safe side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..models import collections, history, memories
from ..scope import stored_tenant
from ..statements import Filter, adhoc
from ..steps import Operation, fetch_one

__all__ = ["ForgetReceipt", "forget"]

_SUMMARY: sa.ColumnElement[Any] = sa.literal_column("""'{"compressed": true}'::jsonb""")


@dataclass(frozen=True)
class ForgetReceipt:
    """What ``forget`` removed (or, with ``dry_run``, would remove): memories per collection
    (summaries included) and, of those, summaries per collection."""

    memories: dict[str, int] = field(default_factory=dict)
    summaries: dict[str, int] = field(default_factory=dict)
    history: int = 0  # earlier history events of theirs turned into tombstones
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.memories.values())


def _tenant_rows(table: Any, tenant: str | None, every_tenant: bool) -> sa.ColumnElement[bool]:
    if every_tenant and tenant is None:
        return sa.true()
    column: sa.ColumnElement[Any] = table.c.tenant
    return column == sa.bindparam("tenant", type_=sa.Text())


def forget(
    f: Filter,
    in_history: sa.ColumnElement[bool],
    *,
    tenant: str | None,
    every_tenant: bool,
    collection_id: int | None,
    dry_run: bool,
) -> Operation[ForgetReceipt]:
    """Delete (or count) the matching memories and the summaries built from them: one statement.

    ``tenant`` restricts to that tenant's rows; without one, ``every_tenant`` says whether rows
    of every tenant go (else only rows without a tenant). ``collection_id`` restricts the
    matching memories to one collection (summaries are followed everywhere). ``in_history`` is
    the filter over ``history.metadata``: the events whose document names the subject, and those
    of the memories removed, become tombstones (no id, text hash or metadata).
    """
    where = [f.expression, _tenant_rows(memories, tenant, every_tenant)]
    if collection_id is not None:
        where.append(memories.c.collection_id == sa.bindparam("cid"))
    # Rows are named by their key (tenant, collection, id); a summary is of its sources' tenant.
    base = sa.select(memories.c.tenant, memories.c.collection_id, memories.c.id).where(*where)
    doomed = base.cte("doomed", recursive=True)
    summary = memories.alias("s")
    derived = (
        sa.select(summary.c.tenant, summary.c.collection_id, summary.c.id)
        .join(
            doomed,
            sa.and_(
                summary.c.tenant == doomed.c.tenant, summary.c.metadata["source_ids"].op("?")(doomed.c.id)
            ),
        )
        .where(
            summary.c.metadata.op("@>", is_comparison=True)(_SUMMARY),
            _tenant_rows(summary, tenant, every_tenant),
        )
    )
    doomed = doomed.union(derived)
    targets = sa.select(doomed.c.tenant, doomed.c.collection_id, doomed.c.id)
    key = sa.tuple_(memories.c.tenant, memories.c.collection_id, memories.c.id)
    is_summary = memories.c.metadata.op("@>", is_comparison=True)(_SUMMARY)
    if dry_run:
        gone = (
            sa.select(memories.c.collection_id, is_summary.label("summary"))
            .where(key.in_(targets))
            .cte("gone")
        )
    else:
        gone = (
            sa.delete(memories)
            .where(key.in_(targets))
            .returning(memories.c.collection_id, is_summary.label("summary"))
            .cte("gone")
        )
    per_collection = (
        sa.select(
            collections.c.name.label("name"),
            sa.func.count().label("n"),
            sa.func.count().filter(gone.c.summary).label("s"),
        )
        .select_from(gone.join(collections, collections.c.id == gone.c.collection_id))
        .group_by(collections.c.name)
        .subquery("per_collection")
    )
    # Every event of a memory one of whose documents named the subject (its later delete or
    # compress event carries no document), and every event of the memories removed now.
    named = sa.select(history.c.tenant, history.c.memory_id).where(
        in_history, _tenant_rows(history, tenant, every_tenant)
    )
    event_of = sa.tuple_(history.c.tenant, history.c.memory_id)
    tomb_where = sa.and_(
        sa.or_(
            in_history,
            event_of.in_(named),
            event_of.in_(sa.select(doomed.c.tenant, doomed.c.id)),
        ),
        _tenant_rows(history, tenant, every_tenant),
        history.c.forgotten.is_(False),
    )
    if dry_run:
        tombs = sa.select(history.c.event_id).where(tomb_where).cte("tombs")
    else:
        tombs = (
            sa.update(history)
            .where(tomb_where)
            .values(
                memory_id=None, text_hash_before=None, text_hash_after=None, metadata=None, forgotten=True
            )
            .returning(history.c.event_id)
            .cte("tombs")
        )
    # One row whatever matched: [[collection, memories, summaries], ...] and the tombstones.
    statement = sa.select(
        sa.select(
            sa.func.coalesce(
                sa.func.jsonb_agg(
                    sa.func.jsonb_build_array(per_collection.c.name, per_collection.c.n, per_collection.c.s)
                ),
                sa.literal_column("'[]'::jsonb"),
            )
        ).scalar_subquery(),
        sa.select(sa.func.count()).select_from(tombs).scalar_subquery(),
    )
    params: dict[str, Any] = {}
    if tenant is not None or not every_tenant:
        params["tenant"] = stored_tenant(tenant)
    if collection_id is not None:
        params["cid"] = collection_id
    row = yield from fetch_one(adhoc(statement, params), final=True)
    assert row is not None
    counted = sorted(row[0])
    return ForgetReceipt(
        memories={name: int(n) for name, n, _ in counted},
        summaries={name: int(s) for name, _, s in counted if s},
        history=int(row[1]),
        dry_run=dry_run,
    )
