"""Similarity search: an exact scan of the matching rows, or the collection's HNSW index.

Why a planner: HNSW with a WHERE clause filters *after* the graph walk, so a selective filter
returns too few rows (measured: 3.7 of 10 at 10% selectivity). pgvector's iterative scan keeps
walking until it has enough rows but still loses recall when few graph elements match, while
an exact scan of the matching rows (found through the btree/GIN indexes) is exact and costs
about a microsecond per matching row. What decides is how many rows match, and which fraction
of the HNSW graph (dead elements included) they are.

A search runs in one transaction, and in one round trip when the planner's estimate for the
collection and filter is cached:

1. **The probe** (planner.py) estimates, from a sample of the collection, how many rows match
   and which fraction of the HNSW graph they are, and the walk's ``ef_search``; the estimate is
   cached per collection and filter, so a repeated filter, and every unfiltered search, needs no
   probe.
2. **The exact scan** when at most ``EXACT_ROWS`` rows match or fewer than ``S_MIN`` of the
   graph; else **the index walk**, pgvector's iterative scan (``relaxed_order``) with the filter
   applied during the walk, fetching ``HNSW_OVERFETCH * k`` matches and keeping the nearest k.
   If the walk returns fewer than k rows, the exact scan runs: a search never returns fewer
   than ``min(k, matches)``. A walk that returns k rows is checked against a sample of the
   collection kept in memory (traps.py): a sampled row nearer than its k-th result that it did
   not return means the walk was trapped away from the query's neighbours; the exact scan
   follows over at most ``EXACT_AFTER_TRAP_ROWS`` rows, else a wider walk, then the exact scan
   if that is trapped too. Measured in benchmarks/results/recall.md.

The thresholds, and the measurements behind them, are in planner.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa

from .connections import PLANNER_COSTS
from .models import memories
from .planner import (
    EF_MAX,
    EF_MIN,
    EF_PER_SELECTIVITY,
    EXACT_ROWS,
    S_MIN,
    SAMPLE_ROWS,
    Planner,
    Probe,
    planner_for,
    probe,
)
from .query_vector import QueryVector
from .scope import Scope
from .statements import Filter, cached, compile_where
from .steps import Operation, Query, execute
from .traps import (
    TOLERANCE,
    Sample,
    candidates_statement,
    decode_sample,
    nearer_rows,
    nearest_rows,
    sample_bits,
    sample_statement,
)
from .traps import window as sample_window
from .vector_index import (
    QUERY_VECTOR,
    CollectionInfo,
    collection_predicate,
    distance_expression,
    stored_vectors,
)

# The planner's names that were imported from here before planner.py held them stay importable.
__all__ = [
    "DISTANCE",
    "EF_MAX",
    "EF_MIN",
    "EF_PER_SELECTIVITY",
    "EXACT_ROWS",
    "SAMPLE_ROWS",
    "S_MIN",
    "Planner",
    "SearchPlan",
    "planner_for",
    "search",
    "search_settings",
    "vector_plan",
]

# -- the search paths' own settings (measured; see planner.py for the planner's) ---------------
HNSW_OVERFETCH = 4  # relaxed order returns matches roughly by distance: fetch 4k, keep k
MAX_SCAN_TUPLES = 20_000  # pgvector's default, set so a server-wide change cannot end scans early
EF_TRAPPED = 400  # a trapped walk is walked again with at least this ef_search (see traps.py)
# ... unless it walked at most this many rows: then the exact scan answers at once. At 20k rows
# it costs a few milliseconds more than the wider walk, for the few walks that trap, and a wider
# walk may stay half-trapped with no sampled row to show it (seen on a sparse graph of 6,000
# rows: recall 0.4 after ef_search 400, once in ~200 trapped walks).
EXACT_AFTER_TRAP_ROWS = 20_000
CANDIDATES_MAX = 32  # sampled rows confirmed against the table per walk, at most
# Planner costs for the transaction. The exact scan's rows are read by random access to pages
# that are normally cached, and PostgreSQL underprices a GIN scan of a frequent key (a 50% key's
# 50k entries: ~5 ms, priced like 0.1 ms of btree). With the defaults (4, 0.005) it ANDs such
# scans onto a selective range to save heap reads that cost microseconds. Measured on the
# server, 100k rows: AND (50% key, range) at 0.1%: 7.2 -> 0.8 ms; at 1%: 12.6 -> 8.4 ms; OR of
# two such ANDs at 1%: 21.5 -> 6.5 ms; other cells unchanged, and the walks still use HNSW.
# PLANNER_COSTS (connections.py): random_page_cost 1.1, cpu_index_tuple_cost 0.05

_RESULT_COLUMNS = (
    memories.c.id,
    memories.c.text,
    memories.c.metadata,
    memories.c.created_at,
    memories.c.updated_at,
)
DISTANCE = len(_RESULT_COLUMNS)  # where a result row holds its distance


@dataclass(frozen=True)
class SearchPlan:
    """Which path ran, and why (returned by ``MemoryAPI.explain_retrieve``).

    ``matches_counted`` is the exact number of matches when the exact scan ran (it counts them
    as it ranks them). ``matches_estimated`` and ``selectivity`` (matches per HNSW graph
    element, dead ones included) come from the probe's sample of ``sample_rows`` rows (the
    whole collection when it is small, and the estimate is then a count).
    """

    path: str  # "exact", "hnsw" or "recent"
    reason: str
    matches_counted: int | None
    ef_search: int | None = None
    matches_estimated: int | None = None
    selectivity: float | None = None
    sample_rows: int | None = None
    trapped: bool = False  # the walk missed sampled rows nearer than its results (traps.py)


def _settings(ef: int | None, iterative: bool = True) -> tuple[tuple[str, str], ...]:
    planner_costs = PLANNER_COSTS
    if ef is None:
        return planner_costs
    if not iterative:
        return (("hnsw.ef_search", str(ef)), ("hnsw.iterative_scan", "off"), *planner_costs)
    return (
        ("hnsw.ef_search", str(ef)),
        ("hnsw.iterative_scan", "relaxed_order"),
        ("hnsw.max_scan_tuples", str(MAX_SCAN_TUPLES)),
        *planner_costs,
    )


def _vectors(info: CollectionInfo, embeddings: bool) -> tuple[sa.ColumnElement[Any], ...]:
    """The stored vector (read back as ``vector``) after the distance, when asked for."""
    return (stored_vectors(info).label("embedding"),) if embeddings else ()


def _with_columns(
    info: CollectionInfo, nearest: sa.Subquery, embeddings: bool, *extra: sa.ColumnElement[Any]
) -> sa.Select[Any]:
    """The result columns of the ``nearest`` rows (tenants, ids and distances), joined by primary
    key (tenant, collection and id: the same id may name a memory of another collection or
    tenant; the tenant in the join keeps it on one Citus shard).

    Ranking carries only ids and distances: a search reads the text and metadata of k rows, not
    of every row it ranks (fetching them for the 4k rows of a walk cost ~0.7 ms at k=10).
    """
    return (
        sa.select(*_RESULT_COLUMNS, nearest.c.distance, *_vectors(info, embeddings), *extra)
        .join_from(
            nearest,
            memories,
            sa.and_(
                memories.c.tenant == nearest.c.tenant,
                collection_predicate(info),
                memories.c.id == nearest.c.id,
            ),
        )
        .order_by(nearest.c.distance)
    )


def _exact_statement(info: CollectionInfo, where: sa.ColumnElement[bool], embeddings: bool) -> sa.Select[Any]:
    """The k nearest matching rows by distance. The distance is computed as ``distance + 0``,
    which keeps the planner off the HNSW index (it can only serve the bare operator): every
    matching row comes from the btree/GIN indexes and is ranked exactly. The rows are ordered by
    that same column, so each row's distance is computed once: ordering by ``distance + 0``
    beside a bare ``distance`` column computed it twice, reading a TOASTed vector twice
    (measured at 100k, 1,000 matches: 7,071 -> 4,035 buffers, 5.1 -> 2.7 ms). No window
    aggregate: on Citus one pulls every matching row to the coordinator; the matches are
    counted by a statement of their own."""
    distance = distance_expression(info, None) + 0.0
    matching = (
        sa.select(memories.c.tenant, memories.c.id, distance.label("distance"))
        .where(where)
        .subquery("matching")
    )
    nearest = sa.select(matching).order_by(matching.c.distance).limit(sa.bindparam("k")).subquery("nearest")
    return _with_columns(info, nearest, embeddings)


def _matches_statement(where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """How many rows the exact scan ranked (``SearchPlan.matches_counted``)."""
    return sa.select(sa.func.count()).select_from(memories).where(where)


def _direct_statement(
    info: CollectionInfo, where: sa.ColumnElement[bool], embeddings: bool
) -> sa.Select[Any]:
    """An unfiltered search: the walk's first k rows are the answer (strict order; only TTL
    can drop a row, and a short result falls back to the exact scan). No over-fetch, no
    second sort, no join: measured at 100k, the filtered form cost ~0.4 ms more."""
    distance = distance_expression(info, None)
    return (
        sa.select(*_RESULT_COLUMNS, distance.label("distance"), *_vectors(info, embeddings))
        .where(where)
        .order_by(distance)
        .limit(sa.bindparam("k"))
    )


def _hnsw_statement(info: CollectionInfo, where: sa.ColumnElement[bool], embeddings: bool) -> sa.Select[Any]:
    distance = distance_expression(info, None)
    walk = (
        sa.select(memories.c.tenant, memories.c.id, distance.label("distance"))
        .where(where)
        .order_by(distance)
        .limit(sa.bindparam("fetch"))
        .subquery("walk")
    )
    # relaxed_order returns the matches only roughly by distance. Sorting by ``distance + 0``
    # keeps PostgreSQL from taking the walk's order as exact and dropping the sort.
    nearest = sa.select(walk).order_by(walk.c.distance + 0.0).limit(sa.bindparam("k")).subquery("nearest")
    return _with_columns(info, nearest, embeddings)


Rows = list[tuple[Any, ...]]
_UNFILTERED = compile_where(None)
# The WHERE clause of a search, built only when a statement of its shape is compiled: building
# the SQLAlchemy expression on every call cost ~0.15 ms of Python.
Where = Callable[[], sa.ColumnElement[bool]]


def _live(scope: Scope, f: Filter) -> Where:
    return lambda: scope.live(f)


def _exact(
    scope: Scope,
    f: Filter,
    where: Where,
    params: dict[str, Any],
    settings: Any,
    embeddings: bool,
    count: bool,
) -> Operation[tuple[Rows, int | None]]:
    """The k nearest matching rows ranked exactly, and, when ``count`` (to explain a search), the
    number of matches: a second statement in the same round trip, which reads the matches again."""
    info = scope.info
    query = cached(
        ("exact", scope.key, embeddings), lambda _: _exact_statement(info, where(), embeddings), f, params
    )
    if not count:
        return (yield from execute(query, final=True, settings=settings))[0].rows, None
    matches = cached(("exact matches", scope.key), lambda _: _matches_statement(where()), f, params)
    ranked, counted = yield from execute(query, matches, final=True, settings=settings)
    return ranked.rows, int(counted.rows[0][0])


# -- the search --------------------------------------------------------------------------------


def search(
    scope: Scope,
    planner: Planner,
    f: Filter,
    query: npt.NDArray[np.float32],
    k: int,
    *,
    exact: bool | None = None,
    ef_search: int | None = None,
    check_traps: bool = True,
    embeddings: bool = False,
    explain: bool = False,
) -> Operation[tuple[Rows, SearchPlan]]:
    """The ``k`` rows nearest to ``query`` among the live rows of ``scope`` matching ``f``, as
    (id, text, metadata, created_at, updated_at, distance[, embedding]), and the plan used.

    ``exact`` forces a path (True: the exact scan; False: HNSW, which still falls back to the
    exact scan if it comes back short); ``ef_search`` replaces the computed ``hnsw.ef_search``
    (clamped to k..1000). ``check_traps=False`` returns the walk's answer unchecked (to measure it).
    ``explain``: an exact scan also counts its matches (``SearchPlan.matches_counted``).
    """
    info = scope.info
    where = _live(scope, f)
    params = {**scope.params, QUERY_VECTOR: QueryVector(query, info.index_type == "halfvec"), "k": k}
    if exact is True:
        rows, counted = yield from _exact(scope, f, where, params, _settings(None), embeddings, explain)
        return rows, SearchPlan("exact", "forced by exact=True", counted)

    estimate_key = (scope.key, scope.tenant, f.shape, f.values)
    p = planner.estimate(estimate_key)
    if p is None:
        p = yield from probe(scope, planner, f)
        planner.remember(estimate_key, p)
    facts = (
        f"{p.estimated} of {round(p.graph)} graph elements match ({p.selectivity:.2%})"
        if p.whole
        else f"~{p.estimated} of ~{round(p.graph)} graph elements match "
        f"({p.selectivity:.2%}, sampled {p.sampled} rows)"
    )

    def plan(path: str, why: str, counted: int | None, ef: int | None, trapped: bool = False) -> SearchPlan:
        return SearchPlan(path, why, counted, ef, p.estimated, p.selectivity, p.sampled, trapped)

    if exact is None and p.use_exact:
        rows, counted = yield from _exact(scope, f, where, params, _settings(None), embeddings, explain)
        if p.estimated <= EXACT_ROWS:
            why = f"{facts}: at most {EXACT_ROWS}: exact scan"
        else:
            why = f"{facts}: below {S_MIN:.0%}, where HNSW loses recall: exact scan"
        return rows, plan("exact", why, counted, None)

    ef = p.ef(k, ef_search, planner.ef_scale)
    unfiltered = f.shape == _UNFILTERED.shape
    walk = _walk_query(scope, f, where, params, unfiltered, k, embeddings)
    sample_key = scope.tenant
    checking = check_traps and planner.check_traps
    sample = planner.sample(sample_key) if checking else None
    extra: list[Query] = []
    if checking and sample is None:
        bits = sample_bits(p.graph)
        extra.append(
            cached(
                ("sample", scope.key, bits),
                lambda _: sample_statement(info, bits, scope.live()),
                _UNFILTERED,
                {**scope.params, **sample_window(bits)},
            )
        )
    # A filtered walk: which of the sampled rows nearest to the query match the filter is asked in
    # the same round trip (the sample alone cannot tell which rows match).
    candidates: list[Any] = []
    if sample is not None and not unfiltered:
        candidates = nearest_rows(sample, query, _candidates_for(k, p, len(sample.ids)))
        if candidates:
            extra.append(_candidates_query(scope, f, where, params, candidates))
    results = yield from execute(walk, *extra, final=True, settings=_settings(ef, iterative=not unfiltered))
    rows = results[0].rows
    if checking and sample is None:
        sample = planner.keep_sample(sample_key, decode_sample(results[1].rows[0], info))
    how = "HNSW scan" if unfiltered else "HNSW iterative scan"
    reason = ("forced by exact=False" if exact is False else facts) + f": {how}, ef_search {ef}"
    if ef_search is None and planner.ef_scale > 1:
        reason += f" (floor x{planner.ef_scale:g}: the sample showed walks missing rows)"
    confirmed = results[-1].rows if candidates else []
    missed = _missed(sample if unfiltered else None, query, rows, k, confirmed)
    if checking and sample is not None and len(rows) >= k:
        planner.observe(_seen(sample, rows, k, confirmed, unfiltered) + len(missed), len(missed))
    missed = missed[:CANDIDATES_MAX]
    if missed:
        # Trapped: rows nearer than the k-th result were not returned. A wider walk first (it
        # escapes every trap measured so far), checked again; the exact scan if it is trapped too.
        # An unfiltered walk's candidates come from the sample alone (rows deleted since it was
        # read are false alarms): they are confirmed in the same round trip as the wider walk.
        planner.traps_found += 1
        if p.estimated <= EXACT_AFTER_TRAP_ROWS:
            exact_scan = _exact(scope, f, where, params, _settings(None), embeddings, explain)
            fallback, counted = yield from exact_scan
            why = f"{reason}, trapped ({len(missed)} rows nearer than its {k}th result missed): exact scan"
            return fallback, plan("exact", why, counted, ef, trapped=True)
        wider = max(EF_TRAPPED, min(EF_MAX, 4 * ef))
        again = yield from execute(
            walk,
            *([_candidates_query(scope, f, where, params, missed)] if unfiltered else []),
            final=True,
            settings=_settings(wider, iterative=not unfiltered),
        )
        rows = again[0].rows
        reason += f", trapped ({len(missed)} rows nearer than its {k}th result missed): ef_search {wider}"
        ef = wider
        if unfiltered:
            gone = set(missed) - {row[0] for row in again[1].rows}
            still = [m for m in _missed(sample, query, rows, k, []) if m not in gone]
        else:
            still = _missed(None, query, rows, k, confirmed)
        if len(rows) >= k and not still:
            return rows, plan("hnsw", reason, p.estimated if p.whole else None, ef, trapped=True)
        fallback, counted = yield from _exact(scope, f, where, params, _settings(None), embeddings, explain)
        return fallback, plan("exact", f"{reason}, trapped again: exact scan", counted, ef, trapped=True)
    if len(rows) >= k:
        return rows, plan("hnsw", reason, p.estimated if p.whole else None, ef)
    # The walk came back short (it hit max_scan_tuples, or the sample misled): only the exact
    # scan knows whether more rows match.
    fallback, counted = yield from _exact(scope, f, where, params, _settings(None), embeddings, explain)
    if len(fallback) > len(rows):
        return fallback, plan(
            "exact", f"{reason}, which returned {len(rows)} < {k} rows: exact scan", counted, ef
        )
    return rows, plan("hnsw", reason, counted, ef)


def _walk_query(
    scope: Scope,
    f: Filter,
    where: Where,
    params: dict[str, Any],
    unfiltered: bool,
    k: int,
    embeddings: bool,
) -> Query:
    info = scope.info
    if unfiltered:
        return cached(
            ("direct", scope.key, embeddings),
            lambda _: _direct_statement(info, where(), embeddings),
            f,
            params,
        )
    fetch = {**params, "fetch": HNSW_OVERFETCH * k}
    return cached(
        ("hnsw", scope.key, embeddings), lambda _: _hnsw_statement(info, where(), embeddings), f, fetch
    )


def _candidates_query(scope: Scope, f: Filter, where: Where, params: dict[str, Any], ids: list[Any]) -> Query:
    info = scope.info
    return cached(
        ("candidates", scope.key),
        lambda _: candidates_statement(where(), distance_expression(info, None)),
        f,
        {**params, "candidates": ids},
    )


def _candidates_for(k: int, p: Probe, sampled: int) -> int:
    """How many of the sampled rows nearest to the query to confirm for a filtered walk: twice
    the rank the walk's k-th match should have in the sample, plus two, at most 32."""
    rank = k * sampled / max(p.estimated, 1)
    return min(CANDIDATES_MAX, math.ceil(2 * rank) + 2)


