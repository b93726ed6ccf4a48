"""Filtered similarity search: memorix-pg vs hand-written pgvector SQL vs Chroma.

    python benchmarks/search.py [--n 100000] [--queries 60] [--chroma-queries 20] [--real]
                                [--skip-chroma] [--shared-buffers 1GB] [--partial-index]

Defaults run in ~7 minutes on 2 cores. ``--n 300000 --skip-chroma --shared-buffers 3GB
--partial-index --out search-300k`` is the scaling measurement (benchmarks/results/scaling.md).

One run, the same data, queries and filters for all three:

* **memorix-pg**: ``MemoryAPI.store_batch(texts, metadatas, embeddings=...)`` (binary COPY,
  HNSW built once) and ``create_index("bucket", "number")`` (the btree range filters on that
  key use), then ``retrieve(None, top_k=10, filter=..., embedding=q)``; the planner chooses the
  exact scan or HNSW per query.
* **pgvector**: what one writes by hand: a table ``(id, embedding vector(384), metadata
  jsonb)``, an HNSW index with pgvector's defaults (m 16, ef_construction 64; ef_search 40, no
  iterative scan), a GIN ``jsonb_path_ops`` index and a btree on ``(metadata->>'bucket')::int``;
  ``SELECT id ... WHERE <filter> ORDER BY embedding <=> q LIMIT 10``.
* **Chroma**: ``chromadb.PersistentClient`` (cosine), ``add`` in batches, ``query(
  query_embeddings=[q], n_results=10, where=...)`` (Chroma's ``where`` takes equality and
  numeric comparisons).

Data: clustered synthetic 384-d unit vectors (topics > subtopics in a 48-d latent space,
projected: neighbour similarities like MiniLM's) with metadata: ``type``, ``user_id`` (Zipf-like
and tied to topics), ISO ``timestamp``, ``tags``, ``importance``, and for exact selectivities a
uniform integer ``bucket`` (0-9999) and ``p2``/``p10``/.../``p10000`` (uniform in 0..n-1), and
``grp3`` (0-2, for the delete). ``--real`` embeds generated sentences with all-MiniLM-L6-v2
(offline, through memorix_pg.embedders) instead; keep it small (default 5,000).

Filter families at 50 / 10 / 1 / 0.1 / 0.01% selectivity (a fresh value or range per query):
``eq`` ``{"p10": v}``; ``range`` ``{"bucket": {"$gte": a, "$lt": b}}``; ``and`` ``{"$and":
[{"p2": v}, {"bucket": range}]}``; ``or`` ``{"$or": [{"p2": 0, "bucket": r1}, {"p2": 1,
"bucket": r2}]}``; ``user`` ``{"user_id": u}`` for the user whose share is nearest (this one is
correlated with the vectors). Ground truth is numpy brute force over the matching rows; recall@10
counts the true top 10 found, ``rows`` the rows returned (min(10, matches) is expected).

Then: delete 2/3 of the rows by filter (``grp3`` in (0, 1)) and, at once (no VACUUM), recall and
rows for unfiltered and filtered searches. Disk size before the delete. The table, with the
peers' p50 divided by memorix's, goes to benchmarks/results/search.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, chroma_client, environment, memorix_database

K = 10
DIM = 384
SELECTIVITIES = (0.5, 0.1, 0.01, 0.001, 0.0001)
TYPES = ("conversation", "knowledge", "episode", "task", "preference")
TYPE_P = (0.5, 0.2, 0.15, 0.1, 0.05)
TAGS = tuple(f"tag{i:02d}" for i in range(40))
P_FIELDS = (2, 10, 100, 1000, 10000)


# -- data -----------------------------------------------------------------------------------


@dataclass
class Data:
    vectors: np.ndarray  # (n, dim) float32, unit
    texts: list[str]
    metadatas: list[dict[str, Any]]
    cols: dict[str, np.ndarray]  # per-row metadata values, for masks
    queries: np.ndarray  # (nq, dim) float32, unit
    kind: str

    def __len__(self) -> int:
        return len(self.texts)


def _metadata(n: int, users: np.ndarray, rng: np.random.Generator) -> tuple[list[dict[str, Any]], dict]:
    cols: dict[str, np.ndarray] = {
        "type": rng.choice(len(TYPES), n, p=TYPE_P),
        "user": users,
        "bucket": rng.integers(0, 10000, n),
        "grp3": rng.integers(0, 3, n),
        "importance": np.round(rng.random(n), 3),
    }
    for p in P_FIELDS:
        cols[f"p{p}"] = rng.integers(0, p, n)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    seconds = np.sort(rng.integers(0, 365 * 86400, n))
    ntags = rng.integers(0, 4, n)
    tag_idx = rng.integers(0, len(TAGS), (n, 3))
    metas = []
    for i in range(n):
        meta: dict[str, Any] = {
            "type": TYPES[cols["type"][i]],
            "user_id": f"user_{int(users[i]):05d}",
            "timestamp": (t0 + timedelta(seconds=int(seconds[i]))).isoformat(),
            "tags": [TAGS[j] for j in tag_idx[i, : ntags[i]]],
            "importance": float(cols["importance"][i]),
            "bucket": int(cols["bucket"][i]),
            "grp3": int(cols["grp3"][i]),
        }
        for p in P_FIELDS:
            meta[f"p{p}"] = int(cols[f"p{p}"][i])
        metas.append(meta)
    return metas, cols


def _zipf_users(n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    n_users = max(10, n // 100)
    weights = 1.0 / np.arange(1, n_users + 1) ** 1.1
    return rng.choice(n_users, n, p=weights / weights.sum()), n_users


def synthetic_data(n: int, n_queries: int, seed: int = 0) -> Data:
    """Topics > subtopics in a 48-d latent space, projected to 384-d; each user writes 70% of
    their memories about 3 "home" subtopics."""
    rng = np.random.default_rng(seed)
    latent, per_topic = 48, 8
    topics = max(8, int(np.sqrt(n) / 3))
    topic_c = rng.standard_normal((topics, latent)) / np.sqrt(latent)
    sub_c = rng.standard_normal((topics, per_topic, latent)) / np.sqrt(latent)
    common = rng.standard_normal(latent)
    common /= np.linalg.norm(common)
    proj = (rng.standard_normal((latent, DIM)) / np.sqrt(DIM)).astype(np.float32)
    clusters = topics * per_topic
    cluster_w = 1.0 / np.arange(1, clusters + 1) ** 0.5
    cluster_w /= cluster_w.sum()

    def sample(cl: np.ndarray) -> np.ndarray:
        z = 0.6 * common + topic_c[cl // per_topic] + 0.7 * sub_c[cl // per_topic, cl % per_topic]
        z = z + 0.8 * rng.standard_normal((len(cl), latent)) / np.sqrt(latent)
        x = z.astype(np.float32) @ proj
        x += 0.2 * rng.standard_normal((len(cl), DIM)).astype(np.float32) / np.sqrt(DIM)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    users, n_users = _zipf_users(n, rng)
    home = rng.integers(0, clusters, (n_users, 3))
    own = rng.random(n) < 0.7
    assign = np.where(own, home[users, rng.integers(0, 3, n)], rng.choice(clusters, n, p=cluster_w))
    vectors = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 20000):
        vectors[start : start + 20000] = sample(assign[start : start + 20000])
    metas, cols = _metadata(n, users, rng)
    texts = [
        f"memory {i} of {m['user_id']} about topic {assign[i]} ({m['type']})" for i, m in enumerate(metas)
    ]
    queries = sample(rng.choice(clusters, n_queries, p=cluster_w))
    return Data(vectors, texts, metas, cols, queries, "synthetic")


_SUBJECTS = {
    "cooking": ["pasta carbonara", "sourdough bread", "a vegan curry", "grilled salmon", "a chocolate cake"],
    "travel": ["a trip to Kyoto", "hiking in Patagonia", "a weekend in Lisbon", "night trains in Europe"],
    "programming": ["a Python memory leak", "Rust lifetimes", "a PostgreSQL index", "a flaky CI pipeline"],
    "health": ["a running plan", "sleep quality", "knee pain after squats", "a low-sugar diet"],
    "finance": ["an index fund", "the monthly budget", "a mortgage refinance", "tax deductions"],
    "music": ["jazz piano lessons", "a guitar chord progression", "a Beethoven sonata", "vinyl records"],
    "work": ["the quarterly roadmap", "a performance review", "a hiring interview", "a customer escalation"],
    "family": ["a birthday party", "school pickup times", "a wedding anniversary", "grandma's visit"],
    "science": ["black holes", "CRISPR gene editing", "climate models", "protein folding"],
    "home": ["a leaking faucet", "painting the bedroom", "a smart thermostat", "the garden tomatoes"],
    "pets": ["the dog's vet visit", "a cat that scratches furniture", "training a puppy", "pet insurance"],
    "books": ["a fantasy novel series", "a biography of Lincoln", "a book club pick", "poetry collections"],
}
_TEMPLATES = (
    "The user asked how to deal with {x}.",
    "We talked about {x} and the user seemed {mood}.",
    "Reminder: follow up on {x} next {day}.",
    "User prefers short answers when discussing {x}.",
    "Noted that the user is {mood} about {x}.",
    "The assistant recommended three resources on {x}.",
    "User shared a story about {x} from last {day}.",
    "Fact: the user has been researching {x} for weeks.",
    "Conversation summary: questions about {x}, resolved.",
    "User wants a step-by-step plan for {x}.",
    "The user disliked the previous suggestion about {x}.",
    "Task: compare options for {x} and report back by {day}.",
)
_MOODS = ("excited", "frustrated", "curious", "worried", "happy", "confused", "relieved", "skeptical")
_DAYS = ("Monday", "Wednesday", "Friday", "Sunday", "week", "month", "weekend")


def _sentences(n: int, subjects: np.ndarray, rng: np.random.Generator) -> list[str]:
    flat = [s for group in _SUBJECTS.values() for s in group]
    tpl = rng.integers(0, len(_TEMPLATES), n)
    mood = rng.integers(0, len(_MOODS), n)
    day = rng.integers(0, len(_DAYS), n)
    return [
        _TEMPLATES[tpl[i]].format(x=flat[subjects[i]], mood=_MOODS[mood[i]], day=_DAYS[day[i]])
        for i in range(n)
    ]


def real_data(n: int, n_queries: int, seed: int = 0) -> Data:
    """Generated sentences embedded with all-MiniLM-L6-v2 (~250 sentences/s on 2 cores)."""
    from memorix_pg.embedders import SentenceTransformerEmbedder

    rng = np.random.default_rng(seed)
    n_subjects = sum(len(g) for g in _SUBJECTS.values())
    users, n_users = _zipf_users(n, rng)
    home = rng.integers(0, n_subjects, (n_users, 3))
    own = rng.random(n) < 0.7
    subjects = np.where(own, home[users, rng.integers(0, 3, n)], rng.integers(0, n_subjects, n))
    texts = _sentences(n, subjects, rng)
    query_texts = _sentences(n_queries, rng.integers(0, n_subjects, n_queries), rng)
    embedder = SentenceTransformerEmbedder()
    started = time.perf_counter()
    vectors = embedder.embed(texts + query_texts)
    print(f"embedded {len(texts) + len(query_texts)} sentences in {time.perf_counter() - started:.1f} s")
    metas, cols = _metadata(n, users, rng)
    return Data(vectors[:n], texts, metas, cols, vectors[n:], "real (all-MiniLM-L6-v2)")


# -- filters --------------------------------------------------------------------------------


@dataclass
class Filter:
    """One filter in each system's language, and the rows it matches."""

    mongo: dict[str, Any]
    chroma: dict[str, Any]
    sql: str  # over the pgvector peer's table; %s placeholders
    params: tuple[Any, ...]
    mask: np.ndarray


