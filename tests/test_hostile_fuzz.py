"""Fuzzing MemoryAPI with hypothesis on a real PostgreSQL: arbitrary JSON-ish and non-JSON values,
filter documents, names and ids; only MemorixError subclasses may escape, and afterwards the
schema is intact and the other collections hold exactly what they held.

What these tests hold the library to, and the shared fixtures, are in tests/support/hostile.py.
Everything runs against one database for the module (``module_database_url``); each test uses
its own collections, so the tests do not depend on their order.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from memorix_pg import FilterError, InvalidInput, MemorixError, MemoryAPI, MemoryNotFound
from memorix_pg.crypto import generate_key
from tests.support.helpers import CapturedSQL, nested
from tests.support.hostile import (
    HOSTILE,
    INJECTIONS,
    MARKERS,
    _Unserialisable,
    filter_safe,
    open_api,
    sql_literal,
)

# =============================================================================================
# Fuzzing
# =============================================================================================

# Hypothesis warns that the recursive strategies' reprs are long; they are only shown on failure.
fuzz_warnings = pytest.mark.filterwarnings("ignore:Generating overly large repr")

FUZZ = settings(
    deadline=None,
    database=None,  # writes nothing into the repository
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)

surrogates = st.characters(categories=["Cs"])
plain_text = st.text(max_size=10)
odd_text = st.lists(
    st.one_of(st.characters(), surrogates, st.sampled_from(["\x00", "'", '"', "\\", "$", "."])), max_size=8
).map("".join)
hostile_text = st.sampled_from(HOSTILE)
texts = st.one_of(plain_text, odd_text, hostile_text, st.builds(lambda a, b: a + b, hostile_text, plain_text))


class BigInt(int):
    """An int whose repr does not need a decimal conversion (Python refuses past 4,300 digits,
    which would break Hypothesis' reports); the library sees a plain int."""

    def __repr__(self) -> str:
        return f"BigInt(<about {int(self.bit_length() * 0.30103) + 1} digits>)"


huge_ints = st.sampled_from([63, 400, 4299, 4300, 5000]).flatmap(
    lambda e: st.sampled_from([BigInt(10**e), BigInt(-(10**e) + 1)])
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), huge_ints, st.floats(allow_nan=True, allow_infinity=True), texts
)
NOT_JSON = [
    b"bytes",
    bytearray(b"x"),
    {1, 2},
    frozenset(),
    _Unserialisable(),
    1j,
    Decimal("1.5"),
    Ellipsis,
    uuid.UUID(int=1),
    dt.time(1, 2),
    range(3),
    type,
    np.array([1, 2]),
    re.compile("a"),
]
other_values = st.one_of(
    st.sampled_from(NOT_JSON),
    st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.dates(),
    st.sampled_from([np.float32(1.5), np.int64(7), np.float64("nan"), np.bool_(True), np.str_("np")]),
)
any_keys = st.one_of(
    texts, st.integers(), st.none(), st.booleans(), st.tuples(st.integers()), st.binary(max_size=2)
)


def _values(leaves: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(keys, inner, max_size=4)
        ),
        max_leaves=12,
    )


values = _values(st.one_of(json_scalars, json_scalars, other_values), st.one_of(texts, texts, any_keys))
deep_metadata = st.builds(lambda depth, leaf: nested(depth, leaf), st.integers(29, 36), json_scalars)

# Well-formed strings (no NUL, no lone surrogate), hostile ones included: most values a real
# caller sends are valid, and only valid ones reach the SQL.
safe_text = st.one_of(
    st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=12),
    hostile_text,
    st.builds(
        lambda a, b: a + b,
        hostile_text,
        st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=4),
    ),
)
safe_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    safe_text,
    safe_text,
    huge_ints,  # valid JSON, but Python writes ints only up to 4,300 digits as text
)
json_values = st.recursive(
    safe_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(safe_text, inner, max_size=3)),
    max_leaves=8,
)
metadata_docs = st.one_of(
    st.dictionaries(safe_text, json_values, max_size=5),
    st.dictionaries(st.one_of(texts, texts, any_keys), values, max_size=5),
    deep_metadata,
    values,
    st.none(),
)


