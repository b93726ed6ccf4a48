"""Pure tests of memorix_pg.filters: parsing, errors, and the shape of the SQL (no database)."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from typing import Any

import pytest
from sqlalchemy import Integer, column, table
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB

from memorix_pg.errors import FilterError, MemorixError
from memorix_pg.filters import (
    And,
    Cond,
    Const,
    Not,
    compile_filter,
    index_expression,
    normalize_value,
    parse,
)
from memorix_pg.filters.jsonpath import jsonpath_string as jp_str
from memorix_pg.filters.parser import like_to_regex

docs = table("docs", column("id", Integer), column("metadata", JSONB))
DIALECT = postgresql.dialect()


def sql_of(flt: Any, col: Any = None) -> tuple[str, dict[str, Any]]:
    compiled = compile_filter(flt, docs.c.metadata if col is None else col).compile(dialect=DIALECT)
    return str(compiled), dict(compiled.params)


def literal_sql(expr: Any) -> str:
    return str(expr.compile(dialect=DIALECT, compile_kwargs={"literal_binds": True}))


# --------------------------------------------------------------------------------------------
# Basics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flt", [None, {}])
def test_empty_filter_is_true(flt: Any) -> None:
    assert sql_of(flt)[0] == "true"


def test_default_column_is_memories_metadata() -> None:
    sql = str(compile_filter({"k": 1}).compile(dialect=DIALECT))
    assert "memorix.memories.metadata @>" in sql


def test_filter_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        compile_filter({"a": {"$foo": 1}})
    with pytest.raises(MemorixError):
        compile_filter({"a": {"$foo": 1}})


def test_parse_builds_the_ast() -> None:
    assert parse({"a.b": {"$gte": 1, "$ne": 3}}) == And(
        (Cond(("a", "b"), "gte", 1), Not(Cond(("a", "b"), "eq", 3)))
    )
    assert parse({"a": {"$gt": None}}) == Const(False)
    assert parse({"a": {"$lte": None}}) == Cond(("a",), "eq", None)
    assert parse({"a": {"$in": []}}) == Const(False)
    assert parse({"$nor": [{"a": 1}]}) == Not(Cond(("a",), "eq", 1))
    assert parse({"$not": {"a": 1}}) == Not(Cond(("a",), "eq", 1))


def test_normalize_value() -> None:
    assert normalize_value(dt.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05"
    assert normalize_value(dt.date(2024, 1, 2)) == "2024-01-02"
    when = dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    assert normalize_value({"t": [when]}) == {"t": ["2024-01-02T00:00:00+00:00"]}
    assert normalize_value((1, "x", None, True)) == [1, "x", None, True]


# --------------------------------------------------------------------------------------------
# Errors name the path and the operator
# --------------------------------------------------------------------------------------------

ERRORS: list[tuple[Any, list[str]]] = [
    ({"a.b": {"$foo": 1}}, ["'$foo'", "'a.b'", "unknown"]),
    ({"$foo": 1}, ["'$foo'", "top level"]),
    ({"a": {"$in": 1}}, ["'$in'", "'a'", "list"]),
    ({"a": {"$nin": "xy"}}, ["'$nin'", "'a'", "list"]),
    ({"a": {"$all": {"x": 1}}}, ["'$all'", "'a'", "list"]),
    ({"$and": []}, ["'$and'", "non-empty"]),
    ({"$or": []}, ["'$or'", "non-empty"]),
    ({"$nor": []}, ["'$nor'", "non-empty"]),
    ({"$and": {"a": 1}}, ["'$and'", "list"]),
    ({"$or": [1]}, ["'$or'", "dicts"]),
    ({"$nor": [{"a": 1}, "b"]}, ["'$nor'", "dicts"]),
    ({"a": {"$not": 1}}, ["'$not'", "'a'"]),
    ({"a": {"$not": {}}}, ["'$not'", "'a'"]),
    ({"a": {"$not": {"b": 1}}}, ["'$not'", "'a'"]),
    ({"$not": 3}, ["'$not'"]),
    ({"a": {"$exists": "yes"}}, ["'$exists'", "'a'"]),
    ({"a": {"$exists": 1}}, ["'$exists'", "'a'"]),
    ({"a": {"$size": "2"}}, ["'$size'", "'a'"]),
    ({"a": {"$size": -1}}, ["'$size'", "'a'"]),
    ({"a": {"$size": True}}, ["'$size'", "'a'"]),
    ({"a": {"$size": 1.5}}, ["'$size'", "'a'"]),
    ({"a": {"$regex": 5}}, ["'$regex'", "'a'", "string"]),
    ({"a": {"$regex": "("}}, ["'$regex'", "'a'", "invalid"]),
    ({"a": {"$regex": "x", "$options": "q"}}, ["'$regex'", "'a'", "options"]),
    ({"a": {"$options": "i"}}, ["'$options'", "'a'"]),
    ({"a": {"$like": 5}}, ["'$like'", "'a'"]),
    ({"a": {"$ilike": "ab\\"}}, ["'$ilike'", "'a'", "escape"]),
    ({"a": {"$between": [1]}}, ["'$between'", "'a'"]),
    ({"a": {"$between": 3}}, ["'$between'", "'a'"]),
    ({"a": {"$gt": [1]}}, ["'$gt'", "'a'"]),
    ({"a": {"$lte": {"x": 1}}}, ["'$lte'", "'a'"]),
    ({"a": {"$elemMatch": [1]}}, ["'$elemMatch'", "'a'"]),
    ({"a": {"$elemMatch": {"$foo": 1}}}, ["'$foo'", "a.$elemMatch"]),
    ({"a": {"$eq": re.compile("x")}}, ["'$eq'", "'a'"]),
    ({"a": {"$gt": 1, "b": 2}}, ["'a'", "mix"]),
    ({"a": {1, 2}}, ["set", "'a'"]),
    ({"a": object()}, ["object", "'a'"]),
    ({"a": float("nan")}, ["nan", "'a'"]),
    ({"a": {"$in": [math.inf]}}, ["inf", "'a'"]),
    ({"a": {"$gt": -math.inf}}, ["inf", "'a'"]),
    ({"a": "x\x00y"}, ["NUL", "'a'"]),
    ({"a": "\ud800"}, ["Unicode", "'a'"]),
    ({"": 1}, ["empty"]),
    ({"a..b": 1}, ["empty", "a..b"]),
    ({".a": 1}, ["empty"]),
    ({"a.$b": 1}, ["'a.$b'", "$"]),
    ({1: 2}, ["keys"]),
    ({"a": {"$elemMatch": {"b": {"$bad": 1}}}}, ["'$bad'", "a.$elemMatch.b"]),
    ({"$or": [{"x": {"$in": 3}}]}, ["'$in'", "'x'"]),
]


@pytest.mark.parametrize(("flt", "fragments"), ERRORS, ids=[repr(f)[:50] for f, _ in ERRORS])
def test_errors(flt: Any, fragments: list[str]) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(flt)
    message = str(info.value)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message


@pytest.mark.parametrize("flt", [[{"a": 1}], "a = 1", 3])
def test_filter_must_be_a_dict(flt: Any) -> None:
    with pytest.raises(FilterError, match="dict"):
        compile_filter(flt)


def test_regex_left_to_the_server_when_dialects_differ(recwarn: pytest.WarningsRecorder) -> None:
    # Valid in PostgreSQL but not in Python: not rejected here.
    compile_filter({"a": {"$regex": "\\mword"}})  # \m = start of word
    compile_filter({"a": {"$regex": "(?i)x"}})
    compile_filter({"a": {"$regex": "x(?<=a+)b"}})  # variable-length lookbehind
    compile_filter({"a": {"$regex": "[[:alpha:]]"}})  # Python only warns about it: silenced
    assert not recwarn.list


def test_regex_ending_with_a_backslash_is_rejected() -> None:
    with pytest.raises(FilterError, match="backslash"):
        compile_filter({"a": {"$regex": "ab\\"}})
    compile_filter({"a": {"$regex": "ab\\\\"}})  # an escaped backslash is fine


@pytest.mark.parametrize("key", ["", "a.b", "$x", 3])
def test_index_expression_rejects_bad_keys(key: Any) -> None:
    with pytest.raises(FilterError):
        index_expression(key, "text")


def test_index_expression_rejects_bad_type() -> None:
    with pytest.raises(FilterError, match="'text' or 'number'"):
        index_expression("k", "date")


# --------------------------------------------------------------------------------------------
# Everything user-supplied is bound
# --------------------------------------------------------------------------------------------

SECRET_KEY = "sEcReTkEy"
SECRET = "sEcReTvAl"

BOUND_FILTERS: list[dict[str, Any]] = [
    {SECRET_KEY: SECRET},
    {SECRET_KEY: {"$ne": SECRET}},
    {SECRET_KEY: {"$gt": SECRET}},
    {SECRET_KEY: {"$gte": 12345.5, "$lt": 99999}},
    {SECRET_KEY: {"$between": [SECRET, SECRET + "z"]}},
    {SECRET_KEY: {"$in": [SECRET, 77777, None, [SECRET], {"k": SECRET}]}},
    {SECRET_KEY: {"$nin": [SECRET]}},
    {SECRET_KEY: {"$exists": True}},
    {SECRET_KEY: None},
    {SECRET_KEY: {"$size": 3}},
    {SECRET_KEY: {"$all": [SECRET, SECRET + "2"]}},
    {SECRET_KEY: {"$elemMatch": {"x": SECRET}}},
    {SECRET_KEY: {"$elemMatch": {"$gt": SECRET}}},
    {SECRET_KEY: {"$contains": SECRET}},
    {SECRET_KEY: {"$regex": SECRET, "$options": "i"}},
    {SECRET_KEY: {"$like": SECRET + "%"}},
    {SECRET_KEY: {"$not": {"$ilike": SECRET}}},
    {f"a.{SECRET_KEY}.c": SECRET},
    {f"a.{SECRET_KEY}.c.d": {"$lt": SECRET}},
    {f"{SECRET_KEY}.0": SECRET},
    {SECRET_KEY: [SECRET, {"k": SECRET}]},
    {SECRET_KEY: {"k": SECRET}},
    {"$or": [{SECRET_KEY: SECRET}, {"$not": {SECRET_KEY: {"$gt": 5}}}]},
    {"$nor": [{SECRET_KEY: SECRET}]},
    {"x'); DROP TABLE docs; --": "'; DROP TABLE docs; --"},
]


@pytest.mark.parametrize("flt", BOUND_FILTERS, ids=[repr(f)[:60] for f in BOUND_FILTERS])
def test_values_and_keys_are_bound(flt: dict[str, Any]) -> None:
    sql, params = sql_of(flt)
    for secret in (SECRET_KEY, SECRET, "12345", "77777", "99999", "DROP"):
        assert secret not in sql
    everything = json.dumps([str(v) for v in params.values()])
    assert SECRET_KEY in everything or "DROP" in everything


def test_containment_for_scalar_equality_and_in() -> None:
    sql, params = sql_of({"k": "v"})
    assert sql.count("@>") == 2 and "jsonb_path_exists" not in sql
    assert sorted(params.values()) == ['{"k":"v"}', '{"k":["v"]}']

    sql, params = sql_of({"k": {"$in": [1, "x", True]}})
    assert sql.count("@>") == 6 and "jsonb_path_exists" not in sql

    sql, params = sql_of({"a.b": 1.5})
    assert sql.count("@>") == 4 and "jsonb_path_exists" not in sql
    assert set(params.values()) == {
        '{"a":{"b":1.5}}',
        '{"a":{"b":[1.5]}}',
        '{"a":[{"b":1.5}]}',
        '{"a":[{"b":[1.5]}]}',
    }
    sql, _ = sql_of({"tags": {"$all": ["x", "y"]}})
    assert "@>" in sql and "jsonb_path_exists" not in sql


def test_jsonpath_for_the_rest() -> None:
    for flt in [{"a.0": 1}, {"a.b.c.d": 1}, {"a": [1]}, {"a": {"$size": 1}}, {"a.b": {"$gt": 1}}]:
        sql, params = sql_of(flt)
        assert "jsonb_path_exists" in sql
        paths = [v for v in params.values() if str(v).startswith("strict $")]
        assert len(paths) == 1


def test_jsonpath_values_only_in_vars() -> None:
    _, params = sql_of({"a.b": {"$gt": SECRET}})
    (path,) = [v for v in params.values() if str(v).startswith("strict $")]
    assert SECRET not in path and "$v0" in path
    assert {"v0": SECRET} in [json.loads(v) for v in params.values() if str(v).startswith("{")]


@pytest.mark.parametrize("key", ['a"b', "a\\b", "a\nb", "$@[*]", "é✓", 'x") || exists($', "\x7f"])
def test_jsonpath_key_literals(key: str) -> None:
    literal = jp_str(key)
    assert json.loads(literal) == key  # jsonpath string escapes used here are JSON's
    assert literal.count('"') - literal.count('\\"') == 2


def test_like_to_regex() -> None:
    def err(msg: str) -> FilterError:
        return FilterError(msg)

    assert like_to_regex("a%b_c", err) == "^a.*b.c$"
    assert like_to_regex("50\\%.x", err) == "^50\\%\\.x$"
    assert like_to_regex("(é)", err) == "^\\(é\\)$"


# --------------------------------------------------------------------------------------------
# Index expressions and the range predicates that must match them textually
# --------------------------------------------------------------------------------------------

NUMBER_EXPR = (
    "CASE WHEN (jsonb_typeof(docs.metadata -> 'k') = 'number') "
    "THEN CAST(docs.metadata -> 'k' AS NUMERIC) "
    "WHEN (jsonb_typeof(docs.metadata -> 'k') = 'array') THEN 'NaN'::numeric END"
)
TEXT_EXPR = "left(docs.metadata ->> 'k', 500) COLLATE \"C\""


def test_index_expressions() -> None:
    assert literal_sql(index_expression("k", "number", docs.c.metadata)) == NUMBER_EXPR
    assert literal_sql(index_expression("k", "text", docs.c.metadata)) == TEXT_EXPR
    assert "memorix.memories.metadata" in literal_sql(index_expression("k", "text"))


@pytest.mark.parametrize(
    ("flt", "expr"),
    [
        ({"k": {"$gt": 5}}, NUMBER_EXPR),
        ({"k": {"$lte": 2.5}}, NUMBER_EXPR),
        ({"k": {"$between": [1, 2]}}, NUMBER_EXPR),
        ({"k": {"$gte": "a", "$lt": "b"}}, TEXT_EXPR),
        ({"k": {"$lt": dt.date(2024, 1, 1)}}, TEXT_EXPR),
    ],
)
def test_range_predicates_use_the_index_expression(flt: dict[str, Any], expr: str) -> None:
    assert expr in literal_sql(compile_filter(flt, docs.c.metadata))


def test_quoted_key_in_index_expression_is_escaped() -> None:
    assert "docs.metadata -> 'it''s'" in literal_sql(index_expression("it's", "number", docs.c.metadata))
