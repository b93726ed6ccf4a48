"""``MemorixStore`` against what LangGraph's ``BaseStore`` documents, on a real PostgreSQL.

Each test runs twice, through the sync methods (``batch`` on MemoryAPI) and through the async
ones (``abatch`` on AsyncMemoryAPI, awaited on the suite's event loop). Embeddings are
LangChain's ``DeterministicFakeEmbedding`` where only identity matters (a text is most similar
to itself), and the packaged sentence-transformers model where semantic ranking is asserted.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

pytest.importorskip("langgraph")

from langchain_core.embeddings import DeterministicFakeEmbedding
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchItem,
    SearchOp,
)
from typing_extensions import TypedDict

from memorix_pg import (
    ConfigurationError,
    EmbedderMismatch,
    FilterError,
    HashEmbedder,
    InvalidInput,
    SentenceTransformerEmbedder,
)
from memorix_pg.integrations.langgraph import MemorixStore
from memorix_pg.runner import watch_statements
from tests.support.async_api import EventLoopThread
from tests.support.lifecycle import sql, sql_value

DIMS = 16


def fake_index(**extra: Any) -> dict[str, Any]:
    return {"dims": DIMS, "embed": DeterministicFakeEmbedding(size=DIMS), **extra}


class Driven:
    """A MemorixStore used through its sync methods, or through its async ones awaited on the
    suite's event loop: ``driven.put(...)`` is ``store.put(...)`` or ``await store.aput(...)``."""

    def __init__(self, store: MemorixStore, loop: EventLoopThread | None) -> None:
        self.store = store
        self.loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if self.loop is None:
            return getattr(self.store, name)  # type: ignore[no-any-return]
        method = getattr(self.store, "a" + name)
        loop = self.loop
        return lambda *args, **kwargs: loop.run(method(*args, **kwargs))


@pytest.fixture(params=["sync", "async"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(
    database_url: str, store_kind: str, event_loop_thread: EventLoopThread
) -> Iterator[Callable[..., Driven]]:
    made: list[MemorixStore] = []

    def make(collection_name: str = "langgraph_store", **kwargs: Any) -> Driven:
        store = MemorixStore(database_url, collection_name=collection_name, **kwargs)
        made.append(store)
        return Driven(store, event_loop_thread if store_kind == "async" else None)

    yield make
    for store in made:
        event_loop_thread.run(store.aclose())


def expires_at(database_url: str, key: str) -> datetime | None:
    return sql_value(
        database_url, "SELECT expires_at FROM memorix.memories WHERE metadata->>'key' = %s", (key,)
    )


def set_expiry(database_url: str, key: str, interval: str) -> None:
    sql(
        database_url,
        "UPDATE memorix.memories SET expires_at = now() + %s::interval WHERE metadata->>'key' = %s",
        (interval, key),
    )


# -- put, get, delete -----------------------------------------------------------------------------

VALUE = {
    "zeta": "comes first",
    "alpha": [1, 2.5, {"nested": [True, False, None]}, []],
    "big": 2**70,
    "float": 1e16,
    "negative_zero": -0.0,
    "tenth": 0.1,
    "tiny": 5e-324,
    "text": "naïve café – 日本語 🚀",
    "empty": {},
    "deep": {"a": {"b": {"c": {"d": "e"}}}},
}


def test_put_then_get_returns_the_value_exactly_as_put(make_store) -> None:
    store = make_store()
    store.put(("users", "u1"), "profile", VALUE)
    item = store.get(("users", "u1"), "profile")
    assert item is not None
    assert (item.namespace, item.key) == (("users", "u1"), "profile")
    assert item.value == VALUE
    assert list(item.value) == list(VALUE)  # key order kept (JSONB would sort the keys)
    assert json.dumps(item.value) == json.dumps(VALUE)  # 1e16 stays a float, -0.0 keeps its sign
    assert math.copysign(1, item.value["negative_zero"]) == -1
    assert item.created_at.tzinfo is not None and item.created_at == item.updated_at


def test_a_second_put_replaces_the_value_and_moves_only_updated_at(make_store) -> None:
    store = make_store()
    store.put(("docs",), "d1", {"v": 1, "old": True})
    first = store.get(("docs",), "d1")
    store.put(("docs",), "d1", {"v": 2})
    second = store.get(("docs",), "d1")
    assert second.value == {"v": 2}
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert len(store.search(("docs",))) == 1


def test_get_of_a_missing_item_is_none_and_delete_removes_an_item(make_store) -> None:
    store = make_store()
    assert store.get(("docs",), "nothing") is None
    store.put(("docs",), "d1", {"v": 1})
    store.put(("docs", "sub"), "d1", {"v": 2})  # the same key in another namespace is another item
    store.delete(("docs",), "d1")
    assert store.get(("docs",), "d1") is None
    assert store.get(("docs", "sub"), "d1").value == {"v": 2}
    store.delete(("docs",), "d1")  # deleting what is not there is no error
    assert [i.key for i in store.search(())] == ["d1"]


@pytest.mark.parametrize(
    "namespace",
    [("a.b",), ("",), (), ("langgraph", "x"), ("ok", 3), ("nul\x00",)],
)
def test_invalid_namespaces_are_refused_and_nothing_is_written(make_store, namespace) -> None:
    store = make_store()
    with pytest.raises(InvalidNamespaceError):
        store.put(namespace, "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError):  # ops given to batch directly are checked too
        store.batch([PutOp(("fine",), "k", {"v": 1}), PutOp(namespace, "k", {"v": 1})])
    assert store.search(()) == []


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"s": {1, 2}}, "set"),
        ({"nul": "a\x00b"}, "NUL"),
        ({"nan": float("nan")}, "NaN"),
        ("not a dict", "dict"),
        ({"x": "y" * (1 << 20)}, "limit"),
    ],
)
def test_a_value_that_is_not_storable_json_fails_the_batch_before_anything_is_written(
    make_store, value, fragment
) -> None:
    store = make_store()
    with pytest.raises(InvalidInput, match=fragment) as raised:
        store.batch([PutOp(("docs",), "good", {"v": 1}), PutOp(("docs",), "bad", value)])
    assert "'bad'" in str(raised.value)  # the message names the item
    assert store.get(("docs",), "good") is None


