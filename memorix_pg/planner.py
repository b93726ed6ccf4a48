"""The search planner: how many rows a filter matches, and how wide an HNSW walk must be.

search.py decides between the exact scan and the index walk from this module's estimate; the
estimate, its cache and the ``ef_search`` it implies live here, apart from the statements that
search.py runs.

**The probe** counts, in a *sample* of the collection, all rows and the matching ones. The
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
from collections.abc import Hashable
from dataclasses import dataclass, field

import sqlalchemy as sa

from .models import SCHEMA, memories
from .scope import Scope
from .statements import Filter, cached
from .steps import Operation, Query, execute
from .traps import Sample
from .vector_index import CollectionInfo, collection_predicate, index_name

__all__ = [
    "EF_MAX",
    "EF_MIN",
    "EF_PER_SELECTIVITY",
    "EF_STEP",
    "EXACT_ROWS",
    "SAMPLE_ROWS",
    "S_MIN",
    "Planner",
    "Probe",
    "planner_for",
    "probe",
]

# -- thresholds (measured; see the module docstring) -------------------------------------------
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
ESTIMATE_SECONDS = 30.0  # an estimate is reused this long (other processes' writes are unseen) ...
ESTIMATE_CHANGE = 0.1  # ... unless this process changed more than this share of the rows since
ESTIMATES_MAX = 1024
SAMPLES_MAX = 16  # tenants whose samples a collection's planner keeps
# The walks' recall as estimated from the sample (Planner.observe), judged by two sequential
# probability ratio tests (Wald) on the stream of sampled nearest rows, found or missed:
TRAP_ROWS = 3  # a walk missing this many sampled rows is a trap (recovered, not counted)
MISS_RATE_GOOD = 0.005  # raise the floor when the misses are nearer 2.5% than 0.5% ...
MISS_RATE_BAD = 0.025
MISS_RATE_SPARE = 0.00125  # ... lower it when they are nearer 0.125% than 0.5%
EVIDENCE = math.log(99)  # each test decides at odds of 99 to 1 (1% wrong either way)
EF_STEP = 1.5  # the floor's multiplier moves by this factor


@dataclass(frozen=True)
class Probe:
    """The probe's counts for one collection and filter: what search.py decides a path from, kept
    in :attr:`Planner.estimates` so a repeated filter needs no probe."""

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
    estimates: OrderedDict[Hashable, tuple[float, Probe]] = field(default_factory=OrderedDict)
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

    def estimate(self, key: Hashable) -> Probe | None:
        with self.lock:
            found = self.estimates.get(key)
            if found is None:
                return None
            if time.monotonic() - found[0] > ESTIMATE_SECONDS:
                del self.estimates[key]
                return None
            self.estimates.move_to_end(key)
            return found[1]

    def remember(self, key: Hashable, probe: Probe) -> None:
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


# -- the probe's statements --------------------------------------------------------------------


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


def probe(scope: Scope, planner: Planner, f: Filter) -> Operation[Probe]:
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
    return Probe(int(sampled), int(hits), 2.0**-bits, float(reltuples_result.rows[0][0] or 0))
