"""``retrieve(mmr=True)`` and ``retrieve(reranker=...)`` over the fetched candidates."""

from __future__ import annotations

import numpy as np
import pytest

from memorix_pg import InvalidInput
from memorix_pg.rerank import CrossEncoderReranker, mmr_order

DIM = 8


def _brute_mmr(q, vectors, k, lam):  # type: ignore[no-untyped-def]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q)
    picked: list[int] = []
    while len(picked) < min(k, len(unit)):
        best, best_value = -1, -np.inf
        for i in range(len(unit)):
            if i in picked:
                continue
            redundancy = max((float(unit[i] @ unit[j]) for j in picked), default=0.0)
            value = lam * float(unit[i] @ qn) - (1 - lam) * redundancy
            if value > best_value:
                best, best_value = i, value
        picked.append(best)
    return picked


def test_mmr_order_matches_the_definition() -> None:
    rng = np.random.default_rng(4)
    for lam in (0.0, 0.3, 0.5, 1.0):
        vectors = rng.standard_normal((30, DIM)).astype(np.float32)
        q = rng.standard_normal(DIM).astype(np.float32)
        assert mmr_order(q, vectors, 7, lam) == _brute_mmr(q, vectors, 7, lam)


def test_mmr_trades_similarity_for_diversity(make_api) -> None:  # type: ignore[no-untyped-def]
    api = make_api("mmr", embedder=f"hash-{DIM}")
    base = np.eye(DIM, dtype=np.float32)
    near = [base[0] + 0.01 * i * base[1] for i in range(5)]  # five near-copies close to the query
    far = [base[0] + base[2], base[0] + 1.2 * base[3]]  # less similar, but different (and not tied)
    vectors = np.stack(near + far)
    ids = api.store_batch([f"v{i}" for i in range(len(vectors))], embeddings=vectors)
    q = base[0]
    plain = api.retrieve(None, top_k=3, embedding=q)
    assert {m.id for m in plain} <= set(ids[:5])
    diverse = api.retrieve(None, top_k=3, embedding=q, mmr=True, fetch_k=7, lambda_mult=0.5)
    assert [m.id for m in diverse] == [ids[i] for i in _brute_mmr(q, vectors, 3, 0.5)]
    assert {ids[5], ids[6]} & {m.id for m in diverse}
    assert all(m.embedding is None for m in diverse)
    same = api.retrieve(None, top_k=3, embedding=q, mmr=True, fetch_k=7, lambda_mult=1.0)
    assert [m.id for m in same] == [m.id for m in plain]
    with pytest.raises(InvalidInput, match="lambda_mult"):
        api.retrieve(None, embedding=q, mmr=True, lambda_mult=2)
    with pytest.raises(InvalidInput, match="mmr"):
        api.retrieve("v1", mmr=True, mode="text")


def test_a_reranker_orders_the_candidates(make_api) -> None:  # type: ignore[no-untyped-def]
    api = make_api("rerank", embedder="hash-32")
    texts = ["short", "a longer text", "the longest text of them all", "mid size", "tiny"]
    api.store_batch(texts)
    seen: list[tuple[str, int]] = []

    def by_length(query, memories):  # type: ignore[no-untyped-def]
        seen.append((query, len(memories)))
        return [len(m.text) for m in memories]

    found = api.retrieve("text", top_k=2, reranker=by_length, fetch_k=5, ranks=True)
    assert [m.text for m in found] == ["the longest text of them all", "a longer text"]
    assert [m.score for m in found] == [28.0, 13.0]
    assert seen == [("text", 5)]
    assert found[0].ranks is not None and "before_rerank" in found[0].ranks
    hybrid = api.retrieve("text", top_k=1, reranker=by_length, mode="hybrid", fetch_k=3)
    assert len(hybrid) == 1
    floor = api.retrieve("text", top_k=5, reranker=by_length, fetch_k=5, min_score=10)
    assert [m.text for m in floor] == ["the longest text of them all", "a longer text"]
    with pytest.raises(InvalidInput, match="scores for"):
        api.retrieve("text", reranker=lambda q, ms: [1.0])
    with pytest.raises(InvalidInput, match="reranker"):
        api.retrieve("text", reranker="not callable")


def test_the_cross_encoder_adapter_scores_query_text_pairs(make_api) -> None:  # type: ignore[no-untyped-def]
    class Model:  # the part of sentence_transformers.CrossEncoder the adapter uses
        def __init__(self) -> None:
            self.calls: list[list[tuple[str, str]]] = []

        def predict(self, pairs, batch_size=32):  # type: ignore[no-untyped-def]
            self.calls.append(list(pairs))
            return np.array([float(text.count(query)) for query, text in pairs], dtype=np.float32)

    api = make_api("cross", embedder="hash-32")
    api.store_batch(["tea tea tea", "tea", "coffee", "tea tea"])
    model = Model()
    found = api.retrieve("tea", top_k=3, reranker=CrossEncoderReranker(model), fetch_k=4)
    assert [m.text for m in found] == ["tea tea tea", "tea tea", "tea"]
    assert len(model.calls) == 1 and len(model.calls[0]) == 4