def f_eq(data: Data, key: str, value: Any, col: str | None = None) -> Filter:
    return Filter(
        {key: value},
        {key: value},
        "metadata @> %s::jsonb",
        (json.dumps({key: value}),),
        data.cols[col or key] == (value if col is None else int(value.split("_")[1])),
    )


def f_range(data: Data, lo: int, hi: int) -> Filter:
    return Filter(
        {"bucket": {"$gte": lo, "$lt": hi}},
        {"$and": [{"bucket": {"$gte": lo}}, {"bucket": {"$lt": hi}}]},
        "(metadata->>'bucket')::int >= %s AND (metadata->>'bucket')::int < %s",
        (lo, hi),
        (data.cols["bucket"] >= lo) & (data.cols["bucket"] < hi),
    )


def f_and(*parts: Filter) -> Filter:
    chroma: list[dict[str, Any]] = []
    for p in parts:
        chroma.extend(p.chroma["$and"] if "$and" in p.chroma else [p.chroma])
    mask = parts[0].mask.copy()
    for p in parts[1:]:
        mask &= p.mask
    return Filter(
        {"$and": [p.mongo for p in parts]},
        {"$and": chroma},
        " AND ".join(f"({p.sql})" for p in parts),
        tuple(x for p in parts for x in p.params),
        mask,
    )


