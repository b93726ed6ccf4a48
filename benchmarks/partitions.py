"""Time-partitioned memories against one table: cleanup by dropping a month, and search.

    python benchmarks/partitions.py [--n 1000000] [--months 12] [--queries 200]
                                    [--m M] [--ef-construction EF] [--history] [--out partitions]

Two databases on one embedded server (a temporary MEMORIX_DATA_DIR): one migrated with
``MEMORIX_TIME_PARTITIONS=month`` (migration 0011: ``memorix.memories`` partitioned by month of
``created_at``), one without (one table). Both get the same ``n`` memories: 384-dim clustered
unit vectors (benchmarks/common.py), ``created_at`` spread evenly over the ``months`` whole
months before the current one, and ``metadata.month`` = how many months back (0: the most
recent). The load is a binary COPY straight into ``memorix.memories`` (the partitioned side
makes its months first with ``memorix.ensure_month_partitions``), then the collection's HNSW
index is built on each side with the same ``m`` / ``ef_construction`` (default: what the
library picks for ``n`` rows), with ``maintenance_work_mem`` 8 GB.

Measured:

1. search: ``retrieve(top_k=10)`` unfiltered, and filtered to the most recent month
   (``{"month": 0}``), through the library's planner, ``--queries`` queries (data vectors with
   a little noise), the two sides interleaved query by query (alternating which goes first).
   Recall@10 against numpy brute force, p50 / p95 latency.
2. cleanup of the oldest month: ``cleanup(older_than=...)`` with the cutoff at that month's end.
   Partitioned: the month's partition is dropped (time, WAL bytes). One table: the same call is a
   DELETE (time, WAL bytes), then ``VACUUM memorix.memories`` (time, WAL bytes), since the dead
   rows and their index entries stay until a VACUUM removes them. A CHECKPOINT precedes each
   side. The history triggers are disabled for this phase on both sides (``--history`` keeps
   them: each removed memory then writes an event on both sides alike).

WAL bytes are ``pg_current_wal_lsn()`` differences around each step (the server is otherwise
idle). Each phase prints its progress and time. Results go to benchmarks/results/<out>.{md,json}.
It runs on an embedded server only (it disables triggers and drops partitions).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ResultTable, environment, memorix_database, set_history, synthetic_memories

SIDES = ("partitioned", "one table")
COLLECTION = "bench"
COPY_CHUNK = 50_000


def _log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


@contextmanager
def phase(name: str, totals: dict[str, float]) -> Iterator[None]:
    _log(f"{name} ...")
    start = time.perf_counter()
    yield
    totals[name] = time.perf_counter() - start
    _log(f"{name}: {totals[name]:.1f} s")


def _month_start(index: int) -> datetime:
    """The first instant (UTC) of month ``index`` (year * 12 + month - 1)."""
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def created_times(n: int, months: int) -> tuple[list[datetime], list[int], datetime]:
    """``created_at`` and months-back of each row, spread evenly over the ``months`` whole months
    before this one (an hour clear of each month's edges), and the end of the oldest month."""
    now = datetime.now(UTC)
    current = now.year * 12 + now.month - 1
    stamps: list[datetime] = []
    back: list[int] = []
    for i in range(n):
        k = 1 + i % months  # months back
        start, end = _month_start(current - k), _month_start(current - k + 1)
        span = (end - start) - timedelta(hours=2)
        position = (i // months) / max(1, (n + months - 1) // months)
        stamps.append(start + timedelta(hours=1) + span * position)
        back.append(k - 1)
    return stamps, back, _month_start(current - months + 1)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_databases(server_url: str) -> dict[str, str]:
    import psycopg

    from memorix_pg.migrate import upgrade

    urls = {}
    with psycopg.connect(server_url, autocommit=True) as conn:
        for side, name in zip(SIDES, ("bench_partitioned", "bench_one_table"), strict=True):
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
            urls[side] = _with_database(server_url, name)
    os.environ["MEMORIX_TIME_PARTITIONS"] = "month"
    try:
        upgrade(urls["partitioned"])
    finally:
        del os.environ["MEMORIX_TIME_PARTITIONS"]
    upgrade(urls["one table"])
    return urls




def collection_info(url: str) -> Any:
    """The benchmark collection's description, as the library reads it."""
    from memorix_pg.catalog import collection_infos
    from memorix_pg.database import get_engine

    with get_engine(url).connect() as conn:
        return next(i for i in collection_infos(conn) if i.name == COLLECTION)


def load(url: str, api: Any, data: Any, stamps: list[datetime], partitioned: bool) -> None:
    """Binary COPY of every row into the collection, its index dropped first."""
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg.types.json import Jsonb

    from memorix_pg.vector_index import drop_index_sql

    info = collection_info(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(drop_index_sql(info))
        if partitioned:
            conn.execute("SELECT memorix.ensure_month_partitions(%s, %s)", (min(stamps), max(stamps)))
    n = len(stamps)
    columns = "id, collection_id, text, embedding, metadata, content_hash, tenant, created_at, updated_at"
    types = ["text", "int8", "text", "vector", "jsonb", "bytea", "text", "timestamptz", "timestamptz"]
    with psycopg.connect(url) as conn:
        register_vector(conn)
        for start in range(0, n, COPY_CHUNK):
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY memorix.memories ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(types)
                for i in range(start, min(n, start + COPY_CHUNK)):
                    text = data.texts[i]
                    copy.write_row(
                        (
                            f"m{i}",
                            info.id,
                            text,
                            data.vectors[i],
                            Jsonb(data.metadatas[i]),
                            hashlib.sha256(text.encode()).digest(),
                            "",
                            stamps[i],
                            stamps[i],
                        )
                    )
            conn.commit()
            done = min(n, start + COPY_CHUNK)
            if done % (5 * COPY_CHUNK) == 0 or done == n:
                _log(f"  loaded {done:,} / {n:,}")


def build_index(url: str, info: Any, rows: int, m: int, ef_construction: int) -> None:
    """The collection's HNSW index (the library's definition and name), with the given graph."""
    import psycopg

    from memorix_pg.vector_index import create_index_sql, graph_for

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '8GB'")
        conn.execute("SET max_parallel_maintenance_workers = 2")
        statement = create_index_sql(info, rows=rows).as_string(conn)
        library_m, library_ef = graph_for(rows)
        if (m, ef_construction) != (library_m, library_ef):
            statement = statement.replace(
                f"WITH (m = {library_m}, ef_construction = {library_ef})",
                f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})",
            )
        conn.execute(statement.encode())
        conn.execute("ANALYZE memorix.memories")


def wal_lsn(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])