# -- search -----------------------------------------------------------------------------------------


def test_search_without_a_query_returns_the_last_updated_first_with_paging(make_store) -> None:
    store = make_store()
    for i in range(5):
        store.put(("docs", "a"), f"d{i}", {"i": i})
    store.put(("docs", "b"), "other", {"i": 10})
    store.put(("docsx",), "sibling", {"i": 11})  # not under ("docs",): labels, not characters
    store.put(("docs", "a"), "d1", {"i": 1, "edited": True})
    found = store.search(("docs",))
    assert [i.key for i in found] == ["d1", "other", "d4", "d3", "d2", "d0"]
    assert all(isinstance(i, SearchItem) and i.score is None for i in found)
    assert found[0].namespace == ("docs", "a") and found[0].value == {"i": 1, "edited": True}
    assert [i.key for i in store.search(("docs", "a"), limit=2, offset=1)] == ["d4", "d3"]
    assert [i.key for i in store.search(("docs", "a"), limit=2, offset=4)] == ["d0"]
    assert store.search(("docs",), limit=0) == []
    assert store.search(("nothing", "here")) == []
    assert len(store.search((), limit=100)) == 7


def test_search_filters_on_the_value_with_langgraphs_operators(make_store) -> None:
    store = make_store()
    rows = [
        ("r1", {"type": "report", "status": "active", "score": 5.5, "color": "red"}),
        ("r2", {"type": "report", "status": "archived", "score": 3.0, "color": "blue"}),
        ("r3", {"type": "article", "status": "active", "score": 4.99, "color": "red"}),
        ("r4", {"type": "article", "score": 2, "color": "red"}),
    ]
    for key, value in rows:
        store.put(("docs",), key, value)

    def keys(filter: dict[str, Any]) -> set[str]:
        return {i.key for i in store.search(("docs",), filter=filter)}

    assert keys({"type": "report", "status": "active"}) == {"r1"}
    assert keys({"score": {"$gt": 4.99}}) == {"r1"}
    assert keys({"score": {"$gte": 3.0}, "color": "red"}) == {"r1", "r3"}
    assert keys({"score": {"$lt": 3}}) == {"r4"}
    assert keys({"score": {"$lte": 3}}) == {"r2", "r4"}
    assert keys({"status": {"$eq": "active"}}) == {"r1", "r3"}
    assert keys({"status": {"$ne": "active"}}) == {"r2", "r4"}  # a missing key is "not equal"
    assert keys({"$or": [{"type": "report"}, {"score": {"$lt": 3}}]}) == {"r1", "r2", "r4"}
    page = store.search(("docs",), filter={"color": "red"}, limit=1, offset=1)
    assert [i.key for i in page] == ["r3"]
    with pytest.raises(FilterError, match="bogus"):
        store.search(("docs",), filter={"score": {"$bogus": 1}})


