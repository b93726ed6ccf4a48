"""Load: several processes on one database, then an exact consistency check (tests/test_load.py,
benchmarks/load.py). Each process runs :mod:`tests.support.load_worker`."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.helpers import spawn_module, sql_rows, sql_value

# The module each worker process runs (``python -m``, from the repository root).
LOAD_WORKER = "tests.support.load_worker"


def run_load(
    env: Mapping[str, str],
    *,
    writers: int = 4,
    stores: int = 150,
    batch: int = 10,
    min_rounds: int = 3,
    collection: str = "load",
    archive: str = "load_archive",
    timeout: float = 600,
) -> dict[str, Any]:
    """Run ``writers`` writer processes (``stores`` single ``store`` calls each) next to a reader
    (retrieve / count), a deleter (delete_by_filter of its own memories) and an archiver (archive
    of its own memories), all started at once; the others stop when the writers are done.

    A worker still running after ``timeout`` seconds (a deadlock, say) fails the run. Returns the
    workers' reports, wall time, and the time the writers took.
    """
    import shutil
    import tempfile

    control = Path(tempfile.mkdtemp(prefix="mx-load-"))
    tags = [f"w{i + 1}" for i in range(writers)]
    cfg = {
        "collection": collection,
        "archive": archive,
        "stores": stores,
        "writers": tags,
        "batch": batch,
        "min_rounds": min_rounds,
    }
    roles = [("writer", t) for t in tags] + [("reader", "r1"), ("deleter", "d1"), ("archiver", "a1")]
    procs = [(role, tag, spawn_module(LOAD_WORKER, role, tag, str(control), json.dumps(cfg), env=env))
             for role, tag in roles]  # fmt: skip
    reports: dict[str, Any] = {}
    try:
        for role, tag, proc in procs:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line.startswith("ready"):
                raise AssertionError(f"{role} {tag} did not start: {line!r} {proc.communicate()[1][-3000:]}")
        (control / "go").touch()
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        writers_s = 0.0
        for i, (role, tag, proc) in enumerate(procs):
            if i == writers:  # every writer is done: stop the others
                writers_s = time.perf_counter() - start
                (control / "stop").touch()
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{role} {tag} still running after {timeout} s (deadlock?)") from None
            if proc.returncode != 0 or not out.strip():
                raise AssertionError(f"{role} {tag} exited with {proc.returncode}:\n{err[-3000:]}")
            reports[tag] = json.loads(out.strip().splitlines()[-1])
        wall_s = time.perf_counter() - start
    finally:
        for _role, _tag, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        shutil.rmtree(control, ignore_errors=True)
    return {"reports": reports, "wall_s": wall_s, "writers_s": writers_s, "config": cfg}


def verify_load(run: Mapping[str, Any], url: str, log: Path | None = None) -> dict[str, int]:
    """Compare what the workers say they stored, deleted and archived with what the database
    holds. Every figure but the three expected/found pairs must be 0 (and each pair equal)."""
    from memorix_pg import HashEmbedder, MemoryAPI

    cfg, reports = run["config"], run["reports"].values()
    writer_ids = [i for r in reports if r["role"] == "writer" for i in r["ids"]]
    returned = writer_ids + [i for r in reports for i in r.get("kept", []) + r.get("removed", [])]
    kept = {i for r in reports if r["role"] in ("deleter", "archiver") for i in r["kept"]}
    deleted = {i for r in reports if r["role"] == "deleter" for i in r["removed"]}
    archived = {i for r in reports if r["role"] == "archiver" for i in r["removed"]}
    expected_source = set(writer_ids) | kept

    def ids(collection: str) -> list[str]:
        rows = sql_rows(
            url,
            "SELECT m.id::text FROM memorix.memories m JOIN memorix.collections c ON c.id = m.collection_id "
            "WHERE c.name = %s",
            (collection,),
        )
        return [r[0] for r in rows]

    source, target = ids(cfg["collection"]), ids(cfg["archive"])
    found_source, found_target = set(source), set(target)
    flagged = sql_value(
        url,
        "SELECT count(*) FROM memorix.memories m JOIN memorix.collections c ON c.id = m.collection_id "
        "WHERE c.name = %s AND m.metadata @> '{\"archived\": true}'",
        (cfg["archive"],),
    )
    texts = sql_value(
        url,
        "SELECT count(*) - count(DISTINCT m.text) FROM memorix.memories m "
        "JOIN memorix.collections c ON c.id = m.collection_id WHERE c.name = ANY(%s)",
        ([cfg["collection"], cfg["archive"]],),
    )
    api = MemoryAPI(embedder=HashEmbedder(), collection_name=cfg["collection"], database_url=url)
    per_writer = [api.count({"writer": w}) for w in cfg["writers"]]
    figures = {
        "stored (ids returned)": len(returned),
        "expected in source": len(expected_source),
        "found in source": len(source),
        "count() of source": api.count(),
        "expected in archive": len(archived),
        "found in archive": len(target),
        "count() of archive": MemoryAPI(
            embedder=HashEmbedder(), collection_name=cfg["archive"], database_url=url
        ).count(),
        "deleted": len(deleted),
        "missing": len(expected_source - found_source) + len(archived - found_target),
        "unexpected": len(found_source - expected_source - archived)
        + len(found_target - archived - expected_source),
        "in the wrong collection": len(expected_source & found_target) + len(archived & found_source),
        "duplicate ids returned": len(returned) - len(set(returned)),
        "duplicate rows": len(source) - len(found_source) + len(target) - len(found_target),
        "duplicate texts": int(texts),
        "deleted but present": len(deleted & (found_source | found_target)),
        "archived without archived: true": len(target) - int(flagged),
        "writers whose count() is off": sum(n != cfg["stores"] for n in per_writer),
        "worker errors": sum(len(r["errors"]) for r in reports),
        "worker problems": sum(len(r["problems"]) for r in reports),
    }
    if log is not None and log.exists():
        figures["deadlocks in the server log"] = log.read_text(errors="replace").count("deadlock detected")
    return figures


LOAD_MUST_MATCH = [
    ("expected in source", "found in source"),
    ("expected in source", "count() of source"),
    ("expected in archive", "found in archive"),
    ("expected in archive", "count() of archive"),
]
LOAD_INFO = {"stored (ids returned)", "deleted", *(k for pair in LOAD_MUST_MATCH for k in pair)}


def load_inconsistencies(figures: Mapping[str, int]) -> list[str]:
    """What is wrong in ``verify_load``'s figures (empty when the run was consistent)."""
    wrong = [f"{a} {figures[a]} != {b} {figures[b]}" for a, b in LOAD_MUST_MATCH if figures[a] != figures[b]]
    wrong += [f"{k}: {v}" for k, v in figures.items() if k not in LOAD_INFO and v != 0]
    return wrong


def latency_rows(run: Mapping[str, Any]) -> list[list[Any]]:
    """Per operation: calls, calls/s over the run's wall time, p50 / p95 / p99 / max latency in ms."""
    samples: dict[str, list[float]] = {}
    for report in run["reports"].values():
        for op, values in report["lat"].items():
            samples.setdefault(op, []).extend(values)
    rows = []
    for op in sorted(samples, key=lambda o: -len(samples[o])):
        ms = np.array(samples[op]) * 1000
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        rows.append([op, len(ms), len(ms) / run["wall_s"], p50, p95, p99, float(ms.max())])
    return rows
