"""What a call costs beyond its own SQL: memorix-pg (sync and async) against the same plan
written by hand with psycopg (autocommit, prepared statements), on one server, interleaved.

    .venv/bin/python benchmarks/overhead.py --n 20000
    .venv/bin/python benchmarks/overhead.py --n 100000 --out overhead-100k

Calls: get by id, count (10% filter), delete by id, store (one memory, embedding given), and
retrieve unfiltered / 10% / 1% / 0.1%. Each repetition runs every call once on every side, in a
shuffled order, so the machine's noise hits all sides alike. Then: throughput of 1, 8 and 32
concurrent retrieves (async tasks against the sync API on threads), text ingest through the
real MiniLM against the embedder alone, and a vector load (index included) against
hand-written COPY + CREATE INDEX with the same m / ef_construction.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, LiteralString

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.types.json import Jsonb

from memorix_pg import AsyncMemoryAPI, MemoryAPI
from memorix_pg.vector_index import graph_for

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, ResultTable, environment, memorix_database

DIM = 384


def dataset(n: int, seed: int = 0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 64, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    metas = [{"b": f"p{i % 10}", "c": f"q{i % 100}", "d": f"r{i % 1000}"} for i in range(n)]
    return vectors, metas


class HandWritten:
    """The plans the library runs, typed out with psycopg: what a careful user would write."""

    def __init__(self, url: str, cid: int) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        register_vector(self.conn)
        self.conn.execute("SET plan_cache_mode = force_custom_plan")

        parts = {
            "cid": sql.Literal(cid),
            "dim": sql.Literal(DIM),
            "live": sql.SQL(
                "collection_id = {} AND tenant = '' AND (expires_at IS NULL OR expires_at > now())"
            ).format(sql.Literal(cid)),
            "columns": sql.SQL("m.id, m.text, m.metadata, m.created_at"),
            "filter": sql.SQL(""),
        }

        def statement(text: LiteralString, **more: sql.Composable) -> bytes:
            return sql.SQL(text).format(**{**parts, **more}).as_bytes(self.conn)

        self.get_sql = statement("SELECT {columns} FROM memorix.memories m WHERE {live} AND id = %s")
        self.count_sql = statement("SELECT count(*) FROM memorix.memories WHERE {live} AND metadata @> %s")
        self.delete_sql = statement("DELETE FROM memorix.memories WHERE collection_id = {cid} AND id = %s")
        self.store_sql = statement(
            "INSERT INTO memorix.memories (id, collection_id, text, embedding, metadata, content_hash) "
            "VALUES (%s, {cid}, %s, %s, %s, %s)"
        )
        walk: LiteralString = (
            "SELECT {columns}, n.d FROM (SELECT id, d FROM "
            "(SELECT id, embedding::vector({dim}) <=> %(q)s AS d "
            "FROM memorix.memories WHERE {live} {filter} ORDER BY embedding::vector({dim}) <=> %(q)s "
            "LIMIT 40) w ORDER BY d + 0 LIMIT 10) n "
            "JOIN memorix.memories m ON m.collection_id = {cid} AND m.tenant = '' AND m.id = n.id "
            "ORDER BY n.d"
        )
        self.direct_sql = statement(
            "SELECT id, text, metadata, created_at, embedding::vector({dim}) <=> %(q)s AS d "
            "FROM memorix.memories WHERE {live} ORDER BY embedding::vector({dim}) <=> %(q)s LIMIT 10"
        )
        self.walk_filtered_sql = statement(walk, filter=sql.SQL("AND metadata @> %(doc)s"))
        self.exact_sql = statement(
            "SELECT {columns}, n.d FROM (SELECT id, embedding::vector({dim}) <=> %(q)s AS d "
            "FROM memorix.memories WHERE {live} AND metadata @> %(doc)s OFFSET 0) n "
            "JOIN memorix.memories m ON m.collection_id = {cid} AND m.tenant = '' AND m.id = n.id "
            "ORDER BY n.d LIMIT 10"
        )

    def get(self, row_id: str) -> Any:
        return self.conn.execute(self.get_sql, [row_id], prepare=True).fetchall()

    def count(self, doc: dict[str, Any]) -> Any:
        return self.conn.execute(self.count_sql, [Jsonb(doc)], prepare=True).fetchone()

    def delete(self, row_id: str) -> Any:
        return self.conn.execute(self.delete_sql, [row_id], prepare=True).rowcount

    def store(self, text: str, vector: np.ndarray) -> Any:
        params = [str(uuid.uuid4()), text, vector, Jsonb({}), b"x"]
        return self.conn.execute(self.store_sql, params, prepare=True).rowcount

    def walk(self, q: np.ndarray, doc: dict[str, Any] | None, ef: int) -> Any:
        """Unfiltered: the index's first 10 rows. Filtered: an iterative walk fetching 40."""
        with self.conn.pipeline():
            self.conn.execute(b"BEGIN")
            self.conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(ef)))
            if doc is None:
                cur = self.conn.execute(self.direct_sql, {"q": q}, prepare=True)
            else:
                self.conn.execute(b"SET LOCAL hnsw.iterative_scan = relaxed_order")
                cur = self.conn.execute(self.walk_filtered_sql, {"q": q, "doc": Jsonb(doc)}, prepare=True)
            self.conn.execute(b"COMMIT")
        return cur.fetchall()

    def exact(self, q: np.ndarray, doc: dict[str, Any]) -> Any:
        return self.conn.execute(self.exact_sql, {"q": q, "doc": Jsonb(doc)}, prepare=True).fetchall()


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def latency(
    args: argparse.Namespace, given_url: str | None
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    drawn, metas = dataset(args.n + 4 * args.reps)
    vectors, fresh, metas = drawn[: args.n], drawn[args.n :], metas[: args.n]
    sync = MemoryAPI(embedder="hash", collection_name="overhead", database_url=given_url)
    url = sync.database_url
    ids = sync.store_batch([f"memory {i}" for i in range(args.n)], metas, embeddings=vectors)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE memorix.memories")
    loop = asyncio.new_event_loop()
    aio = AsyncMemoryAPI(embedder="hash", collection_name="overhead", database_url=url)
    loop.run_until_complete(aio.open())
    hand = HandWritten(url, sync.collection_id)
    rng = np.random.default_rng(1)
    queries = vectors[rng.integers(0, args.n, 64)] + 0.05
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    filters = {"10%": {"b": "p3"}, "1%": {"c": "q7"}, "0.1%": {"d": "r11"}}
    plans = {name: sync.explain_retrieve(None, 10, f, embedding=queries[0]) for name, f in filters.items()}
    plans["unfiltered"] = sync.explain_retrieve(None, 10, None, embedding=queries[0])
    # Rows to delete, and the rows that stores write, get vectors of their own drawn like the
    # data's: hundreds of copies of one vector would make the HNSW graph degenerate (copies link
    # only to each other and trap walks), which is not what these calls are here to measure.
    extra = sync.store_batch([f"spare {i}" for i in range(3 * args.reps)], embeddings=fresh[: 3 * args.reps])
    stored = fresh[3 * args.reps :]
    spare = {
        "sync": extra[: args.reps],
        "async": extra[args.reps : 2 * args.reps],
        "hand": extra[2 * args.reps :],
    }

    def awaited(call: Any) -> float:
        """The time the awaited call takes inside the running loop (an async application awaits it
        there: starting the loop for each call is the harness's cost, not the library's)."""

        async def timed() -> float:
            start = time.perf_counter()
            await call
            return time.perf_counter() - start

        return loop.run_until_complete(timed())

    def hand_retrieve(name: str, q: np.ndarray) -> Any:
        plan = plans[name]
        doc = filters.get(name)
        if plan.path == "exact" and doc is not None:
            return hand.exact(q, doc)
        # An unfiltered plan reads "exact" only when its probe query was trapped: the walk it is.
        return hand.walk(q, doc, plan.ef_search or 100)

    calls: dict[str, dict[str, Callable[[int], Any]]] = {
        "get(id)": {
            "sync": lambda i: sync.get(ids[i]),
            "async": lambda i: awaited(aio.get(ids[i])),
            "hand": lambda i: hand.get(ids[i]),
        },
        "count 10%": {
            "sync": lambda i: sync.count({"b": "p3"}),
            "async": lambda i: awaited(aio.count({"b": "p3"})),
            "hand": lambda i: hand.count({"b": "p3"}),
        },
        "delete(id)": {
            "sync": lambda i: sync.delete(spare["sync"][i]),
            "async": lambda i: awaited(aio.delete(spare["async"][i])),
            "hand": lambda i: hand.delete(spare["hand"][i]),
        },
        "store (embedding given)": {
            "sync": lambda i: sync.store_batch([f"new {i}"], embeddings=stored[i : i + 1]),
            "async": lambda i: awaited(aio.store_batch([f"new {i}"], embeddings=stored[i : i + 1])),
            "hand": lambda i: hand.store(f"new {i}", stored[i]),
        },
    }
    for name in ("unfiltered", "10%", "1%", "0.1%"):
        f = filters.get(name)
        calls[f"retrieve {name} ({plans[name].path})"] = {
            "sync": lambda i, f=f: sync.retrieve(None, 10, f, embedding=queries[i % 64]),
            "async": lambda i, f=f: awaited(aio.retrieve(None, 10, f, embedding=queries[i % 64])),
            "hand": lambda i, name=name: hand_retrieve(name, queries[i % 64]),
        }
    timings: dict[tuple[str, str], list[float]] = {
        (c, s): [] for c in calls for s in ("sync", "async", "hand")
    }
    for c, sides in calls.items():  # warm-up: statements prepared, caches filled
        for fn in sides.values():
            if not c.startswith("delete"):
                fn(0)
    walks_at: dict[str, list[int]] = {name: [] for name in plans}
    for i in range(args.reps):
        # The same plan on both sides: the library's planner raises its ef_search floor when it
        # sees its walks miss (planner.py), so the hand-written walk takes the ef that the library
        # would take for this call, read (untimed) before the calls.
        for name in plans:
            plans[name] = sync.explain_retrieve(None, 10, filters.get(name), embedding=queries[i % 64])
            ef = plans[name].ef_search
            if ef:
                walks_at[name].append(ef)
        for c, sides in calls.items():
            order = list(sides)
            rng.shuffle(order)
            for side in order:
                start = time.perf_counter()
                inside = sides[side](i)
                elapsed = time.perf_counter() - start
                timings[(c, side)].append(inside if side == "async" else elapsed)
    rows = []
    for c in calls:
        hand50 = p(timings[(c, "hand")], 50)
        row = {"call": c, "hand p50": round(hand50, 3), "hand p95": round(p(timings[(c, "hand")], 95), 3)}
        for side in ("sync", "async"):
            s50 = p(timings[(c, side)], 50)
            row[f"{side} p50"] = round(s50, 3)
            row[f"{side} p95"] = round(p(timings[(c, side)], 95), 3)
            row[f"{side}/hand"] = round(s50 / hand50, 2)
            row[f"{side} within 1.25x+0.2ms"] = s50 <= 1.25 * hand50 + 0.2
        rows.append(row)
    for name, efs in walks_at.items():
        for row in rows:
            if str(row["call"]).startswith(f"retrieve {name} ") and efs:
                row["ef_search (min-max)"] = f"{min(efs)}-{max(efs)}"
    rates = throughput(sync, aio, loop, queries, args.seconds)
    loop.close()
    return rows, rates, url


def throughput(
    sync: MemoryAPI,
    aio: AsyncMemoryAPI,
    loop: asyncio.AbstractEventLoop,
    queries: np.ndarray,
    seconds: float,
    rounds: int = 3,
) -> dict[str, Any]:
    """Unfiltered retrieves per second with 1, 8 and 32 in flight: async tasks vs threads.

    Every cell runs ``rounds`` times, the cells taking turns round by round, and reports its
    median: the planner's ``ef_search`` floor may move during the run (it follows the walks'
    measured recall), and the machine's noise drifts; both then hit every cell alike."""
    postmaster = _postmaster(sync.database_url)
    rates: dict[str, list[float]] = {}
    cpu_per_call: list[tuple[float, float]] = []
    # The default pool opens up to 15 connections; on a 2-core server 15 walks at once thrash
    # its caches. A pool sized by the usual rule, 2 x cores + 1 (the server's cores: it runs here).
    sized = 2 * (os.cpu_count() or 1) + 1
    sized_api = AsyncMemoryAPI(
        embedder="hash",
        collection_name=aio.collection_name,
        database_url=sync.database_url,
        pool_size=sized,
        max_overflow=0,
    )
    loop.run_until_complete(sized_api.open())

    def run_async(width: int, api: AsyncMemoryAPI = aio) -> int:
        async def tasks() -> int:
            done = 0
            end = time.perf_counter() + seconds

            async def worker(k: int) -> None:
                nonlocal done
                while time.perf_counter() < end:
                    await api.retrieve(None, 10, embedding=queries[(done + k) % 64])
                    done += 1

            await asyncio.gather(*(worker(k) for k in range(width)))
            return done

        return loop.run_until_complete(tasks())

    def run_threads(width: int) -> int:
        end = time.perf_counter() + seconds

        def thread_worker(k: int) -> int:
            n = 0
            while time.perf_counter() < end:
                sync.retrieve(None, 10, embedding=queries[(n + k) % 64])
                n += 1
            return n

        with ThreadPoolExecutor(width) as pool:
            return sum(pool.map(thread_worker, range(width)))

    for _ in range(rounds):
        for width in (1, 8, 32):
            cpu = time.process_time(), _server_cpu_seconds(postmaster)
            calls = run_async(width)
            rates.setdefault(f"async x{width}/s", []).append(calls / seconds)
            if width == 1:
                # What one call costs the 2 shared cores, client and server: no number of tasks
                # can run more calls a second than cores / that, so x32 / x1 is bounded by it.
                client, server = time.process_time() - cpu[0], _server_cpu_seconds(postmaster) - cpu[1]
                cpu_per_call.append((client / calls, server / calls))
            rates.setdefault(f"threads x{width}/s", []).append(run_threads(width) / seconds)
            if width == 32:
                rates.setdefault("async x32/s, sized pool", []).append(run_async(32, sized_api) / seconds)
    loop.run_until_complete(sized_api.close())
    out: dict[str, Any] = {"rounds": rounds}
    for width in (1, 8, 32):
        for side in ("async", "threads"):
            out[f"{side} x{width}/s"] = round(statistics.median(rates[f"{side} x{width}/s"]), 1)
    client = statistics.median(c for c, _ in cpu_per_call)
    server = statistics.median(s for _, s in cpu_per_call)
    out["client cpu ms/call"] = round(1000 * client, 3)
    out["server cpu ms/call"] = round(1000 * server, 3) if postmaster else None
    if postmaster:
        bound = (os.cpu_count() or 1) / (client + server)
        out["bound of x32 / x1 (cores / cpu per call)"] = round(bound / out["async x1/s"], 2)
    out["async x32 / x1"] = round(out["async x32/s"] / out["async x1/s"], 2)
    out["sized pool (pool_size, no overflow)"] = sized
    out["async x32/s, sized pool"] = round(statistics.median(rates["async x32/s, sized pool"]), 1)
    out["async x32 / x1, sized pool"] = round(out["async x32/s, sized pool"] / out["async x1/s"], 2)
    return out


def _postmaster(url: str) -> int | None:
    """The pid of the server's postmaster when it runs on this machine (/proc shows it), else None."""
    with psycopg.connect(url) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    try:
        text = Path(f"/proc/{backend}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[1])


def _server_cpu_seconds(postmaster: int | None) -> float:
    """CPU time used so far by the server's processes: the postmaster's children (0.0 without one)."""
    if postmaster is None:
        return 0.0
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == postmaster or stat.parent.name == str(postmaster):
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def ingest(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    """Texts through the real MiniLM vs the embedder alone; vectors vs hand-written COPY + index."""
    from memorix_pg.embedders import SentenceTransformerEmbedder

    words = "coffee tea meeting budget travel paris berlin deadline report postgres vector memory".split()
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(words, 12)) + f" #{i}" for i in range(args.texts)]
    embedder = SentenceTransformerEmbedder()
    embedder.embed(texts[:64])  # loaded (and exported) before timing
    rows: list[dict[str, Any]] = []
    alone, through, database = [], [], []
    for r in range(args.rounds):
        start = time.perf_counter()
        embedded = embedder.embed(texts)
        alone.append(time.perf_counter() - start)
        api = MemoryAPI(embedder=embedder, collection_name=f"ingest-{r}", database_url=url, cache_size=0)
        start = time.perf_counter()
        api.store_batch(texts)
        through.append(time.perf_counter() - start)
        # The database's share alone (the same rows, vectors given): on a machine whose cores the
        # embedder keeps busy, it cannot overlap, so a / (a + d) bounds the ratio.
        api = MemoryAPI(embedder=embedder, collection_name=f"ingest-db-{r}", database_url=url, cache_size=0)
        start = time.perf_counter()
        api.store_batch(texts, embeddings=embedded)
        database.append(time.perf_counter() - start)
    a_s, t_s, d_s = (statistics.median(x) for x in (alone, through, database))
    rows.append(
        {
            "call": f"text ingest, {args.texts} texts",
            "embedder alone texts/s": round(args.texts / a_s, 1),
            "store_batch texts/s": round(args.texts / t_s, 1),
            "ratio": round(a_s / t_s, 2),
            "database alone s": round(d_s, 2),
            "bound without overlap": round(a_s / (a_s + d_s), 2),
        }
    )
    vectors, metas = dataset(args.load)
    hand_s, same_s, lib_s = [], [], []
    m, ef_construction = graph_for(args.load)
    for r in range(args.rounds):
        start = time.perf_counter()
        MemoryAPI(embedder="hash", collection_name=f"load-{r}", database_url=url).store_batch(
            [f"m{i}" for i in range(args.load)], metas, embeddings=vectors
        )
        lib_s.append(time.perf_counter() - start)
        hand_s.append(_hand_load(url, f"hand_load_{r}", vectors, metas, m, ef_construction))
        # The same work on memorix-pg's own table (its btree, GIN and full-text indexes are
        # maintained per row), index built CONCURRENTLY as the library must (other collections
        # keep writing): what is left between this and the library is the library's own cost.
        target = MemoryAPI(embedder="hash", collection_name=f"same-{r}", database_url=url)
        same_s.append(_same_table_load(url, target.collection_id, vectors, metas, m, ef_construction))
    h, same, lb = (args.load / statistics.median(x) for x in (hand_s, same_s, lib_s))
    rows.append(
        {
            "call": f"vector load, {args.load} rows with index",
            "hand COPY+INDEX rows/s": round(h, 1),
            "same table COPY+INDEX rows/s": round(same, 1),
            "store_batch rows/s": round(lb, 1),
            "ratio": round(lb / h, 2),
            "ratio to same table": round(lb / same, 2),
        }
    )
    return rows


def _hand_load(
    url: str, name: str, vectors: np.ndarray, metas: list[dict[str, Any]], m: int, ef_construction: int
) -> float:
    """COPY into a table of its own (uuid key, no other index), then CREATE INDEX: seconds."""
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        table = sql.Identifier(name)
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id uuid PRIMARY KEY, text text, embedding vector({}), metadata jsonb)"
            ).format(table, sql.Literal(DIM))
        )
        copy_sql = sql.SQL("COPY {} (id, text, embedding, metadata) FROM STDIN (FORMAT BINARY)").format(table)
        with conn.cursor().copy(copy_sql) as copy:
            copy.set_types(["uuid", "text", "vector", "jsonb"])
            for i in range(len(vectors)):
                copy.write_row((uuid.uuid4(), f"m{i}", vectors[i], Jsonb(metas[i])))
        conn.execute(b"SET maintenance_work_mem = '1GB'")
        conn.execute(
            sql.SQL(
                "CREATE INDEX ON {} USING hnsw (embedding vector_cosine_ops) "
                "WITH (m = {}, ef_construction = {})"
            ).format(table, sql.Literal(m), sql.Literal(ef_construction))
        )
    return time.perf_counter() - start


