"""Hostile input to store, store_batch, update, get and delete, and bad collection names and
tenants, on a real PostgreSQL: rejected with a MemorixError that names the fault, nothing written.

What these tests hold the library to, and the shared fixtures, are in tests/support/hostile.py.
Everything runs against one database for the module (``module_database_url``); each test uses
its own collections, so the tests do not depend on their order.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from memorix_pg import MemoryAPI, MemoryNotFound
from tests.support.helpers import nested, unit_vectors
from tests.support.hostile import (
    DIM,
    EMBEDDING_CASES,
    INF,
    INJECTIONS,
    NAN,
    MiB,
    _Unserialisable,
    expect_rejection,
    open_api,
)

# =============================================================================================
# store
# =============================================================================================


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
    pytest.param(lambda a: a.store("x", id=""), ["ids[0]", "empty"], id="id-empty"),
    pytest.param(lambda a: a.store("x", id=123), ["ids[0]", "123", "str"], id="id-int"),
    pytest.param(lambda a: a.store("x", id=b"raw"), ["ids[0]", "bytes"], id="id-bytes"),
    pytest.param(lambda a: a.store("x", id="x" * 513), ["ids[0]", "513", "512"], id="id-513-chars"),
    pytest.param(lambda a: a.store("x", id="a\x00b"), ["ids[0]", "NUL"], id="id-NUL"),
    pytest.param(lambda a: a.store("x", id="\ud800"), ["ids[0]", "surrogate"], id="id-surrogate"),
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
    pytest.param("ids", "", ["empty"], id="id-empty"),
    pytest.param("ids", 250, ["str"], id="id-int"),
    pytest.param("ids", "x" * 10_000, ["10000", "512"], id="id-10k-chars"),
    pytest.param("ids", "\x00", ["NUL"], id="id-NUL"),
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


@pytest.mark.parametrize("bad", [NAN, float("inf"), 1e39], ids=["nan", "inf", "float32-overflow"])
def test_a_bad_row_of_an_embeddings_array_stores_nothing_and_is_named(
    url: str, api: MemoryAPI, bad: float
) -> None:
    """A 2-D array is checked at once; a failing one is named by its first bad row."""
    count = api.count()
    args = _batch_of_500("embeddings", np.zeros(DIM))
    vectors = np.array(args.pop("embeddings"), dtype=np.float64)
    vectors[BAD_AT, 7] = bad
    texts = args.pop("texts")
    store = lambda: api.store_batch(texts, embeddings=vectors, **args)  # noqa: E731
    expect_rejection(url, store, [f"embeddings[{BAD_AT}]"])
    assert api.count() == count


def test_an_embeddings_array_of_another_width_is_named(url: str, api: MemoryAPI) -> None:
    count = api.count()
    vectors = unit_vectors(3, DIM + 1)
    store = lambda: api.store_batch(["a", "b", "c"], embeddings=vectors)  # noqa: E731
    expect_rejection(url, store, ["embeddings[0]", f"{DIM + 1} dimensions"])
    assert api.count() == count


def test_an_id_of_another_collection_in_a_batch_of_500_is_a_memory_of_its_own(
    url: str, bystander: MemoryAPI
) -> None:
    """Ids are unique per collection: the COPY + upsert path stores it here and leaves theirs alone."""
    taken = bystander.retrieve(None, top_k=1)[0]
    args = _batch_of_500("ids", taken.id)
    texts = args.pop("texts")
    mine = open_api(url, "hostile_shared_ids")
    assert mine.store_batch(texts, **args)[BAD_AT] == taken.id
    assert mine.get(taken.id).text == texts[BAD_AT]  # type: ignore[union-attr]
    assert bystander.get(taken.id) == taken
    assert mine.delete_by_filter({}) == 500
    assert bystander.get(taken.id) == taken


def test_an_id_of_another_tenant_in_a_batch_of_500_is_a_memory_of_its_own(url: str) -> None:
    """Ids are unique per tenant and collection: the COPY + upsert path stores it under this
    tenant and leaves theirs alone."""
    theirs = open_api(url, "hostile_tenants", tenant="them")
    taken = theirs.store("their memory")
    mine = open_api(url, "hostile_tenants", tenant="me")
    args = _batch_of_500("ids", taken)
    texts = args.pop("texts")
    assert mine.store_batch(texts, **args)[BAD_AT] == taken
    assert mine.get(taken).text == texts[BAD_AT]  # type: ignore[union-attr]
    assert theirs.get(taken).text == "their memory"  # type: ignore[union-attr]
    assert mine.count() == 500 and theirs.count() == 1


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
    pytest.param(lambda a, i: a.update("", metadata={"x": 1}), ["id is empty"], id="id-empty"),
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
    "",
    "x" * 513,
    42,
    1.5,
    None,
    b"\x12" * 16,
    ["12345678-1234-5678-1234-567812345678"],
    "\ud800",
    "\x00",
    "12345678-1234-5678-1234-567812345678\x00",
]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=[ascii(i)[:40] for i in BAD_IDS])
def test_get_delete_update_reject_what_is_not_an_id(url: str, api: MemoryAPI, bad_id: Any) -> None:
    for call in (
        lambda: api.get(bad_id),
        lambda: api.delete(bad_id),
        lambda: api.update(bad_id, metadata={}),
    ):
        expect_rejection(url, call, ["id"])


ODD_IDS = [
    "nope",
    " ",
    INJECTIONS[0],
    "12345678-1234-5678-1234-56781234567g",
    "12345678-1234-5678-1234-567812345678' OR '1'='1",
    "%(id)s",
    "x" * 512,
    "\U0001f600 é",
]


@pytest.mark.parametrize("odd_id", ODD_IDS, ids=[ascii(i)[:40] for i in ODD_IDS])
def test_any_string_is_an_id_kept_exactly(url: str, api: MemoryAPI, odd_id: str) -> None:
    assert api.get(odd_id) is None
    assert api.delete(odd_id) is False
    expect_rejection(
        url, lambda: api.update(odd_id, metadata={"x": 1}), [repr(odd_id)[:80]], MemoryNotFound, False
    )
    assert api.store("odd", {"odd": True}, id=odd_id) == odd_id
    assert api.get(odd_id).text == "odd"  # type: ignore[union-attr]
    assert [m.id for m in api.retrieve(None, filter={"odd": True})] == [odd_id]
    assert api.delete(odd_id) is True


def test_get_and_delete_never_reach_another_collection(api: MemoryAPI, bystander: MemoryAPI) -> None:
    theirs = bystander.retrieve(None, top_k=1)[0]
    assert api.get(theirs.id) is None
    assert api.delete(theirs.id) is False
    assert bystander.get(theirs.id) == theirs
    # ids are opaque: only the exact string (or the UUID object, which becomes it) names the memory
    plain = uuid.UUID(theirs.id)
    assert bystander.get(plain) == theirs
    for spelling in (plain.hex, "{" + theirs.id + "}", plain.urn, theirs.id.upper(), theirs.id + " "):
        assert bystander.get(spelling) is None
        assert api.get(spelling) is None


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
