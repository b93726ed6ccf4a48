"""Checks of the arguments the façades pass on, each raising InvalidInput that names what was
wrong before anything is sent to the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from ..errors import InvalidInput
from ..hybrid import Fusion
from ..scoring import Scoring

__all__ = [
    "check_bool",
    "check_fusion",
    "check_int",
    "check_number",
    "check_scoring",
    "check_share",
    "expiry",
    "positive_timedelta",
]


def positive_timedelta(value: object, name: str) -> timedelta:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise InvalidInput(f"{name} must be a positive timedelta, got {value!r}")
    return value


def expiry(ttl: timedelta | None) -> datetime | None:
    if ttl is None:
        return None
    positive_timedelta(ttl, "ttl")
    try:
        return datetime.now(UTC) + ttl
    except OverflowError:
        raise InvalidInput(f"ttl {ttl!r} puts the expiry past the year 9999") from None


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be True or False, got {value!r:.80}")
    return value


def check_number(value: object, name: str, positive: bool = False, signed: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number, got {value!r:.80}")
    if signed:
        return float(value)
    if value < 0 or (positive and value == 0):
        raise InvalidInput(f"{name} must be {'positive' if positive else '>= 0'}, got {value!r}")
    return float(value)


def check_scoring(scoring: object) -> Scoring:
    if not isinstance(scoring, Scoring):
        raise InvalidInput(f"scoring must be a Scoring, got {type(scoring).__name__}")
    key = scoring.importance_key
    if key is not None and (not isinstance(key, str) or not key or any(not p for p in key.split("."))):
        raise InvalidInput(f"importance_key must be a metadata key (dotted for nested ones), got {key!r:.80}")
    scale = scoring.importance_scale
    if (
        not isinstance(scale, tuple | list)
        or len(scale) != 2
        or check_number(scale[0], "importance_scale[0]", signed=True)
        >= check_number(scale[1], "importance_scale[1]", signed=True)
    ):
        raise InvalidInput(f"importance_scale must be (low, high) numbers with low < high, got {scale!r:.80}")
    return Scoring(
        check_number(scoring.similarity_weight, "similarity_weight"),
        check_number(scoring.recency_weight, "recency_weight"),
        positive_timedelta(scoring.half_life, "half_life"),
        key,
        check_number(scoring.importance_weight, "importance_weight"),
        (float(scale[0]), float(scale[1])),
    )


def check_fusion(fusion: object) -> Fusion:
    if not isinstance(fusion, Fusion):
        raise InvalidInput(f"fusion must be a Fusion, got {type(fusion).__name__}")
    return Fusion(
        check_number(fusion.rrf_k, "rrf_k"),
        check_number(fusion.w_vector, "vector_weight"),
        check_number(fusion.w_text, "text_weight"),
        check_share(fusion.text_cutoff, "text_cutoff"),
    )


def check_share(value: object, name: str) -> float:
    """A number from 0 to 1."""
    share = check_number(value, name)
    if share > 1:
        raise InvalidInput(f"{name} must be from 0 to 1, got {value!r}")
    return share


def check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise InvalidInput(f"{name} must be an int {bound}, got {value!r}")
    return value
