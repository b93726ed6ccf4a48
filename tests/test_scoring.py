"""``retrieve`` with recency and importance: the combined top k against brute force in numpy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from memorix_pg import InvalidInput
from tests.support.helpers import unit_vectors

DIM = 16


def _collection(api, n: int, seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    vectors = unit_vectors(n, dim=DIM, seed=seed)
    now = datetime.now(UTC)
    ages = rng.uniform(0, 30 * 86400, n)
    created = [now - timedelta(seconds=float(a)) for a in ages]
    importance = rng.integers(1, 11, n)
    metas = [
        {"i": i, "importance": int(v)} if i % 7 else {"i": i}  # every 7th has none: importance 0
        for i, v in enumerate(importance)
    ]
    ids = api.store_batch([f"m{i}" for i in range(n)], metas, embeddings=vectors, created_at=created)
    return ids, vectors, created, metas


def _brute_force(vectors, created, metas, query, k, w_sim, w_rec, half_life, w_imp, keep=None):  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    ages = np.array([(now - c).total_seconds() for c in created])
    importance = np.array([(m["importance"] - 1) / 9 if "importance" in m else 0.0 for m in metas])
    score = w_sim * (vectors @ query) + w_rec * 0.5 ** (ages / half_life.total_seconds()) + w_imp * importance
    if keep is not None:
        score = np.where(keep, score, -np.inf)
    order = np.argsort(-score)[:k]
    return order, score[order]


@pytest.mark.parametrize(
    ("w_sim", "w_rec", "w_imp"), [(1.0, 0.5, 0.3), (0.2, 1.0, 0.0), (0.1, 0.3, 1.0), (0.0, 1.0, 0.5)]
)
def test_combined_top_k_is_exact(make_api, w_sim: float, w_rec: float, w_imp: float) -> None:
    api = make_api("scored", embedder=f"hash-{DIM}")
    ids, vectors, created, metas = _collection(api, 600, seed=3)
    half_life = timedelta(days=3)
    for q in unit_vectors(5, dim=DIM, seed=11):
        found = api.retrieve(
            None,
            top_k=10,
            embedding=q,
            similarity_weight=w_sim,
            recency_weight=w_rec,
            half_life=half_life,
            importance_key="importance",
            importance_weight=w_imp,
            ranks=True,
        )
        order, scores = _brute_force(vectors, created, metas, q, 10, w_sim, w_rec, half_life, w_imp)
        assert [m.score for m in found] == pytest.approx(list(scores), abs=1e-4)
        assert [m.id for m in found] == [ids[i] for i in order]
        parts = found[0].ranks
        assert parts is not None and set(parts) == {"similarity", "recency", "importance"}


def test_combined_top_k_with_a_filter_and_past_the_first_fetch(make_api) -> None:
    api = make_api("scored_big", embedder=f"hash-{DIM}")
    ids, vectors, created, metas = _collection(api, 1500, seed=5)
    keep = np.array([m["i"] % 3 == 0 for m in metas])
    q = unit_vectors(1, dim=DIM, seed=2)[0]
    for exact in (True, None):
        found = api.retrieve(
            None,
            top_k=20,
            embedding=q,
            filter={"i": {"$in": [i for i in range(1500) if i % 3 == 0]}} if exact else None,
            recency_weight=2.0,
            half_life=timedelta(days=1),
            exact=exact,
        )
        order, scores = _brute_force(
            vectors, created, metas, q, 20, 1.0, 2.0, timedelta(days=1), 0.0, keep if exact else None
        )
        assert [m.id for m in found] == [ids[i] for i in order]
        assert [m.score for m in found] == pytest.approx(list(scores), abs=1e-4)


def test_min_score_drops_weaker_results(make_api) -> None:
    api = make_api("floor", embedder=f"hash-{DIM}")
    ids, vectors, _, _ = _collection(api, 50, seed=8)
    q = vectors[4]
    everything = api.retrieve(None, top_k=50, embedding=q)
    floor = everything[9].score
    kept = api.retrieve(None, top_k=50, embedding=q, min_score=floor)
    assert [m.id for m in kept] == [m.id for m in everything if m.score >= floor]
    assert len(kept) >= 10 and kept[0].id == ids[4]
    ranked = api.retrieve(None, top_k=50, embedding=q, recency_weight=1.0)
    floor = (ranked[2].score + ranked[3].score) / 2  # ages grow between calls: not on a boundary
    recent = api.retrieve(None, top_k=50, embedding=q, recency_weight=1.0, min_score=floor)
    assert [m.id for m in recent] == [m.id for m in ranked[:3]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"recency_weight": -1}, "recency_weight"),
        ({"recency_weight": 1, "half_life": timedelta(0)}, "half_life"),
        ({"recency_weight": 1, "half_life": 3600}, "half_life"),
        ({"importance_weight": float("nan"), "importance_key": "x"}, "importance_weight"),
        ({"importance_weight": 1, "importance_key": ""}, "importance_key"),
        ({"importance_weight": 1, "importance_key": "x", "importance_scale": (5, 5)}, "importance_scale"),
        ({"min_score": "high"}, "min_score"),
        ({"recency_weight": 1, "mode": "hybrid"}, "mode='vector'"),
    ],
)
def test_bad_scoring_arguments_are_refused(make_api, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    api = make_api("bad_scores", embedder=f"hash-{DIM}")
    with pytest.raises(InvalidInput, match=message):
        api.retrieve("x", **kwargs)