def _same_table_load(
    url: str, cid: int, vectors: np.ndarray, metas: list[dict[str, Any]], m: int, ef_construction: int
) -> float:
    """COPY into memorix.memories for collection ``cid``, then its partial HNSW index built
    CONCURRENTLY and ANALYZE, written by hand: seconds."""
    with psycopg.connect(url, autocommit=True) as conn:  # the collection's empty index, as a load drops it
        conn.execute(
            sql.SQL("DROP INDEX memorix.{}").format(sql.Identifier(f"memories_embedding_hnsw_{cid}"))
        )
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        columns = "id, collection_id, text, embedding, metadata, content_hash, created_at, updated_at"
        copy_sql = sql.SQL("COPY memorix.memories (" + columns + ") FROM STDIN (FORMAT BINARY)")
        now = conn.execute(b"SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        with conn.transaction(), conn.cursor().copy(copy_sql) as copy:
            copy.set_types(["text", "int8", "text", "vector", "jsonb", "bytea", "timestamptz", "timestamptz"])
            for i in range(len(vectors)):
                text = f"m{i}"
                copy.write_row(
                    (str(uuid.uuid4()), cid, text, vectors[i], Jsonb(metas[i]), text.encode(), now, now)
                )
        conn.execute(b"SET maintenance_work_mem = '1GB'")
        conn.execute(
            sql.SQL(
                "CREATE INDEX CONCURRENTLY {} ON memorix.memories "
                "USING hnsw ((embedding::vector({})) vector_cosine_ops) "
                "WITH (m = {}, ef_construction = {}) WHERE collection_id = {}"
            ).format(sql.Identifier(f"hand_same_{cid}"), *map(sql.Literal, (DIM, m, ef_construction, cid)))
        )
        conn.execute(b"ANALYZE memorix.memories")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="memories in the collection")
    parser.add_argument("--reps", type=int, default=300, help="calls per side per call kind")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per throughput cell")
    parser.add_argument("--texts", type=int, default=3000, help="texts for the ingest comparison")
    parser.add_argument("--load", type=int, default=20_000, help="rows for the vector load comparison")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each ingest comparison")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--out", default="overhead", help="results file name (without extension)")
    args = parser.parse_args()
    with memorix_database() as (given_url, _):
        rows, rates, url = latency(args, given_url)
        loads = [] if args.skip_ingest else ingest(args, url)
    meta = {**environment(), **vars(args)}
    tables = [_table(f"Call overhead at {args.n:,} memories (ms; ratios of p50s)", rows, meta)]
    tables.append(_table("Unfiltered retrieves per second", [rates], {}))
    if loads:
        tables += [_table("Ingest", [row], {}) for row in loads]
    RESULTS = [t.markdown() for t in tables]
    for t in tables:
        print(t.text(), "\n")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{args.out}.md").write_text("\n".join(RESULTS))


def _table(title: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> ResultTable:
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return ResultTable(title, columns, [[r.get(c) for c in columns] for r in rows], meta=meta)


if __name__ == "__main__":
    main()
