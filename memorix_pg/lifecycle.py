"""Retention, archiving, compression and dedup, each as SQL run in one transaction.

The seed guide does these in client-side loops (fetch 1,000, re-embed, store, delete);
here archive is one UPDATE that moves rows with their embeddings, compression groups
by time window with ``date_bin`` in SQL, and near-duplicates are found through the index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by

from .models import memories

__all__ = [
    "CompressionReport",
    "DuplicatePair",
    "Summarizer",
    "archive_statement",
    "extractive_summary",
    "live_predicate",
    "shared_metadata",
    "window_query",
]

Summarizer = Callable[[list[str]], str]

# A fixed origin makes windows line up across calls (date_bin needs one).
WINDOW_ORIGIN = datetime(2000, 1, 1)


def live_predicate() -> sa.ColumnElement[bool]:
    """Not expired: an expired memory is never returned or counted."""
    return sa.or_(memories.c.expires_at.is_(None), memories.c.expires_at > sa.func.now())


def archive_statement(where: sa.ColumnElement[bool], target_collection_id: int) -> sa.Update:
    """Move matching rows to another collection in one statement, keeping their embeddings.

    An UPDATE of ``collection_id`` is the whole move: atomic, no re-embedding, and the
    rows enter the target collection's partial HNSW index as part of the same statement.
    """
    stamp = sa.func.jsonb_build_object("archived", sa.true(), "archived_at", sa.func.to_jsonb(sa.func.now()))
    return (
        sa.update(memories)
        .where(where)
        .values(
            collection_id=target_collection_id,
            metadata=memories.c.metadata.op("||")(stamp),
            updated_at=sa.func.now(),
        )
    )


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
