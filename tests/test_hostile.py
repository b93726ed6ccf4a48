"""Hostile input, fuzzing and SQL injection against MemoryAPI and the CLI, on a real PostgreSQL.

What every test here holds the library to (issue 6):

* A bad argument fails with a ``memorix_pg.errors.MemorixError`` (also a ``ValueError`` when it
  is a bad argument) whose message names what was wrong, and NOTHING is written: the raw row
  counts and a digest of every row of ``memorix.memories`` and ``memorix.collections``
  (:func:`tests.support.helpers.db_fingerprint`) are unchanged.
* Nothing a caller sends becomes SQL text. Metadata keys and values, filter keys and operands,
  collection names, tenants and ids travel as bound parameters only: the SQL text the library
  sends (captured with a ``before_cursor_execute`` listener on its engine) never contains them;
  the one exception, ``create_index`` DDL, must carry the key as a properly quoted literal.
* Hypothesis throws arbitrary JSON-ish and non-JSON values, filter documents, names and ids at
  the API: the only exceptions allowed out are MemorixError subclasses, and afterwards the
  schema is intact and the other collections hold exactly what they held.

Everything runs against one database for the module (``module_database_url``); each test uses
its own collections, so the tests do not depend on their order.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

from memorix_pg import ConfigurationError, FilterError, InvalidInput, MemorixError, MemoryAPI, MemoryNotFound
from memorix_pg.cli import main as cli_main
from memorix_pg.crypto import generate_key
from memorix_pg.filters import compile_filter
from tests.support.helpers import CapturedSQL, db_fingerprint, nested, sql_rows, sql_value, unit_vectors

DIM = 384  # the hash embedder's
MiB = 1 << 20
NAN, INF = float("nan"), float("inf")

# Strings that would do damage if they ever reached SQL text. Each carries a marker that the
# library's own SQL never contains, so the statement log can be searched for it.
MARKERS = ("DROP TABLE", "pg_sleep", "OR '1'='1", "DELETE FROM memorix.collections", "zq_inj")
INJECTIONS = [
    "'; DROP TABLE memorix.memories; --",
    "a'); DROP TABLE memorix.memories; --",
    "a'); DROP TABLE memorix_memories; --",
    '"); DELETE FROM memorix.collections; --',
    "' OR '1'='1",
    "' || (SELECT pg_sleep(5)) || '",
    "$$; DROP TABLE memorix.collections; $$",
    "zq_inj\\'; --",
    "E'\\x27zq_inj",
]
# Keys and values that are hostile to some layer: SQL quoting, psycopg's %-placeholders, jsonpath
# syntax and variables ($v0), JSON escapes, str.format braces, unicode edge cases.
ODD_STRINGS = [
    '"quoted"',
    "x\\y",
    "\\",
    "\\'",
    "'",
    "''",
    '"',
    "$.a[*]",
    "@",
    "a b",
    "%s",
    "%(v0)s",
    "%%",
    "$1",
    "$v0",
    "v0",
    "{}",
    "{0}",
    "?",
    ":name",
    "--",
    "/*",
    ";",
    ")",
    "\n",
    "\t",
    "\r\n",
    "\x01",
    "\x7f",
    "\u2028",
    "\ufeff",
    "\u00a0",
    "ключ",
    "日本語",
    "🔥",
    "e\u0301",
    "é",
    "null",
    "true",
    "0",
    "-1",
    "1e5",
    "a[0]",
    "like_regex",
    "@.type()",
    "exists(@)",
    "strict $",
    "$",
    ".",
    "a.",
    "a..b",
    " ",
]
HOSTILE = INJECTIONS + ODD_STRINGS


def filter_safe(key: str) -> bool:
    """A metadata key a filter can name directly (a filter key is a dotted path; '$' starts an operator)."""
    return bool(key) and "." not in key and not key.startswith("$")


def open_api(url: str, name: str, **kwargs: Any) -> MemoryAPI:
    return MemoryAPI(embedder="hash", collection_name=name, database_url=url, **kwargs)


@pytest.fixture(scope="module")
def url(module_database_url: str) -> str:
    return module_database_url


@pytest.fixture(scope="module")
def api(url: str) -> MemoryAPI:
    """The collection the rejection tests aim at: three memories."""
    target = open_api(url, "hostile")
    target.store_batch(
        ["alpha memory", "beta memory", "gamma memory"],
        [{"k": "a", "n": 1}, {"k": "b", "n": 2}, {"k": "c", "n": 3}],
    )
    return target


@pytest.fixture(scope="module")
def bystander(url: str) -> MemoryAPI:
    """Another collection: no call on another collection may touch it."""
    other = open_api(url, "bystander")
    other.store_batch([f"bystander {i}" for i in range(5)], [{"i": i, "k": "a"} for i in range(5)])
    return other


@pytest.fixture(scope="module")
def alpha_id(api: MemoryAPI) -> str:
    return api.retrieve(None, filter={"k": "a"})[0].id


def expect_rejection(
    url: str,
    call: Callable[[], Any],
    fragments: list[str],
    error: type[MemorixError] = InvalidInput,
    value_error: bool = True,
) -> MemorixError:
    """``call`` raises ``error`` naming every fragment, and the database is exactly as it was."""
    before = db_fingerprint(url)
    try:
        call()
    except MemorixError as exc:
        caught = exc
    except Exception as exc:  # the point: anything else is a bug
        raw = f"{type(exc).__module__}.{type(exc).__name__}"
        pytest.fail(f"a raw {raw} escaped instead of a MemorixError: {exc!r:.400}")
    else:
        pytest.fail("the call succeeded; it should have been rejected")
    assert isinstance(caught, error), f"expected {error.__name__}, got {type(caught).__name__}: {caught}"
    if value_error:
        assert isinstance(caught, ValueError), f"{type(caught).__name__} is not a ValueError"
    message = str(caught)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} is not in the message {message!r:.400}"
    assert db_fingerprint(url) == before, "something was written although the call failed"
    return caught


# =============================================================================================
# store
# =============================================================================================


class _Unserialisable:
    def __repr__(self) -> str:
        return "<unserialisable>"


def _cyclic() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


STORE_CASES = [
    pytest.param(lambda a: a.store("before\x00after"), ["texts[0]", "NUL"], id="text-with-NUL"),
    pytest.param(lambda a: a.store(""), ["texts[0]", "empty"], id="empty-text"),
    pytest.param(lambda a: a.store(" \n\t "), ["empty"], id="blank-text"),
    pytest.param(lambda a: a.store("x" * (10 * MiB)), [str(10 * MiB), str(MiB)], id="10MiB-text"),
    # the limit is in bytes, not characters: 2**19 + 1 two-byte characters are over it
    pytest.param(lambda a: a.store("é" * (MiB // 2 + 1)), [str(MiB + 2), str(MiB)], id="1MiB-of-utf8"),
    pytest.param(lambda a: a.store(42), ["texts[0]", "str", "int"], id="text-int"),
    pytest.param(lambda a: a.store(None), ["texts[0]", "str"], id="text-None"),
    pytest.param(lambda a: a.store(b"bytes"), ["texts[0]", "bytes"], id="text-bytes"),
    pytest.param(lambda a: a.store("lone \ud800"), ["surrogate"], id="text-lone-surrogate"),
    pytest.param(lambda a: a.store("x", {"tags": {"a", "b"}}), ["'tags'", "set"], id="meta-set"),
    pytest.param(lambda a: a.store("x", {"blob": b"\x00"}), ["'blob'", "bytes"], id="meta-bytes"),
    pytest.param(
        lambda a: a.store("x", {"o": _Unserialisable()}), ["'o'", "_Unserialisable"], id="meta-object"
    ),
    pytest.param(lambda a: a.store("x", {"c": 1j}), ["'c'", "complex"], id="meta-complex"),
    pytest.param(lambda a: a.store("x", {"d": Decimal("1.5")}), ["'d'", "Decimal"], id="meta-decimal"),
    pytest.param(lambda a: a.store("x", {"score": NAN}), ["'score'", "NaN"], id="meta-nan"),
    pytest.param(lambda a: a.store("x", {"a": {"b": [1, INF]}}), ["'a.b[1]'", "inf"], id="meta-inf-nested"),
    pytest.param(lambda a: a.store("x", {"m": -INF}), ["'m'", "-inf"], id="meta-minus-inf"),
    pytest.param(lambda a: a.store("x", {"f": np.float32("nan")}), ["'f'", "NaN"], id="meta-numpy-nan"),
    pytest.param(lambda a: a.store("x", {"arr": np.zeros(3)}), ["'arr'", "ndarray"], id="meta-ndarray"),
    pytest.param(lambda a: a.store("x", nested(100)), ["deeper than 32"], id="meta-100-deep"),
    pytest.param(lambda a: a.store("x", nested(33)), ["deeper than 32"], id="meta-33-deep"),
    pytest.param(lambda a: a.store("x", _cyclic()), ["deeper than 32"], id="meta-cyclic"),
    pytest.param(lambda a: a.store("x", {1: "one"}), ["1", "not a str"], id="meta-int-key"),
    pytest.param(lambda a: a.store("x", {None: 1}), ["None", "not a str"], id="meta-None-key"),
    pytest.param(lambda a: a.store("x", {("t",): 1}), ["('t',)", "not a str"], id="meta-tuple-key"),
    pytest.param(lambda a: a.store("x", {"a": {2.5: "b"}}), ["2.5", "'a'"], id="meta-nested-float-key"),
    pytest.param(lambda a: a.store("x", {"a": "x\x00y"}), ["'a'", "NUL"], id="meta-NUL-value"),
    pytest.param(lambda a: a.store("x", {"a\x00": 1}), ["NUL"], id="meta-NUL-key"),
    pytest.param(lambda a: a.store("x", {"a": "\udc80"}), ["'a'", "surrogate"], id="meta-surrogate-value"),
    pytest.param(lambda a: a.store("x", {"\ud800k": 1}), ["surrogate"], id="meta-surrogate-key"),
    pytest.param(lambda a: a.store("x", {"n": 10**5000}), ["'n'", "digits"], id="meta-int-5001-digits"),
    pytest.param(lambda a: a.store("x", ["not", "a", "dict"]), ["dict", "list"], id="meta-list"),
    pytest.param(lambda a: a.store("x", "k=v"), ["dict", "str"], id="meta-str"),
    pytest.param(lambda a: a.store("x", id="not-a-uuid"), ["'not-a-uuid'", "not a UUID"], id="id-not-uuid"),
    pytest.param(lambda a: a.store("x", id=INJECTIONS[0]), ["not a UUID"], id="id-sql"),
    pytest.param(lambda a: a.store("x", id=""), ["not a UUID"], id="id-empty"),
    pytest.param(lambda a: a.store("x", id=123), ["123", "not a UUID"], id="id-int"),
    pytest.param(
        lambda a: a.store("x", id="12345678-1234-5678-1234-56781234567g"), ["not a UUID"], id="id-almost-uuid"
    ),
    pytest.param(lambda a: a.store("x", ttl=dt.timedelta(seconds=-1)), ["ttl"], id="ttl-negative"),
    pytest.param(lambda a: a.store("x", ttl="1d"), ["ttl"], id="ttl-str"),
    pytest.param(lambda a: a.store("x", ttl=dt.timedelta(days=999_999_999)), ["ttl"], id="ttl-overflow"),
]


@pytest.mark.parametrize(("call", "fragments"), STORE_CASES)
def test_store_rejects_bad_input_and_writes_nothing(url: str, api: MemoryAPI, call, fragments) -> None:
    count = api.count()
    expect_rejection(url, lambda: call(api), fragments)
    assert api.count() == count


def test_a_text_of_exactly_1_mib_is_stored(url: str, api: MemoryAPI) -> None:
    """The limit is inclusive: the error cases above are not an off-by-one away from valid input."""
    memory_id = api.store("é" * (MiB // 2 - 1) + "ab")
    memory = api.get(memory_id)
    assert memory is not None and len(memory.text.encode()) == MiB
    assert api.delete(memory_id)


EMBEDDING_CASES = [
    pytest.param([0.1] * (DIM - 1), ["383 dimensions", "384"], id="wrong-dimension"),
    pytest.param([0.1] * (DIM + 1), ["385 dimensions"], id="one-too-many"),
    pytest.param([NAN] + [0.1] * (DIM - 1), ["NaN"], id="nan"),
    pytest.param([INF] * DIM, ["Infinity"], id="inf"),
    pytest.param([1e300] * DIM, ["Infinity"], id="float32-overflow"),
    pytest.param([None] * DIM, ["NaN"], id="nones"),
    pytest.param(["x"] * DIM, ["not a sequence of numbers"], id="strings"),
    pytest.param([[0.1] * DIM] * 2, ["one vector"], id="two-dimensional"),
    pytest.param({"a": 1}, ["not a sequence of numbers"], id="dict"),
    pytest.param(3.0, ["one vector"], id="scalar"),
]


@pytest.mark.parametrize(("embedding", "fragments"), EMBEDDING_CASES)
def test_store_batch_rejects_a_bad_embedding(url: str, api: MemoryAPI, embedding, fragments) -> None:
    expect_rejection(
        url, lambda: api.store_batch(["x"], embeddings=[embedding]), ["embeddings[0]", *fragments]
    )


# ---- one bad item in the middle of a batch of 500 --------------------------------------------

BAD_AT = 250


def _batch_of_500(field: str, bad: Any) -> dict[str, Any]:
    """A valid batch of 500 with ``field[250]`` replaced by ``bad`` (``"duplicate"``: ids[250] = ids[10])."""
    args: dict[str, Any] = {
        "texts": [f"batch item {i}" for i in range(500)],
        "metadatas": [{"i": i} for i in range(500)],
        "ids": [str(uuid.uuid4()) for _ in range(500)],
    }
    if field == "embeddings":
        args["embeddings"] = list(unit_vectors(500, DIM))
    if field == "created_at":
        start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        args["created_at"] = [start + dt.timedelta(minutes=i) for i in range(500)]
    args[field][BAD_AT] = args["ids"][10] if isinstance(bad, str) and bad == "duplicate" else bad
    return args


BATCH_CASES = [
    pytest.param("texts", "bad\x00text", ["NUL"], id="text-NUL"),
    pytest.param("texts", "", ["empty"], id="text-empty"),
    pytest.param("texts", 250, ["str"], id="text-int"),
    pytest.param("texts", "x" * (MiB + 1), [str(MiB + 1)], id="text-too-long"),
    pytest.param("metadatas", {"x": NAN}, ["NaN"], id="meta-nan"),
    pytest.param("metadatas", {7: "x"}, ["not a str"], id="meta-int-key"),
    pytest.param("metadatas", nested(100), ["deeper than 32"], id="meta-deep"),
    pytest.param("metadatas", ["not", "a", "dict"], ["dict"], id="meta-list"),
    pytest.param("metadatas", {"x": {1, 2}}, ["set"], id="meta-set"),
    pytest.param("metadatas", {"x": "\ud800"}, ["surrogate"], id="meta-surrogate"),
    pytest.param("metadatas", {"x": 10**5000}, ["digits"], id="meta-huge-int"),
    pytest.param("ids", "not-a-uuid", ["not a UUID"], id="id-not-uuid"),
    pytest.param("ids", "duplicate", [], id="id-duplicate"),
    pytest.param("embeddings", np.full(DIM - 1, 0.1), ["383 dimensions"], id="embedding-dimension"),
    pytest.param("embeddings", np.full(DIM, NAN), ["NaN"], id="embedding-nan"),
    pytest.param("created_at", dt.datetime(2024, 1, 1), ["time zone"], id="created-at-naive"),
    pytest.param("created_at", "yesterday", ["ISO 8601"], id="created-at-garbage"),
]


@pytest.mark.parametrize(("field", "bad", "fragments"), BATCH_CASES)
def test_one_bad_item_in_a_batch_of_500_stores_nothing_and_is_named(
    url: str, api: MemoryAPI, field: str, bad: Any, fragments: list[str]
) -> None:
    count = api.count()
    args = _batch_of_500(field, bad)
    texts = args.pop("texts")
    expect_rejection(url, lambda: api.store_batch(texts, **args), [f"{field}[{BAD_AT}]", *fragments])
    assert api.count() == count


def test_an_id_of_another_collection_in_a_batch_of_500_stores_nothing(
    url: str, api: MemoryAPI, bystander: MemoryAPI
) -> None:
    """Rejected by the database (the COPY + upsert path), rolled back as a whole."""
    taken = bystander.retrieve(None, top_k=1)[0]
    args = _batch_of_500("ids", taken.id)
    texts = args.pop("texts")
    expect_rejection(url, lambda: api.store_batch(texts, **args), [taken.id, "another collection"])
    assert bystander.get(taken.id) == taken


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        pytest.param({"metadatas": [{}] * 499}, ["metadatas", "499", "500"], id="short-metadatas"),
        pytest.param({"ids": [str(uuid.uuid4())] * 1}, ["ids", "1", "500"], id="short-ids"),
        pytest.param({"embeddings": unit_vectors(501, DIM)}, ["embeddings", "501"], id="long-embeddings"),
        pytest.param({"metadatas": 5}, ["metadatas"], id="metadatas-int"),
        pytest.param({"ids": 5}, ["ids"], id="ids-int"),
        pytest.param({"embeddings": 5.0}, ["embeddings"], id="embeddings-float"),
        pytest.param({"created_at": 5}, ["created_at"], id="created-at-int"),
    ],
)
def test_store_batch_rejects_mismatched_or_unsized_arguments(
    url: str, api: MemoryAPI, kwargs: dict[str, Any], fragments: list[str]
) -> None:
    texts = [f"batch item {i}" for i in range(500)]
    expect_rejection(url, lambda: api.store_batch(texts, **kwargs), fragments)


@pytest.mark.parametrize(
    "texts", ["one string", 42, None, iter(["a"])], ids=["str", "int", "None", "iterator"]
)
def test_store_batch_rejects_texts_that_are_not_a_list(url: str, api: MemoryAPI, texts: Any) -> None:
    expect_rejection(url, lambda: api.store_batch(texts), ["texts must be a list"])


# =============================================================================================
# update, get, delete
# =============================================================================================

UPDATE_CASES = [
    pytest.param(lambda a, i: a.update(i, metadata={"x": NAN}), ["'x'", "NaN"], id="meta-nan"),
    pytest.param(lambda a, i: a.update(i, metadata=nested(100)), ["deeper than 32"], id="meta-deep"),
    pytest.param(lambda a, i: a.update(i, metadata={3: "x"}), ["3", "not a str"], id="meta-int-key"),
    pytest.param(lambda a, i: a.update(i, metadata={"x": _Unserialisable()}), ["'x'"], id="meta-object"),
    pytest.param(lambda a, i: a.update(i, metadata=[("x", 1)]), ["dict"], id="meta-list"),
    pytest.param(lambda a, i: a.update(i, metadata={"x": "\udfff"}), ["surrogate"], id="meta-surrogate"),
    pytest.param(lambda a, i: a.update(i, metadata={"x": -(10**5000)}), ["digits"], id="meta-huge-int"),
    pytest.param(lambda a, i: a.update(i, text=""), ["empty"], id="text-empty"),
    pytest.param(lambda a, i: a.update(i, text="a\x00b"), ["NUL"], id="text-NUL"),
    pytest.param(lambda a, i: a.update(i, text="x" * (10 * MiB)), [str(10 * MiB), str(MiB)], id="text-10MiB"),
    pytest.param(lambda a, i: a.update(i, text="\ud800"), ["surrogate"], id="text-surrogate"),
    pytest.param(lambda a, i: a.update(i, text=7), ["str"], id="text-int"),
    pytest.param(
        lambda a, i: a.update(i, text="a fine new text", metadata={"x": NAN}),
        ["NaN"],
        id="good-text-bad-meta",
    ),
    pytest.param(
        lambda a, i: a.update(i, text="\x00", metadata={"fine": 1}), ["NUL"], id="bad-text-good-meta"
    ),
    pytest.param(
        lambda a, i: a.update("nope", metadata={"x": 1}), ["'nope'", "not a UUID"], id="id-not-uuid"
    ),
]


@pytest.mark.parametrize(("call", "fragments"), UPDATE_CASES)
def test_update_rejects_bad_input_and_changes_nothing(
    url: str, api: MemoryAPI, alpha_id: str, call, fragments
) -> None:
    before = api.get(alpha_id)
    expect_rejection(url, lambda: call(api, alpha_id), fragments)
    assert api.get(alpha_id) == before


def test_update_of_an_unknown_id_or_another_collections_memory_is_memory_not_found(
    url: str, api: MemoryAPI, bystander: MemoryAPI
) -> None:
    theirs = bystander.retrieve(None, top_k=1)[0]
    for memory_id in (str(uuid.uuid4()), theirs.id):
        exc = expect_rejection(
            url,
            lambda memory_id=memory_id: api.update(
                memory_id, text="hijacked", metadata={"owner": "attacker"}
            ),
            [memory_id, "'hostile'"],
            error=MemoryNotFound,
            value_error=False,
        )
        assert isinstance(exc, KeyError)
    assert bystander.get(theirs.id) == theirs


BAD_IDS = [
    "nope",
    "",
    INJECTIONS[0],
    "12345678-1234-5678-1234-56781234567g",
    "12345678-1234-5678-1234-5678123456789",
    "12345678-1234-5678-1234-567812345678' OR '1'='1",
    42,
    1.5,
    None,
    b"\x12" * 16,
    ["12345678-1234-5678-1234-567812345678"],
    "\ud800",
    "\x00",
]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=[ascii(i)[:40] for i in BAD_IDS])
def test_get_delete_update_reject_ids_that_are_not_uuids(url: str, api: MemoryAPI, bad_id: Any) -> None:
    for call in (
        lambda: api.get(bad_id),
        lambda: api.delete(bad_id),
        lambda: api.update(bad_id, metadata={}),
    ):
        expect_rejection(url, call, [repr(bad_id), "not a UUID"])


def test_get_and_delete_never_reach_another_collection(api: MemoryAPI, bystander: MemoryAPI) -> None:
    theirs = bystander.retrieve(None, top_k=1)[0]
    assert api.get(theirs.id) is None
    assert api.delete(theirs.id) is False
    assert bystander.get(theirs.id) == theirs
    # every spelling uuid.UUID accepts is the same id, not an error and not another row
    plain = uuid.UUID(theirs.id)
    for spelling in (plain.hex, "{" + theirs.id + "}", plain.urn, theirs.id.upper(), plain):
        assert bystander.get(spelling) == theirs  # type: ignore[arg-type]
        assert api.get(spelling) is None  # type: ignore[arg-type]


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


# =============================================================================================
# collection names and tenants
# =============================================================================================

BAD_NAMES = [
    pytest.param("x" * 10_000, ["10000", "512"], id="10k-chars"),
    pytest.param("x" * 513, ["513", "512"], id="513-chars"),
    pytest.param("", ["collection_name"], id="empty"),
    pytest.param(None, ["collection_name"], id="None"),
    pytest.param(5, ["collection_name"], id="int"),
    pytest.param(b"name", ["collection_name"], id="bytes"),
    pytest.param("a\x00b", ["collection_name", "NUL"], id="NUL"),
    pytest.param("lone \ud800", ["collection_name", "surrogate"], id="surrogate"),
]


@pytest.mark.parametrize(("name", "fragments"), BAD_NAMES)
def test_bad_collection_names_are_rejected_and_create_nothing(
    url: str, api: MemoryAPI, name: Any, fragments: list[str]
) -> None:
    expect_rejection(url, lambda: open_api(url, name), fragments)
    expect_rejection(url, lambda: api.archive({}, to=name), fragments)


@pytest.mark.parametrize(
    ("tenant", "fragments"),
    [
        ("", ["tenant"]),
        ("t\x00", ["tenant"]),
        ("t" * 600, ["tenant"]),
        (7, ["tenant"]),
        ("\udc00", ["tenant"]),
    ],
    ids=["empty", "NUL", "600-chars", "int", "surrogate"],
)
def test_bad_tenants_are_rejected(url: str, tenant: Any, fragments: list[str]) -> None:
    expect_rejection(url, lambda: open_api(url, "hostile", tenant=tenant), fragments)


# =============================================================================================
# CLI
# =============================================================================================


def _cli(url: str, *args: str) -> Any:
    return CliRunner().invoke(cli_main, list(args), env={"MEMORIX_DATABASE_URL": url})


def _common(collection: str = "hostile") -> list[str]:
    return ["--collection", collection, "--embedder", "hash"]


CLI_CASES = [
    pytest.param(["store", "bad\x00text", *_common()], ["InvalidInput", "NUL"], id="store-NUL"),
    pytest.param(["store", "", *_common()], ["InvalidInput", "empty"], id="store-empty"),
    pytest.param(["store", "  ", *_common()], ["empty"], id="store-blank"),
    pytest.param(["store", "ok", "-m", '{"score": NaN}', *_common()], ["NaN"], id="store-meta-NaN"),
    pytest.param(["store", "ok", "-m", '{"a": [Infinity]}', *_common()], ["inf"], id="store-meta-inf"),
    pytest.param(["store", "ok", "-m", "[1, 2]", *_common()], ["dict"], id="store-meta-list"),
    pytest.param(["store", "ok", "-m", '"text"', *_common()], ["dict"], id="store-meta-str"),
    pytest.param(
        ["store", "ok", "-m", json.dumps(nested(100)), *_common()], ["deeper than 32"], id="store-meta-deep"
    ),
    pytest.param(["store", "ok", "-m", '{"a": "\\u0000"}', *_common()], ["NUL"], id="store-meta-NUL"),
    pytest.param(
        ["store", "ok", "-m", '{"a": "\\ud800"}', *_common()], ["surrogate"], id="store-meta-surrogate"
    ),
    pytest.param(["store", "ok", "--id", "not-a-uuid", *_common()], ["not a UUID"], id="store-bad-id"),
    pytest.param(["store", "ok", "--id", INJECTIONS[0], *_common()], ["not a UUID"], id="store-sql-id"),
    pytest.param(["store", "ok", *_common("x" * 10_000)], ["10000", "512"], id="store-10k-collection"),
    pytest.param(["store", "ok", *_common("a\x00b")], ["NUL"], id="store-NUL-collection"),
    pytest.param(["search", "q", "--top-k", "0", *_common()], ["top_k"], id="search-top-k-0"),
    pytest.param(["search", "q", "--top-k", str(10**30), *_common()], ["top_k"], id="search-top-k-huge"),
    pytest.param(["search", "q", "-f", '{"$where": "1"}', *_common()], ["unknown operator"], id="search-op"),
    pytest.param(["search", "q", "-f", '{"k": {"$regex": "("}}', *_common()], ["regular"], id="search-regex"),
    pytest.param(
        ["search", "q", "-f", '{"k": {"$regex": "\\\\q"}}', *_common()], ["$regex"], id="search-pg-regex"
    ),
    pytest.param(["search", "q", "-f", "[1]", *_common()], ["dict"], id="search-filter-list"),
    pytest.param(["search", "q", "-f", '{"k": NaN}', *_common()], ["nan"], id="search-filter-nan"),
    pytest.param(
        ["cleanup", "--older-than", "1d", "-f", '{"k": {"$gt": {}}}', *_common()],
        ["$gt"],
        id="cleanup-filter",
    ),
    pytest.param(
        ["archive", "-f", "{}", "--to", "hostile", *_common()], ["itself"], id="archive-into-itself"
    ),
    pytest.param(
        ["archive", "-f", '{"$bogus": 1}', "--to", "elsewhere", *_common()], ["$bogus"], id="archive-op"
    ),
    pytest.param(
        ["archive", "-f", "{}", "--to", "x" * 10_000, *_common()], ["512"], id="archive-long-target"
    ),
    pytest.param(["stats", "--group-by", "a\x00", *_common()], ["group_by"], id="stats-NUL-key"),
    pytest.param(["stats", "--group-by", "\ud800", *_common()], ["group_by"], id="stats-surrogate-key"),
]


@pytest.mark.parametrize(("args", "fragments"), CLI_CASES)
def test_cli_reports_bad_input_with_exit_1_and_no_traceback(
    url: str, api: MemoryAPI, args: list[str], fragments: list[str]
) -> None:
    before = db_fingerprint(url)
    result = _cli(url, *args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__} (a traceback for the user): {result.exception!r:.400}"
    )
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert db_fingerprint(url) == before


def test_cli_malformed_json_is_a_usage_error(url: str, api: MemoryAPI) -> None:
    """Not valid JSON at all is click's usage error (exit 2), still without a traceback."""
    before = db_fingerprint(url)
    for args in (
        ["store", "ok", "-m", "{not json"],
        ["search", "q", "-f", "{'k': 1}"],
        # more digits than Python's int parser takes (sys.get_int_max_str_digits): json raises ValueError
        ["store", "ok", "-m", '{"n": ' + "9" * 5000 + "}"],
        ["search", "q", "-f", '{"k": ' + "9" * 5000 + "}"],
    ):
        result = _cli(url, *args, *_common())
        assert result.exit_code == 2, result.output
        assert isinstance(result.exception, SystemExit)
        assert "not valid JSON" in result.output and "Traceback" not in result.output, repr(result.exception)
    assert db_fingerprint(url) == before