def f_or(*parts: Filter) -> Filter:
    mask = parts[0].mask.copy()
    for p in parts[1:]:
        mask |= p.mask
    return Filter(
        {"$or": [p.mongo for p in parts]},
        {"$or": [p.chroma for p in parts]},
        " OR ".join(f"({p.sql})" for p in parts),
        tuple(x for p in parts for x in p.params),
        mask,
    )


@dataclass
class Cell:
    name: str
    family: str
    selectivity: float | None
    filters: list[Filter | None]  # None: unfiltered
    queries: np.ndarray
    truth: list[np.ndarray] = field(default_factory=list)
    alive: np.ndarray | bool = True  # rows not deleted (for recall after the delete)


def _width(s: float) -> int:
    return max(1, round(s * 10000))


def build_cells(data: Data, n_queries: int, seed: int = 1) -> list[Cell]:
    rng = np.random.default_rng(seed)
    qs = data.queries
    cells = [Cell("unfiltered", "none", None, [None] * n_queries, qs[:n_queries])]
    offset = n_queries
    user_share = Counter(data.cols["user"].tolist())
    n = len(data)
    for family in ("eq", "range", "and", "or", "user"):
        for s in SELECTIVITIES:
            filters: list[Filter | None] = []
            for _ in range(n_queries):
                if family == "eq":
                    p = round(1 / s)
                    filters.append(f_eq(data, f"p{p}", int(rng.integers(0, p))))
                elif family == "range":
                    w = _width(s)
                    lo = int(rng.integers(0, 10000 - w + 1))
                    filters.append(f_range(data, lo, lo + w))
                elif family == "and":
                    w = min(10000, _width(2 * s))
                    lo = int(rng.integers(0, 10000 - w + 1))
                    filters.append(
                        f_and(f_eq(data, "p2", int(rng.integers(0, 2))), f_range(data, lo, lo + w))
                    )
                elif family == "or":
                    w = _width(s)
                    arms = []
                    for half in (0, 1):
                        lo = int(rng.integers(0, 10000 - w + 1))
                        arms.append(f_and(f_eq(data, "p2", half), f_range(data, lo, lo + w)))
                    filters.append(f_or(*arms))
                else:  # the user whose share is nearest s (within 2x), if any
                    target = s * n
                    user, count = min(user_share.items(), key=lambda kv: abs(np.log(kv[1] / target)))
                    if not target / 2 <= count <= target * 2:
                        break
                    filters.append(f_eq(data, "user_id", f"user_{user:05d}", col="user"))
            if not filters:
                continue
            name = f"{family} {s * 100:g}%"
            cells.append(Cell(name, family, s, filters, qs[offset : offset + n_queries]))
            offset += n_queries
    return cells


