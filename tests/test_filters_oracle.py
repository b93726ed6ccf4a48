"""Property and table tests of memorix_pg.filters against a real PostgreSQL and two oracles.

Oracles:

* ``mongo_match`` (tests/support/mongo_model.py): a small, independent Python model of MongoDB's
  classic matcher (the path iterator of src/mongo/db/matcher/path.cpp and the leaf/array
  expressions), written from MongoDB's documented semantics, not from memorix_pg.filters.  It
  understands our extensions ($like, $ilike, $contains, $between, top-level $not) natively.  SQL
  must agree with it on EVERY generated filter and document.
* mongomock 4.3.0 (``find`` on a collection holding the same documents), after rewriting our
  extensions and a few operators into equivalent plain MongoDB (``to_mongomock``, in the same
  module).  mongomock has known deviations from MongoDB; each one is listed below, and a
  disagreement between mongomock and the model is only accepted for a document when
  ``excused_deviation`` names one of those reasons for that filter and document.

The random corpus and the filter strategies are in tests/support/strategies.py.

Known mongomock deviations and how they are handled (MongoDB's behaviour wins):

1. ``True == 1`` / ``False == 0`` (Python equality): the corpus and the filters use no 0/1
   numbers, so it never arises here; test_bool_is_not_number covers it on the server.
2. A top-level ``$not`` is silently accepted and matches everything: our extension means
   ``$nor: [f]``, so ``to_mongomock`` rewrites it that way.
3. ``$all: []`` matches everything (MongoDB: nothing), and ``$all`` flattens candidate lists
   inconsistently: ``to_mongomock`` rewrites ``$all: [v, ...]`` to its documented equivalent
   ``$and: [{path: v}, ...]`` and ``$all: []`` to a condition that never holds.
4. ``{$gte: null}`` / ``{$lte: null}`` do not match a missing field: rewritten to ``{path: null}``
   (the null type bracket holds only null and missing).
5. ``$ne`` / ``$nin`` / ``$exists: false`` / field ``$not`` are evaluated per candidate in
   mongomock (e.g. ``{"a.b": {"$exists": false}}`` matches ``{a: [{b: 1}, {}]}``), while MongoDB
   negates the positive test: rewritten to ``$nor: [{path: <positive>}]``; an operator document
   with several operators is rewritten to ``$and`` of one-operator conditions (MongoDB treats
   them as independent conditions anyway).
6. ``$in`` does not compare the whole array candidate (``{a: {$in: [[1, 2]]}}`` misses
   ``{a: [1, 2]}``): rewritten to ``$or`` of equalities.
7. ``$size`` matches dicts by their length and truthy scalars with ``$size: 1``: rewritten to
   ``{$size: n, $type: "array"}``.
8. A scalar or null met in the middle of a path yields no candidate in mongomock but "missing"
   in MongoDB, so ``{"a.b": null}`` misses ``{a: 5}``: excused ("scalar-mid-path") when the
   model's candidates include such a missing value.
9. Numeric path parts: mongomock only indexes the array (MongoDB also looks into object
   elements for a field "0") and expands an indexed array element at the end of the path
   (MongoDB does not): excused ("index-path") for filters with a numeric path part.
10. ``$elemMatch`` (and ``$contains``, which is ``$elemMatch: {$eq: v}``): mongomock applies a
    document sub-filter to scalar elements and expands nested arrays in the value form: excused
    ("elemmatch-nested") when a candidate array holds non-document elements.
11. ``{path: {}}`` (equality with an empty document) is not treated as a positive condition and
    matches documents without the path: rewritten to ``{path: {"$eq": {}}}``.
12. In the value form of ``$elemMatch``, a leading ``$not`` is taken for the (unsupported)
    top-level ``$not`` and matches every element: ``to_mongomock`` puts the no-op
    ``$exists: true`` first, which makes mongomock use its value-form evaluation.
13. ``$options`` inside ``$not`` is an "unknown operator": the value form of ``$elemMatch``
    passes ``$regex`` as a compiled Python pattern instead.
14. Regex dialect: mongomock uses Python ``re``; generated patterns stay in the subset where
    Python and PostgreSQL ARE agree (no backslashes, no newlines in the corpus).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import mongomock
import psycopg
import pytest
from hypothesis import HealthCheck, given, reject, settings
from sqlalchemy import Integer, column, create_engine, select, table
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from memorix_pg.errors import FilterError
from memorix_pg.filters import compile_filter
from tests.support.mongo_model import excused_deviation, mongo_match, to_mongomock
from tests.support.strategies import PATHS, SCALARS, filters, make_corpus

# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

docs_table = table("docs", column("id", Integer), column("metadata", JSONB))


def _load(url: str, docs: list[dict[str, Any]], name: str = "docs") -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, metadata jsonb NOT NULL)")
        with conn.cursor().copy(f"COPY {name} (id, metadata) FROM STDIN") as copy:
            for i, d in enumerate(docs):
                copy.write_row((i, json.dumps(d)))


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    return make_corpus(200, seed=20240611)


@pytest.fixture(scope="module")
def sql_conn(module_database_url: str, corpus: list[dict[str, Any]]) -> Iterator[Connection]:
    _load(module_database_url, corpus)
    engine = create_engine(module_database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        yield conn
    engine.dispose()


@pytest.fixture(scope="module")
def mongo(corpus: list[dict[str, Any]]) -> Any:
    coll = mongomock.MongoClient().db.docs
    coll.insert_many([{"_id": i, **d} for i, d in enumerate(corpus)])
    return coll


def sql_ids(conn: Connection, flt: Mapping[str, Any] | None) -> set[int]:
    expr = compile_filter(flt, docs_table.c.metadata)
    return {row[0] for row in conn.execute(select(docs_table.c.id).where(expr))}


def model_ids(corpus: list[dict[str, Any]], flt: Mapping[str, Any]) -> set[int]:
    return {i for i, d in enumerate(corpus) if mongo_match(flt, d)}


# --------------------------------------------------------------------------------------------
# The property test
# --------------------------------------------------------------------------------------------

STATS: Counter[str] = Counter()
N_EXAMPLES = 2000


@settings(
    max_examples=N_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(flt=filters())
def test_sql_matches_mongodb_semantics(
    flt: dict[str, Any], sql_conn: Connection, mongo: Any, corpus: list[dict[str, Any]]
) -> None:
    STATS["filters"] += 1
    expected = model_ids(corpus, flt)
    try:
        got = sql_ids(sql_conn, flt)
    except FilterError as exc:  # the library's bound on a deeply nested filter, not a semantic answer
        assert "too complex" in str(exc), exc
        STATS["refused as too complex"] += 1
        reject()
    assert got == expected, (
        f"filter {flt!r}: SQL-only ids {sorted(got - expected)}, model-only ids {sorted(expected - got)}"
    )
    if expected:
        STATS["non-empty"] += 1
    mm = {d["_id"] for d in mongo.find(to_mongomock(flt), {"_id": 1})}
    for i in sorted(mm ^ expected):
        reason = excused_deviation(flt, corpus[i])
        assert reason is not None, (
            f"filter {flt!r} on {corpus[i]!r}: mongomock says {i in mm}, MongoDB model says {i in expected}"
        )
        STATS[reason] += 1
    if mm == expected:
        STATS["mongomock-agrees"] += 1


def test_property_run_was_meaningful() -> None:
    """Runs after the property test (same module): most filters must be checked by mongomock too."""
    if STATS["filters"] < N_EXAMPLES // 2:
        pytest.skip("property test did not run in this session")
    print(dict(STATS))
    assert STATS["mongomock-agrees"] >= 0.8 * STATS["filters"]
    assert STATS["non-empty"] >= 0.3 * STATS["filters"]


def test_model_agrees_with_mongomock_on_basics(corpus: list[dict[str, Any]], mongo: Any) -> None:
    """Sanity check of the reference model itself on filters where mongomock is exact."""
    for flt in [{"a": 2}, {"a.b": 3}, {"b": {"$gt": 2}}, {"a": {"$regex": "^x"}}, {"c": {"$exists": True}}]:
        assert {d["_id"] for d in mongo.find(flt)} == model_ids(corpus, flt), flt


# --------------------------------------------------------------------------------------------
# Table-driven cases: every operator and semantic rule, exact id sets on a small corpus
# --------------------------------------------------------------------------------------------

SMALL: dict[str, dict[str, Any]] = {
    "empty": {},
    "int1": {"n": 1},
    "float1": {"n": 1.0},
    "n5": {"n": 5},
    "str5": {"n": "5"},
    "true": {"n": True},
    "null": {"n": None},
    "list": {"n": [1, 7]},
    "nested": {"n": [[1], 9]},
    "obj": {"n": {"k": 1}},
    "tags": {"tags": ["work", "home"], "src": {"kind": "chat", "ts": "2024-05-01T10:00:00"}},
    "tags2": {"tags": ["home"], "src": {"kind": "mail", "ts": "2024-06-01T10:00:00"}},
    "tagstr": {"tags": "work"},
    "mentions": {"mentions": [{"name": "ann", "age": 30}, {"name": "bob"}]},
    "mentions2": {"mentions": [{"name": "cid", "age": 40}]},
    "deep": {"mentions": [[{"name": "ann"}]]},
    "imp": {"importance": 2, "title": "Hello World"},
    "imp3": {"importance": 3, "title": "hello there"},
    "scalar_mid": {"src": 5},
    "keys": {'we"ird': 1, "back\\slash": 2, "$dollar": 3, "a[*]": 4},
}
SMALL_NAMES = list(SMALL)


@pytest.fixture(scope="module")
def small_conn(module_database_url: str) -> Iterator[Connection]:
    _load(module_database_url, list(SMALL.values()), name="small")
    engine = create_engine(module_database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        yield conn
    engine.dispose()


small_table = table("small", column("id", Integer), column("metadata", JSONB))

TABLE: list[tuple[dict[str, Any], set[str]]] = [
    # implicit equality, numbers and type bracketing
    ({"n": 1}, {"int1", "float1", "list"}),
    ({"n": 1.0}, {"int1", "float1", "list"}),
    ({"n": "5"}, {"str5"}),
    ({"n": 5}, {"n5"}),
    ({"n": True}, {"true"}),
    # arrays: any element, whole value, one level only
    ({"n": [1, 7]}, {"list"}),
    ({"n": [7, 1]}, set()),
    ({"n": [1]}, {"nested"}),
    ({"n": 9}, {"nested"}),
    ({"n": {"k": 1}}, {"obj"}),
    ({"tags": "work"}, {"tags", "tagstr"}),
    # null and missing
    ({"n": None}, set(SMALL) - {"int1", "float1", "n5", "str5", "true", "list", "nested", "obj"}),
    ({"n": {"$exists": True}}, {"int1", "float1", "n5", "str5", "true", "null", "list", "nested", "obj"}),
    ({"n": {"$ne": None}}, {"int1", "float1", "n5", "str5", "true", "list", "nested", "obj"}),
    ({"n": {"$in": [None, 5]}}, set(SMALL) - {"int1", "float1", "str5", "true", "list", "nested", "obj"}),
    ({"n": {"$gte": None}}, set(SMALL) - {"int1", "float1", "n5", "str5", "true", "list", "nested", "obj"}),
    ({"n": {"$gt": None}}, set()),
    ({"src.kind": None}, set(SMALL) - {"tags", "tags2"}),  # scalar_mid: src is 5, src.kind missing
    # $ne / $nin / $not match missing keys
    ({"n": {"$ne": 1}}, set(SMALL) - {"int1", "float1", "list"}),
    ({"n": {"$nin": [1, 5]}}, set(SMALL) - {"int1", "float1", "list", "n5"}),
    ({"n": {"$not": {"$gt": 4}}}, set(SMALL) - {"n5", "list", "nested"}),
    ({"$nor": [{"n": 1}, {"n": {"$exists": False}}]}, {"n5", "str5", "true", "null", "nested", "obj"}),
    (
        {"$not": {"n": {"$exists": False}}},
        {"int1", "float1", "n5", "str5", "true", "null", "list", "nested", "obj"},
    ),
    # comparisons
    ({"n": {"$gt": 1}}, {"n5", "list", "nested"}),
    ({"n": {"$gte": 1, "$lt": 6}}, {"int1", "float1", "n5", "list"}),
    ({"n": {"$gt": 5, "$lt": 7}}, {"list"}),  # any element for each operator: 7 > 5 and 1 < 7
    ({"n": {"$lt": "6"}}, {"str5"}),
    ({"n": {"$gt": False}}, {"true"}),
    ({"importance": {"$between": [2, 3]}}, {"imp", "imp3"}),
    ({"src.ts": {"$gte": dt.datetime(2024, 5, 15)}}, {"tags2"}),
    ({"src.ts": {"$lt": "2024-06"}}, {"tags"}),
    ({"title": {"$gt": "Z"}}, {"imp3"}),  # byte order: "h" > "Z" > "H"
    # $in / $all / $size / $elemMatch / $contains
    ({"tags": {"$in": ["home", "x"]}}, {"tags", "tags2"}),
    ({"tags": {"$all": ["work", "home"]}}, {"tags"}),
    ({"tags": {"$all": []}}, set()),
    ({"tags": {"$size": 1}}, {"tags2"}),
    ({"n": {"$size": 2}}, {"list", "nested"}),
    ({"tags": {"$contains": "work"}}, {"tags"}),
    ({"n": {"$contains": 1}}, {"list"}),
    ({"n": {"$elemMatch": {"$gt": 5}}}, {"list", "nested"}),
    ({"mentions": {"$elemMatch": {"name": "ann", "age": {"$gt": 20}}}}, {"mentions"}),
    ({"mentions": {"$elemMatch": {"name": "bob", "age": {"$gt": 20}}}}, set()),
    # dot paths through objects, arrays of objects, numeric parts
    ({"src.kind": "chat"}, {"tags"}),
    ({"mentions.name": "bob"}, {"mentions"}),
    ({"mentions.name": "ann"}, {"mentions"}),  # not "deep": arrays of arrays are not traversed
    ({"mentions.age": {"$exists": False}}, set(SMALL) - {"mentions", "mentions2"}),
    ({"mentions.0.name": "ann"}, {"mentions", "deep"}),
    ({"tags.0": "home"}, {"tags2"}),
    ({"tags.1": "home"}, {"tags"}),
    ({"mentions.age": None}, set(SMALL) - {"mentions2", "deep"}),  # bob has no age; deep yields nothing
    # strings
    ({"title": {"$regex": "^hello"}}, {"imp3"}),
    ({"title": {"$regex": "^hello", "$options": "i"}}, {"imp", "imp3"}),
    ({"title": re.compile("world$", re.IGNORECASE)}, {"imp"}),
    ({"title": {"$not": re.compile("^H")}}, set(SMALL) - {"imp"}),
    ({"title": {"$like": "Hello%"}}, {"imp"}),
    ({"title": {"$ilike": "%THERE"}}, {"imp3"}),
    ({"title": {"$like": "hello_there"}}, {"imp3"}),
    ({"tags": {"$like": "w%"}}, {"tags", "tagstr"}),
    ({"n": {"$regex": "5"}}, {"str5"}),
    # keys that are jsonpath / SQL syntax are literal
    ({'we"ird': 1}, {"keys"}),
    ({"back\\slash": {"$gt": 1}}, {"keys"}),
    ({"a[*]": {"$in": [4]}}, {"keys"}),
    ({"a[*]": {"$exists": True}, 'we"ird': {"$lte": 1}}, {"keys"}),
    # logic
    ({"$or": [{"n": 5}, {"tags": "home"}]}, {"n5", "tags", "tags2"}),
    ({"$and": [{"importance": {"$gte": 2}}, {"title": {"$regex": "W"}}]}, {"imp"}),
    ({}, set(SMALL)),
]


@pytest.mark.parametrize(("flt", "expected"), TABLE, ids=[json.dumps(f, default=str)[:60] for f, _ in TABLE])
def test_table(small_conn: Connection, flt: dict[str, Any], expected: set[str]) -> None:
    expr = compile_filter(flt, small_table.c.metadata)
    got = {SMALL_NAMES[r[0]] for r in small_conn.execute(select(small_table.c.id).where(expr))}
    assert got == expected
    docs = list(SMALL.values())
    assert {SMALL_NAMES[i] for i, d in enumerate(docs) if mongo_match(flt, d)} == expected  # model too


def test_bool_is_not_number(small_conn: Connection) -> None:
    """mongomock deviation 1 (True == 1) checked against MongoDB's rule on the server."""
    for flt, expected in [
        ({"n": {"$in": [True]}}, {"true"}),
        ({"n": {"$in": [1]}}, {"int1", "float1", "list"}),
    ]:
        expr = compile_filter(flt, small_table.c.metadata)
        got = {SMALL_NAMES[r[0]] for r in small_conn.execute(select(small_table.c.id).where(expr))}
        assert got == expected


