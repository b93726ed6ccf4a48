"""Crash stress test: SIGKILL the PostgreSQL server in the middle of ``store_batch``,
``delete_by_filter``, ``archive`` and ``compress``, let the library start it again, and check
that every operation was all-or-nothing.

    python benchmarks/faults.py [--trials 20] [--batch-rows 30000] [--bulk-rows 30000] [--seed 0]

Always on its own embedded server in a temporary MEMORIX_DATA_DIR (MEMORIX_DATABASE_URL is
ignored: the server is killed 4 x ``--trials`` times). The kill is SIGKILL to the postmaster's
process group, postmaster and backends at once; the first call after it (on the same
MemoryAPI object, or every fifth trial a new one) starts the server again. Kill points, chosen
at random per trial (see ``FaultLab`` in tests/support/fault_lab.py):

- store_batch of ``--batch-rows`` rows with precomputed embeddings: at a random fraction of the
  COPY (``pg_stat_progress_copy``), or with every row written and the statement waiting in its
  foreign-key check (a lock the script holds); half of them with ids (the upsert path).
- delete_by_filter of ``--bulk-rows`` rows: blocked on a random matching row (part-way through
  the DELETE), or a random 0-150 ms after the call starts.
- archive of ``--bulk-rows`` rows to another collection: every row moved and the UPDATE waiting
  in its foreign-key check, or a random 0-1 s after the call starts (UPDATE, commit, or the
  index rebuild after it).
- compress of 10 one-hour windows with a summarizer that sleeps 0.1 s: a random time after it
  starts on a random window.

After each trial: exact counts through the API, and ids checked in SQL: no half batch, every
archived id in exactly one collection, all-or-none moved or deleted, and for compress every
original either still there or in exactly one summary's ``source_ids``, never both.
Results: benchmarks/results/faults.md. Exit status 1 if any trial broke an invariant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, ResultTable, environment  # noqa: E402

from tests.support.fault_lab import TRIAL_COLUMNS, FaultLab, Trial, format_trials  # noqa: E402
from tests.support.helpers import postgres_processes  # noqa: E402


def summary_rows(trials: list[Trial], violations: dict[str, list[str]]) -> list[list[object]]:
    rows = []
    for op in FaultLab.OPS:
        mine = [t for t in trials if t.op == op]
        if not mine and not violations.get(op):
            continue
        outcomes = [t.outcome for t in mine]
        restarts = [t.restart_s for t in mine] or [0.0]
        rows.append(
            [
                op,
                len(mine) + len(violations.get(op, [])),
                sum(t.interrupted for t in mine),
                outcomes.count("rolled back")
                + sum(o.startswith("0/") for o in outcomes),  # compress: nothing committed yet
                sum(
                    o not in ("rolled back", "completed", "committed") and not o.startswith("0/")
                    for o in outcomes
                ),
                outcomes.count("committed"),
                outcomes.count("completed"),
                sum(t.lost for t in mine),
                sum(t.extra for t in mine),
                len(violations.get(op, [])),
                median(restarts),
                max(restarts),
            ]
        )
    return rows


SUMMARY_COLUMNS = [
    "operation", "trials", "interrupted", "rolled back", "partly done (per window)",
    "committed, then killed", "completed first", "lost", "extra", "violations",
    "restart s (median)", "restart s (max)",
]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20, help="trials per operation (default 20)")
    parser.add_argument("--batch-rows", type=int, default=30_000, help="rows per store_batch")
    parser.add_argument("--bulk-rows", type=int, default=30_000, help="rows deleted / archived per trial")
    parser.add_argument("--windows", type=int, default=10, help="compress windows per trial")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ops", default=",".join(FaultLab.OPS), help="comma-separated subset")
    parser.add_argument("--out", default="faults", help="results file stem in benchmarks/results")
    args = parser.parse_args()
    ops = [op for op in args.ops.split(",") if op]

    if os.environ.pop("MEMORIX_DATABASE_URL", None):
        print("MEMORIX_DATABASE_URL is ignored: this script kills its own embedded server", flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix="memorix-faults-"))
    os.environ["MEMORIX_DATA_DIR"] = str(data_dir)
    lab = FaultLab(
        data_dir,
        seed=args.seed,
        batch_rows=args.batch_rows,
        bulk_rows=args.bulk_rows,
        windows=args.windows,
    )
    violations: dict[str, list[str]] = {}
    started = time.perf_counter()
    try:
        t = time.perf_counter()
        lab.setup()
        setup_s = time.perf_counter() - t
        print(f"setup (server, seeds, HNSW builds): {setup_s:.1f} s", flush=True)
        for op in ops:
            for number, how in enumerate(lab.plan(op, args.trials, shuffle=True)):
                try:
                    trial = lab.run(op, number, how)
                    print("  ".join(str(c) for c in trial.row()), flush=True)
                except AssertionError as exc:
                    text = f"{op} trial {number} ({how}): {exc}"
                    violations.setdefault(op, []).append(text)
                    print(f"VIOLATION {text}\n{traceback.format_exc()}", flush=True)
        index_states = lab.index_states()
    finally:
        from memorix_pg.server import stop_embedded_server

        stop_embedded_server(data_dir)
        leftovers = postgres_processes(data_dir / "pgdata")
        for proc in leftovers:
            proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    wall_s = time.perf_counter() - started
    trials = lab.trials

    summary = ResultTable(
        title="Crash trials: SIGKILL of the server in the middle of an operation",
        columns=SUMMARY_COLUMNS,
        rows=summary_rows(trials, violations),
        meta={
            **environment(),
            "trials per operation": args.trials,
            "store_batch rows": args.batch_rows,
            "delete_by_filter / archive rows": args.bulk_rows,
            "compress windows x memories": f"{args.windows} x {lab.per_window}",
            "seed": args.seed,
            "setup s": round(setup_s, 1),
            "wall s": round(wall_s, 1),
            "postgres processes left after the run": len(leftovers),
        },
        notes=[
            "interrupted: the call raised DatabaseUnavailable (any other exception is a violation).",
            "rolled back: nothing of the operation survived (compress: no window done).",
            "partly done (per window): compress with some windows committed, the others untouched "
            "(each window is its own transaction).",
            "committed, then killed: the transaction committed, the crash hit what came after "
            "(the index rebuild, or the reply).",
            "lost / extra: rows that vanished / rows that should not exist (half batch, a summary next "
            "to its sources, an id in two collections). Both must be 0.",
            f"HNSW index of each collection at the end: {index_states}. A crash during a load that "
            "defers the index leaves it dropped until the next deferred load or `memorix-pg migrate`.",
        ],
    )
    details = ResultTable(
        title="Every trial",
        columns=TRIAL_COLUMNS,
        rows=[t.row() for t in trials],
    )
    print()
    print(summary.text())
    print()
    print(format_trials(trials))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{args.out}.md"
    text = summary.markdown() + "\n" + details.markdown().replace("# Every trial", "## Every trial", 1)
    if violations:
        text += "\n## Violations\n\n" + "\n".join(f"- {v}" for vs in violations.values() for v in vs) + "\n"
    out.write_text(text)
    print(f"\nwrote {out}")
    bad = sum(len(v) for v in violations.values()) + sum(t.lost + t.extra for t in trials) + len(leftovers)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
