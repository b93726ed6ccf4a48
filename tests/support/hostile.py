"""What the hostile-input tests (tests/test_hostile_*.py) share: hostile strings, the rejection
check, and the module-scoped fixtures ``url``, ``api``, ``bystander`` and ``alpha_id`` (this
module is a pytest plugin, loaded from tests/conftest.py).

What every hostile-input test holds the library to (issue 6):

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

Each test module runs against one database of its own (``module_database_url``); each test uses
its own collections, so the tests do not depend on their order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from memorix_pg import InvalidInput, MemorixError, MemoryAPI
from tests.support.helpers import db_fingerprint

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


class _Unserialisable:
    def __repr__(self) -> str:
        return "<unserialisable>"


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


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
