"""Compression's pieces: time windows grouped in SQL, and the extractive (no LLM) summary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by

from ..models import memories

__all__ = [
    "CompressionReport",
    "DuplicatePair",
    "Summarizer",
    "extractive_summary",
    "shared_metadata",
    "window_query",
]

Summarizer = Callable[[list[str]], str]

# A fixed origin makes windows line up across calls (date_bin needs one).
WINDOW_ORIGIN = datetime(2000, 1, 1)


def window_query(
    where: sa.ColumnElement[bool], window: timedelta, min_group: int, group_by: Sequence[str] = ()
) -> sa.Select[Any]:
    """Time windows (``date_bin`` over ``created_at``) holding at least ``min_group`` memories.

    Memories that differ in any ``group_by`` metadata key (a session id, say) never share a
    window, so each summary keeps that key and the session's context still finds it.
    """
    bucket = sa.func.date_bin(
        sa.cast(sa.literal(window), sa.Interval()), memories.c.created_at, sa.literal(WINDOW_ORIGIN)
    ).label("window_start")
    keys = [memories.c.metadata[key] for key in group_by]
    return (
        sa.select(
            bucket, sa.func.array_agg(aggregate_order_by(memories.c.id, memories.c.created_at)).label("ids")
        )
        .where(where)
        .group_by(bucket, *keys)
        .having(sa.func.count() >= min_group)
        .order_by(bucket)
    )


def shared_metadata(metadatas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The key/value pairs every document has in common (so ``type`` and ``session_id`` survive)."""
    if not metadatas:
        return {}
    first, *rest = metadatas
    return {k: v for k, v in first.items() if all(k in m and m[k] == v for m in rest)}


def extractive_summary(texts: Sequence[str], vectors: npt.NDArray[np.float32], max_chars: int = 1000) -> str:
    """Keep the most central messages (highest mean cosine similarity to the others), in time order.

    No LLM: the texts are ranked by how well each represents the window, taken greedily
    while they fit in ``max_chars``, and joined in their original order.
    """
    if len(texts) == 1:
        return texts[0][:max_chars]
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    centrality = (unit @ unit.T).mean(axis=1)
    chosen: list[int] = []
    used = 0
    for i in np.argsort(-centrality, kind="stable"):
        cost = len(texts[i]) + (1 if chosen else 0)
        if chosen and used + cost > max_chars:
            continue
        chosen.append(int(i))
        used += cost
    return "\n".join(texts[i][:max_chars] for i in sorted(chosen))


@dataclass(frozen=True)
class CompressionReport:
    """What ``compress`` did: windows summarised, memories replaced, summary ids."""

    windows: int = 0
    compressed: int = 0
    summary_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DuplicatePair:
    id_a: str
    id_b: str
    similarity: float
    text_a: str
    text_b: str
