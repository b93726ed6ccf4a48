"""Trapped walks: finding, after an HNSW search, that the graph walk missed nearer rows.

A greedy HNSW walk can end in the wrong region of the graph: on clustered data, a parallel
build that links a cluster poorly lets the walk from the entry point settle in another
cluster and return ten memories from there, while the query's own neighbours sit in the table.
The walk's answer looks like any other. The check here compares it against a uniform sample of
the collection kept in memory: a sampled row that is nearer to the query than the walk's k-th
result, and not among the results, is a row the walk should have returned. In a trap, the
query's own cluster is in the sample (with 1,024-2,048 sampled rows, every cluster of more
than ~0.5% of the collection almost surely is) and all of it is nearer than the walk's
results, so the check finds the trap; when the walk is right, no sampled row can be nearer
than its k-th result, so the check never fires on a correct answer.

The sample is the rows whose ``content_hash`` (SHA-256, uniform and independent of the text's
meaning) lies in a window of the hash space, read once per collection and tenant in the
pipeline of the first walk and kept until the planner's estimates are dropped. Its distances to
the query are one matrix-vector product in numpy: ~30 µs for 1,024 rows of 384 dimensions,
~50 µs for 2,048 (measured at 100k: +6-10% on a search's p50; twice the sample cost +13-16%).
A sampled row deleted since is only a false alarm: candidates are confirmed against the table
before anything is concluded. Over many walks the sample also estimates their recall
(``planner.Planner.observe``), which sets the ``ef_search`` floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .models import memories
from .vector_index import CollectionInfo, stored_vectors

__all__ = [
    "SAMPLED_VECTORS",
    "Sample",
    "candidates_statement",
    "decode_sample",
    "nearer_rows",
    "nearest_rows",
    "sample_bits",
    "sample_statement",
    "window",
]

SAMPLED_VECTORS = 1024  # the sample holds SAMPLED_VECTORS..2*SAMPLED_VECTORS rows (or all rows)
# Distances computed here and by the server differ in rounding only (float32 sums in another
# order: ~1e-7 for unit vectors); a sampled row counts as nearer when it is nearer by more than
# this. Tight clusters put a query's 10th and 11th neighbours ~1e-4 apart in cosine distance.
TOLERANCE = 1e-5


def sample_bits(rows: float) -> int:
    """Window bits for a sample of SAMPLED_VECTORS..2*SAMPLED_VECTORS out of ``rows`` rows."""
    return math.floor(math.log2(rows / SAMPLED_VECTORS)) if rows >= 2 * SAMPLED_VECTORS else 0


def sample_statement(
    info: CollectionInfo, bits: int, live: sa.ColumnElement[bool]
) -> sa.Select[tuple[Any, Any]]:
    """One row: the sampled ids, and their vectors as one ``bytea`` of pgvector's binary form.

    One aggregated value, because parsing thousands of vectors from text costs ~40 µs each.
    """
    where = live
    if bits > 0:
        where = sa.and_(live, memories.c.content_hash < sa.bindparam("sample_window", type_=sa.LargeBinary))
    vectors = sa.func.vector_send(stored_vectors(info))
    aggregated = sa.func.string_agg(vectors, sa.literal_column("''::bytea"))
    return sa.select(sa.func.array_agg(memories.c.id), aggregated).where(where)


def window(bits: int) -> dict[str, bytes]:
    """The parameter of :func:`sample_statement` for ``bits`` window bits."""
    return {"sample_window": (1 << (64 - bits)).to_bytes(8, "big")} if bits > 0 else {}


@dataclass(frozen=True)
class Sample:
    """Sampled rows of one collection and tenant: their ids and vectors, ready for one product."""

    ids: tuple[Any, ...]
    id_set: frozenset[Any]
    vectors: npt.NDArray[np.float32]  # (rows, dim); unit rows for cosine
    squared_norms: npt.NDArray[np.float32]  # for l2
    distance: str
    half: bool  # the index compares halfvec values: round like the server does

    def distances(self, query: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The collection's distance from ``query`` to every sampled row, as the server computes it.

        The products go through ``einsum``, not BLAS: OpenBLAS wakes its threads for a product of
        more than ~9,000 elements (2-12 ms a call right after the process waited on the server,
        on this shared 2-core machine), and capping its threads is process-wide: searches on 8
        threads then ran at 80 a second against 2,250 without the check. ``einsum`` stays on the
        calling thread (~35 µs for 1,024 rows of 384 dimensions, ~65 µs for 2,048)."""
        q = query.astype(np.float16).astype(np.float32) if self.half else query.astype(np.float32)
        if self.distance == "cosine":
            norm = np.float32(np.linalg.norm(q))
            if not norm:
                return np.ones(len(self.ids), np.float32)
            unit: npt.NDArray[np.float32] = np.einsum("ij,j->i", self.vectors, q / norm)
            return np.float32(1.0) - unit
        products: npt.NDArray[np.float32] = np.einsum("ij,j->i", self.vectors, q)
        if self.distance == "ip":
            return -products
        squared = self.squared_norms + np.float32(q @ q) - np.float32(2.0) * products
        return np.sqrt(np.maximum(squared, np.float32(0.0)))


def decode_sample(row: Sequence[Any], info: CollectionInfo) -> Sample:
    """A :class:`Sample` from :func:`sample_statement`'s row."""
    ids, blob = row
    ids = tuple(ids or ())
    dim = int(info.dimension)
    # pgvector's binary form: int16 dimensions, int16 unused, then float4 big-endian.
    stride = 4 + 4 * dim
    raw = np.frombuffer(bytes(blob or b""), dtype=np.uint8).reshape(len(ids), stride)[:, 4:]
    vectors = np.ascontiguousarray(raw).view(">f4").astype(np.float32)
    half = info.index_type == "halfvec"
    if half:
        vectors = vectors.astype(np.float16).astype(np.float32)
    squared = np.einsum("ij,ij->i", vectors, vectors).astype(np.float32)
    if info.distance == "cosine":
        norms = np.sqrt(squared)
        vectors = (vectors / np.where(norms > 0, norms, np.float32(1.0))[:, None]).astype(np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return Sample(ids, frozenset(ids), vectors, squared, info.distance, half)


def nearer_rows(sample: Sample, query: npt.NDArray[np.float32], kth: float, returned: set[Any]) -> list[Any]:
    """Ids of the sampled rows nearer to ``query`` than ``kth`` and not ``returned``, nearest
    first: rows a correct walk would have returned."""
    d = sample.distances(query)
    close = np.flatnonzero(d < kth - TOLERANCE * max(1.0, abs(kth)))
    if close.size == 0:
        return []
    ordered = close[np.argsort(d[close])]
    return [sample.ids[i] for i in ordered if sample.ids[i] not in returned]


def nearest_rows(sample: Sample, query: npt.NDArray[np.float32], count: int) -> list[Any]:
    """The ``count`` sampled rows nearest to ``query``: candidates to confirm with a filtered walk."""
    d = sample.distances(query)
    count = min(count, len(d))
    if count <= 0:
        return []
    picked = np.argpartition(d, count - 1)[:count]
    return [sample.ids[i] for i in picked[np.argsort(d[picked])]]


def candidates_statement(live: sa.ColumnElement[bool], distance: sa.ColumnElement[float]) -> sa.Select[Any]:
    """Which of the ``candidates`` ids are live rows matching the filter, with their distances."""
    ids = sa.bindparam("candidates", type_=postgresql.ARRAY(memories.c.id.type))
    return sa.select(memories.c.id, distance.label("distance")).where(live, memories.c.id == sa.any_(ids))