def _seen(sample: Sample, rows: Rows, k: int, confirmed: Rows, unfiltered: bool) -> int:
    """How many of the walk's k results the sample holds (for a filtered walk: among the
    confirmed matches, which are the sampled rows nearest to the query)."""
    returned = {r[0] for r in rows[:k]}
    if unfiltered:
        return len(returned & sample.id_set)
    return sum(1 for row_id, _ in confirmed if row_id in returned)


def _missed(
    sample: Sample | None, query: npt.NDArray[np.float32], rows: Rows, k: int, confirmed: Rows
) -> list[Any]:
    """Rows a correct walk would have returned: with a ``sample`` (an unfiltered walk), sampled
    rows nearer than its k-th result; else ``confirmed`` matches (id, distance) nearer than that."""
    if len(rows) < k:
        return []  # short: the exact scan follows anyway
    kth = float(rows[k - 1][DISTANCE])
    returned = {r[0] for r in rows}
    if sample is not None:
        return nearer_rows(sample, query, kth, returned)
    bound = kth - TOLERANCE * max(1.0, abs(kth))
    return [row_id for row_id, distance in confirmed if distance < bound and row_id not in returned]


# -- for other rankings (hybrid.py) ------------------------------------------------------------


def search_settings(ef: int | None, iterative: bool = True) -> tuple[tuple[str, str], ...]:
    """The ``SET LOCAL`` settings of a search: the planner costs, and the walk's when ``ef``."""
    return _settings(ef, iterative)


def vector_plan(
    scope: Scope, planner: Planner, f: Filter, fetch: int, exact: bool | None, ef_search: int | None
) -> Operation[tuple[bool, int | None, str]]:
    """How a ranking of the ``fetch`` nearest matching rows should run, as :func:`search` would
    decide: (exact, ef_search of the walk, why). Probes only when no estimate is cached."""
    if exact is True:
        return True, None, "exact scan forced by exact=True"
    estimate_key = (scope.key, scope.tenant, f.shape, f.values)
    p = planner.estimate(estimate_key)
    if p is None:
        p = yield from probe(scope, planner, f)
        planner.remember(estimate_key, p)
    facts = f"~{p.estimated} of ~{round(p.graph)} graph elements match ({p.selectivity:.2%})"
    if exact is None and (p.use_exact or fetch > EF_MAX):
        return True, None, f"{facts}: exact scan"
    ef = p.ef(fetch, ef_search, planner.ef_scale)
    return False, ef, f"{facts}: HNSW iterative scan, ef_search {ef}"