def test_search_with_a_query_ranks_by_similarity_and_scores(make_store) -> None:
    store = make_store(index=fake_index(fields=["text"]))
    texts = ["apples and pears", "the stock market", "a walk in the park", "quantum physics", "red wine"]
    for i, text in enumerate(texts):
        store.put(("docs",), f"d{i}", {"text": text, "i": i})
    found = store.search(("docs",), query="quantum physics", limit=5)
    assert found[0].key == "d3" and found[0].score == pytest.approx(1.0, abs=1e-5)
    scores = [i.score for i in found]
    assert scores == sorted(scores, reverse=True) and len(found) == 5
    assert [i.key for i in store.search(("docs",), query="quantum physics", limit=2, offset=1)] == [
        i.key for i in found[1:3]
    ]
    only_even = store.search(("docs",), query="red wine", filter={"i": {"$in": [0, 2, 4]}})
    assert only_even[0].key == "d4" and {i.key for i in only_even} == {"d0", "d2", "d4"}


def test_index_false_items_are_stored_and_filtered_but_never_ranked(make_store) -> None:
    store = make_store(index=fake_index(fields=["text"]))
    store.put(("docs",), "ranked", {"text": "hello world"})
    store.put(("docs",), "hidden", {"text": "hello world"}, index=False)
    store.put(("docs",), "no_text", {"title": "no text field"})  # nothing at the index path
    assert store.get(("docs",), "hidden").value == {"text": "hello world"}
    assert {i.key for i in store.search(("docs",))} == {"ranked", "hidden", "no_text"}
    found = store.search(("docs",), query="hello world", limit=10)
    # The indexed item ranks first; the others follow unscored, last updated first.
    assert [(i.key, i.score is None) for i in found] == [
        ("ranked", False),
        ("no_text", True),
        ("hidden", True),
    ]
    assert found[0].score == pytest.approx(1.0, abs=1e-5)
    assert [i.key for i in store.search(("docs",), query="hello world", limit=1)] == ["ranked"]
    assert [i.key for i in store.search(("docs",), query="hello world", limit=1, offset=2)] == ["hidden"]


def test_index_paths_per_put_override_the_store_fields(make_store) -> None:
    store = make_store(index=fake_index(fields=["text"]))
    store.put(("docs",), "by_title", {"title": "gardening tips", "text": "x"}, index=["title"])
    store.put(("docs",), "by_text", {"title": "y", "text": "gardening tips"})
    store.put(("docs",), "tags", {"tags": ["alpha", "gardening tips"]}, index=["tags[*]"])
    found = store.search(("docs",), query="gardening tips", limit=3)
    top = [i for i in found if i.score == pytest.approx(1.0, abs=1e-5)]
    assert {i.key for i in top} == {"by_title", "by_text"}
    # Two texts (one per element): the item's vector is their mean, so it ranks after the exact matches.
    assert found[2].key == "tags" and 0 < found[2].score < 1


def test_a_query_without_an_index_is_a_filter_search(make_store) -> None:
    store = make_store()
    store.put(("docs",), "a", {"text": "anything"})
    found = store.search(("docs",), query="anything")
    assert [(i.key, i.score) for i in found] == [("a", None)]


def test_embeddings_may_be_a_function_or_a_memorix_embedder(make_store) -> None:
    fake = DeterministicFakeEmbedding(size=DIMS)

    def embed_texts(texts: Sequence[str]) -> list[list[float]]:
        return fake.embed_documents(list(texts))

    by_function = make_store("by_function", index={"dims": DIMS, "embed": embed_texts})
    by_function.put(("docs",), "a", {"text": "blue sky"})
    by_function.put(("docs",), "b", {"text": "green grass"})
    assert by_function.search(("docs",), query='{"text": "green grass"}')[0].key == "b"

    by_memorix = make_store("by_memorix", index={"embed": HashEmbedder(64), "fields": ["text"]})
    by_memorix.put(("docs",), "a", {"text": "the cat sat on the mat"})
    by_memorix.put(("docs",), "b", {"text": "stock prices fell sharply"})
    assert [i.key for i in by_memorix.search(("docs",), query="a cat on a mat")] == ["a", "b"]


