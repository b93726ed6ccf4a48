"""Hostile input to retrieve, count, delete_by_filter and archive, on a real PostgreSQL: bad
top_k, embeddings, queries, search options and filters, and filters whose compiled SQL would
explode, rejected with a MemorixError that names the fault, nothing written.

What these tests hold the library to, and the shared fixtures, are in tests/support/hostile.py.
Everything runs against one database for the module (``module_database_url``); each test uses
its own collections, so the tests do not depend on their order.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Any

import pytest
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

from memorix_pg import ConfigurationError, FilterError, MemoryAPI
from memorix_pg.crypto import generate_key
from memorix_pg.filters import compile_filter
from tests.support.helpers import nested
from tests.support.hostile import EMBEDDING_CASES, INF, NAN, MiB, _Unserialisable, expect_rejection, open_api

# =============================================================================================
# retrieve, count, delete_by_filter
# =============================================================================================

BAD_TOP_K = [0, -1, True, False, 1.5, "5", None, 10**30, 2**63]


@pytest.mark.parametrize("top_k", BAD_TOP_K, ids=[repr(k)[:20] for k in BAD_TOP_K])
@pytest.mark.parametrize("query", ["alpha", None], ids=["ranked", "newest"])
def test_retrieve_rejects_a_bad_top_k(url: str, api: MemoryAPI, top_k: Any, query: str | None) -> None:
    expect_rejection(url, lambda: api.retrieve(query, top_k=top_k), ["top_k"])


@pytest.mark.parametrize(("embedding", "fragments"), EMBEDDING_CASES)
def test_retrieve_rejects_a_bad_embedding(url: str, api: MemoryAPI, embedding, fragments) -> None:
    expect_rejection(url, lambda: api.retrieve(None, embedding=embedding), ["embedding", *fragments])


@pytest.mark.parametrize(
    ("query", "fragments"),
    [
        (5, ["query", "int"]),
        (b"alpha", ["query", "bytes"]),
        ("a\x00", ["NUL"]),
        ("\ud800", ["surrogate"]),
        (["alpha"], ["query", "list"]),
        ("x" * (2 * MiB), [str(2 * MiB)]),
    ],
    ids=["int", "bytes", "NUL", "surrogate", "list", "2MiB"],
)
def test_retrieve_rejects_a_bad_query(url: str, api: MemoryAPI, query: Any, fragments: list[str]) -> None:
    expect_rejection(url, lambda: api.retrieve(query), fragments)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ef_search": "x"},
        {"ef_search": NAN},
        {"ef_search": 1.5},
        {"ef_search": -1},
        {"ef_search": 0},
        {"exact": "yes"},
        {"exact": 1},
    ],
    ids=["ef-str", "ef-nan", "ef-float", "ef-negative", "ef-zero", "exact-str", "exact-int"],
)
def test_retrieve_rejects_bad_search_options(url: str, api: MemoryAPI, kwargs: dict[str, Any]) -> None:
    expect_rejection(url, lambda: api.retrieve("alpha", **kwargs), [next(iter(kwargs))])


def _not_nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"k": "a"}
    for _ in range(depth):
        node = {"$not": node}
    return node


def _and_nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"k": "a"}
    for _ in range(depth):
        node = {"$and": [node]}
    return node


def _cyclic_filter() -> dict[str, Any]:
    items: list[Any] = []
    items.append({"$or": items})
    return {"$and": items}


BAD_FILTERS = [
    pytest.param([{"k": "a"}], ["dict", "list"], id="list"),
    pytest.param("k = 'a'", ["dict", "str"], id="str"),
    pytest.param(5, ["dict", "int"], id="int"),
    pytest.param({1: "a"}, ["strings", "1"], id="int-key"),
    pytest.param({"k": {"a", "b"}}, ["set", "'k'"], id="set-operand"),
    pytest.param({"k": NAN}, ["nan", "'k'"], id="nan-operand"),
    pytest.param({"k": {"$gt": -INF}}, ["inf", "'k'"], id="inf-operand"),
    pytest.param({"k": b"a"}, ["bytes", "'k'"], id="bytes-operand"),
    pytest.param({"k": _Unserialisable()}, ["_Unserialisable", "'k'"], id="object-operand"),
    pytest.param({"k": "a\x00"}, ["NUL", "'k'"], id="NUL-operand"),
    pytest.param({"k": "\ud800"}, ["Unicode", "'k'"], id="surrogate-operand"),
    pytest.param({"\ud800": 1}, ["Unicode"], id="surrogate-key"),
    pytest.param({"$where": "1 = 1"}, ["unknown operator", "$where"], id="unknown-top-operator"),
    pytest.param({"k": {"$bogus": 1}}, ["unknown operator", "$bogus"], id="unknown-operator"),
    pytest.param({"k": {"$gt": [1]}}, ["$gt", "arrays"], id="range-array"),
    pytest.param({"k": {"$in": "abc"}}, ["$in", "list"], id="in-str"),
    pytest.param({"k": {"$size": -1}}, ["$size"], id="size-negative"),
    pytest.param({"k": {"$size": True}}, ["$size"], id="size-bool"),
    pytest.param({"k": {"$regex": 5}}, ["$regex"], id="regex-int"),
    pytest.param({"k": {"$exists": "yes"}}, ["$exists"], id="exists-str"),
    pytest.param({"k": {"$regex": "("}}, ["regular expression"], id="regex-python-invalid"),
    pytest.param({"k": {"$regex": "\\q"}}, ["$regex"], id="regex-postgres-invalid"),
    pytest.param(
        {"k": {"$regex": "((((a{1,100}){1,100}){1,100}){1,100})"}}, ["$regex"], id="regex-too-complex"
    ),
    pytest.param({"k": {"$regex": "a", "$options": "xq"}}, ["options"], id="regex-options"),
    pytest.param({"k": {"$options": "i"}}, ["$options"], id="options-alone"),
    pytest.param({"k": re.compile(b"a")}, ["str"], id="bytes-pattern"),
    pytest.param({"k": re.compile("a", re.X)}, ["flags"], id="verbose-pattern"),
    pytest.param({"k": {"$like": 5}}, ["$like"], id="like-int"),
    pytest.param({"k": {"$like": "a\\"}}, ["escape"], id="like-trailing-escape"),
    pytest.param({"k": {"$between": [1]}}, ["$between"], id="between-one"),
    pytest.param({"k": {"$elemMatch": 5}}, ["$elemMatch"], id="elemmatch-int"),
    pytest.param({"k.": 1}, ["empty part"], id="empty-path-part"),
    pytest.param({"k.$x": 1}, ["'$'"], id="dollar-path-part"),
    pytest.param({"$and": []}, ["$and"], id="and-empty"),
    pytest.param({"$and": [1]}, ["$and"], id="and-int"),
    pytest.param({"$not": [1]}, ["$not"], id="not-list"),
    pytest.param({"k": {"$gt": 1, "n": 2}}, ["mix"], id="mixed-operator-doc"),
    pytest.param({"k": 10**5000}, ["'k'"], id="int-5001-digits"),
    pytest.param({"k": {"$in": [1, -(10**5000)]}}, ["'k'"], id="in-int-5001-digits"),
    pytest.param(_not_nested(300), ["deeper than"], id="300-nested-not"),
    pytest.param(_and_nested(2000), ["deeper than"], id="2000-nested-and"),
    pytest.param({"k": nested(2000)}, ["deeper than"], id="2000-deep-operand"),
    pytest.param(_cyclic_filter(), ["deeper than"], id="cyclic"),
]


@pytest.mark.parametrize(("flt", "fragments"), BAD_FILTERS)
def test_bad_filters_are_filter_errors_everywhere(
    url: str, api: MemoryAPI, flt: Any, fragments: list[str]
) -> None:
    """count, retrieve (newest and ranked), delete_by_filter, cleanup: a FilterError each, nothing deleted."""
    count = api.count()
    for call in (
        lambda: api.count(flt),
        lambda: api.retrieve(None, filter=flt),
        lambda: api.retrieve("alpha", filter=flt),
        lambda: api.delete_by_filter(flt),
        lambda: api.cleanup(dt.timedelta(seconds=1), flt),
    ):
        expect_rejection(url, call, fragments, error=FilterError)
    assert api.count() == count


def test_filters_on_an_encrypted_collection(url: str) -> None:
    """Its extra check on the filter's keys (encrypted values cannot be matched) must not choke on
    a hostile filter either."""
    vault = open_api(url, "hostile-vault", encryption_key=generate_key(), encrypted_metadata=["secret"])
    vault.store("sealed", {"secret": "s", "open": "o"})
    expect_rejection(url, lambda: vault.count({"secret": "s"}), ["'secret'", "encrypted"], error=FilterError)
    expect_rejection(url, lambda: vault.count({"$or": [{"secret.x": 1}]}), ["encrypted"], error=FilterError)
    for flt in (_cyclic_filter(), _and_nested(2000), _not_nested(300)):
        expect_rejection(url, lambda flt=flt: vault.count(flt), ["deeper than"], error=FilterError)
    assert vault.count({"open": "o"}) == 1


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"encryption_key": "\ud800" * 43}, ["encryption_key"]),
        ({"encryption_key": "too short"}, ["encryption_key"]),
        ({"encryption_key": 5}, ["encryption_key"]),
        ({"encryption_key": b"\x00" * 31}, ["encryption_key"]),
        ({"encrypted_metadata": ["secret"]}, ["encryption_key"]),
    ],
    ids=["surrogates", "short", "int", "31-bytes", "metadata-without-key"],
)
def test_bad_encryption_options_are_configuration_errors(
    url: str, kwargs: dict[str, Any], fragments: list[str]
) -> None:
    expect_rejection(
        url, lambda: open_api(url, "hostile-vault-2", **kwargs), fragments, error=ConfigurationError
    )


def test_delete_by_filter_and_archive_need_a_filter(url: str, api: MemoryAPI) -> None:
    expect_rejection(url, lambda: api.delete_by_filter(None), ["{}"], error=FilterError)
    expect_rejection(url, lambda: api.archive(None, to="elsewhere"), ["{}"], error=FilterError)


# ---- filters whose compiled size would explode ------------------------------------------------


def _elem_nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"a": 1}
    for _ in range(depth):
        node = {"a": {"$elemMatch": node}}
    return node


COMPILED_LIMIT = 1_000_000  # characters of SQL + parameters


@pytest.mark.parametrize(
    ("flt", "growth"),
    [
        pytest.param({".".join(["a"] * 16): {"$gt": 1}}, "2^parts", id="16-part-path"),
        pytest.param({".".join(["0"] * 12): {"$gt": 1}}, "3^parts", id="12-numeric-parts"),
        pytest.param({".".join(["0"] * 12): None}, "3^parts", id="12-numeric-parts-null"),
        pytest.param(_elem_nested(17), "2^depth", id="17-nested-elemmatch"),
    ],
)
def test_small_filters_cannot_compile_to_huge_queries(flt: dict[str, Any], growth: str) -> None:
    """A filter of a few dozen characters must compile to a bounded query or be a FilterError.

    Each of these grows as ``growth``: a few more path parts or levels would take gigabytes of
    memory and minutes of CPU, in the caller's process and then in PostgreSQL (a denial of
    service through one filter). The sizes here are small enough to measure safely.
    """
    start = time.perf_counter()
    try:
        compiled = compile_filter(flt).compile(dialect=pg_psycopg.dialect())
    except FilterError:
        return
    elapsed = time.perf_counter() - start
    size = len(str(compiled)) + sum(len(json.dumps(v, default=str)) for v in compiled.params.values())
    source = len(json.dumps(flt))
    assert size < COMPILED_LIMIT, (
        f"a {source}-character filter compiled to {size:,} characters of SQL and parameters in "
        f"{elapsed:.2f} s; it grows as {growth}, so a few more parts/levels exhaust memory"
    )
