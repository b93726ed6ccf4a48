"""Similarity search: an exact scan of the matching rows, or the collection's HNSW index.

Why a planner: HNSW with a WHERE clause filters *after* the graph walk, so a selective filter
returns too few rows (measured: 3.7 of 10 at 10% selectivity). pgvector's iterative scan keeps
walking until it has enough rows but still loses recall when few graph elements match, while
an exact scan of the matching rows (found through the btree/GIN indexes) is exact and costs
about a microsecond per matching row. What decides is how many rows match, and which fraction
of the HNSW graph (dead elements included) they are.

A search runs two statements in one transaction:

1. **The probe** counts, in a *sample* of the collection, all rows and the matching ones. The
   sample is the rows whose ``content_hash`` (SHA-256: uniform and independent of the
   metadata) lies in a window of the hash space sized to hold ``SAMPLE_ROWS`` to twice that,
   read through the ``(collection_id, content_hash)`` btree: 0.1-0.3 ms at any collection
   size. (A bounded count costs up to its bound on unselective filters, 3 ms for 10,000 rows;
   PostgreSQL's own estimate for ``metadata @> ...`` comes from 100 sampled documents.) The
   graph size is the larger of the live rows and the HNSW index's ``reltuples``, which counts
   dead elements until VACUUM: right after a large delete the planner sees the lower
   selectivity at once. The same statement sets the index walk's settings for the transaction
   (``set_config(..., true)``), with ``ef_search`` computed from the sample.
2. **The exact scan** when at most ``EXACT_ROWS`` rows match or fewer than ``S_MIN`` of the
   graph; else **the index walk**, pgvector's iterative scan (``relaxed_order``) with the filter
   applied during the walk, fetching ``HNSW_OVERFETCH * k`` matches and keeping the nearest k.
   If the walk returns fewer than k rows, the exact scan runs: a search never returns fewer
   than ``min(k, matches)``.

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
  0.9995 and no trapped query. Hence that graph and the floor
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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy import ColumnElement
from sqlalchemy.engine import Connection

from .models import SCHEMA, memories
from .query_vector import QueryVector
from .vector_index import QUERY_VECTOR, CollectionInfo, collection_predicate, distance_expression, index_name

__all__ = [
    "EF_MAX",
    "EF_MIN",
    "EF_PER_SELECTIVITY",
    "EXACT_ROWS",
    "SAMPLE_ROWS",
    "S_MIN",
    "SearchPlan",
    "bounded_count",
    "search",
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
# Planner costs for the transaction. The exact scan's rows are read by random access to pages
# that are normally cached, and PostgreSQL underprices a GIN scan of a frequent key (a 50% key's
# 50k entries: ~5 ms, priced like 0.1 ms of btree). With the defaults (4, 0.005) it ANDs such
# scans onto a selective range to save heap reads that cost microseconds. Measured on the
# server, 100k rows: AND (50% key, range) at 0.1%: 7.2 -> 0.8 ms; at 1%: 12.6 -> 8.4 ms; OR of
# two such ANDs at 1%: 21.5 -> 6.5 ms; other cells unchanged, and the walks still use HNSW.
RANDOM_PAGE_COST = "1.1"
CPU_INDEX_TUPLE_COST = "0.05"

_RESULT_COLUMNS = (memories.c.id, memories.c.text, memories.c.metadata, memories.c.created_at)
_pg_class = sa.table("pg_class", sa.column("oid"), sa.column("reltuples"), schema="pg_catalog")


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


def bounded_count(conn: Connection, where: ColumnElement[bool], limit: int) -> int:
    """``min(count, limit + 1)``: stops reading once more than ``limit`` rows matched."""
    inner = sa.select(sa.literal(1)).select_from(memories).where(where).limit(limit + 1).subquery()
    return int(conn.execute(sa.select(sa.func.count()).select_from(inner)).scalar_one())


# -- the sample window, per collection --------------------------------------------------------

_window_bits: dict[tuple[str, int], int] = {}
_window_lock = threading.Lock()


def _bits_for(rows: float) -> int:
    """Window bits for ``rows`` rows: a sample of SAMPLE_ROWS..2*SAMPLE_ROWS rows, or all of them."""
    return math.floor(math.log2(rows / SAMPLE_ROWS)) if rows >= 2 * SAMPLE_ROWS else 0


def _window_key(conn: Connection, info: CollectionInfo) -> tuple[str, int]:
    return conn.engine.url.render_as_string(hide_password=True), info.id


def _reltuples(info: CollectionInfo) -> sa.ScalarSelect[Any]:
    """The HNSW index's element count at its last build or VACUUM (dead elements included)."""
    qualified = f"{SCHEMA}.{index_name(info)}"
    return (
        sa.select(sa.func.greatest(sa.func.max(_pg_class.c.reltuples), 0.0))
        .where(_pg_class.c.oid == sa.func.to_regclass(qualified))
        .scalar_subquery()
    )


