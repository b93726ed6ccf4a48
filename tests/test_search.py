"""The search planner against a real PostgreSQL + pgvector: which path it takes, and that results
are never short and, on the exact path, equal numpy brute force.

One ~20k-row collection (32-d vectors, so the deferred HNSW build takes seconds) is loaded once
per module; a 60-row collection sits in the same table to show that a small collection is
searched exactly whatever its neighbours.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from memorix_pg import MemoryAPI
from tests.support.helpers import unit_vectors

DIM = 32
N = 20_000
K = 10


@pytest.fixture(scope="module")
def corpus(module_database_url: str) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(3)
    # Clustered vectors with a low intrinsic dimension inside each cluster, as text embeddings
    # have (isotropic noise in 32-d would make every neighbour nearly equidistant).
    centres = unit_vectors(200, DIM, seed=4)
    spread = rng.standard_normal((N, 6)).astype(np.float32) @ rng.standard_normal((6, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 200, N)] + 0.12 * spread
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    metas = [
        {
            "p2": int(rng.integers(0, 2)),
            "p10": int(rng.integers(0, 10)),
            "bucket": i % 100,  # 1% per value
            "g": i % 1000,  # 0.1% per value
            "tags": ["a", "b"] if i % 7 == 0 else ["c"],
            "rank": float(rng.random()),
        }
        for i in range(N)
    ]
    api = MemoryAPI(embedder=f"hash-{DIM}", collection_name="planner", database_url=module_database_url)
    ids = api.store_batch([f"memory {i}" for i in range(N)], metas, embeddings=vectors)
    small = MemoryAPI(embedder=f"hash-{DIM}", collection_name="small", database_url=module_database_url)
    small_ids = small.store_batch(
        [f"small {i}" for i in range(60)], [{"p2": i % 2} for i in range(60)], embeddings=vectors[:60]
    )
    yield {
        "api": api,
        "vectors": vectors,
        "metas": metas,
        "ids": ids,
        "index": {memory_id: i for i, memory_id in enumerate(ids)},
        "small": small,
        "small_ids": small_ids,
        "queries": unit_vectors(40, DIM, seed=6),
    }


def brute_force(corpus: dict[str, Any], query: np.ndarray, match: Any, k: int = K) -> list[str]:
    rows = [i for i, m in enumerate(corpus["metas"]) if match(m)]
    if not rows:
        return []
    distances = 1.0 - corpus["vectors"][rows] @ query
    order = np.argsort(distances, kind="stable")[:k]
    return [corpus["ids"][rows[j]] for j in order]


FILTERS: list[tuple[dict[str, Any], Any]] = [
    ({"p2": 1}, lambda m: m["p2"] == 1),  # 50%
    ({"p10": 3}, lambda m: m["p10"] == 3),  # 10%
    ({"bucket": {"$lt": 5}}, lambda m: m["bucket"] < 5),  # 5%
    ({"bucket": 7}, lambda m: m["bucket"] == 7),  # 1%
    ({"g": 5}, lambda m: m["g"] == 5),  # 0.1%
    ({"g": {"$in": [1, 2]}, "p2": 0}, lambda m: m["g"] in (1, 2) and m["p2"] == 0),
    (
        {"$or": [{"g": 9}, {"bucket": 3, "p10": 4}]},
        lambda m: m["g"] == 9 or (m["bucket"] == 3 and m["p10"] == 4),
    ),
    ({"$and": [{"p2": 1}, {"rank": {"$gte": 0.8}}]}, lambda m: m["p2"] == 1 and m["rank"] >= 0.8),  # 10%
    ({"tags": "a", "p10": {"$ne": 0}}, lambda m: "a" in m["tags"] and m["p10"] != 0),  # ~13%
    ({"g": -1}, lambda m: False),  # nothing
]


def test_a_small_collection_in_a_large_table_is_searched_exactly(corpus: dict[str, Any]) -> None:
    small: MemoryAPI = corpus["small"]
    query = corpus["queries"][0]
    plan = small.explain_retrieve(None, top_k=K, embedding=query)
    assert plan.path == "exact" and plan.matches_counted == 60, plan
    hits = small.retrieve(None, top_k=K, embedding=query)
    expected_order = np.argsort(1.0 - corpus["vectors"][:60] @ query, kind="stable")[:K]
    assert [h.id for h in hits] == [corpus["small_ids"][i] for i in expected_order]
    plan = small.explain_retrieve(None, top_k=K, embedding=query, filter={"p2": 1})
    assert plan.path == "exact" and plan.matches_counted == 30


def test_the_planner_takes_hnsw_for_unselective_and_exact_for_selective_filters(
    corpus: dict[str, Any],
) -> None:
    api: MemoryAPI = corpus["api"]
    query = corpus["queries"][1]
    unfiltered = api.explain_retrieve(None, top_k=K, embedding=query)
    assert unfiltered.path == "hnsw" and unfiltered.ef_search is not None and unfiltered.ef_search >= 100
    half = api.explain_retrieve(None, top_k=K, embedding=query, filter={"p2": 0})
    assert half.path == "hnsw", half
    assert half.selectivity is not None and 0.3 < half.selectivity < 0.7
    # A filtered walk skips elements: it gets at least twice the unfiltered floor.
    assert half.ef_search is not None and half.ef_search >= 2 * unfiltered.ef_search
    for selective in ({"bucket": 7}, {"g": 5}, {"g": -1}):
        plan = api.explain_retrieve(None, top_k=K, embedding=query, filter=selective)
        assert plan.path == "exact", (selective, plan)
        assert plan.matches_counted == api.count(selective)
        assert "exact scan" in plan.reason


def test_exact_and_ef_search_arguments_force_the_path(corpus: dict[str, Any]) -> None:
    api: MemoryAPI = corpus["api"]
    query = corpus["queries"][2]
    forced_exact = api.explain_retrieve(None, top_k=K, embedding=query, exact=True)
    assert (forced_exact.path, forced_exact.reason, forced_exact.matches_counted) == (
        "exact",
        "forced by exact=True",
        N,
    )
    forced_hnsw = api.explain_retrieve(None, top_k=K, embedding=query, filter={"p10": 3}, exact=False)
    assert forced_hnsw.path == "hnsw" and forced_hnsw.reason.startswith("forced by exact=False")
    tuned = api.explain_retrieve(None, top_k=K, embedding=query, exact=False, ef_search=321)
    assert (tuned.path, tuned.ef_search) == ("hnsw", 321)
    # Forced HNSW on a filter matching a few rows still returns all of them (the exact fallback).
    few = {"g": 11, "p10": {"$lt": 2}}
    matches = api.count(few)
    assert 0 < matches < K
    hits = api.retrieve(None, top_k=K, embedding=query, filter=few, exact=False)
    assert len(hits) == matches


@pytest.mark.parametrize("exact", [None, True])
def test_results_are_never_short_and_the_exact_path_equals_brute_force(
    corpus: dict[str, Any], exact: bool | None
) -> None:
    api: MemoryAPI = corpus["api"]
    for i, (mongo, match) in enumerate(FILTERS):
        query = corpus["queries"][3 + i]
        expected = api.count(mongo)
        for k in (1, K, 25):
            hits = api.retrieve(None, top_k=k, embedding=query, filter=mongo, exact=exact)
            assert len(hits) == min(k, expected), (mongo, k)
            assert all(match(h.metadata) for h in hits)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        plan = api.explain_retrieve(None, top_k=K, embedding=query, filter=mongo, exact=exact)
        if plan.path == "exact":
            truth = brute_force(corpus, query, match)
            got = [h.id for h in api.retrieve(None, top_k=K, embedding=query, filter=mongo, exact=exact)]
            assert got == truth, (mongo, plan)
            assert plan.matches_counted == expected


def test_hnsw_results_keep_their_recall(corpus: dict[str, Any]) -> None:
    api: MemoryAPI = corpus["api"]
    recalls = []
    for query in corpus["vectors"][:20] + 0.1 * corpus["queries"][:20]:
        for mongo, match in [*FILTERS[:2], (None, lambda m: True)]:
            plan = api.explain_retrieve(None, top_k=K, embedding=query, filter=mongo)
            assert plan.path == "hnsw", (mongo, plan)
            got = [h.id for h in api.retrieve(None, top_k=K, embedding=query, filter=mongo)]
            recalls.append(len(set(got) & set(brute_force(corpus, query, match))) / K)
    assert np.mean(recalls) >= 0.97, np.mean(recalls)


def test_the_next_search_sees_a_delete(module_database_url: str) -> None:
    """The probe samples the live rows on every search: no stale plan survives a delete."""
    api = MemoryAPI(embedder="hash-8", collection_name="after_delete", database_url=module_database_url)
    n = 6000
    vectors = unit_vectors(n, 8, seed=9)
    api.store_batch(
        [f"r {i}" for i in range(n)], [{"k": i % 3, "i": i} for i in range(n)], embeddings=vectors
    )
    query = vectors[0]
    before = api.explain_retrieve(None, top_k=K, embedding=query, filter={"k": 1})
    assert before.path == "hnsw", before
    assert before.matches_estimated is not None and 1000 < before.matches_estimated < 3000
    # With only 33 matches left the filter is searched exactly, none missing.
    assert api.delete_by_filter({"k": 1, "i": {"$gte": 100}}) == 1967
    after = api.explain_retrieve(None, top_k=K, embedding=query, filter={"k": 1})
    assert after.path == "exact" and after.matches_counted == 33, after
    assert len(api.retrieve(None, top_k=50, embedding=query, filter={"k": 1})) == 33


def test_recall_right_after_deleting_two_thirds(module_database_url: str) -> None:
    """Dead tuples stay in the HNSW graph until VACUUM; the planner counts them in the graph's
    size, so the searches keep their rows and their recall right after the delete."""
    dim, n = 16, 6000
    api = MemoryAPI(embedder=f"hash-{dim}", collection_name="deletes", database_url=module_database_url)
    vectors = unit_vectors(n, dim, seed=11)
    ids = api.store_batch(
        [f"d {i}" for i in range(n)], [{"g": i % 3, "h": i % 20} for i in range(n)], embeddings=vectors
    )
    assert api.delete_by_filter({"g": {"$in": [0, 1]}}) == 2 * n // 3
    alive = np.array([i % 3 == 2 for i in range(n)])
    recalls = []
    for query in unit_vectors(15, dim, seed=12):
        for mongo, mask in ((None, alive), ({"h": {"$lt": 10}}, alive & (np.arange(n) % 20 < 10))):
            rows = np.flatnonzero(mask)
            truth = {ids[rows[j]] for j in np.argsort(1.0 - vectors[rows] @ query)[:K]}
            hits = api.retrieve(None, top_k=K, embedding=query, filter=mongo)
            assert len(hits) == K
            recalls.append(len({h.id for h in hits} & truth) / K)
    assert np.mean(recalls) >= 0.98, np.mean(recalls)


@pytest.mark.parametrize(("distance", "precision"), [("l2", "full"), ("ip", "full"), ("cosine", "half")])
def test_other_distances_and_half_precision(module_database_url: str, distance: str, precision: str) -> None:
    dim, n = 24, 400
    api = MemoryAPI(
        embedder=f"hash-{dim}",
        collection_name=f"kind_{distance}_{precision}",
        database_url=module_database_url,
        distance=distance,
        precision=precision,
    )
    vectors = unit_vectors(n, dim, seed=13) * np.linspace(0.5, 2.0, n, dtype=np.float32)[:, None]
    ids = api.store_batch([f"x {i}" for i in range(n)], [{"i": i} for i in range(n)], embeddings=vectors)
    query = unit_vectors(1, dim, seed=14)[0]
    if distance == "l2":
        dist = np.linalg.norm(vectors - query, axis=1)
    elif distance == "ip":
        dist = -(vectors @ query)
    else:
        dist = 1.0 - (vectors @ query) / np.linalg.norm(vectors, axis=1)
    truth = [ids[i] for i in np.argsort(dist)[:K]]
    exact = api.retrieve(None, top_k=K, embedding=query, exact=True)
    assert [h.id for h in exact][:5] == truth[:5]
    hnsw = api.retrieve(None, top_k=K, embedding=query, exact=False)
    assert len(hnsw) == K and len({h.id for h in hnsw} & set(truth)) >= 8
    assert api.explain_retrieve(None, top_k=K, embedding=query).path == "exact"


def test_filters_of_one_shape_each_bind_their_own_values(corpus: dict[str, Any]) -> None:
    """Statements are reused across filters of the same shape: each search must still see its
    own values (and its own query vector)."""
    api: MemoryAPI = corpus["api"]
    for i, g in enumerate((3, 4, 5)):
        query = corpus["queries"][30 + i]
        hits = api.retrieve(None, top_k=K, embedding=query, filter={"g": g})
        assert [h.id for h in hits] == brute_force(corpus, query, lambda m, g=g: m["g"] == g)
    for i, lo in enumerate((0, 40, 80)):
        query = corpus["queries"][33 + i]
        mongo = {"bucket": {"$gte": lo, "$lt": lo + 2}, "g": {"$ne": 7}}
        hits = api.retrieve(None, top_k=K, embedding=query, filter=mongo)
        expected = brute_force(corpus, query, lambda m, lo=lo: lo <= m["bucket"] < lo + 2 and m["g"] != 7)
        assert [h.id for h in hits] == expected
