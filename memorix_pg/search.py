"""Similarity search: an exact scan of the matching rows, or the collection's HNSW index.

Why a planner: HNSW with a WHERE clause filters *after* the graph walk, so a selective filter
returns too few rows (measured: 3.7 of 10 at 10% selectivity). pgvector's iterative scan keeps
walking until it has enough rows but still loses recall when few graph elements match, while
an exact scan of the matching rows (found through the btree/GIN indexes) is exact and costs
about a microsecond per matching row. What decides is how many rows match, and which fraction
of the HNSW graph (dead elements included) they are.

A search runs in one transaction, and in one round trip when the planner's estimate for the
collection and filter is cached:

1. **The probe** counts, in a *sample* of the collection, all rows and the matching ones. The
   sample is the rows whose ``content_hash`` (SHA-256: uniform and independent of the
   metadata) lies in a window of the hash space sized to hold ``SAMPLE_ROWS`` to twice that,
   read through the ``(collection_id, content_hash)`` btree: 0.1-0.3 ms at any collection
   size. (A bounded count costs up to its bound on unselective filters, 3 ms for 10,000 rows;
   PostgreSQL's own estimate for ``metadata @> ...`` comes from 100 sampled documents.) The
   graph size is the larger of the live rows and the HNSW index's ``reltuples``, which counts
   dead elements until VACUUM: right after a large delete the planner sees the lower
   selectivity at once. ``ef_search`` is computed from the sample in Python and set with
   ``SET LOCAL`` in the same pipeline as the search statement. The estimate is kept per
   collection and filter (values included) for ``ESTIMATE_SECONDS``, and dropped when this
   process has changed more than ``ESTIMATE_CHANGE`` of the collection's rows since: a repeated
   filter, and every unfiltered search, needs no probe.
2. **The exact scan** when at most ``EXACT_ROWS`` rows match or fewer than ``S_MIN`` of the
   graph; else **the index walk**, pgvector's iterative scan (``relaxed_order``) with the filter
   applied during the walk, fetching ``HNSW_OVERFETCH * k`` matches and keeping the nearest k.
   If the walk returns fewer than k rows, the exact scan runs: a search never returns fewer
   than ``min(k, matches)``. A walk that returns k rows is checked against a sample of the
   collection kept in memory (traps.py): a sampled row nearer than its k-th result that it did
   not return means the walk was trapped away from the query's neighbours; a wider walk, then
   the exact scan, follow. Measured in benchmarks/results/recall.md.

Thresholds, measured with benchmarks/search.py's data (clustered 384-d vectors whose
neighbourhoods look like MiniLM's, k=10, 2 cores, data in shared buffers):

* Recall@10 of the filtered iterative scan by the fraction ``s`` of graph elements matching
  (uncorrelated filters, 100k): 20%: 0.995 at ef 100; 10%: 0.990 at ef 100, 0.997 at ef 400;
  5%: 0.988-0.990 at ef 100-400; 2% and 1%: 0.95 at every ef from 100 to 400. Filters tied to
  the vectors (a user's memories cluster in their topics; 8% of rows): 0.989-0.995 at ef 500
  fetching 2k-4k matches (0.988 with 3k in one 100k run). Hence ``S_MIN`` = 5%,
  ``ef_search = EF_PER_SELECTIVITY / s`` and fetching 4k matches.
* Unfiltered recall@10 at 100k (200 queries): with m 16 / ef_construction 64, ef 100 gave
  0.985-0.992 and ef 200 0.9965 (HNSW builds in parallel are not deterministic: two builds of
  the same data differ); the misses were single queries trapped away from their neighbours, which
  a larger ``ef_search`` does not fix but a better-connected graph does. With m 20 /
  ef_construction 80 (the build takes ~25% longer: 20.0 s vs 16.1 s as halfvec), ef 100 gives
  0.9995 and no trapped query. Hence that graph (m 24 / ef_construction 128 for builds of up to
  50k rows: vector_index.graph_for) and the floor
  ``EF_MIN * sqrt(graph / EF_MIN_ROWS)``: 100 up to 100k elements, 173 at 300k, 316 at 1M.
  A filtered walk needs more: at 50% selectivity and ef 100, AND/OR filters gave recall 0.982-0.983
  (m 20), at ef 200 0.995-0.998. Hence twice the floor when the filter matches less than 90% of
  the sample.
* Cost: the walk ~0.15 ms + ~1.8 µs per unit of ef_search; the exact scan ~0.03 ms + 1.0-2.5 µs
  per matching row. Up to ``EXACT_ROWS`` matches (about a millisecond) the scan is always
  exact, so small collections and selective filters get exact results.

The crossover is a fraction of the graph (for recall) and a row count (for cost), not a count
fitted at one size; benchmarks/prototypes/scaling.md has the plan for 1M+ memories.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa

from .connections import SESSION_SETTINGS
from .models import SCHEMA, memories
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
    index_name,
    stored_vectors,
)

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

# -- thresholds (measured; see the module docstring) ------------------------------------------
S_MIN = 0.05  # HNSW only when at least this fraction of the graph's elements match
EXACT_ROWS = 1000  # at most this many matches are always ranked exactly
EF_PER_SELECTIVITY = 50.0  # ef_search = 50 / s: 500 at 10%, 1000 (the maximum) at 5%
EF_MIN = 100  # the floor up to EF_MIN_ROWS graph elements, growing with sqrt(size) past it
EF_MIN_ROWS = 100_000
EF_FLOOR_MAX = 500
FILTERED_BELOW = 0.9  # a walk whose filter matches less than this share of the sample ...
FILTERED_FLOOR_FACTOR = 2  # ... gets twice the floor
EF_MAX = 1000  # pgvector's upper limit for hnsw.ef_search
SAMPLE_ROWS = 128  # the sample holds SAMPLE_ROWS..2*SAMPLE_ROWS rows (or the whole collection)
HNSW_OVERFETCH = 4  # relaxed order returns matches roughly by distance: fetch 4k, keep k
MAX_SCAN_TUPLES = 20_000  # pgvector's default, set so a server-wide change cannot end scans early
ESTIMATE_SECONDS = 30.0  # an estimate is reused this long (other processes' writes are unseen) ...
ESTIMATE_CHANGE = 0.1  # ... unless this process changed more than this share of the rows since
ESTIMATES_MAX = 1024
EF_TRAPPED = 400  # a trapped walk is walked again with at least this ef_search (see traps.py)
CANDIDATES_MAX = 32  # sampled rows confirmed against the table per walk, at most
SAMPLES_MAX = 16  # tenants whose samples a collection's planner keeps
# The walks' recall as estimated from the sample (Planner.observe), judged by two sequential
# probability ratio tests (Wald) on the stream of sampled nearest rows, found or missed:
TRAP_ROWS = 3  # a walk missing this many sampled rows is a trap (recovered, not counted)
MISS_RATE_GOOD = 0.005  # raise the floor when the misses are nearer 2.5% than 0.5% ...
MISS_RATE_BAD = 0.025
MISS_RATE_SPARE = 0.00125  # ... lower it when they are nearer 0.125% than 0.5%
EVIDENCE = math.log(99)  # each test decides at odds of 99 to 1 (1% wrong either way)
EF_STEP = 1.5  # the floor's multiplier moves by this factor
# Planner costs for the transaction. The exact scan's rows are read by random access to pages
# that are normally cached, and PostgreSQL underprices a GIN scan of a frequent key (a 50% key's
# 50k entries: ~5 ms, priced like 0.1 ms of btree). With the defaults (4, 0.005) it ANDs such
# scans onto a selective range to save heap reads that cost microseconds. Measured on the
# server, 100k rows: AND (50% key, range) at 0.1%: 7.2 -> 0.8 ms; at 1%: 12.6 -> 8.4 ms; OR of
# two such ANDs at 1%: 21.5 -> 6.5 ms; other cells unchanged, and the walks still use HNSW.
PLANNER_COSTS = tuple(sorted(SESSION_SETTINGS))  # random_page_cost 1.1, cpu_index_tuple_cost 0.05

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


@dataclass(frozen=True)
class _Probe:
    sampled: int  # rows in the sample
    hits: int  # matching rows in the sample
    fraction: float  # of the collection the sample covers
    reltuples: float

    @property
    def whole(self) -> bool:
        return self.fraction == 1.0

    @property
    def estimated(self) -> int:
        return round(self.hits / self.fraction)

    @property
    def graph(self) -> float:
        return max(self.reltuples, self.sampled / self.fraction, 1.0)

    @property
    def selectivity(self) -> float:
        return self.estimated / self.graph

    @property
    def use_exact(self) -> bool:
        """At most EXACT_ROWS matches, or fewer than S_MIN of the graph (where HNSW loses recall)."""
        return self.estimated <= EXACT_ROWS or self.selectivity < S_MIN

    def ef(self, k: int, ef_search: int | None, scale: float = 1.0) -> int:
        """``hnsw.ef_search`` for the walk: the caller's (clamped to k..EF_MAX), or computed (the
        floor times ``scale``, the planner's correction for data its walks miss rows of)."""
        if ef_search is not None:
            return min(EF_MAX, max(ef_search, k))
        by_size = min(EF_FLOOR_MAX, round(EF_MIN * math.sqrt(self.graph / EF_MIN_ROWS)))
        floor = round(max(EF_MIN, by_size) * scale)
        # A filter that drops a tenth of the sample or more: the walk skips elements, twice the floor.
        if self.hits < FILTERED_BELOW * self.sampled:
            floor *= FILTERED_FLOOR_FACTOR
        by_selectivity = math.ceil(EF_PER_SELECTIVITY * self.graph / max(self.hits / self.fraction, 1.0))
        return min(EF_MAX, max(2 * k, floor, by_selectivity))