def sql_exec(url: str, statement: str) -> float:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        conn.execute(statement)
        return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="memories on each side (default 1,000,000)")
    parser.add_argument("--months", type=int, default=12, help="whole months they span (default 12)")
    parser.add_argument("--queries", type=int, default=200, help="search queries (default 200)")
    parser.add_argument("--m", type=int, default=None, help="HNSW m (default: the library's for --n rows)")
    parser.add_argument("--ef-construction", type=int, default=None, help="HNSW ef_construction (idem)")
    parser.add_argument("--history", action="store_true", help="keep the history triggers on during cleanup")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="partitions", help="results stem in benchmarks/results")
    args = parser.parse_args(argv)
    if os.environ.get("MEMORIX_DATABASE_URL"):
        print("partitions.py runs on an embedded server only; unset MEMORIX_DATABASE_URL", file=sys.stderr)
        return 2
    if args.months < 2:
        parser.error("--months must be at least 2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from memorix_pg import MemoryAPI
        from memorix_pg.database import resolve_database
        from memorix_pg.vector_index import graph_for
    m, ef_construction = graph_for(args.n)
    m = args.m or m
    ef_construction = args.ef_construction or ef_construction

    started = time.perf_counter()
    totals: dict[str, float] = {}
    with phase("generate", totals):
        data = synthetic_memories(args.n, seed=args.seed)
        stamps, back, oldest_end = created_times(args.n, args.months)
        for meta, k in zip(data.metadatas, back, strict=True):
            meta["month"] = k
        months_back = np.array(back)
        oldest_rows = int((months_back == args.months - 1).sum())
        rng = np.random.default_rng(args.seed + 1)
        picks = rng.integers(0, args.n, args.queries)
        queries = data.vectors[picks] + 0.1 * rng.standard_normal(
            (args.queries, data.vectors.shape[1])
        ).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    rows: list[list[Any]] = []
    with memorix_database() as (_url, _data_dir):
        server = resolve_database(None).url
        urls = create_databases(server)
        apis = {
            side: MemoryAPI(embedder="hash", collection_name=COLLECTION, database_url=url)
            for side, url in urls.items()
        }
        for side, url in urls.items():
            info = collection_info(url)
            set_history(url, False)  # the load writes no events: neither side is measured on them
            with phase(f"load {side}", totals):
                load(url, apis[side], data, stamps, side == "partitioned")
            set_history(url, True)
            with phase(f"index build {side} (m {m}, ef_construction {ef_construction})", totals):
                build_index(url, info, args.n, m, ef_construction)
        # Fresh objects: the planner sees the built indexes.
        apis = {
            side: MemoryAPI(embedder="hash", collection_name=COLLECTION, database_url=url)
            for side, url in urls.items()
        }

        with phase("brute force", totals):
            truth = []
            truth_recent = []
            recent = np.flatnonzero(months_back == 0)
            for q in queries:
                scores = data.vectors @ q
                truth.append({f"m{i}" for i in np.argsort(-scores, kind="stable")[:10]})
                order = recent[np.argsort(-scores[recent], kind="stable")[:10]]
                truth_recent.append({f"m{i}" for i in order})

        searches: dict[tuple[str, str], list[float]] = {}
        recalls: dict[tuple[str, str], list[float]] = {}
        paths: dict[tuple[str, str], str] = {}
        kinds = {"unfiltered": None, "one recent month": {"month": 0}}
        with phase(f"search ({args.queries} queries x 2 kinds x 2 sides)", totals):
            for kind, flt in kinds.items():
                for side, api in apis.items():
                    api.retrieve(None, top_k=10, filter=flt, embedding=queries[0])  # warm
                    paths[(side, kind)] = api.explain_retrieve(
                        None, top_k=10, filter=flt, embedding=queries[0]
                    ).path
            for j, q in enumerate(queries):
                order = SIDES if j % 2 == 0 else SIDES[::-1]
                for kind, flt in kinds.items():
                    expected = truth[j] if flt is None else truth_recent[j]
                    for side in order:
                        start = time.perf_counter()
                        found = apis[side].retrieve(None, top_k=10, filter=flt, embedding=q)
                        searches.setdefault((side, kind), []).append(time.perf_counter() - start)
                        recalls.setdefault((side, kind), []).append(
                            len({x.id for x in found} & expected) / 10
                        )
                if (j + 1) % 50 == 0:
                    _log(f"  {j + 1} / {args.queries} queries")
        for kind in kinds:
            base = statistics.median(searches[("one table", kind)])
            for side in SIDES:
                lat = searches[(side, kind)]
                rows.append(
                    [
                        f"search top-10, {kind}",
                        side,
                        paths[(side, kind)],
                        round(float(np.mean(recalls[(side, kind)])), 4),
                        round(percentile(lat, 50) * 1000, 2),
                        round(percentile(lat, 95) * 1000, 2),
                        round(statistics.median(lat) / base, 2),
                        "",
                    ]
                )

        cutoff_age = datetime.now(UTC) - oldest_end
        cleanup: dict[str, dict[str, float]] = {}
        for side, url in urls.items():
            if not args.history:
                set_history(url, False)
            sql_exec(url, "CHECKPOINT")
            with phase(f"cleanup {side}", totals):
                before = wal_lsn(url)
                start = time.perf_counter()
                removed = apis[side].cleanup(older_than=cutoff_age)
                took = time.perf_counter() - start
                after = wal_lsn(url)
                cleanup[side] = {"removed": removed, "seconds": took, "wal": after - before}
                if side == "one table":
                    vacuum = sql_exec(url, "VACUUM memorix.memories")
                    cleanup[side].update(vacuum_seconds=vacuum, vacuum_wal=wal_lsn(url) - after)
            if not args.history:
                set_history(url, True)
            assert removed == oldest_rows, (side, removed, oldest_rows)
        drop, one = cleanup["partitioned"], cleanup["one table"]
        one_total = one["seconds"] + one["vacuum_seconds"]
        one_wal = one["wal"] + one["vacuum_wal"]
        rows.append(
            [
                "cleanup oldest month: drop",
                "partitioned",
                "",
                "",
                round(drop["seconds"] * 1000, 2),
                "",
                "",
                drop["wal"],
            ]
        )
        rows.append(
            [
                "cleanup oldest month: DELETE",
                "one table",
                "",
                "",
                round(one["seconds"] * 1000, 2),
                "",
                "",
                one["wal"],
            ]
        )
        rows.append(
            [
                "cleanup oldest month: VACUUM",
                "one table",
                "",
                "",
                round(one["vacuum_seconds"] * 1000, 2),
                "",
                "",
                one["vacuum_wal"],
            ]
        )
        ratios = (
            f"cleanup: DELETE + VACUUM took {one_total / max(drop['seconds'], 1e-9):.0f}x the drop's time "
            f"and wrote {one_wal:,} WAL bytes against {drop['wal']:,}"
        )
        _log(ratios)
        for api in apis.values():
            api.close()

    total = time.perf_counter() - started
    table = ResultTable(
        title=f"Time partitions vs one table: {args.n:,} memories over {args.months} months",
        columns=[
            "measure",
            "side",
            "search path",
            "recall@10",
            "p50 / time ms",
            "p95 ms",
            "p50 ratio to one table",
            "WAL bytes",
        ],
        meta={
            **environment(),
            "memories": f"{args.n:,} x 384-dim float32 (clustered, unit); {oldest_rows:,} in the oldest",
            "hnsw": f"m {m}, ef_construction {ef_construction} on both sides",
            "queries": f"{args.queries}, interleaved (alternating which side goes first)",
            "history during cleanup": "on" if args.history else "off (triggers disabled on both sides)",
            "phases (s)": ", ".join(f"{k} {v:.1f}" for k, v in totals.items()),
            "total": f"{total:.0f} s",
            "command": "python benchmarks/partitions.py " + " ".join(sys.argv[1:] if argv is None else argv),
        },
        notes=[
            ratios,
            "Search goes through the library's planner on both sides; 'search path' is its choice "
            "for the first query. On the partitioned side an HNSW walk is a Merge Append of each "
            "month's index.",
            "The filtered search keeps metadata.month = 0 (the most recent month); the library's "
            "filters do not express created_at.",
        ],
    )
    table.rows = rows
    md, js = table.write(args.out)
    print()
    print(table.text())
    print(f"\nwrote {md} and {js} ({total:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