class _Invalid(Exception):
    pass


def _json_text(value: str) -> str:
    if "\x00" in value:
        raise _Invalid("NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid("surrogate") from None
    return value


def stored_form(value: Any, depth: int = 0) -> Any:
    """The JSON a metadata value must be stored as (an independent model of the rules the README
    and validation.py state), or _Invalid when it cannot be stored."""
    if depth > 32:
        raise _Invalid("depth")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        try:
            int.__repr__(value)  # JSON text of the int: Python refuses more than 4,300 digits
        except ValueError:
            raise _Invalid("int too long for JSON text") from None
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid("nan")
        return value
    if isinstance(value, str):
        return _json_text(str(value))  # a str subclass (numpy's str_) is stored as a plain string
    if isinstance(value, np.generic):
        return stored_form(value.item(), depth)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Invalid("key")
            out[_json_text(key)] = stored_form(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [stored_form(item, depth + 1) for item in value]
    raise _Invalid(type(value).__name__)


def same_json(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (JSONB keeps 1e16 as the integer 10000000000000000)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b) if isinstance(a, float) or isinstance(b, float) else a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def raw(url: str, api: MemoryAPI) -> Iterator[psycopg.Connection[Any]]:
    """One plain autocommit connection for the per-example checks (the schema exists: ``api``)."""
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def collection_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    assert conn.execute("SELECT to_regclass('memorix.memories') IS NOT NULL").fetchone() == (True,)
    assert conn.execute("SELECT to_regclass('memorix.collections') IS NOT NULL").fetchone() == (True,)
    return dict(
        conn.execute(
            "SELECT c.name, count(m.id) FROM memorix.collections c "
            "LEFT JOIN memorix.memories m ON m.collection_id = c.id GROUP BY c.name"
        ).fetchall()
    )


def call_allowing_memorix_errors(call: Callable[[], Any]) -> Any:
    """The call's result, or None when it raised a MemorixError; anything else fails the example."""
    try:
        return call()
    except MemorixError as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        return None


FUZZ_SEED = [
    ({"k": "a", "n": 1, "tags": ["x", "y"], "nested": {"x": 1, "y": [1, 2]}}),
    ({"k": "b", "n": 2.5, "tags": [], "flag": True, "none": None}),
    ({"k": INJECTIONS[0], "n": -1, "tags": ["'", '"'], INJECTIONS[1]: "v", "0": [0, {"0": 1}]}),
    ({"k": "ключ", "n": 10**20, "a b": "x\\y", "$v0": "@", "nested": {"x": {"y": "deep"}}}),
    ({"k": None, "tags": [[1, 2], {"a": 1}], "n": "5", "e\u0301": "é"}),
    ({"arr": [{"a": 1, "b": [1, 2]}, {"a": [3]}], "k": ["a", "b"], "n": [1, 5, 10]}),
]


@pytest.fixture(scope="module")
def fuzz_env(url: str, raw: psycopg.Connection[Any]) -> dict[str, Any]:
    target = open_api(url, "fuzz")
    target.store_batch([f"fuzz seed {i}" for i in range(len(FUZZ_SEED))], FUZZ_SEED)
    vault = open_api(url, "fuzz-vault", encryption_key=generate_key(), encrypted_metadata=["k", "secret"])
    vault.store_batch([f"vault {i}" for i in range(len(FUZZ_SEED))], FUZZ_SEED)
    victim = open_api(url, "fuzz-victim")
    victim.store_batch([f"victim {i}" for i in range(len(FUZZ_SEED))], FUZZ_SEED)
    for name in ("fuzz-bystander-1", "fuzz-bystander-2"):
        open_api(url, name).store_batch([f"{name} {i}" for i in range(4)], FUZZ_SEED[:4])
    return {"target": target, "victim": victim, "vault": vault, "counts": collection_counts(raw)}


# ---- filters ------------------------------------------------------------------------------------

KNOWN_OPS = [
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$size",
    "$all",
    "$elemMatch",
    "$not",
    "$regex",
    "$options",
    "$like",
    "$ilike",
    "$contains",
    "$between",
]
UNKNOWN_OPS = [
    "$where",
    "$expr",
    "$function",
    "$type",
    "$mod",
    "$text",
    "$foo",
    "$",
    "$$",
    "$and",
    "$or",
    "$EQ",
    "$regex ",
    "$v0",
    "$1",
]
REGEXES = [
    "(",
    "\\",
    "[[:alpha:]]",
    "(?i)a",
    "***:a",
    "\\m",
    ".*",
    "%",
    "_",
    "a{2,1}",
    "[z-a]",
    "\\x{110000}",
    "(?<n>a)",
    "a**",
    "x\\y",
    "^'.*'$",
    "\\1",
]
field_paths = st.one_of(
    st.sampled_from(
        [
            "k",
            "n",
            "tags",
            "tags.0",
            "nested.x",
            "nested.y.1",
            "arr.a",
            "arr.b.1",
            "0.0.0",
            "none",
            "flag",
            "a b",
            "$v0",
            "",
            ".",
            "k.",
            INJECTIONS[1],
            "e\u0301",
        ]
    ),
    texts,
)
operands = st.one_of(
    values,
    st.lists(values, max_size=4),
    st.sampled_from(REGEXES),
    st.builds(
        re.compile,
        st.sampled_from(["a", "^x", "[a-z]+", "\\d", "'"]),
        st.sampled_from([0, re.I, re.M, re.S, re.X, re.A]),
    ),
)
operator_docs = st.dictionaries(
    st.one_of(st.sampled_from(KNOWN_OPS), st.sampled_from(UNKNOWN_OPS), texts),
    operands,
    min_size=1,
    max_size=3,
)


def _filter_level(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.dictionaries(
            st.sampled_from(["$and", "$or", "$nor", "$not", "$foo"]),
            st.one_of(st.lists(inner, max_size=3), inner, values),
            min_size=1,
            max_size=2,
        ),
        st.dictionaries(
            field_paths,
            st.one_of(
                st.fixed_dictionaries({"$elemMatch": inner}),
                st.fixed_dictionaries({"$not": operator_docs}),
                st.fixed_dictionaries({"$all": st.lists(inner, max_size=2)}),
            ),
            min_size=1,
            max_size=2,
        ),
    )


arbitrary_filters = st.recursive(
    st.dictionaries(field_paths, st.one_of(operands, operator_docs), max_size=3), _filter_level, max_leaves=8
)

# Well-formed filters (hostile keys and values, every operator with an operand of the right
# kind), so that most examples reach PostgreSQL rather than stopping at FilterError.
safe_keys = safe_text.map(lambda t: t.replace(".", "_").lstrip("$") or "k")  # plain keys, not paths
safe_paths = st.one_of(
    st.sampled_from(
        ["k", "n", "tags", "tags.0", "nested.x", "nested.y.1", "arr.a", "arr.b.1", "none", "flag", "0"]
    ),
    safe_keys,
    st.tuples(safe_keys, st.one_of(safe_keys, st.sampled_from(["0", "1", "x"]))).map(".".join),
)
safe_regexes = st.one_of(
    st.sampled_from(["^a", "a|b", "[[:alpha:]]+", "^$", "x*", "\\d", "(?i)A", "'", '"']),
    hostile_text.map(lambda h: "^" + re.escape(h)),
)


def _op(path: str, op: str, operand: Any) -> dict[str, Any]:
    return {path: {op: operand}}


def _valid_conditions(inner: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[Any]:
    ops = [
        st.builds(lambda p, v: {p: v}, safe_paths, json_values),
        st.builds(
            _op, safe_paths, st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]), safe_scalars
        ),
        st.builds(
            _op, safe_paths, st.sampled_from(["$in", "$nin", "$all"]), st.lists(safe_scalars, max_size=4)
        ),
        st.builds(_op, safe_paths, st.just("$exists"), st.booleans()),
        st.builds(_op, safe_paths, st.just("$size"), st.integers(0, 3)),
        st.builds(
            lambda p, r, o: {p: {"$regex": r, "$options": o}},
            safe_paths,
            safe_regexes,
            st.sampled_from(["", "i", "ms"]),
        ),
        st.builds(
            _op, safe_paths, st.sampled_from(["$like", "$ilike"]), safe_text.map(lambda t: t.rstrip("\\"))
        ),
        st.builds(_op, safe_paths, st.just("$contains"), safe_scalars),
        st.builds(_op, safe_paths, st.just("$between"), st.lists(safe_scalars, min_size=2, max_size=2)),
        st.builds(lambda p, v: {p: {"$not": {"$eq": v}}}, safe_paths, safe_scalars),
    ]
    if inner is not None:
        ops.append(st.builds(_op, safe_paths, st.just("$elemMatch"), inner))
    return st.one_of(*ops)


valid_filters = st.recursive(
    _valid_conditions(),
    lambda inner: st.one_of(
        st.builds(
            lambda op, items: {op: items},
            st.sampled_from(["$and", "$or", "$nor"]),
            st.lists(inner, min_size=1, max_size=3),
        ),
        inner.map(lambda f: {"$not": f}),
        st.tuples(inner, inner).map(lambda fs: {**fs[0], **fs[1]}),
        _valid_conditions(inner),
    ),
    max_leaves=6,
)
filter_docs = st.one_of(valid_filters, valid_filters, arbitrary_filters, values)


@fuzz_warnings
@settings(FUZZ, max_examples=400)
@given(flt=filter_docs, query=st.sampled_from([None, "", "fuzz seed", INJECTIONS[0]]))
def test_fuzz_filters(
    url: str, raw: psycopg.Connection[Any], fuzz_env: dict[str, Any], flt: Any, query: str | None
) -> None:
    """Any filter document: every call answers or raises a FilterError; the calls agree on whether
    the filter is valid and on how many memories match; the other collections are untouched."""
    target, victim = fuzz_env["target"], fuzz_env["victim"]
    left = victim.count()
    calls: dict[str, Callable[[], Any]] = {
        "count": lambda: target.count(flt),
        "newest": lambda: target.retrieve(None, top_k=50, filter=flt),
        "ranked": lambda: target.retrieve(query, top_k=50, filter=flt),
        "delete": lambda: victim.delete_by_filter(flt),
    }
    results: dict[str, Any] = {}
    errors: dict[str, MemorixError] = {}
    with CapturedSQL(url) as log:
        for name, call in calls.items():
            try:
                results[name] = call()
            except MemorixError as exc:
                errors[name] = exc
    for name, exc in errors.items():
        assert isinstance(exc, FilterError) and str(exc), f"{name}: {type(exc).__name__}: {exc}"
    event("filter rejected" if errors else "filter ran")
    # The encrypted collection refuses filters on its encrypted keys, and nothing else.
    try:
        sealed = fuzz_env["vault"].count(flt)
    except FilterError as exc:
        assert errors or "encrypted" in str(exc), exc
    else:
        count_error = errors.get("count")
        assert count_error is None or str(count_error).startswith("invalid $regex"), (sealed, count_error)
    # Valid or not whatever the call (delete_by_filter alone refuses None). Only a regular
    # expression that PostgreSQL rejects may fail in one call and not another: it is judged
    # when a row reaches it.
    if flt is not None and not all(str(e).startswith("invalid $regex") for e in errors.values()):
        assert not (errors and results), (results, errors)
    if "count" in results:
        for name in ("newest", "ranked"):
            if name in results:
                assert len(results[name]) == min(50, results["count"]), name
    if "delete" in results:
        assert victim.count() == left - results["delete"]
    for marker in MARKERS:
        assert not log.containing(marker), marker
    counts = collection_counts(raw)
    expected = {**fuzz_env["counts"], "fuzz-victim": victim.count()}
    assert {k: counts[k] for k in expected} == expected
    if victim.count() < 3:  # refill what the random deletes took
        victim.store_batch([f"victim {i}" for i in range(len(FUZZ_SEED))], FUZZ_SEED)


# ---- metadata -----------------------------------------------------------------------------------


@fuzz_warnings
@settings(FUZZ, max_examples=400)
@given(metadata=metadata_docs, patch=metadata_docs)
def test_fuzz_metadata(
    url: str, raw: psycopg.Connection[Any], fuzz_env: dict[str, Any], metadata: Any, patch: Any
) -> None:
    """Valid metadata is stored literally and found by a filter on it; invalid metadata is a
    MemorixError and writes nothing. The same for update's merge."""
    coll = open_api(url, "fuzz-metadata")
    coll.delete_by_filter({})
    try:
        expected = (
            stored_form({} if metadata is None else metadata)
            if isinstance(metadata, Mapping | None)
            else None
        )
    except _Invalid:
        expected = None
    with CapturedSQL(url) as log:
        memory_id = call_allowing_memorix_errors(lambda: coll.store("fuzz metadata", metadata))
        event("metadata stored" if memory_id else "metadata rejected")
        if expected is None:
            assert memory_id is None, f"stored invalid metadata {metadata!r:.200}"
            assert coll.count() == 0
            return
        assert memory_id is not None, f"rejected valid metadata {metadata!r:.200}"
        stored = coll.get(memory_id)
        assert stored is not None and same_json(stored.metadata, expected), (stored, expected)
        for key, value in expected.items():
            if filter_safe(key) and not (isinstance(value, dict) and any(k.startswith("$") for k in value)):
                assert coll.count({key: value}) == 1, (key, value)
        # update: merge the patch (None removes a key) or change nothing
        try:
            cleaned = (
                stored_form({} if patch is None else patch) if isinstance(patch, Mapping | None) else None
            )
        except _Invalid:
            cleaned = None
        result = call_allowing_memorix_errors(lambda: coll.update(memory_id, metadata=patch))
        after = coll.get(memory_id)
        assert after is not None
        if cleaned is None:
            assert result is None, f"update took invalid metadata {patch!r:.200}"
            assert after.metadata == stored.metadata
        else:
            assert result is not None, f"update rejected valid metadata {patch!r:.200}"
            merged = {**expected, **cleaned}
            merged = {k: v for k, v in merged.items() if cleaned.get(k, 0) is not None}
            assert same_json(after.metadata, merged), (after.metadata, merged)
    for marker in MARKERS:
        assert not log.containing(marker), marker
    counts = collection_counts(raw)
    assert {k: counts[k] for k in fuzz_env["counts"]} == {
        **fuzz_env["counts"],
        "fuzz-victim": counts["fuzz-victim"],
    }


# ---- collection names, tenants and ids ----------------------------------------------------------

names = st.one_of(
    safe_text.filter(bool),
    safe_text.filter(bool),
    texts,
    st.text(min_size=505, max_size=520),
    st.none(),
    st.integers(),
    st.binary(max_size=4),
)


def valid_name(name: Any, limit: int = 512) -> bool:
    if not isinstance(name, str) or not name or len(name) > limit:
        return False
    try:
        _json_text(name)
    except _Invalid:
        return False
    return True


@fuzz_warnings
@settings(FUZZ, max_examples=300)
@given(name=names, tenant=st.one_of(st.none(), st.none(), safe_text.filter(bool), names))
def test_fuzz_collection_names_and_tenants(
    url: str, raw: psycopg.Connection[Any], name: Any, tenant: Any
) -> None:
    """Any name works literally (and alone) or is a MemorixError that creates nothing."""
    before = collection_counts(raw)
    ok = valid_name(name) and (tenant is None or valid_name(tenant))
    with CapturedSQL(url) as log:
        coll = call_allowing_memorix_errors(lambda: open_api(url, name, tenant=tenant))
        event("collection opened" if coll else "name or tenant rejected")
        if not ok:
            assert coll is None, f"accepted collection {name!r:.80} / tenant {tenant!r:.80}"
            assert collection_counts(raw) == before
            return
        assert coll is not None, f"rejected collection {name!r:.80} / tenant {tenant!r:.80}"
        memory_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{name}\x1f{tenant}"))
        coll.store(f"in {name}", {"name": name}, id=memory_id)
        # (an earlier test may have used the same name: its memories are there too)
        stored = coll.get(memory_id)
        assert stored is not None and stored.metadata == {"name": name} and stored.collection == name
        assert memory_id in [m.id for m in coll.retrieve(None, top_k=100, filter={"name": name})]
    assert raw.execute("SELECT count(*) FROM memorix.collections WHERE name = %s", (name,)).fetchone() == (1,)
    after = collection_counts(raw)
    assert {k: v for k, v in after.items() if k != name} == {k: v for k, v in before.items() if k != name}
    # The tenant is bound in every statement but the transaction's SET LOCAL (SET takes no
    # parameters), where it is psycopg's quoted literal of the whole value.
    setting = psycopg.sql.SQL("SET LOCAL {} = {}").format(
        psycopg.sql.Identifier("memorix", "tenant"), psycopg.sql.Literal(tenant)
    )
    allowed = {setting.as_string(raw)} if tenant is not None else set()
    for marker in MARKERS:
        assert not [s for s in log.containing(marker) if s not in allowed], marker


ids = st.one_of(
    st.uuids(),
    st.uuids().map(str),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{" + str(u).upper() + "}"),
    st.uuids().map(lambda u: str(u) + "'"),
    texts,
    st.integers(),
    st.binary(max_size=16),
    st.none(),
    st.floats(),
)


def valid_id(value: Any) -> bool:
    """An id is any non-empty str of up to 512 characters that PostgreSQL text holds, or a UUID."""
    if isinstance(value, uuid.UUID):
        return True
    if not isinstance(value, str) or not value or len(value) > 512 or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@fuzz_warnings
@settings(FUZZ, max_examples=300)
@given(memory_id=ids)
def test_fuzz_ids(url: str, fuzz_env: dict[str, Any], memory_id: Any) -> None:
    """get / delete / update with anything as the id: a miss for an id, InvalidInput otherwise."""
    target = fuzz_env["target"]
    count = target.count()
    event("an id" if valid_id(memory_id) else "not an id")
    for call, miss in ((lambda: target.get(memory_id), None), (lambda: target.delete(memory_id), False)):
        try:
            result = call()
        except InvalidInput as exc:
            assert not valid_id(memory_id), f"{memory_id!r} rejected: {exc}"
            assert str(exc).startswith("id ")
        else:
            assert valid_id(memory_id), f"{memory_id!r} accepted"
            assert result == miss
    try:
        target.update(memory_id, metadata={"x": 1})
    except MemoryNotFound:
        assert valid_id(memory_id)
    except InvalidInput:
        assert not valid_id(memory_id)
    assert target.count() == count


# ---- stats keys and index keys ------------------------------------------------------------------


@fuzz_warnings
@settings(FUZZ, max_examples=300)
@given(group_by=st.one_of(texts, field_paths, st.integers(), st.none()))
def test_fuzz_stats_group_by(fuzz_env: dict[str, Any], group_by: Any) -> None:
    target = fuzz_env["target"]
    result = call_allowing_memorix_errors(lambda: target.stats(group_by))
    event("grouped" if result else "key rejected")
    if result is not None:
        assert result["total"] == target.count()


@fuzz_warnings
@settings(FUZZ, max_examples=60)
@given(key=st.one_of(texts, st.integers()), kind=st.sampled_from(["text", "number", "jsonb", "'"]))
def test_fuzz_create_index_keys(
    url: str, raw: psycopg.Connection[Any], fuzz_env: dict[str, Any], key: Any, kind: str
) -> None:
    before = collection_counts(raw)
    name = call_allowing_memorix_errors(lambda: fuzz_env["target"].create_index(key, kind))
    event("index created" if name else "key or type rejected")
    if name is not None:
        indexdef = raw.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (name,)).fetchone()
        assert indexdef is not None and f"{sql_literal(key)}::text" in indexdef[0]
    assert collection_counts(raw) == before