def test_cli_import_with_a_bad_line_anywhere_stores_nothing(url: str, api: MemoryAPI, tmp_path: Path) -> None:
    """import checks every line before writing: a bad line after the first chunk (2,000 lines) too."""
    lines = [{"text": f"imported {i}", "metadata": {"i": i}} for i in range(2100)]
    for bad in ({"text": "imported", "metadata": {"x": NAN}}, {"text": ""}, {"text": "ok", "id": "nope"}):
        before = db_fingerprint(url)
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join(json.dumps(line) for line in [*lines[:2050], bad, *lines[2050:]]) + "\n")
        result = _cli(url, "import", str(path), "--no-progress", *_common())
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        assert db_fingerprint(url) == before, f"{bad}: lines before the bad one were stored"


# =============================================================================================
# SQL injection: hostile keys, values, names and index keys are data, never SQL
# =============================================================================================


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def assert_never_in_sql(captured: CapturedSQL, values: list[str], benign: str = "") -> None:
    """No captured statement contains one of ``values``, raw or as a SQL literal.

    Strings the library's own SQL contains anyway (``benign``: the statements of the same calls
    with harmless values; and one-character strings) cannot be told apart and are skipped.
    """
    text = "\n".join(captured.statements)
    leaked = []
    for value in values:
        if len(value) >= 2 and value not in benign and value in text:
            leaked.append(value)
        elif sql_literal(value) not in benign and sql_literal(value) in text:
            leaked.append(sql_literal(value))
    assert not leaked, f"caller values in SQL text: {leaked!r}"
    for marker in MARKERS:
        assert marker not in text, marker