def test_mongodb_quirks_from_the_path_iterator(small_conn: Connection, module_database_url: str) -> None:
    """Corner cases where MongoDB's classic matcher (not mongomock) is the reference."""
    docs = [
        {"a": [{"b": 1}]},  # a.0.b: the object element is also searched for a field "0" -> missing
        {"a": [[1, 2]]},  # a.0 names the inner array, which is not expanded
        {"a": [{"0": 5}]},  # a.0 also finds the field "0" of an object element
        {"a": 5},  # scalar mid-path: a.b is missing
        {"a": [1, 2]},  # array of scalars mid-path: a.b yields nothing at all
    ]
    _load(module_database_url, docs, name="quirks")
    t = table("quirks", column("id", Integer), column("metadata", JSONB))
    cases = [
        ({"a.0.b": None}, {0, 2, 3}),
        ({"a.0.b": 1}, {0}),
        ({"a.0": 1}, {4}),
        ({"a.0": [1, 2]}, {1}),
        ({"a.0": 5}, {2}),
        ({"a.0.0": 1}, {1}),
        ({"a.b": None}, {2, 3}),
        ({"a.b": {"$exists": False}}, {1, 2, 3, 4}),
        ({"a.b": {"$ne": 1}}, {1, 2, 3, 4}),
    ]
    for flt, expected in cases:
        got = {r[0] for r in small_conn.execute(select(t.c.id).where(compile_filter(flt, t.c.metadata)))}
        assert got == expected, flt
        assert {i for i, d in enumerate(docs) if mongo_match(flt, d)} == expected, flt


def test_invalid_regex_fails_at_execution_with_sqlstate_2201b(small_conn: Connection) -> None:
    """Patterns only PostgreSQL can judge are rejected by the server, as a catchable DataError."""
    expr = compile_filter({"title": {"$regex": "[[:nope:]]"}}, small_table.c.metadata)
    with pytest.raises(DBAPIError) as info:
        small_conn.execute(select(small_table.c.id).where(expr)).fetchall()
    assert isinstance(info.value.orig, psycopg.errors.InvalidRegularExpression)
    assert info.value.orig.sqlstate == "2201B"
    small_conn.rollback()


def test_throughput(sql_conn: Connection, corpus: list[dict[str, Any]]) -> None:
    """A rough bound so the property test stays cheap: 200 compiled filters in a few seconds."""
    rng = random.Random(7)
    start = time.perf_counter()
    for _ in range(200):
        flt = {rng.choice(PATHS): {"$in": [rng.choice(SCALARS), rng.choice(SCALARS)]}}
        sql_ids(sql_conn, flt)
    assert time.perf_counter() - start < 20
