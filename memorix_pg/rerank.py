"""After the ranking: maximal marginal relevance and rerankers (``retrieve(mmr=..., reranker=...)``).

Both work on a candidate list that the ranking fetched (``fetch_k`` memories, at least
``top_k``). MMR (Carbonell and Goldstein, 1998) picks, one at a time, the candidate that best
trades similarity to the query (weight ``lambda_mult``) against similarity to the candidates
already picked, over the stored vectors. A reranker is any callable ``(query, memories) ->
scores`` (higher is better), e.g. a cross-encoder: :class:`CrossEncoderReranker`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .errors import InvalidInput
from .memory import Memory

__all__ = ["CrossEncoderReranker", "Reranker", "mmr_order", "rerank_scores"]

Reranker = Callable[[str, Sequence[Memory]], Sequence[float]]


def _unit(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    as_float = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(as_float, axis=-1, keepdims=True)
    return as_float / np.where(norms == 0, 1.0, norms)


def mmr_order(
    query: npt.NDArray[np.float32], candidates: npt.NDArray[np.float32], k: int, lambda_mult: float
) -> list[int]:
    """Indices of the ``k`` candidates MMR picks, in the order picked (cosine similarities)."""
    if len(candidates) == 0:
        return []
    vectors = _unit(candidates)
    to_query = vectors @ _unit(query)
    picked: list[int] = []
    # The highest similarity of each candidate to any picked one (-inf before the first pick).
    nearest_picked = np.full(len(vectors), -np.inf)
    available = np.ones(len(vectors), dtype=bool)
    for _ in range(min(k, len(vectors))):
        redundancy = np.where(np.isfinite(nearest_picked), nearest_picked, 0.0)
        value = lambda_mult * to_query - (1.0 - lambda_mult) * redundancy
        value[~available] = -np.inf
        best = int(np.argmax(value))
        picked.append(best)
        available[best] = False
        nearest_picked = np.maximum(nearest_picked, vectors @ vectors[best])
    return picked


def rerank_scores(reranker: Reranker, query: str, memories: Sequence[Memory]) -> list[float]:
    """The reranker's scores, checked: one finite number per memory."""
    scores = list(reranker(query, memories))
    if len(scores) != len(memories):
        raise InvalidInput(f"the reranker returned {len(scores)} scores for {len(memories)} memories")
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError):
        raise InvalidInput("the reranker must return numbers, one per memory") from None
    if not all(np.isfinite(values)):
        raise InvalidInput("the reranker returned a score that is not a finite number")
    return values


class _Predictor(Protocol):
    def predict(self, sentences: list[tuple[str, str]], /, **kwargs: Any) -> Any: ...


class CrossEncoderReranker:
    """A sentence-transformers ``CrossEncoder`` as a reranker: scores each (query, text) pair.

    ``model`` is a ``CrossEncoder`` (or anything with its ``predict``), or a model name or path
    loaded with ``sentence_transformers.CrossEncoder`` on first use (the package and the
    weights must be installed: nothing is downloaded by the library).
    """

    def __init__(self, model: _Predictor | str, batch_size: int = 32) -> None:
        self._model = model
        self.batch_size = batch_size

    def _predictor(self) -> _Predictor:
        model = self._model
        if isinstance(model, str):
            from sentence_transformers import CrossEncoder  # optional: only when given a name

            model = self._model = CrossEncoder(model, local_files_only=True)
        return model

    def __call__(self, query: str, memories: Sequence[Memory]) -> list[float]:
        if not memories:
            return []
        pairs = [(query, m.text) for m in memories]
        scores = self._predictor().predict(pairs, batch_size=self.batch_size)
        return [float(s) for s in np.asarray(scores, dtype=np.float64).reshape(-1)]
