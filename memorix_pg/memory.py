"""The value returned by ``retrieve`` and ``get``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Memory"]


@dataclass(frozen=True)
class Memory:
    """One stored memory.

    ``score`` is the cosine similarity to the query (higher is closer; for ``l2`` collections
    minus the distance, for ``ip`` the inner product), and ``None`` when no query ranked it.
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    created_at: datetime | None = None
    collection: str = ""
