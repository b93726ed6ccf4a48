"""Trapped queries: recall@10 of unfiltered searches over clustered data, build after build.

A parallel HNSW build is not deterministic: the same rows give a well-connected graph in one
build and, in the next, one where a greedy walk from the entry point ends in the wrong cluster
and returns ten wrong memories. This benchmark loads each data shape once per size, rebuilds the
collection's HNSW index ``--builds`` times (``REINDEX``: an independent parallel build each time)
and after each build runs ``--queries`` searches twice, interleaved: with the planner's trap
check on (today's planner) and off (the walk's answer as it comes). Ground truth is brute force
in numpy over the stored vectors.

Shapes:
- ``clusters``: 100 centres, Gaussian noise 0.35 per dimension (the issue's data);
- ``tight``: many tight clusters (1,000 centres, noise 0.25);
- ``broad``: few broad ones (8 centres, noise 1.0);
- ``minilm``: real MiniLM embeddings of real text (docstrings and comments of the installed
  Python packages, deduplicated), queried with held-out sentences. Embedded once and cached.

Queries for the synthetic shapes are stored vectors plus noise (0.01 per dimension), normalised.
A result counts as found when it is at least as similar as the true 10th (ties are not misses).

    .venv/bin/python benchmarks/recall.py --sizes 10000 20000 100000 --builds 5 --queries 1000

``--ef 100 200 400`` runs each build's queries at those fixed ``ef_search`` values instead of the
planner's: what recall costs in latency on a shape.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ResultTable, environment, memorix_database

K = 10
DIM = 384
CACHE = Path(os.environ.get("MEMORIX_BENCH_CACHE", Path.home() / ".cache" / "memorix-pg-bench"))


@dataclass
class Shape:
    name: str
    vectors: np.ndarray  # (n, DIM) unit rows, stored
    queries: np.ndarray  # (q, DIM) unit rows


def clustered(name: str, n: int, n_queries: int, centres: int, noise: float, seed: int) -> Shape:
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, DIM)).astype(np.float32)
    vectors = middle[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    picked = vectors[rng.integers(0, n, n_queries)]
    queries = picked + 0.01 * rng.standard_normal(picked.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return Shape(name, vectors, queries)


def _sentences(limit: int) -> list[str]:
    """Docstrings and comment lines of the installed packages: real English about real code."""
    import sysconfig

    root = Path(sysconfig.get_paths()["purelib"])
    seen: set[str] = set()
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
            continue
        texts = [
            ast.get_docstring(node) or ""
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        texts += [line.strip()[1:] for line in source.splitlines() if line.strip().startswith("# ")]
        for text in texts:
            for part in text.replace("\n\n", "\n").split("\n"):
                part = " ".join(part.split())
                if 40 <= len(part) <= 300 and part not in seen and any(c.isalpha() for c in part):
                    seen.add(part)
                    out.append(part)
        if len(out) >= limit:
            break
    return out[:limit]


MINILM_ROWS = 101_000  # embedded once; every size takes its rows and queries from these


def minilm(n: int, n_queries: int, seed: int) -> Shape:
    total = max(n + n_queries, MINILM_ROWS)
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"minilm-{total}.npy"
    if cached.exists():
        everything = np.load(cached)
    else:
        from memorix_pg import MemoryAPI  # noqa: F401  (the library's embedder, as users get it)
        from memorix_pg.embedders import resolve_embedder

        texts = _sentences(total)
        if len(texts) < total:
            raise SystemExit(f"only {len(texts)} sentences found for {total}")
        started = time.perf_counter()
        everything = np.asarray(resolve_embedder("sentence-transformers").embed(texts), dtype=np.float32)
        print(f"embedded {total} sentences in {time.perf_counter() - started:.0f} s", flush=True)
        np.save(cached, everything)
    rng = np.random.default_rng(seed)
    order = rng.permutation(total)[: n + n_queries]
    vectors = everything[order[:n]]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = everything[order[n:]]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return Shape("minilm", vectors, queries)


def make_shape(name: str, n: int, n_queries: int) -> Shape:
    if name == "clusters":
        return clustered(name, n, n_queries, 100, 0.35, seed=n)
    if name == "tight":
        return clustered(name, n, n_queries, 1000, 0.25, seed=n + 1)
    if name == "broad":
        return clustered(name, n, n_queries, 8, 1.0, seed=n + 2)
    if name == "minilm":
        return minilm(n, n_queries, seed=n + 3)
    raise SystemExit(f"unknown shape {name}")


def truth(shape: Shape) -> np.ndarray:
    out = np.empty((len(shape.queries), K), dtype=np.int64)
    for start in range(0, len(shape.queries), 200):
        sims = shape.queries[start : start + 200] @ shape.vectors.T
        top = np.argpartition(-sims, K, axis=1)[:, :K]
        out[start : start + 200] = top
    return out


def _with_graph(definition: str, m: int, ef_construction: int) -> str:
    """The index's CREATE INDEX with other m / ef_construction (numbers only: safe to splice)."""
    import re

    with_m = re.sub(r"\bm='?\d+'?", f"m='{m}'", definition)
    return re.sub(r"ef_construction='?\d+'?", f"ef_construction='{ef_construction}'", with_m)


