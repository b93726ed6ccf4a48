"""The cost of history: store_batch, cleanup and archive with the history triggers on and off.

    python benchmarks/history.py [--n 100000] [--rounds 3]

Every memory written, changed or removed leaves an event in ``memorix.history``, written by
statement-level triggers in the same statement (migration 0007). There is no switch to turn them
off in the library, so the "off" side disables them here, in the benchmark only:
``ALTER TABLE memorix.memories DISABLE TRIGGER memories_history_{insert,update,delete}``.

Each round runs both sides, in alternating order (on, off, then off, on, ...), each on a fresh
collection:

1. store_batch  ``n`` memories with precomputed clustered 384-dim unit vectors (no embedder),
                one call (binary COPY; the HNSW index is built once after the load). ~10% are
                given a ``created_at`` 40 days back.
2. cleanup      ``cleanup(older_than=30 days)``: deletes those ~10%.
3. archive      ``archive({"category": ...}, to=...)``: moves one of 10 categories (~10%).

Between rounds the collections are dropped and the history emptied, so every round starts from
the same table sizes. The events are counted: the "on" side must have written one per memory
stored, deleted and archived, the "off" side none. It runs on an embedded server in a temporary
MEMORIX_DATA_DIR only (it alters triggers and empties the history: never on a database of
yours). Results go to benchmarks/results/history.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CATEGORIES,
    Dataset,
    ResultTable,
    environment,
    memorix_database,
    set_history,
    synthetic_memories,
    timer,
)

OPS = ("store_batch", "cleanup", "archive")
ARCHIVE_CATEGORY = CATEGORIES[3]
OLD_SHARE = 0.1




def events(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM memorix.history").fetchone()
        return int(row[0]) if row else 0


def reset(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE memorix.history")
        conn.execute("VACUUM ANALYZE memorix.memories")


def one_side(
    data: Dataset, created: list[datetime], name: str, on: bool
) -> tuple[dict[str, float], dict[str, int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from memorix_pg import MemoryAPI

    api = MemoryAPI(embedder="hash", collection_name=name)  # hash: 384 dims, never called here
    url = api.database_url
    set_history(url, on)
    before = events(url)
    t: dict[str, float] = {}
    out: dict[str, int] = {}
    ids = [f"{name}-{i}" for i in range(len(data))]
    with timer(t, "store_batch"):
        api.store_batch(data.texts, data.metadatas, ids=ids, embeddings=data.vectors, created_at=created)
    with timer(t, "cleanup"):
        out["deleted"] = api.cleanup(older_than=timedelta(days=30))
    with timer(t, "archive"):
        out["archived"] = api.archive({"category": ARCHIVE_CATEGORY}, to=f"{name}_archive")
    out["events"] = events(url) - before
    archive = MemoryAPI(embedder="hash", collection_name=f"{name}_archive")
    set_history(url, False)  # dropping is not measured: leave no events of it
    archive.drop()
    api.drop()
    set_history(url, True)
    reset(url)
    return t, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="memories per store_batch (default 100,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both sides (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="history", help="results stem in benchmarks/results")
    args = parser.parse_args(argv)
    if os.environ.get("MEMORIX_DATABASE_URL"):
        print(
            "history.py alters triggers and empties memorix.history: it runs on an embedded server "
            "only; unset MEMORIX_DATABASE_URL",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    print(f"generating {args.n:,} memories ...", flush=True)
    data = synthetic_memories(args.n, seed=args.seed)
    now = datetime.now(UTC)
    old = int(args.n * OLD_SHARE)
    # The first 10% are old (each row's metadata is an independent random draw).
    created = [now - timedelta(days=40) if i < old else now - timedelta(minutes=5) for i in range(args.n)]
    archived_expected = sum(1 for m in data.metadatas[old:] if m["category"] == ARCHIVE_CATEGORY)

    times: dict[tuple[bool, str], list[float]] = {(on, op): [] for on in (True, False) for op in OPS}
    counts: dict[bool, list[dict[str, int]]] = {True: [], False: []}
    with memorix_database() as (_url, _data_dir):
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for on in order:
                label = "on" if on else "off"
                print(f"round {r + 1}/{args.rounds}, history {label} ...", flush=True)
                t, out = one_side(data, created, f"hist_{label}_{r}", on)
                for op in OPS:
                    times[(on, op)].append(t[op])
                counts[on].append(out)
                print("   " + ", ".join(f"{op} {t[op]:.2f} s" for op in OPS), flush=True)

    for on, outs in counts.items():
        for out in outs:
            assert out["deleted"] == old, (out, old)
            assert out["archived"] == archived_expected, (out, archived_expected)
            expected_events = args.n + old + archived_expected if on else 0
            assert out["events"] == expected_events, (on, out, expected_events)

    labels = {
        "store_batch": f"store_batch {args.n:,} (embeddings given)",
        "cleanup": f"cleanup: delete {old:,} older than 30 days",
        "archive": f"archive {archived_expected:,} to another collection",
    }
    table = ResultTable(
        title=f"Cost of history: triggers on vs off, {args.n:,} memories",
        columns=["operation", "history off s", "history on s", "ratio (on/off)", "events written"],
        meta={
            **environment(),
            "memories": f"{args.n:,} x 384-dim float32 (clustered, unit), embeddings given",
            "rounds": f"{args.rounds} (sides alternate their order each round; medians shown)",
            "command": "python benchmarks/history.py " + " ".join(sys.argv[1:] if argv is None else argv),
        },
        notes=[
            "The off side disables the three history triggers with ALTER TABLE ... DISABLE TRIGGER "
            "(the library has no switch for them); everything else is the same call.",
            "store_batch includes the HNSW build after the load (a load into an empty collection "
            "defers it), which both sides pay alike.",
            "Each operation's events are written by one INSERT ... SELECT over the statement's "
            "transition table (migration 0007).",
        ],
    )
    per_op_events = {"store_batch": args.n, "cleanup": old, "archive": archived_expected}
    for op in OPS:
        off = statistics.median(times[(False, op)])
        on = statistics.median(times[(True, op)])
        table.rows.append([labels[op], off, on, round(on / off, 2) if off else "-", per_op_events[op]])
    md, js = table.write(args.out)
    print()
    print(table.text())
    print(f"\nwrote {md} and {js} ({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
