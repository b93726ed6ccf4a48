"""Memory-lifecycle benchmark: memorix-pg vs Chroma, the same operations through each one's own API.

    python benchmarks/lifecycle.py [--n 100000]

Synthetic memories (clustered random unit 384-dim float32 vectors, seed-style metadata: type,
session_id, ISO timestamp over 90 days, category, and a numeric epoch ``ts``) are given with
precomputed embeddings, so no model runs. Operations, in order, on both stores:

1. load        memorix: one ``store_batch(texts, metadatas, embeddings=...)`` (binary COPY,
               HNSW built once); Chroma: ``collection.add`` in batches of <= 5,000.
2. search      the first similarity search after the load (top 10 for a stored vector; both
               must return that memory first). Chroma may finish indexing lazily, so this keeps
               the load comparison honest.
3. cleanup     delete ~1/3 (``ts`` < cutoff). memorix: ``delete_by_filter({"ts": {"$lt": c}})``;
               Chroma: ``collection.delete(where={"ts": {"$lt": c}})``.
4. archive     move ~10% (one category) to an archive collection, embeddings kept, tagged
               ``archived``. memorix: ``archive(filter, to=...)``; Chroma: ``get`` (embeddings,
               documents, metadatas) + ``add`` to the archive + ``delete``.
5. stats       counts by type. memorix: ``stats("type")``; Chroma: ``get(include=["metadatas"])``
               and counting in Python.

memorix runs on an embedded server in a temporary MEMORIX_DATA_DIR (or MEMORIX_DATABASE_URL if
set); Chroma on a PersistentClient in a temporary directory. Both sides' counts are asserted
equal (and equal to what the data says). Results go to benchmarks/results/lifecycle.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CATEGORIES,
    Dataset,
    ResultTable,
    chroma_client,
    drop_memorix_collections,
    environment,
    memorix_database,
    synthetic_memories,
    timer,
)

CHROMA_BATCH = 5000
ARCHIVE_CATEGORY = CATEGORIES[3]


def expected_counts(data: Dataset, cutoff: int) -> dict[str, Any]:
    kept = [m for m in data.metadatas if m["ts"] >= cutoff]
    archived = [m for m in kept if m["category"] == ARCHIVE_CATEGORY]
    remaining = [m for m in kept if m["category"] != ARCHIVE_CATEGORY]
    return {
        "deleted": len(data) - len(kept),
        "archived": len(archived),
        "remaining": len(remaining),
        "by_type": dict(Counter(m["type"] for m in remaining)),
    }


def run_memorix(
    data: Dataset, cutoff: int, probe: int, suffix: str
) -> tuple[dict[str, float], dict[str, Any], list[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from memorix_pg import MemoryAPI

    t: dict[str, float] = {}
    out: dict[str, Any] = {}
    name, archive_name = f"bench_{suffix}", f"bench_{suffix}_archive"
    api = MemoryAPI(embedder="hash", collection_name=name)  # hash: 384 dims, never called here
    out["url"] = api.database_url
    out["embedded"] = api.embedded
    with timer(t, "load"):
        ids = api.store_batch(data.texts, data.metadatas, embeddings=data.vectors)
    out["loaded"] = api.count()
    with timer(t, "search"):
        hits = api.retrieve(None, top_k=10, embedding=data.vectors[probe])
    out["search_first"] = hits[0].id
    out["search_plan"] = api.explain_retrieve(None, top_k=10, embedding=data.vectors[probe]).path
    with timer(t, "cleanup"):
        out["deleted"] = api.delete_by_filter({"ts": {"$lt": cutoff}})
    with timer(t, "archive"):
        out["archived"] = api.archive({"category": ARCHIVE_CATEGORY}, to=archive_name)
    with timer(t, "stats"):
        stats = api.stats("type")
    out["by_type"] = stats["groups"]
    out["remaining"] = api.count()
    out["archive_count"] = MemoryAPI(embedder="hash", collection_name=archive_name).count()
    return t, out, ids


def _pages(col: Any, where: dict[str, Any] | None, include: list[str], size: int) -> Any:
    """``collection.get`` a page at a time: one get of ~60,000 rows fails in Chroma 1.5
    ("too many SQL variables")."""
    offset = 0
    while True:
        page = col.get(where=where, include=include, limit=size, offset=offset)
        if not page["ids"]:
            return
        yield page
        offset += len(page["ids"])


def run_chroma(
    data: Dataset, cutoff: int, probe: int, ids: list[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    t: dict[str, float] = {}
    out: dict[str, Any] = {}
    with chroma_client() as client:
        batch = min(CHROMA_BATCH, client.get_max_batch_size())
        config = {"hnsw": {"space": "cosine"}}
        col = client.get_or_create_collection("bench", configuration=config, embedding_function=None)
        with timer(t, "load"):
            for start in range(0, len(data), batch):
                stop = start + batch
                col.add(
                    ids=ids[start:stop],
                    embeddings=data.vectors[start:stop],
                    documents=data.texts[start:stop],
                    metadatas=data.metadatas[start:stop],
                )
        out["loaded"] = col.count()
        with timer(t, "search"):
            res = col.query(query_embeddings=data.vectors[probe : probe + 1], n_results=10)
        out["search_first"] = res["ids"][0][0]
        with timer(t, "cleanup"):
            before = col.count()
            col.delete(where={"ts": {"$lt": cutoff}})
            out["deleted"] = before - col.count()
        archive = client.get_or_create_collection(
            "bench-archive", configuration=config, embedding_function=None
        )
        with timer(t, "archive"):
            got: dict[str, list[Any]] = {"ids": [], "embeddings": [], "documents": [], "metadatas": []}
            where = {"category": ARCHIVE_CATEGORY}
            for page in _pages(col, where, ["embeddings", "documents", "metadatas"], batch):
                for key in got:
                    got[key].extend(page[key])
            stamp = datetime.now(UTC).isoformat()
            metas = [{**m, "archived": True, "archived_at": stamp} for m in got["metadatas"]]
            for start in range(0, len(got["ids"]), batch):
                stop = start + batch
                archive.add(
                    ids=got["ids"][start:stop],
                    embeddings=got["embeddings"][start:stop],
                    documents=got["documents"][start:stop],
                    metadatas=metas[start:stop],
                )
            for start in range(0, len(got["ids"]), batch):
                col.delete(ids=got["ids"][start : start + batch])
            out["archived"] = len(got["ids"])
        with timer(t, "stats"):
            by_type: Counter[Any] = Counter()
            for page in _pages(col, None, ["metadatas"], batch):
                by_type.update(m.get("type") for m in page["metadatas"])
        out["by_type"] = dict(by_type)
        out["remaining"] = col.count()
        out["archive_count"] = archive.count()
    return t, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="memories to load (default 100,000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    print(f"generating {args.n:,} memories ...", flush=True)
    data = synthetic_memories(args.n, seed=args.seed)
    cutoff = int(np.quantile(data.ts, 1 / 3))
    probe = int(np.argmax(data.ts))  # the newest memory: survives the cleanup
    expected = expected_counts(data, cutoff)

    suffix = uuid.uuid4().hex[:8]
    with memorix_database() as (url, _data_dir):
        print("memorix-pg ...", flush=True)
        try:
            mx_t, mx, ids = run_memorix(data, cutoff, probe, suffix)
        finally:
            if url:
                drop_memorix_collections(url, [f"bench_{suffix}", f"bench_{suffix}_archive"])
    print("chroma ...", flush=True)
    ch_t, ch = run_chroma(data, cutoff, probe, ids)

    # Both sides did the same thing, and what the data says.
    assert mx["loaded"] == ch["loaded"] == args.n, (mx["loaded"], ch["loaded"])
    assert mx["search_first"] == ch["search_first"] == ids[probe], (mx["search_first"], ch["search_first"])
    assert mx["deleted"] == ch["deleted"] == expected["deleted"], (mx["deleted"], ch["deleted"], expected)
    assert mx["archived"] == ch["archived"] == expected["archived"], (
        mx["archived"],
        ch["archived"],
        expected,
    )
    assert mx["archive_count"] == ch["archive_count"] == expected["archived"]
    assert mx["remaining"] == ch["remaining"] == expected["remaining"]
    assert mx["by_type"] == ch["by_type"] == expected["by_type"], (mx["by_type"], ch["by_type"])

    labels = {
        "load": f"load {args.n:,} (embeddings given)",
        "search": "first search after load (top 10)",
        "cleanup": f"cleanup: delete {expected['deleted']:,} with ts < cutoff",
        "archive": f"archive {expected['archived']:,} to another collection",
        "stats": f"stats by type over {expected['remaining']:,}",
    }
    table = ResultTable(
        title=f"Memory lifecycle: memorix-pg vs Chroma, {args.n:,} memories",
        columns=["operation", "memorix-pg s", "chroma s", "ratio (chroma/memorix)"],
        meta={
            **environment(),
            "memories": f"{args.n:,} x 384-dim float32 (clustered, unit), embeddings given",
            "memorix database": "embedded server (temp MEMORIX_DATA_DIR)"
            if mx["embedded"]
            else "MEMORIX_DATABASE_URL",
            "memorix search path": mx["search_plan"],
            "command": "python benchmarks/lifecycle.py " + " ".join(sys.argv[1:] if argv is None else argv),
        },
        notes=[
            "Same operations through each store's own API; counts asserted equal on both sides "
            f"(deleted {expected['deleted']:,}, archived {expected['archived']:,}, "
            f"remaining {expected['remaining']:,}).",
            "memorix load is one store_batch call (binary COPY, HNSW index built once after the load); "
            f"Chroma adds in batches of {CHROMA_BATCH:,} (its maximum batch is ~5,461).",
            "memorix archive is one UPDATE (rows move with their embeddings); "
            "Chroma's is get + add + delete.",
            "memorix stats is one GROUP BY; Chroma fetches every metadata (paged: one get of ~60k "
            "rows fails with 'too many SQL variables') and counts in Python.",
        ],
    )
    for op in ("load", "search", "cleanup", "archive", "stats"):
        table.rows.append(
            [labels[op], mx_t[op], ch_t[op], round(ch_t[op] / mx_t[op], 2) if mx_t[op] else "-"]
        )
    total_mx, total_ch = sum(mx_t.values()), sum(ch_t.values())
    table.rows.append(["total", total_mx, total_ch, round(total_ch / total_mx, 2)])
    md, js = table.write("lifecycle")
    print()
    print(table.text())
    print(f"\nwrote {md} and {js} ({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
