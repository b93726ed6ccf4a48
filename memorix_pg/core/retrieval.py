"""Ranked retrieval: vector, text and hybrid modes, recency and importance scores, MMR,
rerankers and min_score, and check_recall. The planner lives in planner.py, the statements in
search.py, hybrid.py and scoring.py; this module checks the arguments and shapes the results."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import hybrid, reads, recall
from ..errors import InvalidInput
from ..hybrid import MODES, Fusion
from ..memory import Memory
from ..rerank import Reranker, mmr_order, rerank_scores
from ..scope import Scope
from ..scoring import Scoring, rank_scored
from ..search import DISTANCE, SearchPlan, search
from ..statements import Filter
from ..steps import Call, Operation, offload
from ..validation import check_embedding, check_text
from ..vector_index import score_from_distance
from .arguments import check_bool, check_fusion, check_int, check_number, check_scoring
from .base import CoreBase
from .reading import MAX_TOP_K

__all__ = ["Retrieval"]

FETCH_K = 20  # candidates for mmr and rerankers when fetch_k is not given
MAX_RECALL_QUERIES = 10_000  # check_recall runs an exact scan per query
MAX_RECALL_TOP_K = 1000  # pgvector's largest ef_search: a walk returns no more


def _vector(memory: Memory) -> npt.NDArray[np.float32]:
    assert memory.embedding is not None  # fetched with include_embeddings
    return memory.embedding


def _at_least(found: tuple[list[Memory], SearchPlan], floor: float) -> tuple[list[Memory], SearchPlan]:
    """``min_score``: the results scoring below ``floor`` dropped (an unranked result is kept)."""
    memories, plan = found
    return [m for m in memories if m.score is None or m.score >= floor], plan


class Retrieval(CoreBase):
    """The calls that rank memories by a query."""

    def retrieve(
        self,
        query: str | None,
        top_k: int,
        filter: Mapping[str, Any] | None,
        embedding: Sequence[float] | npt.NDArray[np.floating[Any]] | None,
        exact: bool | None,
        ef_search: int | None,
        include_embeddings: bool = False,
        mode: str = "vector",
        fusion: Fusion | None = None,
        ranks: bool = False,
        scoring: Scoring | None = None,
        min_score: float | None = None,
        mmr: bool = False,
        fetch_k: int | None = None,
        lambda_mult: float = 0.5,
        reranker: Reranker | None = None,
        explain: bool = False,
    ) -> Call[tuple[list[Memory], SearchPlan]]:
        check_int(top_k, "top_k", 1, MAX_TOP_K)
        if mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r:.80}")
        if mode != "vector":
            self.sealer.check_text_search(mode)
        fused = check_fusion(fusion or Fusion())
        check_bool(ranks, "ranks")
        scores = check_scoring(scoring or Scoring())
        if scores.active and mode != "vector":
            raise InvalidInput(
                "recency_weight and importance_weight combine with the similarity of mode='vector'; "
                f"mode={mode!r} ranks by fused ranks"
            )
        floor = None if min_score is None else check_number(min_score, "min_score", signed=True)
        check_bool(mmr, "mmr")
        if reranker is not None and not callable(reranker):
            raise InvalidInput(
                f"reranker must be a callable (query, memories) -> scores, got {reranker!r:.80}"
            )
        if fetch_k is not None:
            check_int(fetch_k, "fetch_k", 1, MAX_TOP_K)
        lam = check_number(lambda_mult, "lambda_mult")
        if lam > 1:
            raise InvalidInput(f"lambda_mult must be in [0, 1], got {lambda_mult!r}")
        reranking = mmr or reranker is not None
        if mmr and mode == "text":
            raise InvalidInput("mmr needs the vectors of the candidates: use mode='vector' or 'hybrid'")
        if reranking and not query and embedding is None:
            raise InvalidInput("mmr and reranker need a query (an empty one ranks nothing)")
        if reranker is not None and not query:
            raise InvalidInput("a reranker needs the query text")
        fetch = max(fetch_k or FETCH_K, top_k) if reranking else top_k
        call = self._retrieve(
            query,
            fetch,
            filter,
            embedding,
            exact,
            ef_search,
            include_embeddings or mmr,
            mode,
            fused,
            ranks,
            scores,
            explain,
        )
        if not reranking and floor is None:
            return call
        given = check_embedding(embedding, self.embedding.dim) if embedding is not None else None

        def after() -> Operation[tuple[list[Memory], SearchPlan]]:
            found, plan = yield from call.make()
            if mmr:
                q = given if given is not None else (yield from offload(self.embedding.one, query))
                vectors = np.stack([_vector(m) for m in found]) if found else np.empty((0, 1), np.float32)
                picked = mmr_order(q, vectors, top_k if reranker is None else fetch, lam)
                found = [found[i] for i in picked]
                if not include_embeddings:
                    found = [dataclasses.replace(m, embedding=None) for m in found]
            if reranker is not None:
                assert query is not None
                scored = yield from offload(rerank_scores, reranker, query, found)
                order = sorted(range(len(found)), key=lambda i: -scored[i])
                found = [
                    dataclasses.replace(
                        found[i],
                        score=scored[i],
                        ranks={
                            **(found[i].ranks or {}),
                            "before_rerank": i + 1,
                            "ranking_score": found[i].score,
                        }
                        if ranks
                        else None,
                    )
                    for i in order
                ]
            found = found[:top_k]
            return _at_least((found, plan), floor) if floor is not None else (found, plan)

        return Call(after, idempotent=call.idempotent, read=call.read)

    def _retrieve(
        self,
        query: str | None,
        top_k: int,
        filter: Mapping[str, Any] | None,
        embedding: Sequence[float] | npt.NDArray[np.floating[Any]] | None,
        exact: bool | None,
        ef_search: int | None,
        include_embeddings: bool,
        mode: str,
        fused: Fusion,
        ranks: bool,
        scores: Scoring,
        explain: bool = False,
    ) -> Call[tuple[list[Memory], SearchPlan]]:
        vectors = check_bool(include_embeddings, "include_embeddings")
        if ef_search is not None:
            check_int(ef_search, "ef_search", 1)
        if exact is not None and not isinstance(exact, bool):
            raise InvalidInput(f"exact must be True, False or None, got {exact!r}")
        if query is not None and not isinstance(query, str):
            raise InvalidInput(f"query must be a str or None, got {type(query).__name__}")
        f = self.compiled_filter(filter)
        vector = check_embedding(embedding, self.embedding.dim) if embedding is not None else None
        text = check_text(query, "query") if vector is None and query else None
        if mode != "vector":
            return self._ranked(query, top_k, f, vector, mode, fused, exact, ef_search, vectors, ranks)

        def body(scope: Scope) -> Operation[tuple[list[Memory], SearchPlan]]:
            if vector is None and text is None:
                rows = yield from reads.newest(scope, f, top_k, vectors)
                recent = SearchPlan("recent", "empty query: newest first", None)
                return [self.read_row(r, vectors) for r in rows], recent
            q = vector if vector is not None else (yield from offload(self.embedding.one, text))
            if scores.active:
                return (yield from self._scored(scope, f, q, top_k, scores, exact, ef_search, vectors, ranks))
            rows, plan = yield from search(
                scope,
                self.planner,
                f,
                q,
                top_k,
                exact=exact,
                ef_search=ef_search,
                embeddings=vectors,
                explain=explain,
            )
            distance = scope.info.distance
            return [
                self.memory(
                    r,
                    score_from_distance(distance, float(r[DISTANCE])),
                    embedding=r[DISTANCE + 1] if vectors else None,
                    ranks={"vector_rank": i + 1} if ranks else None,
                )
                for i, r in enumerate(rows)
            ], plan

        return self.scoped(body, idempotent=True, read=True)

    def _scored(
        self,
        scope: Scope,
        f: Filter,
        q: npt.NDArray[np.float32],
        top_k: int,
        scores: Scoring,
        exact: bool | None,
        ef_search: int | None,
        vectors: bool,
        ranks: bool,
    ) -> Operation[tuple[list[Memory], SearchPlan]]:
        def metadata_of(row: Sequence[Any]) -> Mapping[str, Any]:
            return self.sealer.open_metadata(row[0], dict(row[2]))

        found, plan = yield from rank_scored(
            scope,
            self.planner,
            f,
            q,
            top_k,
            scores,
            metadata_of,
            exact=exact,
            ef_search=ef_search,
            embeddings=vectors,
        )
        return [
            self.memory(
                s.row,
                s.score,
                embedding=s.row[DISTANCE + 1] if vectors else None,
                ranks=dict(s.parts) if ranks else None,
            )
            for s in found
        ], plan

    def _ranked(
        self,
        query: str | None,
        top_k: int,
        f: Filter,
        vector: npt.NDArray[np.float32] | None,
        mode: str,
        fusion: Fusion,
        exact: bool | None,
        ef_search: int | None,
        vectors: bool,
        ranks: bool,
    ) -> Call[tuple[list[Memory], SearchPlan]]:
        """``retrieve`` in mode text or hybrid: the query's words are needed (an embedding alone
        cannot be searched as text); an empty query lists the newest, as in mode vector."""
        text = check_text(query, "query") if query else None
        if text is None and vector is not None:
            raise InvalidInput(f"mode={mode!r} needs the query text (an embedding alone has no words)")

        def body(scope: Scope) -> Operation[tuple[list[Memory], SearchPlan]]:
            if text is None:
                rows = yield from reads.newest(scope, f, top_k, vectors)
                recent = SearchPlan("recent", "empty query: newest first", None)
                return [self.read_row(r, vectors) for r in rows], recent
            q = None
            if mode == "hybrid":
                q = vector if vector is not None else (yield from offload(self.embedding.one, text))
            found, plan = yield from hybrid.rank(
                scope,
                self.planner,
                f,
                text,
                q,
                top_k,
                fusion,
                exact=exact,
                ef_search=ef_search,
                embeddings=vectors,
            )
            distance = scope.info.distance
            memories = []
            for r in found:
                detail = dict(r.ranks)
                if r.distance is not None:
                    detail["similarity"] = score_from_distance(distance, r.distance)
                memories.append(
                    self.memory(r.row, r.score, embedding=r.embedding, ranks=detail if ranks else None)
                )
            return memories, plan

        return self.scoped(body, idempotent=True, read=True)

    def check_recall(
        self, queries: int, top_k: int, filter: Mapping[str, Any] | None, target: float
    ) -> Call[recall.RecallReport]:
        check_int(queries, "queries", 1, MAX_RECALL_QUERIES)
        check_int(top_k, "top_k", 1, MAX_RECALL_TOP_K)
        if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
            raise InvalidInput(f"target must be a number in (0, 1], got {target!r}")
        f = self.compiled_filter(filter)
        return self.scoped(
            lambda scope: recall.check_recall(scope, self.planner, f, queries, top_k, float(target)),
            idempotent=True,
            read=True,
        )