def run_build(
    api: Any, planner: Any, ids: dict[Any, int], shape: Shape, gt: np.ndarray, ef: int | None = None
) -> dict[str, Any]:
    """One index build: every query with the trap check off and on, interleaved; with ``ef``,
    every walk at that ``ef_search`` instead of the planner's."""
    recalls: dict[bool, list[float]] = {False: [], True: []}
    times: dict[bool, list[float]] = {False: [], True: []}
    recovered = 0
    for warm in shape.queries[:20]:
        api.retrieve(None, top_k=K, embedding=warm, ef_search=ef)
    for i, q in enumerate(shape.queries):
        for check in (i % 2 == 0, i % 2 == 1):
            planner.check_traps = check
            started = time.perf_counter()
            hits = api.retrieve(None, top_k=K, embedding=q, ef_search=ef)
            times[check].append(time.perf_counter() - started)
            # Found: a result at least as similar as the true k-th (MiniLM lowercases, so texts
            # that differ in case share a vector: ties are not misses).
            kth = float(np.min(shape.vectors[gt[i]] @ q))
            found = sum(1 for m in hits if float(shape.vectors[ids[m.id]] @ q) >= kth - 1e-5)
            recalls[check].append(min(found, K) / K)
    planner.check_traps = True
    recovered = planner.traps_found
    planner.traps_found = 0
    out: dict[str, Any] = {"traps found": recovered}
    for check, label in ((False, "walk only"), (True, "trap check")):
        r = np.asarray(recalls[check])
        t = np.asarray(times[check]) * 1000
        out[label] = {
            "recall": float(r.mean()),
            "below 0.5": float((r < 0.5).mean()),
            "worst": float(r.min()),
            "p50": float(np.percentile(t, 50)),
            "p95": float(np.percentile(t, 95)),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["clusters", "tight", "broad", "minilm"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 20_000, 100_000])
    parser.add_argument("--builds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--graphs",
        nargs="+",
        default=None,
        metavar="M:EF_CONSTRUCTION",
        help="build the index with these parameters instead of the library's (e.g. 20:80 32:160)",
    )
    parser.add_argument(
        "--ef",
        nargs="+",
        type=int,
        default=None,
        help="run each build's queries once per ef_search value given (what a walk's recall costs)",
    )
    parser.add_argument("--out", default=None, help="write benchmarks/results/<out>.md and .json")
    args = parser.parse_args()

    import psycopg
    from psycopg import sql

    from memorix_pg import HashEmbedder, MemoryAPI
    from memorix_pg.planner import planner_for

    rows: list[dict[str, Any]] = []
    with memorix_database() as (url, _):
        for n in args.sizes:
            for name in args.shapes:
                shape = make_shape(name, n, args.queries)
                gt = truth(shape)
                collection = f"recall_{name}_{n}_{hashlib.sha1(os.urandom(4)).hexdigest()[:6]}"
                api = MemoryAPI(embedder=HashEmbedder(DIM), collection_name=collection, database_url=url)
                started = time.perf_counter()
                stored = api.store_batch([f"row {i}" for i in range(n)], embeddings=shape.vectors)
                load = time.perf_counter() - started
                ids = {memory_id: i for i, memory_id in enumerate(stored)}
                planner = planner_for(api.database_url, api.collection_id)
                index = sql.Identifier("memorix", f"memories_embedding_hnsw_{api.collection_id}")
                with psycopg.connect(api.database_url, autocommit=True) as conn:
                    definition = conn.execute(
                        "SELECT pg_get_indexdef(to_regclass(%s))", (f"memorix.{index.as_string(conn)}",)
                    ).fetchone()[0]
                    for graph in args.graphs or [None]:
                        for build in range(args.builds):
                            started = time.perf_counter()
                            if graph is not None:
                                m, efc = graph.split(":")
                                conn.execute(sql.SQL("DROP INDEX {}").format(index))
                                conn.execute(_with_graph(definition, int(m), int(efc)))
                            elif build:
                                conn.execute(sql.SQL("REINDEX INDEX {}").format(index))
                            built = time.perf_counter() - started
                            for ef in args.ef or [None]:
                                result = run_build(api, planner, ids, shape, gt, ef)
                                label = (graph or "library") + (f", ef {ef}" if ef else "")
                                row = {"shape": name, "n": n, "graph": label, "build": build + 1}
                                rows.append({**row, "build s": built, **result})
                                off, on = result["walk only"], result["trap check"]
                                print(
                                    f"{name:8} {n:>7} {label:>7} build {build + 1} ({built:.1f} s): walk "
                                    f"recall {off['recall']:.4f} <0.5 {off['below 0.5']:.3f} worst "
                                    f"{off['worst']:.1f} p50 {off['p50']:.2f} | checked {on['recall']:.4f} "
                                    f"<0.5 {on['below 0.5']:.3f} worst {on['worst']:.1f} "
                                    f"p50 {on['p50']:.2f} p95 {on['p95']:.2f} "
                                    f"| traps {result['traps found']} (load {load:.0f} s)",
                                    flush=True,
                                )
                api.drop() if hasattr(api, "drop") else api.delete_by_filter({})
                api.close()
    print()
    table = summary(rows, {**environment(), **vars(args)})
    print(table.text())
    if args.out:
        table.write(args.out)


