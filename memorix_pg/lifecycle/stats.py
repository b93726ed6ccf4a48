"""Counts computed in SQL: one GROUP BY instead of fetching memories and counting in Python."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from ..errors import InvalidInput
from ..models import memories
from ..scope import Scope
from ..statements import Filter, adhoc
from ..steps import Operation, fetch_all

__all__ = ["fold_groups", "group_count_query", "group_counts"]


def group_count_query(where: sa.ColumnElement[bool], group_by: str) -> sa.Select[Any]:
    """One GROUP BY over a metadata key (a dot path such as ``"source.kind"`` reaches inside)."""
    if not isinstance(group_by, str) or not group_by:
        raise InvalidInput(f"group_by must be a metadata key, got {group_by!r}")
    try:
        group_by.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"group_by {group_by!r} contains a lone surrogate") from None
    if "\x00" in group_by:
        raise InvalidInput(f"group_by {group_by!r} contains a NUL byte (\\x00)")
    key = memories.c.metadata.op("#>")(sa.cast(group_by.split("."), sa.ARRAY(sa.Text))).label("key")
    return (
        sa.select(key, sa.func.count().label("n"))
        .where(where)
        .group_by(key)
        .order_by(sa.func.count().desc(), key)
    )


def _group_key(value: Any) -> Any:
    """Lists and objects group under their JSON text (dict keys must be hashable)."""
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return value


def fold_groups(rows: Iterable[tuple[Any, Any]]) -> dict[Any, int]:
    """``{value: count}``, largest first. A missing key and a JSON null both count under None."""
    groups: dict[Any, int] = {}
    for key, n in rows:
        group = _group_key(key)
        groups[group] = groups.get(group, 0) + int(n)
    return groups


def group_counts(scope: Scope, group_by: str, f: Filter | None = None) -> Operation[dict[Any, int]]:
    """``{value: count}`` of the scope's live memories (matching ``f``) by metadata key ``group_by``."""
    stmt = group_count_query(scope.live(f), group_by)
    return fold_groups((yield from fetch_all(adhoc(stmt, scope.params), final=True)))
