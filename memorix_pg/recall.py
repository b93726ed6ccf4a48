"""``check_recall``: how much of what exact search finds a collection's searches find, on its own data.

Recall depends on the data and on the index build (parallel HNSW builds are not deterministic),
so a user verifies their own collection rather than trusting a benchmark's. Stored vectors,
picked at random, serve as queries. Each is searched three ways: exactly (the truth), as
``retrieve`` plans it (trap check included), and by the HNSW walk alone at several
``ef_search`` values, which is what suggests an ``ef_search``. A result counts as found when its
distance is within the exact k-th distance, so ties between equal vectors are not misses.

Cost: one exact scan per query (~1-2.5 µs per row of the collection) plus a few walks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from .models import memories
from .planner import EF_MAX, Planner
from .scope import Scope
from .search import DISTANCE, search
from .statements import Filter, cached
from .steps import Operation, fetch_all
from .traps import TOLERANCE
from .vector_index import read_vector, stored_vectors

__all__ = ["EF_TRIED", "QueryRecall", "RecallReport", "check_recall"]

EF_TRIED = (40, 100, 200, 400, 1000)  # the walk's ef_search values measured
WORST_SHOWN = 5


@dataclass(frozen=True)
class QueryRecall:
    """One query: the stored memory used as the query, and the recall of the planned search."""

    id: str
    recall: float
    path: str
    ef_search: int | None
    trapped: bool


@dataclass(frozen=True)
class RecallReport:
    """What :meth:`MemoryAPI.check_recall` measured.

    ``recall`` is the mean recall@k of searches as ``retrieve`` runs them; ``walk_recall`` and
    ``walk_worst`` give, per ``ef_search``, the mean and lowest recall of the HNSW walk alone
    (no trap check, no fallback). ``suggested_ef_search`` is the smallest of those whose walk
    reached ``target`` on average with no query below 0.5 (None: none did; the planner's checks
    still hold ``recall``, at the cost of wider walks or exact scans).
    """

    queries: int
    k: int
    recall: float
    below_half: int
    worst: tuple[QueryRecall, ...]
    traps_found: int
    walk_recall: dict[int, float]
    walk_worst: dict[int, float]
    target: float
    suggested_ef_search: int | None

    def __str__(self) -> str:
        worst = self.walk_worst
        walks = ", ".join(f"{ef}: {r:.4f} (worst {worst[ef]:.2f})" for ef, r in self.walk_recall.items())
        lines = [
            f"recall@{self.k} over {self.queries} queries: {self.recall:.4f} "
            f"({self.below_half} below 0.5, {self.traps_found} trapped walks recovered)",
            f"HNSW walk alone, by ef_search: {walks}",
        ]
        if self.suggested_ef_search is None:
            lines.append(f"no ef_search tried reached {self.target} with every query at 0.5 or more")
        else:
            lines.append(f"suggested ef_search: {self.suggested_ef_search} (target {self.target})")
        lines += [
            f"worst: {q.id} recall {q.recall:.2f} ({q.path}"
            + (f", ef_search {q.ef_search}" if q.ef_search else "")
            + (", trapped" if q.trapped else "")
            + ")"
            for q in self.worst
        ]
        return "\n".join(lines)


def _found(rows: list[tuple[Any, ...]], bound: float, wanted: int) -> float:
    """The share of the ``wanted`` results found: rows within the exact k-th distance ``bound``."""
    return min(wanted, sum(1 for r in rows if float(r[DISTANCE]) <= bound)) / wanted


def check_recall(
    scope: Scope, planner: Planner, f: Filter, queries: int, k: int, target: float
) -> Operation[RecallReport]:
    info = scope.info
    picked = cached(
        ("recall-queries", scope.key),
        lambda where: (
            sa.select(memories.c.id, stored_vectors(info))
            .where(scope.live(f))
            .order_by(sa.func.random())
            .limit(sa.bindparam("n"))
        ),
        f,
        {**scope.params, "n": queries},
    )
    rows = yield from fetch_all(picked, final=True)
    planned: list[QueryRecall] = []
    walks: dict[int, list[float]] = {ef: [] for ef in EF_TRIED if ef >= k and ef <= EF_MAX}
    for row_id, stored in rows:
        vector = read_vector(stored)
        truth, _ = yield from search(scope, planner, f, vector, k, exact=True)
        if not truth:
            continue
        kth = float(truth[-1][DISTANCE])
        bound = kth + TOLERANCE * max(1.0, abs(kth))
        wanted = min(k, len(truth))
        got, plan = yield from search(scope, planner, f, vector, k)
        found = _found(got, bound, wanted)
        planned.append(QueryRecall(str(row_id), found, plan.path, plan.ef_search, plan.trapped))
        for ef, measured in walks.items():
            walked, _ = yield from search(
                scope, planner, f, vector, k, exact=False, ef_search=ef, check_traps=False
            )
            measured.append(_found(walked, bound, wanted))
    recalls = np.asarray([q.recall for q in planned]) if planned else np.ones(1)
    walk_recall = {ef: float(np.mean(v)) if v else 1.0 for ef, v in walks.items()}
    walk_worst = {ef: float(np.min(v)) if v else 1.0 for ef, v in walks.items()}
    suggested = next(
        (ef for ef in walks if walk_recall[ef] >= target and walk_worst[ef] >= 0.5),
        None,
    )
    return RecallReport(
        queries=len(planned),
        k=k,
        recall=float(recalls.mean()),
        below_half=int((recalls < 0.5).sum()) if planned else 0,
        worst=tuple(sorted(planned, key=lambda q: q.recall)[:WORST_SHOWN]),
        traps_found=sum(q.trapped for q in planned),
        walk_recall=walk_recall,
        walk_worst=walk_worst,
        target=target,
        suggested_ef_search=suggested,
    )