def ground_truth(data: Data, cells: list[Cell], alive: np.ndarray | None = None) -> None:
    for cell in cells:
        cell.truth = []
        cell.alive = True if alive is None else alive
        for f, q in zip(cell.filters, cell.queries, strict=True):
            mask = np.ones(len(data), bool) if f is None else f.mask
            if alive is not None:
                mask = mask & alive
            idx = np.flatnonzero(mask)
            if len(idx) == 0:
                cell.truth.append(idx)
                continue
            d = -(data.vectors[idx] @ q)
            top = np.argpartition(d, min(K, len(idx) - 1))[:K] if len(idx) > K else np.arange(len(idx))
            cell.truth.append(idx[top[np.argsort(d[top])]])


# -- the three systems ------------------------------------------------------------------------


class Memorix:
    name = "memorix-pg"

    def __init__(self, url: str | None, data: Data, precision: str = "full") -> None:
        from memorix_pg import HashEmbedder, MemoryAPI

        self.collection = f"search_bench_{uuid.uuid4().hex[:8]}"
        embedder = HashEmbedder(DIM)  # never called: embeddings are given
        self.api = MemoryAPI(
            embedder=embedder, collection_name=self.collection, database_url=url, precision=precision
        )
        self.url = self.api.database_url
        self.ids: dict[str, int] = {}
        self.plans: dict[str, Counter[str]] = {}

    def load(self, data: Data) -> dict[str, float]:
        started = time.perf_counter()
        ids = self.api.store_batch(data.texts, data.metadatas, embeddings=data.vectors)
        stored = time.perf_counter() - started
        # Range filters on "bucket" use the btree on filters.index_expression("bucket", "number").
        self.api.create_index("bucket", "number")
        self.ids = {memory_id: i for i, memory_id in enumerate(ids)}
        return {"store_batch": stored, "total": time.perf_counter() - started}

    def vacuum(self) -> float:
        import psycopg

        started = time.perf_counter()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) memorix.memories")
        return time.perf_counter() - started

    def search(self, q: np.ndarray, f: Filter | None) -> list[int]:
        hits = self.api.retrieve(None, top_k=K, filter=None if f is None else f.mongo, embedding=q)
        return [self.ids[m.id] for m in hits]

    def explain(self, q: np.ndarray, f: Filter | None) -> str:
        plan = self.api.explain_retrieve(None, top_k=K, filter=None if f is None else f.mongo, embedding=q)
        ef = "" if plan.ef_search is None else f" ef{(plan.ef_search // 50) * 50}+"
        return plan.path + ef

    def delete(self, f: Filter) -> tuple[float, int]:
        started = time.perf_counter()
        deleted = self.api.delete_by_filter(f.mongo)
        return time.perf_counter() - started, deleted

    def disk_bytes(self) -> int:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return int(conn.execute("SELECT pg_total_relation_size('memorix.memories')").fetchone()[0])

    def partial_index(
        self, data: Data, queries: np.ndarray, key: str = "p100", value: int = 7
    ) -> dict[str, Any]:
        """The scaling plan's first step, by hand: a partial HNSW index for one frequent filter
        value, walked with the predicate inline, against the planner's path for that filter."""
        import psycopg
        from pgvector.psycopg import register_vector

        cid = int(self.api.collection_id)
        predicate = f"collection_id = {cid} AND metadata @> '{json.dumps({key: value})}'"
        with psycopg.connect(self.url, autocommit=True) as conn:
            register_vector(conn)
            conn.execute("SET maintenance_work_mem = '1GB'")
            started = time.perf_counter()
            conn.execute(
                f"CREATE INDEX search_bench_partial ON memorix.memories USING hnsw "
                f"((embedding::vector({DIM})) vector_cosine_ops) WHERE {predicate}"
            )
            build = time.perf_counter() - started
            mask = data.cols[key] == value
            rows = np.flatnonzero(mask)
            lat_p, lat_x, rec_p, rec_x = [], [], [], []
            for q in queries:
                d = -(data.vectors[rows] @ q)
                truth = set(rows[np.argpartition(d, K)[:K]].tolist())
                with conn.transaction():
                    conn.execute("SELECT set_config('hnsw.ef_search', '100', true)")
                    started = time.perf_counter()
                    got = conn.execute(
                        f"SELECT id FROM memorix.memories WHERE {predicate} "  # noqa: S608
                        f"ORDER BY embedding::vector({DIM}) <=> %s::vector({DIM}) LIMIT {K}",
                        (q,),
                    ).fetchall()
                    lat_p.append(time.perf_counter() - started)
                rec_p.append(len({self.ids[str(r[0])] for r in got} & truth) / K)
                started = time.perf_counter()
                planned = self.search(q, f_eq(data, key, value))
                lat_x.append(time.perf_counter() - started)
                rec_x.append(len(set(planned) & truth) / K)
            conn.execute("DROP INDEX memorix.search_bench_partial")
        return {
            "filter": {key: value},
            "matches": int(mask.sum()),
            "build_s": build,
            "partial_recall": float(np.mean(rec_p)),
            "partial_p50_ms": float(np.median(lat_p) * 1000),
            "planner_recall": float(np.mean(rec_x)),
            "planner_p50_ms": float(np.median(lat_x) * 1000),
        }