def _bits_for(rows: float) -> int:
    """Window bits for ``rows`` rows: a sample of SAMPLE_ROWS..2*SAMPLE_ROWS rows, or all of them."""
    return math.floor(math.log2(rows / SAMPLE_ROWS)) if rows >= 2 * SAMPLE_ROWS else 0


@dataclass
class Planner:
    """What the planner remembers of one collection: its sample window and recent estimates."""

    window_bits: int | None = None
    rows: float = 0.0  # the collection's size when the estimates were made
    changed: int = 0  # rows this process wrote or deleted since
    estimates: OrderedDict[Hashable, tuple[float, _Probe]] = field(default_factory=OrderedDict)
    samples: OrderedDict[str | None, Sample] = field(default_factory=OrderedDict)  # by tenant
    check_traps: bool = True  # the trap check of traps.py (off only to measure it)
    traps_found: int = 0
    ef_scale: float = 1.0  # the ef_search floor's multiplier, raised when walks miss rows (observe)
    raise_evidence: float = 0.0  # log-likelihood ratio of "too many misses" (MISS_RATE_BAD) ...
    lower_evidence: float = 0.0  # ... and of "misses to spare" (MISS_RATE_SPARE), with ef_scale > 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, seen: int, missed: int) -> None:
        """An online estimate of the walks' recall, from the sample: each of a query's true nearest
        rows is in the sample with the same chance whether the walk found it or not, so the rows
        seen and missed are draws from the walks' miss rate. On data where HNSW at the usual
        ef_search misses many (e.g. 384 dimensions of Gaussian noise: recall@10 0.88 at ef 100 on
        100k rows) the floor must rise; where it misses 0.7% (MiniLM at 100k) doubling it would
        cost ~40% of every search for 0.4% of recall.

        A sample holds 1-2% of a large collection, so a walk sees ~0.15 such rows: the evidence
        comes slowly, and a rule that re-checks a rate after every walk ratchets up on chance
        alone (measured: the floor doubled again and again on MiniLM, p50 2.1 -> 5.9 ms). So
        each direction is a sequential probability ratio test that decides at odds of 99 to 1:
        raise by EF_STEP when the rate looks like MISS_RATE_BAD rather than MISS_RATE_GOOD (a 10%
        rate decides in ~35 rows seen, 0.7% raises in ~3% of its ~500-row tests); lower when it
        looks like MISS_RATE_SPARE rather than MISS_RATE_GOOD. A trap (many rows missed at
        once) is recovered by the search itself and does not count here."""
        if missed >= TRAP_ROWS or seen <= 0:
            return
        found = seen - missed
        with self.lock:
            self.raise_evidence += _log_odds(missed, found, MISS_RATE_BAD, MISS_RATE_GOOD)
            if self.raise_evidence >= EVIDENCE:
                if self.ef_scale < EF_MAX / EF_MIN:
                    self.ef_scale = min(self.ef_scale * EF_STEP, EF_MAX / EF_MIN)
                self.raise_evidence = self.lower_evidence = 0.0
                return
            if self.raise_evidence <= -EVIDENCE:
                self.raise_evidence = 0.0  # misses look rare enough: start a new test
            if self.ef_scale <= 1:
                return
            self.lower_evidence += _log_odds(missed, found, MISS_RATE_SPARE, MISS_RATE_GOOD)
            if self.lower_evidence >= EVIDENCE:
                self.ef_scale = max(self.ef_scale / EF_STEP, 1.0)
                self.raise_evidence = self.lower_evidence = 0.0
            elif self.lower_evidence <= -EVIDENCE:
                self.lower_evidence = 0.0

    def sample(self, tenant: str | None) -> Sample | None:
        with self.lock:
            return self.samples.get(tenant)

    def keep_sample(self, tenant: str | None, sample: Sample) -> Sample:
        with self.lock:
            self.samples[tenant] = sample
            if len(self.samples) > SAMPLES_MAX:
                self.samples.popitem(last=False)
            return sample

    def changed_rows(self, n: int) -> None:
        """Writes changed ``n`` rows: past ESTIMATE_CHANGE of the collection, estimate again."""
        with self.lock:
            self.changed += n
            if self.changed > ESTIMATE_CHANGE * max(self.rows, SAMPLE_ROWS):
                self.estimates.clear()
                self.samples.clear()
                self.changed = 0

    def estimate(self, key: Hashable) -> _Probe | None:
        with self.lock:
            found = self.estimates.get(key)
            if found is None:
                return None
            if time.monotonic() - found[0] > ESTIMATE_SECONDS:
                del self.estimates[key]
                return None
            self.estimates.move_to_end(key)
            return found[1]

    def remember(self, key: Hashable, probe: _Probe) -> None:
        with self.lock:
            if not self.estimates:
                self.rows, self.changed = probe.graph, 0
            self.estimates[key] = (time.monotonic(), probe)
            if len(self.estimates) > ESTIMATES_MAX:
                self.estimates.popitem(last=False)
            # Keep the sample near SAMPLE_ROWS rows as the collection grows or shrinks.
            bits = self.window_bits or 0
            if probe.sampled >= 2 * SAMPLE_ROWS or (bits > 0 and probe.sampled < SAMPLE_ROWS // 2):
                self.window_bits = _bits_for(probe.sampled * 2.0**bits)


def _log_odds(missed: int, found: int, rate: float, against: float) -> float:
    """The log-likelihood ratio that ``missed`` misses among ``missed + found`` rows come from a
    miss rate of ``rate`` rather than ``against``."""
    return missed * math.log(rate / against) + found * math.log((1 - rate) / (1 - against))


_planners: dict[tuple[str, int], Planner] = {}
_planners_lock = threading.Lock()


def planner_for(database: str, collection_id: int) -> Planner:
    """The shared planner state of a collection (one per database and collection in a process)."""
    with _planners_lock:
        return _planners.setdefault((database, collection_id), Planner())


# -- the statements ---------------------------------------------------------------------------


def _reltuples_query(info: CollectionInfo) -> Query:
    """The HNSW index's element count at its last build or VACUUM (dead elements included)."""
    return Query(
        b"SELECT greatest(max(reltuples), 0) FROM pg_catalog.pg_class WHERE oid = to_regclass(%(index)s)",
        {"index": f"{SCHEMA}.{index_name(info)}"},
        prepare=True,
    )


def _probe_statement(info: CollectionInfo, bits: int, where: sa.ColumnElement[bool]) -> sa.Select[int, int]:
    """One row: the sample's size and matches, among the tenant's rows: the explicit tenant
    keeps the probe on one Citus shard (one partition), and counts what row-level security
    lets an application role count anyway."""
    scope = sa.and_(collection_predicate(info), memories.c.tenant == sa.bindparam("tenant", type_=sa.Text()))
    if bits > 0:
        scope = sa.and_(scope, memories.c.content_hash < sa.bindparam("window", type_=sa.LargeBinary))
    statement = sa.select(sa.func.count(), sa.func.count().filter(where)).where(scope)
    return statement


def _probe(scope: Scope, planner: Planner, f: Filter) -> Operation[_Probe]:
    """Count the sample (and read the graph's size) in one round trip."""
    info = scope.info
    bits = planner.window_bits
    if bits is None:  # first search of this collection in this process: size it from the index
        reltuples = (yield from execute(_reltuples_query(info)))[0].rows[0][0]
        bits = planner.window_bits = _bits_for(float(reltuples or 0))
    params = {**scope.params, **({"window": (1 << (64 - bits)).to_bytes(8, "big")} if bits > 0 else {})}
    probe_query = cached(("probe", scope.key, bits), lambda w: _probe_statement(info, bits, w), f, params)
    probe_result, reltuples_result = yield from execute(probe_query, _reltuples_query(info))
    sampled, hits = probe_result.rows[0]
    return _Probe(int(sampled), int(hits), 2.0**-bits, float(reltuples_result.rows[0][0] or 0))


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


# -- the planner ------------------------------------------------------------------------------


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
        p = yield from _probe(scope, planner, f)
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


def _candidates_for(k: int, p: _Probe, sampled: int) -> int:
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
        p = yield from _probe(scope, planner, f)
        planner.remember(estimate_key, p)
    facts = f"~{p.estimated} of ~{round(p.graph)} graph elements match ({p.selectivity:.2%})"
    if exact is None and (p.use_exact or fetch > EF_MAX):
        return True, None, f"{facts}: exact scan"
    ef = p.ef(fetch, ef_search, planner.ef_scale)
    return False, ef, f"{facts}: HNSW iterative scan, ef_search {ef}"