def _window(conn: Connection, info: CollectionInfo) -> int:
    key = _window_key(conn, info)
    with _window_lock:
        bits = _window_bits.get(key)
    if bits is None:  # first search of this collection in this process
        bits = _bits_for(float(conn.execute(sa.select(_reltuples(info))).scalar() or 0))
        with _window_lock:
            _window_bits[key] = bits
    return bits


def _resize(conn: Connection, info: CollectionInfo, bits: int, sampled: int) -> None:
    """Keep the sample near SAMPLE_ROWS rows as the collection grows or shrinks."""
    if sampled >= 2 * SAMPLE_ROWS or (bits > 0 and sampled < SAMPLE_ROWS // 2):
        with _window_lock:
            _window_bits[_window_key(conn, info)] = _bits_for(sampled * 2.0**bits)


# -- the statements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    sampled: int  # rows in the sample
    hits: int  # matching rows in the sample
    fraction: float  # of the collection the sample covers
    reltuples: float
    ef: int

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


# A search's statements differ from the previous search's only in their values whenever the
# filter has the same shape (keys, operators, value types), which is the common case. Building
# and keying a statement costs more Python than the database spends on a selective search, so
# each statement is built once per shape and reused with the new values bound by name.
_statements: OrderedDict[tuple[Any, ...], tuple[sa.Executable, list[str]]] = OrderedDict()
_STATEMENTS_MAX = 1024
_statements_lock = threading.Lock()


def _execute(
    conn: Connection,
    shape: tuple[Any, ...],
    where: ColumnElement[bool],
    build: Callable[[ColumnElement[bool]], sa.Executable],
    params: dict[str, Any],
) -> sa.CursorResult[Any]:
    """``conn.execute(build(where), params)``, reusing the statement built for an earlier filter
    of the same shape: the new filter's values are bound to the earlier one's parameters."""
    where_key = where._generate_cache_key()
    if where_key is None:
        return conn.execute(build(where), params)
    key = (*shape, where_key.key)
    with _statements_lock:
        found = _statements.get(key)
        if found is not None:
            _statements.move_to_end(key)
    if found is None:
        stmt = build(where)
        with _statements_lock:
            _statements[key] = (stmt, [bp.key for bp in where_key.bindparams])
            if len(_statements) > _STATEMENTS_MAX:
                _statements.popitem(last=False)
        return conn.execute(stmt, params)
    stmt, names = found
    values = {name: bp.effective_value for name, bp in zip(names, where_key.bindparams, strict=True)}
    return conn.execute(stmt, {**values, **params})


def _probe_statement(
    info: CollectionInfo,
    bits: int,
    k: int,
    ef_search: int | None,
    where: ColumnElement[bool],
) -> sa.Select[Any]:
    """One row: the sample's counts and ``ef``; it sets the walk's settings."""
    scope = collection_predicate(info)
    if bits > 0:
        scope = sa.and_(scope, memories.c.content_hash < sa.bindparam("window", type_=sa.LargeBinary))
    sample = (
        sa.select(
            sa.func.count().label("n"),
            sa.func.count().filter(where).label("hits"),
            _reltuples(info).label("reltuples"),
        )
        .where(scope)
        .subquery("sample")
    )
    fraction = 2.0**-bits
    matches = sample.c.hits / fraction
    graph = sa.func.greatest(sample.c.reltuples, sample.c.n / fraction, 1.0)
    if ef_search is not None:
        ef: ColumnElement[Any] = sa.literal(min(EF_MAX, max(ef_search, k)))
    else:
        by_size = sa.func.least(EF_FLOOR_MAX, sa.func.round(EF_MIN * sa.func.sqrt(graph / EF_MIN_ROWS)))
        unfiltered_floor = sa.func.greatest(EF_MIN, by_size)
        # A filter that drops a tenth of the sample or more: the walk skips elements, twice the floor.
        filtered = sample.c.hits < FILTERED_BELOW * sample.c.n
        floor = sa.case((filtered, FILTERED_FLOOR_FACTOR * unfiltered_floor), else_=unfiltered_floor)
        by_selectivity = sa.func.ceil(EF_PER_SELECTIVITY * graph / sa.func.greatest(matches, 1.0))
        ef = sa.cast(sa.func.least(EF_MAX, sa.func.greatest(2 * k, floor, by_selectivity)), sa.Integer)
    settings = sa.func.concat_ws(
        ",",
        sa.func.set_config("hnsw.ef_search", sa.cast(ef, sa.Text), True),
        sa.func.set_config("hnsw.iterative_scan", "relaxed_order", True),
        sa.func.set_config("hnsw.max_scan_tuples", str(MAX_SCAN_TUPLES), True),
        sa.func.set_config("random_page_cost", RANDOM_PAGE_COST, True),
        sa.func.set_config("cpu_index_tuple_cost", CPU_INDEX_TUPLE_COST, True),
    )
    return sa.select(
        sample.c.n,
        sample.c.hits,
        sample.c.reltuples,
        ef.label("ef"),
        settings.label("settings"),
    )


def _probe(
    conn: Connection, info: CollectionInfo, where: ColumnElement[bool], k: int, ef_search: int | None
) -> _Probe:
    """The sample's counts and the plan; sets the walk's settings for this transaction.

    (Merging the exact scan into this statement, gated by a one-time filter, measured no faster:
    the bigger statement takes longer to plan, and the walk path would bind the vector twice.)
    """
    bits = _window(conn, info)
    params = {"window": (1 << (64 - bits)).to_bytes(8, "big")} if bits > 0 else {}
    shape = ("probe", info, bits, k, ef_search)
    build = partial(_probe_statement, info, bits, k, ef_search)
    row = _execute(conn, shape, where, build, params).one()
    _resize(conn, info, bits, int(row.n))
    return _Probe(int(row.n), int(row.hits), 2.0**-bits, float(row.reltuples), int(row.ef))


def _with_columns(nearest: sa.Subquery, *extra: ColumnElement[Any]) -> sa.Select[Any]:
    """The result columns of the ``nearest`` rows (ids and distances), joined by primary key.

    Ranking carries only ids and distances: a search reads the text and metadata of k rows, not
    of every row it ranks (fetching them for the 4k rows of a walk cost ~0.7 ms at k=10).
    """
    return (
        sa.select(*_RESULT_COLUMNS, nearest.c.distance, *extra)
        .join_from(nearest, memories, memories.c.id == nearest.c.id)
        .order_by(nearest.c.distance)
    )


def _exact_statement(info: CollectionInfo, k: int, where: ColumnElement[bool]) -> sa.Select[Any]:
    distance = distance_expression(info, None)
    matching = (
        sa.select(memories.c.id, distance.label("distance"), sa.func.count().over().label("total"))
        .where(where)
        .subquery("matching")
    )
    nearest = sa.select(matching).order_by(matching.c.distance).limit(k).subquery("nearest")
    return _with_columns(nearest, nearest.c.total)


def _exact(
    conn: Connection, info: CollectionInfo, where: ColumnElement[bool], query: npt.NDArray[np.float32], k: int
) -> tuple[list[sa.Row[Any]], int]:
    """The k nearest matching rows ranked exactly, and the number of matches. The window count
    keeps the planner off the HNSW index: every matching row comes from the btree/GIN indexes."""
    shape = ("exact", info, k)
    build = partial(_exact_statement, info, k)
    rows = list(
        _execute(conn, shape, where, build, {QUERY_VECTOR: QueryVector(query, info.index_type == "halfvec")})
    )
    return rows, int(rows[0].total) if rows else 0


def _hnsw_statement(info: CollectionInfo, k: int, where: ColumnElement[bool]) -> sa.Select[Any]:
    distance = distance_expression(info, None)
    walk = (
        sa.select(memories.c.id, distance.label("distance"))
        .where(where)
        .order_by(distance)
        .limit(HNSW_OVERFETCH * k)
        .subquery("walk")
    )
    # relaxed_order returns the matches only roughly by distance. Sorting by ``distance + 0``
    # keeps PostgreSQL from taking the walk's order as exact and dropping the sort.
    nearest = sa.select(walk).order_by(walk.c.distance + 0.0).limit(k).subquery("nearest")
    return _with_columns(nearest)


def _hnsw(
    conn: Connection, info: CollectionInfo, where: ColumnElement[bool], query: npt.NDArray[np.float32], k: int
) -> list[sa.Row[Any]]:
    """The nearest k of the ``HNSW_OVERFETCH * k`` matches the walk fetched (relaxed_order may
    return them slightly out of order, so they are sorted again)."""
    shape = ("hnsw", info, k)
    build = partial(_hnsw_statement, info, k)
    return list(
        _execute(conn, shape, where, build, {QUERY_VECTOR: QueryVector(query, info.index_type == "halfvec")})
    )


# -- the planner ------------------------------------------------------------------------------


def search(
    conn: Connection,
    info: CollectionInfo,
    where: ColumnElement[bool],
    query: npt.NDArray[np.float32],
    k: int,
    *,
    exact: bool | None = None,
    ef_search: int | None = None,
) -> tuple[list[sa.Row[Any]], SearchPlan]:
    """The ``k`` rows nearest to ``query`` among the rows matching ``where``, and the plan used.

    ``where`` must include the collection predicate (with the id inline) for the collection's
    partial HNSW index to be usable. ``exact`` forces a path (True: the exact scan; False: HNSW,
    which still falls back to the exact scan if it comes back short); ``ef_search`` replaces
    the computed ``hnsw.ef_search`` (clamped to k..1000).
    """
    if exact is True:
        rows, counted = _exact(conn, info, where, query, k)
        return rows, SearchPlan("exact", "forced by exact=True", counted)

    p = _probe(conn, info, where, k, ef_search)
    facts = (
        f"{p.estimated} of {round(p.graph)} graph elements match ({p.selectivity:.2%})"
        if p.whole
        else f"~{p.estimated} of ~{round(p.graph)} graph elements match "
        f"({p.selectivity:.2%}, sampled {p.sampled} rows)"
    )

    def plan(path: str, reason: str, counted: int | None, ef: int | None) -> SearchPlan:
        return SearchPlan(path, reason, counted, ef, p.estimated, p.selectivity, p.sampled)

    if exact is None and p.use_exact:
        rows, counted = _exact(conn, info, where, query, k)
        if p.estimated <= EXACT_ROWS:
            why = f"{facts}: at most {EXACT_ROWS}: exact scan"
        else:
            why = f"{facts}: below {S_MIN:.0%}, where HNSW loses recall: exact scan"
        return rows, plan("exact", why, counted, None)

    rows = _hnsw(conn, info, where, query, k)
    reason = (
        "forced by exact=False" if exact is False else facts
    ) + f": HNSW iterative scan, ef_search {p.ef}"
    if len(rows) >= k:
        return rows, plan("hnsw", reason, p.estimated if p.whole else None, p.ef)
    # The walk came back short (it hit max_scan_tuples, or the sample misled): only the exact
    # scan knows whether more rows match.
    fallback, counted = _exact(conn, info, where, query, k)
    if len(fallback) > len(rows):
        return fallback, plan(
            "exact", f"{reason}, which returned {len(rows)} < {k} rows: exact scan", counted, p.ef
        )
    return rows, plan("hnsw", reason, counted, p.ef)