def summary(rows: list[dict[str, Any]], meta: dict[str, Any]) -> ResultTable:
    """One line per shape and size over its builds: the walk alone against the trap check."""
    columns = [
        "shape",
        "rows",
        "graph (m:ef_c), ef_search",
        "build s",
        "builds",
        "walk recall (worst build)",
        "walk queries < 0.5",
        "checked recall (worst build)",
        "checked queries < 0.5",
        "worst query",
        "traps found",
        "walk p50 / p95 ms",
        "checked p50 / p95 ms",
        "p50 cost",
    ]
    table = ResultTable("Trapped queries: recall@10 of unfiltered top-10 searches", columns, meta=meta)
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["shape"], row["n"], row["graph"]), []).append(row)
    for (shape, n, graph), builds in groups.items():
        off = [b["walk only"] for b in builds]
        on = [b["trap check"] for b in builds]
        p50_off = float(np.median([o["p50"] for o in off]))
        p50_on = float(np.median([o["p50"] for o in on]))
        table.rows.append(
            [
                shape,
                n,
                graph,
                f"{np.median([b['build s'] for b in builds if b['build s'] > 0] or [0]):.1f}",
                len(builds),
                f"{np.mean([o['recall'] for o in off]):.4f} ({min(o['recall'] for o in off):.4f})",
                f"{np.mean([o['below 0.5'] for o in off]):.2%}",
                f"{np.mean([o['recall'] for o in on]):.4f} ({min(o['recall'] for o in on):.4f})",
                f"{np.mean([o['below 0.5'] for o in on]):.2%}",
                f"{min(o['worst'] for o in on):.1f}",
                sum(b["traps found"] for b in builds),
                f"{p50_off:.2f} / {np.median([o['p95'] for o in off]):.2f}",
                f"{p50_on:.2f} / {np.median([o['p95'] for o in on]):.2f}",
                f"{p50_on / p50_off - 1:+.1%}",
            ]
        )
    table.notes.append(
        "walk: the HNSW walk's answer as it comes; checked: with the trap check of memorix_pg/traps.py "
        "(today's planner). Both run on the same index build, query by query, interleaved."
    )
    return table


if __name__ == "__main__":
    main()