# -- list_namespaces --------------------------------------------------------------------------------

NAMESPACES = [("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f"), ("a", "c", "f")]


def test_list_namespaces_matches_prefixes_suffixes_depth_and_pages(make_store) -> None:
    store = make_store()
    for ns in NAMESPACES:
        store.put(ns, "k1", {"v": 1})
        store.put(ns, "k2", {"v": 2})
    store.put(("z",), "k", {"v": 0})
    assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "b", "f"),
    ]
    assert store.list_namespaces() == [*sorted(NAMESPACES), ("z",)]
    assert store.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a",), suffix=("d", "*")) == [
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
    ]
    assert store.list_namespaces(suffix=("*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(max_depth=1) == [("a",), ("z",)]
    assert store.list_namespaces(prefix=("a",), limit=2, offset=1) == [
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
    ]
    assert store.list_namespaces(prefix=("a", "b", "c", "d")) == []
    assert store.list_namespaces(limit=0) == []
    store.delete(("z",), "k")
    assert ("z",) not in store.list_namespaces()
    with pytest.raises(InvalidNamespaceError):
        store.list_namespaces(prefix=("a.b",))


def test_list_namespaces_is_one_group_by_and_does_not_read_the_items(make_store, database_url) -> None:
    store = make_store()
    for i in range(40):
        store.put(("users", f"u{i % 4}", "notes"), f"k{i}", {"i": i})
    with watch_statements(database_url) as sent:
        found = store.list_namespaces(prefix=("users", "u2"))
    assert found == [("users", "u2", "notes")]
    statements = [s for s, _ in sent if s.lstrip().upper().startswith("SELECT")]
    assert len(statements) == 1 and "GROUP BY" in statements[0].upper()


# -- TTL --------------------------------------------------------------------------------------------


def test_ttl_sets_the_expiry_and_reads_refresh_it(make_store, database_url) -> None:
    store = make_store(ttl={"default_ttl": 10, "refresh_on_read": True})
    before = datetime.now(UTC)
    store.put(("docs",), "default", {"v": 1})
    store.put(("docs",), "own", {"v": 2}, ttl=60)
    store.put(("docs",), "forever", {"v": 3}, ttl=None)
    after = datetime.now(UTC)
    assert (
        before + timedelta(minutes=10) <= expires_at(database_url, "default") <= after + timedelta(minutes=10)
    )
    assert before + timedelta(minutes=60) <= expires_at(database_url, "own") <= after + timedelta(minutes=60)
    assert expires_at(database_url, "forever") is None

    for key in ("default", "own"):
        set_expiry(database_url, key, "30 seconds")
    store.get(("docs",), "default", refresh_ttl=False)
    assert expires_at(database_url, "default") < datetime.now(UTC) + timedelta(minutes=1)
    updated = store.get(("docs",), "default").updated_at
    assert expires_at(database_url, "default") > datetime.now(UTC) + timedelta(minutes=9)  # refreshed on read
    assert store.get(("docs",), "default").updated_at == updated  # a refresh is not an update
    store.search(("docs",), filter={"v": 2})  # refresh_on_read: searches refresh what they return
    assert expires_at(database_url, "own") > datetime.now(UTC) + timedelta(minutes=59)
    assert expires_at(database_url, "forever") is None


def test_refresh_on_read_false_leaves_the_expiry_unless_asked(make_store, database_url) -> None:
    store = make_store(ttl={"default_ttl": 10, "refresh_on_read": False})
    store.put(("docs",), "k", {"v": 1})
    set_expiry(database_url, "k", "30 seconds")
    store.get(("docs",), "k")
    store.search(("docs",))
    assert expires_at(database_url, "k") < datetime.now(UTC) + timedelta(minutes=1)
    store.search(("docs",), refresh_ttl=True)
    assert expires_at(database_url, "k") > datetime.now(UTC) + timedelta(minutes=9)


def test_expired_items_are_never_returned_and_sweep_deletes_them(make_store, database_url) -> None:
    store = make_store(index=fake_index(), ttl={"default_ttl": 10})
    store.put(("docs", "old"), "gone", {"text": "expired note"})
    store.put(("docs",), "kept", {"text": "kept note"})
    set_expiry(database_url, "gone", "-1 second")
    assert store.get(("docs", "old"), "gone") is None
    assert [i.key for i in store.search(("docs",))] == ["kept"]
    assert [i.key for i in store.search(("docs",), query='{"text": "expired note"}')] == ["kept"]
    assert store.list_namespaces() == [("docs",)]
    assert store.sweep_ttl() == 1
    assert sql_value(database_url, "SELECT count(*) FROM memorix.memories") == 1


def test_a_ttl_works_without_a_ttl_config_and_bad_ttls_are_refused(make_store, database_url) -> None:
    store = make_store()
    store.put(("docs",), "k", {"v": 1}, ttl=0.5)
    assert expires_at(database_url, "k") < datetime.now(UTC) + timedelta(seconds=31)
    for bad in (0, -1, float("inf"), "5"):
        with pytest.raises(InvalidInput, match="ttl"):
            store.put(("docs",), "bad", {"v": 1}, ttl=bad)
    assert store.get(("docs",), "bad") is None


# -- batches ----------------------------------------------------------------------------------------


def test_a_batch_reads_the_state_before_its_writes_and_the_last_put_wins(make_store) -> None:
    store = make_store()
    store.put(("docs",), "k", {"v": 1})
    ns = ("docs",)
    results = store.batch(
        [
            PutOp(ns, "k", {"v": 2}),
            GetOp(ns, "k"),
            SearchOp(ns, filter={"v": 1}),
            PutOp(ns, "new", {"v": 9}),
            ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("docs",)),)),
            GetOp(ns, "new"),
            PutOp(ns, "k", {"v": 3}),
            PutOp(ns, "new", None),
        ]
    )
    assert results[0] is None and results[3] is None and results[6] is None and results[7] is None
    assert results[1].value == {"v": 1}
    assert [i.key for i in results[2]] == ["k"]
    assert results[4] == [("docs",)]
    assert results[5] is None
    assert store.get(ns, "k").value == {"v": 3}
    assert store.get(ns, "new") is None


