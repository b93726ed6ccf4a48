"""Store operations checked, and items to and from memories: a put as a memory's text and
metadata, a LangGraph filter as a filter over that metadata, a memory back as an ``Item``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from langgraph.store.base import Item, MatchCondition, SearchItem

from ...errors import FilterError, InvalidInput
from ...memory import Memory

__all__ = [
    "Put",
    "check_count",
    "check_key",
    "joined",
    "namespace_matches",
    "note_refresh",
    "on_value",
    "to_item",
    "to_search_item",
]


def check_count(value: object, where: str) -> int:
    """A limit or offset: an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{where} must be an int >= 0, got {value!r}")
    return value


def check_key(key: object) -> str:
    """An item key: a str."""
    if not isinstance(key, str):
        raise InvalidInput(f"an item key must be a str, got {type(key).__name__}")
    return key


def joined(labels: Sequence[str]) -> str:
    """Namespace labels as stored in ``ns`` and ``prefixes`` (LangGraph forbids periods in labels)."""
    return ".".join(labels)


def on_value(filter: Mapping[str, Any] | None) -> dict[str, Any]:
    """A filter over the item's value (LangGraph's ``{field: value | {"$op": value}}``, or any
    memorix filter) as a filter over the memory's metadata, where the value lives under ``value``."""
    if filter is None:
        return {}
    if not isinstance(filter, Mapping):
        raise FilterError(f"a search filter must be a dict, got {type(filter).__name__}")
    out: dict[str, Any] = {}
    for key, condition in filter.items():
        if not isinstance(key, str):
            raise FilterError(f"filter keys must be strings, got {key!r}")
        if key in ("$and", "$or", "$nor") and isinstance(condition, list | tuple):
            out[key] = [on_value(c) if isinstance(c, Mapping) else c for c in condition]
        elif key == "$not" and isinstance(condition, Mapping):
            out[key] = on_value(condition)
        elif key.startswith("$"):
            out[key] = condition  # the filter compiler names what is wrong with it
        else:
            out[f"value.{key}"] = condition
    return out


def namespace_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """A namespace against a prefix or suffix pattern, where ``*`` matches any one label."""
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    part = (
        namespace[: len(path)]
        if condition.match_type == "prefix"
        else namespace[len(namespace) - len(path) :]
    )
    return all(p == "*" or p == label for p, label in zip(path, part, strict=True))


@dataclass(frozen=True)
class Put:
    """A put, checked and turned into a memory (its vector comes later, from ``texts``)."""

    id: str
    namespace: tuple[str, ...]
    key: str
    text: str | None  # the value as JSON; None deletes the item
    metadata: dict[str, Any]
    texts: list[str]  # what to embed for it (empty: not indexed)
    ttl: float | None


def to_item(memory: Memory) -> Item:
    """The memory of an item, read back as LangGraph's ``Item``."""
    meta = memory.metadata
    return Item(
        value=json.loads(memory.text),
        key=meta["key"],
        namespace=tuple(meta["ns"].split(".")),
        created_at=_stamp(memory.created_at),
        updated_at=_stamp(memory.updated_at),
    )


def to_search_item(memory: Memory) -> SearchItem:
    """The memory of an item, read back as LangGraph's ``SearchItem`` (with its score)."""
    meta = memory.metadata
    return SearchItem(
        namespace=tuple(meta["ns"].split(".")),
        key=meta["key"],
        value=json.loads(memory.text),
        created_at=_stamp(memory.created_at),
        updated_at=_stamp(memory.updated_at),
        score=memory.score,
    )


def _stamp(value: datetime | None) -> datetime:
    assert value is not None, "memories read from the database carry their times"
    return value


def note_refresh(refresh: dict[float, set[str]], memory: Memory) -> None:
    """Note a read item with a TTL, to be refreshed (grouped by its TTL in minutes)."""
    ttl = memory.metadata.get("ttl_minutes")
    if ttl is not None:
        refresh[float(ttl)].add(memory.id)
