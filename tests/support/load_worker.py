"""One load worker (a process): writer, reader, deleter or archiver.

    python -m tests.support.load_worker ROLE TAG CONTROL_DIR CONFIG_JSON

Prints "ready", waits for <control>/go, works (a writer: ``stores`` calls; the others until
<control>/stop appears and at least ``min_rounds`` rounds), then prints one JSON line: ids,
latencies, errors, problems. Started by :func:`tests.support.load.run_load`; imports nothing
but the standard library and memorix_pg, so it starts fast.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from memorix_pg import MemoryAPI

T = TypeVar("T")

WORDS = (
    "coffee tea meeting budget travel paris berlin deadline report python postgres vector "
    "memory garden music guitar piano running cycling recipe pasta doctor dentist birthday "
    "project release review invoice flight hotel train weather rain sunny"
).split()


def main(argv: list[str]) -> None:
    role, tag, control, cfg = argv[0], argv[1], Path(argv[2]), json.loads(argv[3])
    api = MemoryAPI(embedder="hash", collection_name=cfg["collection"])
    rng = random.Random(tag)
    lat: dict[str, list[float]] = {}
    errors: list[str] = []
    problems: list[str] = []
    out: dict[str, Any] = {"role": role, "tag": tag}

    def call(op: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            lat.setdefault(op, []).append(time.perf_counter() - start)

    def stopping() -> bool:
        return (control / "stop").exists()

    print("ready", flush=True)
    while not (control / "go").exists():
        time.sleep(0.005)
    try:
        if role == "writer":
            out["ids"] = [
                call(
                    "store",
                    api.store,
                    f"{tag} note {i}: {' '.join(rng.sample(WORDS, 4))}",
                    {"role": "writer", "writer": tag, "i": i},
                )
                for i in range(cfg["stores"])
            ]
        elif role == "reader":
            last = {w: 0 for w in cfg["writers"]}
            rounds = 0
            while not stopping() or rounds < cfg["min_rounds"]:
                w, query = rng.choice(cfg["writers"]), " ".join(rng.sample(WORDS, 3))
                hits = call("retrieve", api.retrieve, query, 5)
                if len(hits) > 5:
                    problems.append(f"retrieve returned {len(hits)} > 5 memories")
                hits = call("retrieve (filtered)", api.retrieve, query, 5, {"writer": w})
                if any(h.metadata.get("writer") != w for h in hits):
                    problems.append(f"retrieve with filter writer={w} returned another writer's memory")
                call("count", api.count)
                n = call("count (filtered)", api.count, {"writer": w})
                if not last[w] <= n <= cfg["stores"]:
                    problems.append(f"count(writer={w}) went from {last[w]} to {n}")
                last[w] = max(last[w], n)
                rounds += 1
            out["rounds"] = rounds
        else:  # deleter / archiver: store a batch of marked memories, then remove it (every third kept)
            kept: list[str] = []
            removed: list[str] = []
            rounds = 0
            while not stopping() or rounds < cfg["min_rounds"]:
                mark = {"role": role, "round": rounds}
                ids = [
                    call("store", api.store, f"{tag} round {rounds} item {j}", {**mark, "j": j})
                    for j in range(cfg["batch"])
                ]
                if rounds % 3 == 2:
                    kept += ids
                else:
                    if role == "deleter":
                        n = call("delete_by_filter", api.delete_by_filter, mark)
                    else:
                        n = call("archive", api.archive, mark, cfg["archive"])
                    if n != len(ids):
                        problems.append(f"{role} round {rounds}: {n} memories for {len(ids)} stored")
                    removed += ids
                rounds += 1
            out.update(kept=kept, removed=removed, rounds=rounds)
    except Exception:
        errors.append(traceback.format_exc())
    out.update(lat=lat, errors=errors, problems=problems)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