def test_a_bad_op_anywhere_in_a_batch_writes_nothing(make_store) -> None:
    store = make_store(index=fake_index())
    ns = ("docs",)
    with pytest.raises(FilterError):
        store.batch([PutOp(ns, "a", {"v": 1}), SearchOp(ns, filter={"v": {"$nope": 1}})])
    with pytest.raises(InvalidInput, match="limit"):
        store.batch([PutOp(ns, "a", {"v": 1}), SearchOp(ns, limit=-1)])
    with pytest.raises(InvalidInput, match="offset"):
        store.batch([PutOp(ns, "a", {"v": 1}), SearchOp(ns, offset=2**31)])
    with pytest.raises(InvalidInput, match="operation"):
        store.batch([PutOp(ns, "a", {"v": 1}), "not an op"])
    assert store.search(()) == []


# -- configuration, reopening, tenants --------------------------------------------------------------


def test_the_store_reopens_its_collection_and_refuses_other_embeddings(make_store) -> None:
    first = make_store("shared", index=fake_index())
    first.put(("docs",), "k", {"text": "persisted"})
    again = make_store("shared", index=fake_index())
    assert again.get(("docs",), "k").value == {"text": "persisted"}
    with pytest.raises(EmbedderMismatch):
        make_store("shared", index={"embed": HashEmbedder(DIMS)}).get(("docs",), "k")
    with pytest.raises(EmbedderMismatch):
        make_store("shared").get(("docs",), "k")  # no index: another vector space


def test_tenants_see_only_their_items(make_store) -> None:
    alice = make_store(tenant="alice")
    bob = make_store(tenant="bob")
    alice.put(("prefs",), "theme", {"v": "dark"})
    bob.put(("prefs",), "theme", {"v": "light"})  # same namespace and key, another tenant
    assert alice.get(("prefs",), "theme").value == {"v": "dark"}
    assert bob.get(("prefs",), "theme").value == {"v": "light"}
    bob.delete(("prefs",), "theme")
    assert alice.get(("prefs",), "theme").value == {"v": "dark"}
    assert bob.list_namespaces() == [] and alice.list_namespaces() == [("prefs",)]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"index": {"embed": DeterministicFakeEmbedding(size=DIMS)}}, "dims"),
        ({"index": {"dims": DIMS}}, "embed"),
        ({"index": fake_index(distance_type="l2")}, "distance_type"),
        ({"index": {"dims": 8, "embed": HashEmbedder(16)}}, "dims"),
        ({"index": fake_index(fields="text")}, "fields"),
        ({"ttl": {"default_ttl": -5}}, "default_ttl"),
        ({"ttl": {"refresh_on_read": "yes"}}, "refresh_on_read"),
        ({"ttl": {"sweep_everything": True}}, "sweep_everything"),
        ({"embedder": "hash"}, "embedder"),
        ({"dedupe": True}, "dedupe"),
        ({"collection_name": ""}, "collection_name"),
    ],
)
def test_bad_configuration_is_named_when_the_store_is_made(database_url, kwargs, fragment) -> None:
    options = {"collection_name": "cfg", **kwargs}
    with pytest.raises((ConfigurationError, InvalidInput), match=fragment):
        MemorixStore(database_url, **options)


