"""Retention: delete what is older than an age, or past its TTL, in one DELETE."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from ..models import memories
from ..planner import Planner
from ..reads import count
from ..scope import Scope
from ..statements import Filter, compile_where
from ..steps import Operation
from ..writes import delete_where
from .partitions import cleanup_by_drop

__all__ = ["cleanup", "count_older_than", "purge_expired"]

_OLDER = memories.c.created_at < sa.func.now() - sa.bindparam("age", type_=sa.Interval())


def cleanup(
    scope: Scope, planner: Planner, f: Filter, age: timedelta, *, unfiltered: bool = False
) -> Operation[int]:
    """Delete live memories stored more than ``age`` ago (and matching ``f``). ``unfiltered`` (no
    filter given) on a table partitioned by month: whole months are dropped (partitions.py)."""
    if unfiltered and scope.info.time_partitioned:
        return (yield from cleanup_by_drop(scope, planner, f, age))
    where = sa.and_(scope.live(f), _OLDER)
    return (yield from delete_where(scope, planner, where, f, "older than", {"age": age}))


def count_older_than(scope: Scope, f: Filter, age: timedelta) -> Operation[int]:
    """What :func:`cleanup` would delete (a dry run)."""
    return (yield from count(scope, f, _OLDER, "older than", {"age": age}))


def purge_expired(scope: Scope, planner: Planner) -> Operation[int]:
    """Delete the scope's memories whose TTL has passed."""
    where: Any = sa.and_(scope.rows(), memories.c.expires_at <= sa.func.now())
    return (yield from delete_where(scope, planner, where, compile_where(None), "expired", {}))
