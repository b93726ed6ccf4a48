"""The corpus and the hypothesis strategies of the filter property tests (tests/test_filters_oracle.py):
random documents, and filters over every operator, kept to what mongomock and the model can judge."""

from __future__ import annotations

import datetime as dt
import random
import re
from typing import Any

from hypothesis import strategies as st

from tests.support.mongo_model import is_ops

# --------------------------------------------------------------------------------------------
# Corpus and filter generation
# --------------------------------------------------------------------------------------------

TOP_KEYS = ["a", "b", "c", 'q"t']
SUB_KEYS = ["a", "b", "c"]
NUMBERS = [-3, -1, 2, 2.0, 2.5, 3, 7, 10, -1.5, 123456789012]  # no 0/1: mongomock's True == 1
STRINGS = ["", "x", "y", "ab", "aB", "Z", "b", "é", "2", "true", "[x", "x\u00e9y", "2024-01-01T00:00:00",
           "2024-06-01T12:30:00+00:00", "2025-01-01"]  # fmt: skip
SCALARS: list[Any] = [*NUMBERS, *STRINGS, True, False, None]
DATES = [dt.datetime(2024, 1, 1), dt.date(2025, 1, 1), dt.datetime(2024, 6, 1, 12, 30, tzinfo=dt.UTC)]


def _random_value(rng: random.Random, depth: int) -> Any:
    r = rng.random()
    if depth <= 0 or r < 0.55:
        return rng.choice(SCALARS)
    if r < 0.8:
        return [_random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return _random_object(rng, depth - 1, SUB_KEYS)


def _random_object(rng: random.Random, depth: int, keys: list[str]) -> dict[str, Any]:
    chosen = sorted(rng.sample(keys, rng.randint(0, len(keys))))  # sorted: MongoDB key order matters
    return {k: _random_value(rng, depth) for k in chosen}


def make_corpus(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs = [_random_object(rng, 3, TOP_KEYS) for _ in range(n)]
    # Hand-picked shapes that random generation hits rarely.
    docs += [
        {},
        {"a": None},
        {"a": []},
        {"a": [[]]},
        {"a": {}},
        {"a": [{"b": 2}, {}]},
        {"a": [{"b": [2, 3]}]},
        {"a": [[{"b": 2}]]},
        {"a": [{"b": {"c": 2}}, {"b": [{"c": 3}]}]},
        {"a": {"b": {"c": [2, [3]]}}},
        {"a": [2, [2], [[2]]]},
        {"a": [{"0": 2}, 3]},
        {"a": {"0": "x"}},
        {"a": [True, False]},
        {"a": ["x", "y"], "b": ["x"]},
        {'q"t': "x", "a": 2},
        {"b": 2.0},
        {"b": [2, 2.5, "2"]},
    ]
    return docs


PATHS = [
    "a",
    "b",
    "c",
    'q"t',
    "a.b",
    "a.c",
    "b.a",
    "a.b.c",
    "b.b.a",
    "a.b.c.a",
    "a.0",
    "a.1",
    "a.0.b",
    "b.1.a",
    "a.b.0",
]
REGEXES = ["^x", "x$", "a.", "^$", "B", "[xy]", "^2024-0[16]", "é", "^(ab|x)$", "y.*"]
LIKES = ["x%", "%b", "a_", "%", "2024%", "_", "%é%", "A%", "%x%"]

scalars = st.sampled_from([*SCALARS, *DATES])
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(SUB_KEYS), inner, max_size=2).map(lambda d: dict(sorted(d.items())))
    ),
    max_leaves=4,
)
comparables = st.sampled_from([*NUMBERS, *STRINGS, True, False, None, *DATES])


@st.composite
def operator_docs(draw: st.DrawFn, depth: int = 1, value_form: bool = False) -> Any:
    """One field's condition; ``depth`` bounds nesting ($elemMatch / $not inside)."""
    kind = draw(st.integers(0, 17) if depth >= 0 else st.sampled_from([1, 2, 3, 5, 6, 7, 8, 12, 13, 15]))
    if value_form and kind in (0, 9):  # no plain values, no $all (see _elem_to_mongomock)
        kind = 1
    if kind == 0:
        if draw(st.integers(0, 5)) == 0:
            return re.compile(draw(st.sampled_from(REGEXES)), draw(st.sampled_from([0, re.IGNORECASE])))
        return draw(values)
    if kind == 1:
        return {"$eq": draw(values)}
    if kind == 2:
        return {"$ne": draw(values)}
    if kind in (3, 4):
        ops = draw(
            st.lists(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), min_size=1, max_size=2, unique=True)
        )
        return {op: draw(comparables) for op in ops}
    if kind == 5:
        return {"$in": draw(st.lists(values, max_size=3))}
    if kind == 6:
        return {"$nin": draw(st.lists(values, max_size=3))}
    if kind == 7:
        return {"$exists": draw(st.booleans())}
    if kind == 8:
        return {"$size": draw(st.integers(0, 3))}
    if kind == 9:
        if depth >= 0 and draw(st.integers(0, 4)) == 0:
            return {
                "$all": [{"$elemMatch": draw(value_ops(depth - 1))}, {"$elemMatch": draw(filters(depth=0))}]
            }
        return {"$all": draw(st.lists(values, max_size=3))}
    if kind == 10:
        if depth > 0 and draw(st.booleans()):
            return {"$elemMatch": draw(filters(depth=0))}
        return {"$elemMatch": draw(value_ops(depth - 1))}
    if kind == 11:
        if draw(st.integers(0, 3)) == 0:
            return {"$not": re.compile(draw(st.sampled_from(REGEXES)))}
        inner = draw(operator_docs(depth=depth - 1, value_form=value_form))
        if isinstance(inner, re.Pattern):
            return {"$not": inner}
        if not is_ops(inner):
            inner = {"$eq": inner}
        return {"$not": inner}
    if kind == 12:
        rx: dict[str, Any] = {"$regex": draw(st.sampled_from(REGEXES))}
        if draw(st.booleans()):
            rx["$options"] = "i"
        return rx
    if kind == 13:
        return {draw(st.sampled_from(["$like", "$ilike"])): draw(st.sampled_from(LIKES))}
    if kind == 14:
        return {"$contains": draw(values)}
    if kind == 15:
        return {"$between": sorted([draw(st.sampled_from(NUMBERS)), draw(st.sampled_from(NUMBERS))])}
    if kind == 16:
        return {"$between": sorted([draw(st.sampled_from(STRINGS)), draw(st.sampled_from(STRINGS))])}
    return {"$in": [re.compile(draw(st.sampled_from(REGEXES))), draw(scalars)]}


@st.composite
def value_ops(draw: st.DrawFn, depth: int) -> dict[str, Any]:
    """An operator document for the value form of $elemMatch."""
    ops = draw(operator_docs(depth=depth, value_form=True))
    return dict(ops) if is_ops(ops) else {"$eq": ops}


@st.composite
def filters(draw: st.DrawFn, depth: int = 2) -> dict[str, Any]:
    kind = draw(st.integers(0, 9)) if depth > 0 else 0
    if kind <= 5:
        n = draw(st.integers(1, 2))
        return {
            draw(st.sampled_from(PATHS)): draw(operator_docs(depth=1 if depth > 0 else 0)) for _ in range(n)
        }
    if kind == 9:
        return {"$not": draw(filters(depth=depth - 1))}
    op = ["$and", "$or", "$nor"][kind - 6]
    return {op: draw(st.lists(filters(depth=depth - 1), min_size=1, max_size=3))}
