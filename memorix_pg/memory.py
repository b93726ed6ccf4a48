"""The value returned by ``retrieve``, ``get`` and ``list``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Memory"]


@dataclass(frozen=True)
class Memory:
    """One stored memory.

    ``score`` is the cosine similarity to the query (higher is closer; for ``l2`` collections
    minus the distance, for ``ip`` the inner product), and ``None`` when no query ranked it.
    In ``mode="text"`` ``score`` is the share of the query's weight the text holds (0..1), in
    ``mode="hybrid"`` the fused reciprocal-rank score.
    ``updated_at`` is ``created_at`` until the memory is replaced (a stored id again) or updated.
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    created_at: datetime | None = None
    collection: str = ""
    updated_at: datetime | None = None
    # Filled by reads that ask for them (``include_embeddings=True``); not part of equality.
    embedding: npt.NDArray[np.float32] | None = field(default=None, compare=False, repr=False)
    expires_at: datetime | None = field(default=None, compare=False)
    # How the ranking saw it (``retrieve(..., ranks=True)``): the arms' ranks and scores.
    ranks: dict[str, Any] | None = field(default=None, compare=False)