def test_a_closed_store_refuses_calls(make_store) -> None:
    store = make_store()
    store.put(("docs",), "k", {"v": 1})
    store.store.close()
    with pytest.raises(Exception, match="closed"):
        store.get(("docs",), "k")


def test_an_async_embeddings_function_serves_the_async_methods(database_url, event_loop_thread) -> None:
    fake = DeterministicFakeEmbedding(size=DIMS)
    calls: list[int] = []

    async def aembed(texts: Sequence[str]) -> list[list[float]]:
        calls.append(len(texts))
        return fake.embed_documents(list(texts))

    async def scenario() -> list[SearchItem]:
        async with MemorixStore.from_conn_string(
            database_url, index={"dims": DIMS, "embed": aembed}
        ) as store:
            await store.abatch(
                [PutOp(("docs",), f"k{i}", {"text": f"note {i}"}) for i in range(3)]
                + [PutOp(("docs",), "x", {"text": "the one"})]
            )
            return await store.asearch(("docs",), query='{"text": "the one"}')

    found = event_loop_thread.run(scenario())
    assert found[0].key == "x" and found[0].score == pytest.approx(1.0, abs=1e-5)
    assert calls == [4, 1]  # one call for the batch's documents, one for the query


# -- the real model, and a real graph ---------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


def test_semantic_search_with_the_packaged_model(make_store, model) -> None:
    store = make_store(index={"embed": model, "fields": ["text"]})
    notes = {
        "python": "I write Python code and debug software every day",
        "food": "My favourite dish is spaghetti carbonara with pecorino",
        "sport": "We play football on Sunday mornings in the park",
        "travel": "Next summer we fly to Lisbon for a week by the sea",
    }
    for key, text in notes.items():
        store.put(("user", "u1", "memories"), key, {"text": text})
    assert store.search(("user",), query="programming languages")[0].key == "python"
    assert store.search(("user",), query="what should I cook for dinner?")[0].key == "food"
    assert store.search(("user", "u1"), query="holiday plans", limit=1)[0].key == "travel"


class NoteState(TypedDict):
    user: str
    note: str
    recalled: list[str]


def test_the_store_plugs_into_a_compiled_graph(database_url, store_kind, event_loop_thread) -> None:
    def remember(state: NoteState, *, store: BaseStore) -> dict[str, Any]:
        namespace = ("memories", state["user"])
        store.put(namespace, f"n{time.monotonic_ns()}", {"text": state["note"]})
        return {"recalled": [hit.value["text"] for hit in store.search(namespace, query=state["note"])]}

    async def aremember(state: NoteState, *, store: BaseStore) -> dict[str, Any]:
        namespace = ("memories", state["user"])
        await store.aput(namespace, f"n{time.monotonic_ns()}", {"text": state["note"]})
        hits = await store.asearch(namespace, query=state["note"])
        return {"recalled": [hit.value["text"] for hit in hits]}

    builder = StateGraph(NoteState)
    builder.add_node("remember", remember if store_kind == "sync" else aremember)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", END)
    store = MemorixStore(database_url, index=fake_index(fields=["text"]))
    graph = builder.compile(store=store)

    def run(state: dict[str, Any]) -> dict[str, Any]:
        if store_kind == "sync":
            return graph.invoke(state)  # type: ignore[return-value]
        return event_loop_thread.run(graph.ainvoke(state))  # type: ignore[return-value]

    run({"user": "u1", "note": "likes green tea", "recalled": []})
    run({"user": "u2", "note": "plays chess", "recalled": []})
    out = run({"user": "u1", "note": "allergic to nuts", "recalled": []})
    assert out["recalled"] == ["allergic to nuts", "likes green tea"]  # u1's notes only, the asked one first
    assert len(store.search(("memories",), limit=10)) == 3
    assert store.list_namespaces() == [("memories", "u1"), ("memories", "u2")]
    event_loop_thread.run(store.aclose())
