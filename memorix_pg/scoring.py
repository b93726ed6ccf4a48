"""Similarity, recency and importance in one score: ``retrieve(..., recency_weight=...)``.

``score = w_sim * similarity + w_rec * 0.5 ** (age / half_life) + w_imp * importance``, the
Generative Agents retrieval function. ``age`` runs from the memory's ``created_at`` to now;
``importance`` is the metadata value at ``importance_key`` scaled from ``importance_scale``
(``(1, 10)`` by default, the 1-10 poignancy scale of Generative Agents) to 0..1 and clipped; a
missing or non-numeric value counts 0.

The top k is exact for the combined score, not just for the nearest rows: recency and
importance add at most ``w_rec + w_imp``, so once the k-th best combined score of the rows
fetched so far is at least ``w_sim * (similarity of the last fetched row) + w_rec + w_imp``, no
row further away can beat it. Until then the nearest-row fetch grows fourfold (a weight of 0 on
similarity reads every matching row). Scoring runs in Python on the fetched rows, after
decryption, so an encrypted importance key works too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from .planner import Planner
from .scope import Scope
from .search import DISTANCE, SearchPlan, search
from .statements import Filter
from .steps import Operation
from .vector_index import score_from_distance

__all__ = ["FETCH_MIN", "Scored", "Scoring", "importance_value", "rank_scored"]

FETCH_MIN = 50  # the first fetch: max(4k, this) nearest rows


@dataclass(frozen=True)
class Scoring:
    similarity_weight: float = 1.0
    recency_weight: float = 0.0
    half_life: timedelta = timedelta(days=1)
    importance_key: str | None = None
    importance_weight: float = 0.0
    importance_scale: tuple[float, float] = (1.0, 10.0)

    @property
    def active(self) -> bool:
        """Anything beyond similarity to combine (else the plain search answers)."""
        return self.recency_weight > 0 or (self.importance_weight > 0 and self.importance_key is not None)

    @property
    def extra(self) -> float:
        """The most recency and importance can add."""
        return self.recency_weight + (self.importance_weight if self.importance_key is not None else 0.0)


def importance_value(metadata: Mapping[str, Any], key: str, scale: tuple[float, float]) -> float:
    """The value at ``key`` (a dotted path) scaled to 0..1; 0 when missing or not a number."""
    value: Any = metadata
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return 0.0
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    low, high = scale
    return min(1.0, max(0.0, (float(value) - low) / (high - low)))


@dataclass(frozen=True)
class Scored:
    row: tuple[Any, ...]  # a search row: id, text, metadata, created_at, updated_at, distance, ...
    score: float
    parts: dict[str, float]


def _score(
    row: Sequence[Any],
    scoring: Scoring,
    distance_kind: str,
    now: datetime,
    metadata_of: Callable[[Sequence[Any]], Mapping[str, Any]],
) -> Scored:
    similarity = score_from_distance(distance_kind, float(row[DISTANCE]))
    age = max((now - row[3]).total_seconds(), 0.0)
    recency = 0.5 ** (age / scoring.half_life.total_seconds())
    importance = (
        importance_value(metadata_of(row), scoring.importance_key, scoring.importance_scale)
        if scoring.importance_key is not None
        else 0.0
    )
    score = (
        scoring.similarity_weight * similarity
        + scoring.recency_weight * recency
        + (scoring.importance_weight * importance if scoring.importance_key is not None else 0.0)
    )
    parts = {"similarity": similarity, "recency": recency, "importance": importance}
    return Scored(tuple(row), score, parts)


def rank_scored(
    scope: Scope,
    planner: Planner,
    f: Filter,
    query: npt.NDArray[np.float32],
    k: int,
    scoring: Scoring,
    metadata_of: Callable[[Sequence[Any]], Mapping[str, Any]],
    *,
    exact: bool | None = None,
    ef_search: int | None = None,
    embeddings: bool = False,
) -> Operation[tuple[list[Scored], SearchPlan]]:
    """The ``k`` matching memories with the best combined score, best first (see the module)."""
    fetch = max(4 * k, FETCH_MIN)
    while True:
        rows, plan = yield from search(
            scope, planner, f, query, fetch, exact=exact, ef_search=ef_search, embeddings=embeddings
        )
        now = datetime.now(UTC)
        scored = sorted(
            (_score(r, scoring, scope.info.distance, now, metadata_of) for r in rows),
            key=lambda s: (-s.score, s.row[0]),
        )
        if len(rows) < fetch:
            break  # every matching row was scored
        last = score_from_distance(scope.info.distance, float(rows[-1][DISTANCE]))
        bound = scoring.similarity_weight * last + scoring.extra
        if len(scored) >= k and scored[k - 1].score >= bound:
            break
        fetch *= 4
    reason = f"{plan.reason}; best {k} of {len(rows)} nearest by combined score"
    return scored[:k], SearchPlan(
        plan.path,
        reason,
        plan.matches_counted,
        plan.ef_search,
        plan.matches_estimated,
        plan.selectivity,
        plan.sample_rows,
        plan.trapped,
    )
