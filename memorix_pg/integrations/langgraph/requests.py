"""What the store's plan asks of the database and the embeddings: the sync and the async driver
each answer these requests their way, so the plan is written once."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Call", "Each", "Embed", "Plan", "Request"]

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One method call on the MemoryAPI (or, awaited, the AsyncMemoryAPI)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Each:
    """Calls that do not depend on each other: one after the other when sync, gathered when async."""

    calls: tuple[Call, ...]


@dataclass(frozen=True)
class Embed:
    """Embed ``texts`` as documents or as queries: one call of the embeddings."""

    texts: list[str]
    query: bool


Request = Call | Each | Embed
Plan = Generator[Request, Any, T]