class Pgvector:
    name = "pgvector"
    table = "search_bench_pgvector"

    def __init__(self, url: str) -> None:
        import psycopg
        from pgvector.psycopg import register_vector

        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(self.conn)

    def load(self, data: Data) -> dict[str, float]:
        from psycopg.types.json import Jsonb

        c = self.conn
        started = time.perf_counter()
        c.execute(f"DROP TABLE IF EXISTS {self.table}")
        c.execute(
            f"CREATE TABLE {self.table} (id bigint PRIMARY KEY, embedding vector({DIM}), metadata jsonb)"
        )
        with c.cursor().copy(
            f"COPY {self.table} (id, embedding, metadata) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "vector", "jsonb"])
            for i in range(len(data)):
                copy.write_row((i, data.vectors[i], Jsonb(data.metadatas[i])))
        copied = time.perf_counter() - started
        c.execute("SET maintenance_work_mem = '1GB'")
        c.execute(f"CREATE INDEX ON {self.table} USING hnsw (embedding vector_cosine_ops)")
        c.execute(f"CREATE INDEX ON {self.table} USING gin (metadata jsonb_path_ops)")
        c.execute(f"CREATE INDEX ON {self.table} (((metadata->>'bucket')::int))")
        c.execute("RESET maintenance_work_mem")
        return {"copy": copied, "total": time.perf_counter() - started}

    def vacuum(self) -> float:
        started = time.perf_counter()
        self.conn.execute(f"VACUUM (ANALYZE) {self.table}")
        return time.perf_counter() - started

    def search(self, q: np.ndarray, f: Filter | None) -> list[int]:
        where, params = ("", ()) if f is None else (f"WHERE {f.sql}", f.params)
        rows = self.conn.execute(
            # The peer's hand-written SQL: a constant table name and filter text; values are bound.
            f"SELECT id FROM {self.table} {where} ORDER BY embedding <=> %s LIMIT {K}",  # noqa: S608
            (*params, q),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def delete(self, f: Filter) -> tuple[float, int]:
        started = time.perf_counter()
        cur = self.conn.execute(f"DELETE FROM {self.table} WHERE {f.sql}", f.params)  # noqa: S608
        return time.perf_counter() - started, cur.rowcount

    def disk_bytes(self) -> int:
        return int(self.conn.execute("SELECT pg_total_relation_size(%s)", (self.table,)).fetchone()[0])

    def close(self) -> None:
        self.conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        self.conn.close()


class Chroma:
    name = "chroma"

    def __init__(self, client: Any, path: Path | None) -> None:
        self.client = client
        self.path = path
        self.col = client.create_collection(
            "search-bench", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )

    @staticmethod
    def _meta(m: dict[str, Any]) -> dict[str, Any]:
        return {k: (",".join(v) if isinstance(v, list) else v) for k, v in m.items() if v != []}

    def load(self, data: Data) -> dict[str, float]:
        batch = min(5000, self.client.get_max_batch_size())
        started = time.perf_counter()
        for s in range(0, len(data), batch):
            e = min(len(data), s + batch)
            self.col.add(
                ids=[str(i) for i in range(s, e)],
                embeddings=data.vectors[s:e],
                metadatas=[self._meta(m) for m in data.metadatas[s:e]],
                documents=data.texts[s:e],
            )
        return {"total": time.perf_counter() - started}

    # What a memory store's search hands back, as retrieve does: texts, metadata and distances
    # (Chroma's own default for query).
    include: tuple[str, ...] = ("documents", "metadatas", "distances")

    def search(self, q: np.ndarray, f: Filter | None) -> list[int]:
        kwargs: dict[str, Any] = {} if f is None else {"where": f.chroma}
        res = self.col.query(query_embeddings=[q], n_results=K, include=list(self.include), **kwargs)
        return [int(i) for i in res["ids"][0]]

    def delete(self, f: Filter) -> tuple[float, int]:
        before = self.col.count()
        started = time.perf_counter()
        self.col.delete(where=f.chroma)
        return time.perf_counter() - started, before - self.col.count()

    def disk_bytes(self) -> int:
        if self.path is None:
            return 0
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


class ChromaIds:
    """The same Chroma collection queried for ids alone (``include=[]``): its fastest path, which
    no memory API can take, since a search must return the memories. Unfiltered cells only."""

    name = "chroma (ids only)"

    def __init__(self, chroma: Chroma) -> None:
        self.col = chroma.col

    def search(self, q: np.ndarray, f: Filter | None) -> list[int]:
        kwargs: dict[str, Any] = {} if f is None else {"where": f.chroma}
        res = self.col.query(query_embeddings=[q], n_results=K, include=[], **kwargs)
        return [int(i) for i in res["ids"][0]]


# -- measuring --------------------------------------------------------------------------------


def recall_at_k(
    data: Data, q: np.ndarray, got: list[int], truth: np.ndarray, mask: np.ndarray | None
) -> float:
    """Share of the true top k found. Ties count: a returned matching row as near as the k-th
    true neighbour is a right answer (generated sentences repeat, so real embeddings tie)."""
    expected = min(K, len(truth))
    if not expected:
        return 1.0
    kth = float(1.0 - data.vectors[truth[expected - 1]] @ q)
    good = [i for i in got if (mask is None or mask[i]) and float(1.0 - data.vectors[i] @ q) <= kth + 1e-6]
    return min(len(set(good)), expected) / expected


def measure(
    systems: list[Any],
    cell: Cell,
    limits: dict[str, int | None],
    explain: dict[str, int] | None = None,
    data: Data | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Each system's recall, rows and latency over the cell's queries (a system's first
    ``limits[name]`` of them, all when None). The systems take turns query by query, in a
    shuffled order, so the machine's noise hits them alike."""
    pairs = list(zip(cell.filters, cell.queries, strict=True))
    rng = np.random.default_rng(seed)
    found: dict[str, dict[str, list[float]]] = {
        s.name: {"lat": [], "recall": [], "rows": [], "short": []} for s in systems
    }
    for i, (f, q) in enumerate(pairs):
        truth = cell.truth[i]
        expected = min(K, len(truth))
        for j in rng.permutation(len(systems)):
            system = systems[j]
            limit = limits.get(system.name)
            if limit is not None and i >= limit:
                continue
            started = time.perf_counter()
            got = system.search(q, f)
            m = found[system.name]
            m["lat"].append(time.perf_counter() - started)
            m["rows"].append(len(got))
            m["short"].append(len(got) < expected)
            if data is None:
                m["recall"].append(len(set(got) & set(truth.tolist())) / expected if expected else 1.0)
            else:
                mask = None if f is None else f.mask & cell.alive
                m["recall"].append(recall_at_k(data, q, got, truth, mask))
    out: dict[str, dict[str, Any]] = {}
    for system in systems:
        m = found[system.name]
        out[system.name] = {
            "recall": float(np.mean(m["recall"])),
            "min_recall": float(np.min(m["recall"])),
            "rows": float(np.mean(m["rows"])),
            "short": int(sum(m["short"])),
            "p50_ms": float(np.percentile(m["lat"], 50) * 1000),
            "p95_ms": float(np.percentile(m["lat"], 95) * 1000),
        }
        n_explain = (explain or {}).get(system.name, 0)
        if n_explain:
            plans = Counter(system.explain(q, f) for f, q in pairs[:n_explain])
            out[system.name]["plans"] = dict(plans)
    return out


def warm_up(system: Any, data: Data, n: int) -> None:
    for q in data.queries[-n:]:
        system.search(q, None)


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.0f}")


def ratio(peer: float | None, ours: float | None) -> str:
    return "-" if not peer or not ours else f"{peer / ours:.1f}x"


def render(result: dict[str, Any]) -> str:
    systems = result["systems"]
    lines = [f"# Filtered similarity search: memorix-pg vs pgvector vs Chroma, {result['n']:,} memories", ""]
    lines += [f"- {k}: {v}" for k, v in result["meta"].items()]
    lines += ["", "## Load, delete, disk", ""]
    lines += [
        "| | " + " | ".join(systems) + " | memorix vs pgvector | memorix vs Chroma |",
        "|---" * (len(systems) + 3) + "|",
    ]
    load = result["load"]

    def rate(s: str) -> float | None:
        return result["n"] / load[s]["total"] if s in load else None

    def row(label: str, values: list[str], r1: str, r2: str) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + f" | {r1} | {r2} |")

    row(
        "bulk load incl. indexes (rows/s)",
        [f"{rate(s):,.0f}" if rate(s) else "-" for s in systems],
        ratio(rate("memorix-pg"), rate("pgvector")) if rate("pgvector") else "-",
        ratio(rate("memorix-pg"), rate("chroma")) if rate("chroma") else "-",
    )
    row("  seconds", [f"{load[s]['total']:.1f}" if s in load else "-" for s in systems], "", "")
    dele = result["delete"]
    row(
        f"delete 2/3 by filter (s, {dele.get('memorix-pg', {}).get('deleted', 0):,} rows)",
        [f"{dele[s]['seconds']:.2f}" if s in dele else "-" for s in systems],
        ratio(dele.get("pgvector", {}).get("seconds"), dele["memorix-pg"]["seconds"]),
        ratio(dele.get("chroma", {}).get("seconds"), dele["memorix-pg"]["seconds"]),
    )
    disk = result["disk_mb"]
    row(
        "disk size (MB)",
        [f"{disk[s]:.0f}" if s in disk else "-" for s in systems],
        ratio(disk.get("pgvector"), disk["memorix-pg"]),
        ratio(disk.get("chroma"), disk["memorix-pg"]),
    )
    for title, key in (("Search", "cells"), ("Right after deleting 2/3 (no VACUUM)", "after_delete")):
        lines += ["", f"## {title}", ""]
        lines += [
            "recall@10 / mean rows returned (short = queries with fewer than min(10, matches)) / p50 / p95 "
            "latency in ms; the last columns are the peers' p50 divided by memorix-pg's.",
            "",
        ]
        head = ["cell", "matches (mean)"]
        for s in systems:
            head += [f"{s} recall", "rows", "short", "p50", "p95"]
        head += ["memorix plan", "p50 vs pgvector", "p50 vs Chroma"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for cell in result[key]:
            vals = [cell["name"], f"{cell['matches']:,.0f}"]
            for s in systems:
                m = cell["results"].get(s)
                if m is None:
                    vals += ["-"] * 5
                else:
                    vals += [
                        f"{m['recall']:.3f}",
                        f"{m['rows']:.1f}",
                        str(m["short"]),
                        fmt_ms(m["p50_ms"]),
                        fmt_ms(m["p95_ms"]),
                    ]
            ours = cell["results"]["memorix-pg"]
            plans = ours.get("plans", {})
            vals.append(", ".join(f"{k} x{v}" for k, v in sorted(plans.items())) or "-")
            for peer in ("pgvector", "chroma"):
                m = cell["results"].get(peer)
                vals.append(ratio(m["p50_ms"], ours["p50_ms"]) if m else "-")
            lines.append("| " + " | ".join(vals) + " |")
    if "partial_index" in result:
        p = result["partial_index"]
        lines += [
            "",
            "## A partial HNSW index for one frequent filter value (scaling plan, step 1)",
            "",
            f"Filter {json.dumps(p['filter'])} ({p['matches']:,} matches); "
            f"index built in {p['build_s']:.1f} s.",
            "",
            "| | recall@10 | p50 ms |",
            "|---|---|---|",
            f"| hand SQL on the partial index (predicate inline) | {p['partial_recall']:.3f} | "
            f"{fmt_ms(p['partial_p50_ms'])} |",
            f"| memorix-pg planner (MemoryAPI.retrieve) | {p['planner_recall']:.3f} | "
            f"{fmt_ms(p['planner_p50_ms'])} |",
        ]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="memories (default 100,000; 5,000 with --real)")
    ap.add_argument("--queries", type=int, default=60, help="queries per cell")
    ap.add_argument("--real", action="store_true", help="MiniLM embeddings of generated sentences")
    ap.add_argument("--skip-chroma", action="store_true")
    ap.add_argument(
        "--partial-index",
        action="store_true",
        help="also time a partial HNSW index for one 1%% filter value (the scaling plan's first step)",
    )
    ap.add_argument("--explain", type=int, default=10, help="memorix plans recorded per cell")
    ap.add_argument(
        "--chroma-queries",
        type=int,
        default=20,
        help="queries per cell for Chroma (its filtered queries take 0.1-1 s)",
    )
    ap.add_argument(
        "--shared-buffers",
        default="1GB",
        help="shared_buffers of the temporary embedded server ('' keeps what memorix-pg sets for a new "
        "data dir: a quarter of the RAM, at most 1GB)",
    )
    ap.add_argument(
        "--precision",
        choices=("full", "half"),
        default="full",
        help="memorix-pg collection precision (half: vectors stored as halfvec)",
    )
    ap.add_argument("--out", default="search", help="results file stem in benchmarks/results")
    args = ap.parse_args()
    n = args.n if not args.real or args.n != 100_000 else 5_000
    started = time.perf_counter()

    # Enough queries for every cell, with spares for the warm-up.
    n_cells = 1 + 5 * len(SELECTIVITIES) + 6
    data = (real_data if args.real else synthetic_data)(n, args.queries * n_cells + 200)
    print(f"data: {n:,} x {DIM} ({data.kind}) in {time.perf_counter() - started:.1f} s", flush=True)
    cells = build_cells(data, args.queries)
    ground_truth(data, cells)

    result: dict[str, Any] = {"n": n, "load": {}, "delete": {}, "disk_mb": {}, "notes": []}
    systems: list[Any] = []
    with memorix_database() as (url, data_dir), chroma_client() as client:
        if url is None and data_dir is not None and args.shared_buffers:
            _set_shared_buffers(data_dir, args.shared_buffers)
        mx = Memorix(url, data, args.precision)
        systems.append(mx)
        pg = Pgvector(mx.url)
        systems.append(pg)
        views: list[Any] = []
        if not args.skip_chroma:
            systems.append(Chroma(client, _chroma_path(client)))
            views.append(ChromaIds(systems[-1]))
        for system in systems:
            t = time.perf_counter()
            result["load"][system.name] = system.load(data)
            print(f"{system.name}: loaded in {time.perf_counter() - t:.1f} s", flush=True)
        vacuum = {s.name: s.vacuum() for s in systems if hasattr(s, "vacuum")}
        for system in systems:
            warm_up(system, data, 200)
        import psycopg

        with psycopg.connect(mx.url, autocommit=True) as conn:
            settings = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]
                for name in (
                    "server_version",
                    "shared_buffers",
                    "work_mem",
                    "max_parallel_maintenance_workers",
                )
            }
            settings["pgvector"] = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()[0]

        result["cells"] = []
        for cell in cells:
            entry = {
                "name": cell.name,
                "family": cell.family,
                "selectivity": cell.selectivity,
                "matches": float(
                    np.mean([len(data) if f is None else int(f.mask.sum()) for f in cell.filters])
                ),
                "results": {},
            }
            # Chroma's filtered queries take 0.1-1 s: a few of them; its unfiltered ones, all.
            limits = {"chroma": None if cell.family == "none" else args.chroma_queries}
            measured = systems + (views if cell.family == "none" else [])
            entry["results"] = measure(measured, cell, limits, {mx.name: args.explain}, data)
            result["cells"].append(entry)
            m = entry["results"]["memorix-pg"]
            print(
                f"{cell.name:14} matches {entry['matches']:9,.0f}  "
                + "  ".join(
                    f"{s}: r={v['recall']:.3f} rows={v['rows']:.1f} p50={v['p50_ms']:.2f}"
                    for s, v in entry["results"].items()
                )
                + f"  plans={m.get('plans')}",
                flush=True,
            )
        for system in systems:
            result["disk_mb"][system.name] = system.disk_bytes() / 1e6
        if args.partial_index:
            result["partial_index"] = mx.partial_index(data, data.queries[-args.queries :])
            print("partial index:", result["partial_index"], flush=True)

        # Delete two thirds by filter, then search at once (no VACUUM).
        doomed = Filter(
            {"grp3": {"$in": [0, 1]}},
            {"grp3": {"$in": [0, 1]}},
            "metadata @> '{\"grp3\": 0}' OR metadata @> '{\"grp3\": 1}'",
            (),
            data.cols["grp3"] < 2,
        )
        for system in systems:
            seconds, deleted = system.delete(doomed)
            result["delete"][system.name] = {"seconds": seconds, "deleted": deleted}
        alive = ~doomed.mask
        after = [
            c
            for c in cells
            if c.family == "none"
            or (c.family in ("eq", "range", "and") and c.selectivity in (0.5, 0.1, 0.01))
        ]
        ground_truth(data, after, alive)
        result["after_delete"] = []
        for cell in after:
            entry = {
                "name": cell.name,
                "matches": float(
                    np.mean([int((alive if f is None else f.mask & alive).sum()) for f in cell.filters])
                ),
                "results": measure(
                    systems + (views if cell.family == "none" else []),
                    cell,
                    {"chroma": None if cell.family == "none" else args.chroma_queries},
                    {mx.name: args.explain},
                ),
            }
            result["after_delete"].append(entry)
            print(
                f"after delete {cell.name:14} "
                + "  ".join(
                    f"{s}: r={v['recall']:.3f} rows={v['rows']:.1f} short={v['short']} p50={v['p50_ms']:.2f}"
                    for s, v in entry["results"].items()
                ),
                flush=True,
            )
        pg.close()

    result["systems"] = [s.name for s in systems + views]
    result["meta"] = {
        **environment(),
        "memories": f"{n:,} x {DIM}-dim float32 unit vectors, {data.kind}",
        "memorix-pg precision": args.precision,
        "queries per cell": f"{args.queries} (Chroma: {args.chroma_queries} when filtered); the systems "
        "take turns query by query",
        "k": K,
        "database": "MEMORIX_DATABASE_URL"
        if os.environ.get("MEMORIX_DATABASE_URL")
        else "embedded server (temp MEMORIX_DATA_DIR)",
        **{f"postgres {k}": v for k, v in settings.items()},
        "VACUUM ANALYZE after load (s)": ", ".join(f"{k} {v:.1f}" for k, v in vacuum.items()),
        "command": "python benchmarks/search.py " + " ".join(sys.argv[1:]),
        "run time (s)": f"{time.perf_counter() - started:.0f}",
    }
    result["notes"] = [
        "Same data, queries and filters for all systems; embeddings given (no model in the timed path).",
        "Latency is per call from Python: memorix-pg through MemoryAPI.retrieve (its own transaction: "
        "pool checkout without a ping; one statement for a search that is one statement, with a session "
        "SET before it in the same pipeline when the connection holds other HNSW settings, else "
        "BEGIN, SET LOCAL, the search, COMMIT in one pipeline), pgvector as one psycopg "
        "execute on an open connection, Chroma through collection.query.",
        "Chroma's queries return documents, metadatas and distances (its default), as retrieve returns "
        "memories with their text, metadata and score; 'chroma (ids only)' queries the same collection "
        "with include=[], on the unfiltered cells: a lower bound that a memory API cannot reach, since "
        "a search must return the memories. pgvector returns ids (measured apart: id, metadata and "
        "distance cost it ~0.04 ms more at 100k).",
        "pgvector is used as most code does: default HNSW settings (ef_search 40), no iterative scan; its "
        "short results at selective filters are the post-filtering problem the memorix planner avoids.",
        "memorix probes a filter it has no estimate for: a sample of ~128-256 rows of the collection (a "
        "content-hash window) counted with and without the filter, which sets the path and ef_search; "
        "the estimate is cached per collection and filter (an unfiltered search needs none), and a walk "
        "is checked against ~1-2k sampled vectors held in memory (traps.py).",
        "The temporary embedded server runs with shared_buffers = --shared-buffers (default 1GB; the "
        "embedded default of 128MB holds less than the ~850 MB both Postgres tables and their indexes "
        "take, and reads through PostgreSQL 18's I/O workers then cost 2-4x on every query).",
        "Both Postgres tables are VACUUM ANALYZEd after loading (as autovacuum would soon do; it also "
        "merges the GIN pending list, which otherwise costs ~1-2 ms per filtered query); every system "
        "gets 200 warm-up searches.",
        "memorix plan: the path and ef_search (rounded down to 50) explain_retrieve reports for the "
        "cell's first queries, after the measured ones.",
        "Measured at 300k and the plan for 1M+ memories: benchmarks/prototypes/scaling.md.",
    ]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    md = render(result)
    (RESULTS_DIR / f"{args.out}.md").write_text(md)
    (RESULTS_DIR / f"{args.out}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(md)


def _set_shared_buffers(data_dir: Path, value: str) -> None:
    """Give the temporary embedded server a buffer pool that holds the working set (restart)."""
    import psycopg
    from psycopg import sql

    from memorix_pg.server import ensure_embedded_server, stop_embedded_server

    with psycopg.connect(ensure_embedded_server(data_dir), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(sql.Literal(value)))
    stop_embedded_server(data_dir)
    ensure_embedded_server(data_dir)


def _chroma_path(client: Any) -> Path | None:
    try:
        return Path(client.get_settings().persist_directory)
    except Exception:
        return None


if __name__ == "__main__":
    main()
