"""Concurrent load: several processes on one database, then an exact consistency check.

    python benchmarks/load.py [--writers 4] [--stores 2500] [--batch 10]

``--writers`` processes each make ``--stores`` single ``store`` calls (hash embedder, 384
dims), while three more processes run until the writers are done:

- a reader: ``retrieve`` (top 5), ``retrieve`` filtered on one writer, ``count``, filtered ``count``
  (a writer's count must never go down, nor past ``--stores``; a filtered result must match);
- a deleter: stores ``--batch`` memories marked with its round, then ``delete_by_filter`` on that
  mark (must return exactly ``--batch``); every third round is kept;
- an archiver: the same with ``archive`` to a second collection.

All start at once (a "go" file) after attaching. Afterwards every id any worker got back is
looked up: each must be in exactly the collection it belongs to (writers' and kept ones in the
source, archived ones in the archive with ``archived: true``), deleted ones nowhere, nothing
else there, no id or text twice, ``count()`` equal to that, no worker exception, and no
"deadlock detected" in the server log. Operations/s are calls over the wall time of the run.

Runs on an embedded server in a temporary MEMORIX_DATA_DIR, or on MEMORIX_DATABASE_URL if set
(collections named load-<random> there, dropped afterwards). Results: benchmarks/results/load.md.
Exit status 1 if the consistency check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, ResultTable, drop_memorix_collections, environment, memorix_database  # noqa: E402

from tests.support.helpers import postgres_processes, python_env  # noqa: E402
from tests.support.load import LOAD_INFO, latency_rows, load_inconsistencies, run_load, verify_load  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writers", type=int, default=4, help="writer processes (default 4)")
    parser.add_argument("--stores", type=int, default=2500, help="store calls per writer (default 2500)")
    parser.add_argument("--batch", type=int, default=10, help="memories per deleter / archiver round")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a worker counts as stuck")
    parser.add_argument("--out", default="load", help="results file stem in benchmarks/results")
    args = parser.parse_args()

    from memorix_pg import MemoryAPI

    with memorix_database() as (url, data_dir):
        suffix = "" if url is None else f"-{uuid.uuid4().hex[:8]}"
        names = {"collection": f"load{suffix}", "archive": f"load-archive{suffix}"}
        source = MemoryAPI(embedder="hash", collection_name=names["collection"], database_url=url)
        MemoryAPI(embedder="hash", collection_name=names["archive"], database_url=url)
        db_url = source.database_url
        print(f"{args.writers} writers x {args.stores} stores + reader + deleter + archiver on "
              f"{'the embedded server in ' + str(data_dir) if url is None else 'MEMORIX_DATABASE_URL'}",
              flush=True)  # fmt: skip
        try:
            started = time.perf_counter()
            run = run_load(
                python_env(),
                writers=args.writers,
                stores=args.stores,
                batch=args.batch,
                min_rounds=3,
                timeout=args.timeout,
                **names,
            )
            log = None if data_dir is None else data_dir / "pgdata" / "log"
            figures = verify_load(run, db_url, log)
            check_s = time.perf_counter() - started - run["wall_s"]
        finally:
            if url is not None:
                drop_memorix_collections(url, list(names.values()))
        wrong = load_inconsistencies(figures)
    left = [] if data_dir is None else postgres_processes(data_dir / "pgdata")

    rows = latency_rows(run)
    calls = sum(r[1] for r in rows)
    stores = next((r for r in rows if r[0] == "store"), None)
    table = ResultTable(
        title=f"Concurrent load: {args.writers} writers x {args.stores} stores, with a reader, "
        "a deleter and an archiver",
        columns=["operation", "calls", "calls/s", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        rows=rows,
        meta={
            **environment(),
            "server": "embedded (temporary data dir)" if url is None else "MEMORIX_DATABASE_URL",
            "processes": args.writers + 3,
            "embedder": "hash (384 dims)",
            "wall s (all workers)": round(run["wall_s"], 1),
            "writers done after s": round(run["writers_s"], 1),
            "all calls": calls,
            "all calls/s": round(calls / run["wall_s"], 1),
            "store calls/s (all processes)": round(stores[2], 1) if stores else "-",
            "reader / deleter / archiver rounds": " / ".join(
                str(run["reports"][t]["rounds"]) for t in ("r1", "d1", "a1")
            ),
            "consistency check s": round(check_s, 1),
            "consistent": "yes" if not wrong else "NO: " + "; ".join(wrong),
            "postgres processes left after the run": len(left),
        },
        notes=[
            "calls/s: calls of that operation over the wall time of the whole run (all processes).",
            "store: the writers' calls plus the deleter's and archiver's own stores.",
        ],
    )
    consistency = ResultTable(
        title="Consistency",
        columns=["figure", "value", "must be"],
        rows=[[k, v, "-" if k in LOAD_INFO else 0] for k, v in figures.items()],
    )
    print()
    print(table.text())
    print()
    print(consistency.text())
    print("\nconsistent" if not wrong else "\nINCONSISTENT: " + "; ".join(wrong))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{args.out}.md"
    out.write_text(
        table.markdown() + "\n" + consistency.markdown().replace("# Consistency", "## Consistency", 1)
    )
    print(f"wrote {out}")
    return 1 if wrong or left else 0


if __name__ == "__main__":
    sys.exit(main())