def assert_schema_intact(url: str) -> None:
    assert sql_value(url, "SELECT to_regclass('memorix.memories') IS NOT NULL") is True
    assert sql_value(url, "SELECT to_regclass('memorix.collections') IS NOT NULL") is True


def _like_literal(value: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", value)


def test_hostile_metadata_keys_are_stored_and_matched_literally(url: str) -> None:
    coll = open_api(url, "inject-keys")
    keys = list(HOSTILE)
    with CapturedSQL(url) as benign_log:  # the same calls with a harmless key, for the baseline
        mid = coll.store("benign", {"plain": "v"})
        coll.count({"plain": "v"})
        coll.retrieve(None, filter={"plain": "v"})
        coll.retrieve("benign", filter={"plain": {"$in": ["v"]}, "other": {"$exists": False}})
        coll.count({"plain": {"$gte": "v", "$lte": "v"}})
        coll.count({"plain": {"$like": "v"}})
        coll.stats("plain")
        coll.update(mid, metadata={"plain": None})
        coll.delete(mid)
    benign = "\n".join(benign_log.statements)
    ids: dict[str, str] = {}
    with CapturedSQL(url) as log:
        for i, key in enumerate(keys):
            value = HOSTILE[(i + 7) % len(HOSTILE)]
            ids[key] = coll.store(f"memory {i}", {key: value, "i": i})
        decoy = coll.store("decoy", {"plain": "v", "nested": {"x": 1}})
        total = len(keys) + 1
        assert coll.count() == total
        for i, key in enumerate(keys):
            value = HOSTILE[(i + 7) % len(HOSTILE)]
            memory = coll.get(ids[key])
            assert memory is not None and memory.metadata == {key: value, "i": i}, key
            if not filter_safe(key):
                # A filter key is a dotted path and '$' starts an operator: such a key is either
                # a FilterError or a path into nested keys, which no memory here has.
                try:
                    assert coll.count({key: value}) == 0, key
                except FilterError:
                    pass
                continue
            for flt in (
                {key: value},
                {key: {"$eq": value}},
                {key: {"$in": [value, "zq_other"]}},
                {key: {"$exists": True}},
                {key: {"$gte": value, "$lte": value}},
                {key: {"$like": _like_literal(value)}},
                {"$and": [{key: value}, {"i": i}]},
            ):
                assert coll.count(flt) == 1, (key, flt)
                assert [m.id for m in coll.retrieve(None, top_k=5, filter=flt)] == [ids[key]], (key, flt)
                assert [m.id for m in coll.retrieve("memory", top_k=5, filter=flt)] == [ids[key]], (key, flt)
            assert coll.count({key: {"$ne": value}}) == total - 1
            assert coll.stats(key)["groups"] == {value: 1, None: total - 1}
        # a dotted hostile key reaches nested keys, literally
        nested_id = coll.store("nested", {"a'); DROP TABLE memorix": {"memories; --": "deep"}})
        assert [m.id for m in coll.retrieve(None, filter={INJECTIONS[1]: "deep"})] == [nested_id]
        assert coll.delete(nested_id)
        k_a, k_b, k_c, k_d = INJECTIONS[2], '"quoted"', "x\\y", "%(v0)s"
        updated = coll.update(ids[k_a], metadata={k_b: k_c, k_a: None})
        assert updated.metadata == {k_b: k_c, "i": keys.index(k_a)}
        assert coll.count({k_b: k_c}) == 1
        assert coll.delete_by_filter({k_d: {"$exists": True}}) == 1
        assert coll.get(decoy) is not None
    assert_never_in_sql(log, [*keys, *HOSTILE], benign)
    assert_schema_intact(url)
    assert coll.count() == total - 1


def _match_each_value(coll: MemoryAPI, values: list[str]) -> None:
    """Store ``{"payload": v}`` for each value; every filter on a value finds exactly its memory."""
    ids = coll.store_batch([f"value {i}" for i in range(len(values))], [{"payload": v} for v in values])
    for memory_id, value in zip(ids, values, strict=True):
        for flt in (
            {"payload": value},
            {"payload": {"$in": [value]}},
            {"payload": {"$gte": value, "$lte": value}},
            {"payload": {"$like": _like_literal(value)}},
            {"payload": {"$regex": "^" + re.escape(value) + "$"}},
            {"payload": {"$all": [value]}},
            {"$or": [{"payload": value}, {"payload": "zq_none"}]},
        ):
            assert [m.id for m in coll.retrieve(None, top_k=5, filter=flt)] == [memory_id], (value, flt)
        assert coll.count({"payload": {"$nin": [value]}}) == len(values) - 1
    assert coll.stats("payload")["groups"] == dict.fromkeys(values, 1)


def test_hostile_values_under_one_key_match_exactly_their_memory(url: str) -> None:
    with CapturedSQL(url) as benign:
        _match_each_value(open_api(url, "plain-values"), ["plain one", "plain two"])
    values = [*HOSTILE, "", "zq_inj" * 200]  # the last one is longer than the text index prefix
    with CapturedSQL(url) as log:
        _match_each_value(open_api(url, "inject-values"), values)
    assert_never_in_sql(log, [v for v in values if v], "\n".join(benign.statements))
    assert_schema_intact(url)


HOSTILE_NAMES = [
    "it's",
    'say "hi"',
    "semi;colon",
    "a'); DROP TABLE memorix.collections; --",
    "'; DROP TABLE memorix.memories; --",
    "日本語のコレクション",
    "emoji 🔥",
    "back\\slash",
    "%s",
    "%(name)s",
    "{0}",
    "$1",
    "--",
    "/* c */",
    " ",
    "trailing ",
    "e\u0301",
    "é",
    "Default",
    "default",
    "memorix.memories",
    "\n",
    "x" * 512,
]


def test_hostile_collection_names_work_and_are_isolated(url: str) -> None:
    before = int(sql_value(url, "SELECT count(*) FROM memorix.collections"))
    with CapturedSQL(url) as benign_log:  # the same calls on a harmless name, for the baseline
        plain = open_api(url, "plain-name")
        plain.store("only in collection plain", {"i": -1})
        plain.count()
        plain.retrieve(None, top_k=10)
        plain.retrieve("only in collection plain", top_k=10)
        open_api(url, "plain-name-2")
        plain.archive({}, to="plain-name-2")
    before += 2
    with CapturedSQL(url) as log:
        apis = [open_api(url, name) for name in HOSTILE_NAMES]
        for i, coll in enumerate(apis):
            coll.store(f"only in collection {i}", {"i": i})
        for i, (name, coll) in enumerate(zip(HOSTILE_NAMES, apis, strict=True)):
            assert coll.collection_name == name
            assert coll.count() == 1
            assert [m.text for m in coll.retrieve(None, top_k=10)] == [f"only in collection {i}"]
            assert [m.metadata for m in coll.retrieve(f"only in collection {i}", top_k=10)] == [{"i": i}]
            assert open_api(url, name).collection_id == coll.collection_id
        # archive between two hostile names moves exactly one memory
        assert apis[0].archive({}, to=HOSTILE_NAMES[3]) == 1
        assert (apis[0].count(), apis[3].count()) == (0, 2)
    rows = sql_rows(url, "SELECT name FROM memorix.collections WHERE name = ANY(%s)", (HOSTILE_NAMES,))
    assert sorted(r[0] for r in rows) == sorted(HOSTILE_NAMES)  # distinct, stored literally
    assert int(sql_value(url, "SELECT count(*) FROM memorix.collections")) == before + len(HOSTILE_NAMES)
    assert_never_in_sql(log, HOSTILE_NAMES, "\n".join(benign_log.statements))
    assert_schema_intact(url)


def test_hostile_tenants_are_bound_values(url: str) -> None:
    tenants = ["t'1", 't"2', "t;3", "'; DROP TABLE memorix.memories; --", "ключ", "%s"]
    with CapturedSQL(url) as log:
        for i, tenant in enumerate(tenants):
            open_api(url, "inject-tenants", tenant=tenant).store(f"tenant memory {i}")
        for i, tenant in enumerate(tenants):
            scoped = open_api(url, "inject-tenants", tenant=tenant)
            assert [m.text for m in scoped.retrieve(None, top_k=10)] == [f"tenant memory {i}"]
    assert_never_in_sql(log, tenants)
    assert_schema_intact(url)


INDEX_KEYS = [
    "a'); DROP TABLE memorix_memories; --",
    "it's",
    '"quoted"',
    "x\\y",
    "@",
    "a b",
    "%s",
    "%(x)s",
    "50%",
    "'",
    "ключ",
    "\n",
    "zq_inj $$ x",
]


def test_create_index_with_a_hostile_key_creates_one_index_and_nothing_else(url: str) -> None:
    coll = open_api(url, "inject-index")
    for i, key in enumerate(INDEX_KEYS):
        coll.store(f"indexed {i}", {key: f"v{i:02d}", "n": i})
    tables = sql_rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'memorix' ORDER BY 1")
    for key in INDEX_KEYS:
        for kind in ("text", "number"):
            before = db_fingerprint(url)
            indexes = sql_rows(
                url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'memorix' ORDER BY 1"
            )
            with CapturedSQL(url) as log:
                name = coll.create_index(key, kind)
                assert coll.create_index(key, kind) == name  # idempotent
            after = sql_rows(url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'memorix' ORDER BY 1")
            assert set(after) == {*indexes, (name,)} and len(after) == len(indexes) + 1, key  # one new index
            assert sql_value(
                url,
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s",
                (name,),
            )
            indexdef = sql_value(url, "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (name,))
            assert f"{sql_literal(key)}::text" in indexdef, indexdef  # the key, as one quoted literal
            ddl = log.containing("CREATE INDEX")
            assert len(ddl) == 1, log.statements
            # DDL takes no parameters: the key is an escaped literal ('' for ', %% for %), and
            # once those literals are removed, nothing of the key is left in the statement
            escaped = sql_literal(key).replace("%", "%%")
            assert escaped in ddl[0], ddl[0]
            rest = ddl[0].replace(escaped, "")
            if len(key) > 1:
                assert key not in rest, ddl[0]
            assert "'" not in rest.replace("'number'", "").replace("'array'", "").replace("'NaN'", ""), rest
            assert db_fingerprint(url) == before
            assert (
                sql_rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'memorix' ORDER BY 1")
                == tables
            )
        # the index serves the range filter it was made for, with the right answer
        i = INDEX_KEYS.index(key)
        assert coll.count({key: {"$gte": f"v{i:02d}", "$lt": f"v{i:02d}~"}}) == 1
    for bad_key, bad_type in (
        ("a.b", "text"),
        ("$x", "text"),
        ("", "text"),
        ("k", "jsonb'); --"),
        (5, "text"),
    ):
        expect_rejection(url, lambda k=bad_key, t=bad_type: coll.create_index(k, t), [], error=FilterError)
    assert_schema_intact(url)


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
    for marker in MARKERS:
        assert not log.containing(marker), marker


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
    if isinstance(value, uuid.UUID):
        return True
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@fuzz_warnings
@settings(FUZZ, max_examples=300)
@given(memory_id=ids)
def test_fuzz_ids(url: str, fuzz_env: dict[str, Any], memory_id: Any) -> None:
    """get / delete / update with anything as the id: a miss for a UUID, InvalidInput otherwise."""
    target = fuzz_env["target"]
    count = target.count()
    event("uuid" if valid_id(memory_id) else "not a uuid")
    for call, miss in ((lambda: target.get(memory_id), None), (lambda: target.delete(memory_id), False)):
        try:
            result = call()
        except InvalidInput as exc:
            assert not valid_id(memory_id), f"{memory_id!r} rejected: {exc}"
            assert "not a UUID" in str(exc)
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
