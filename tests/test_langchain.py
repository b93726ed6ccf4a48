"""``MemorixVectorStore``: LangChain's own standard tests (vector store and retriever), and what the
standard suite does not check: relevance for each distance, filters, MMR, exact metadata, upserts,
and the async methods doing the same as the sync ones (each test below runs on both)."""

from __future__ import annotations

import copy
import math
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.indexing import InMemoryRecordManager, aindex, index
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests, VectorStoreIntegrationTests

from memorix_pg import EmbedderMismatch, FilterError, InvalidInput, MemoryAPI, list_collections
from memorix_pg.integrations.langchain import (
    LangChainEmbedder,
    MemorixEmbeddings,
    MemorixVectorStore,
    relevance_from_distance,
)
from tests.support.async_api import EventLoopThread
from tests.support.helpers import unit_vectors


def _collection() -> str:
    return f"lc-{uuid.uuid4().hex[:12]}"


class TestMemorixVectorStoreStandard(VectorStoreIntegrationTests):
    """LangChain's standard suite, sync and async, on an empty collection of its own per test."""

    @pytest.fixture
    def vectorstore(self, database_url: str) -> Iterator[VectorStore]:
        store = MemorixVectorStore(self.get_embeddings(), _collection(), database_url)
        try:
            yield store
        finally:
            store.delete_collection()

    @property
    def has_sync(self) -> bool:
        return True

    @property
    def has_async(self) -> bool:
        return True


class TestMemorixRetriever(RetrieversIntegrationTests):
    """LangChain's standard retriever suite on ``as_retriever()`` over a filled collection."""

    @pytest.fixture(autouse=True)
    def _store(self, database_url: str) -> None:
        texts = [f"note {i}: the cat sat on mat number {i}" for i in range(8)]
        self.store = MemorixVectorStore.from_texts(
            texts,
            DeterministicFakeEmbedding(size=16),
            collection_name=_collection(),
            database_url=database_url,
        )

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        def as_retriever(k: int = 4) -> VectorStoreRetriever:
            return self.store.as_retriever(search_kwargs={"k": k})

        return as_retriever  # type: ignore[return-value]  # called like the class, with k

    @property
    def retriever_query_example(self) -> str:
        return "where did the cat sit?"


# -- our own tests, each on the sync and the async methods ----------------------------------------


class Store:
    """A ``MemorixVectorStore`` whose methods are the sync ones or, for ``kind="async"``, the
    ``a``-prefixed coroutines awaited on the session's event loop: one test body checks both."""

    def __init__(self, store: MemorixVectorStore, kind: str, loop: EventLoopThread) -> None:
        self.store, self.kind, self._loop = store, kind, loop

    def __getattr__(self, name: str) -> Any:
        if self.kind == "sync":
            return getattr(self.store, name)
        method = getattr(self.store, "a" + name)
        return lambda *args, **kwargs: self._loop.run(method(*args, **kwargs))


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(database_url: str, kind: str, event_loop_thread: EventLoopThread) -> Callable[..., Store]:
    """Build a store on a fresh collection, by the constructor or ``acreate``."""

    def make(embedding: Embeddings | None = None, **options: Any) -> Store:
        embedding = embedding or DeterministicFakeEmbedding(size=8)
        name = options.pop("collection_name", _collection())
        if kind == "sync":
            store = MemorixVectorStore(embedding, name, database_url, **options)
        else:
            store = event_loop_thread.run(
                MemorixVectorStore.acreate(embedding, name, database_url, **options)
            )
        return Store(store, kind, event_loop_thread)

    return make


class TableEmbeddings(Embeddings):
    """Texts of the form ``"v<i>"`` embed to row ``i`` of a fixed table: vectors chosen by the test.
    Its sync methods can be switched off to show that the async path never calls them."""

    def __init__(self, table: np.ndarray, sync_allowed: bool = True) -> None:
        self.table = np.asarray(table, dtype=np.float32)
        self.sync_allowed = sync_allowed

    def _vector(self, text: str) -> list[float]:
        if not re.match(r"v\d+\b", text):  # the store's dimension probe
            return [0.0] * self.table.shape[1]
        return [float(x) for x in self.table[int(text.split()[0][1:])]]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        assert self.sync_allowed, "a sync embedding call from an async method"
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        assert self.sync_allowed, "a sync embedding call from an async method"
        return self._vector(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    async def aembed_query(self, text: str) -> list[float]:
        return self._vector(text)


METADATA = [
    {"nested": {"a": [1, 2, {"b": None}], "empty": {}, "list": []}, "flag": True, "off": False},
    {"unicode": "naïve café 東京 🚀", "ключ": "значение", "quote": 'he said "hi"\n\ttab'},
    {"int": 7, "negative": -3, "big": 2**62, "float": 0.1, "tiny": 1.5e-10, "third": 1 / 3, "one": 1.0},
    {},
]


def test_metadata_comes_back_exactly(make_store: Callable[..., Store]) -> None:
    store = make_store()
    texts = ["alpha", "beta", "gamma", "delta"]
    ids = store.add_texts(texts, copy.deepcopy(METADATA))
    expected = [
        Document(id=i, page_content=t, metadata=m) for i, t, m in zip(ids, texts, METADATA, strict=True)
    ]
    assert store.get_by_ids(ids) == expected
    assert sorted(store.similarity_search("alpha", k=4), key=lambda d: ids.index(d.id)) == expected
    for got, want in zip(store.get_by_ids(ids), METADATA, strict=True):  # types too: 1.0 stays a float
        assert {k: type(v) for k, v in got.metadata.items()} == {k: type(v) for k, v in want.items()}


def test_inputs_are_not_mutated_and_ids_are_kept_or_generated(make_store: Callable[..., Store]) -> None:
    store = make_store()
    given = str(uuid.uuid4())
    documents = [
        Document(id=given, page_content="kept id", metadata={"n": [1, 2]}),
        Document(page_content="new id", metadata={"n": {"deep": 1}}),
    ]
    snapshot = copy.deepcopy(documents)
    ids = store.add_documents(documents)
    assert documents == snapshot
    assert ids[0] == given and str(uuid.UUID(ids[1])) == ids[1] and ids[1] != given
    assert store.get_by_ids(ids) == [
        Document(id=given, page_content="kept id", metadata={"n": [1, 2]}),
        Document(id=ids[1], page_content="new id", metadata={"n": {"deep": 1}}),
    ]
    # ids= takes precedence over Document.id, as LangChain documents it
    other = str(uuid.uuid4())
    assert store.add_documents([Document(id=given, page_content="x")], ids=[other]) == [other]


def test_add_with_an_existing_id_replaces_text_metadata_and_vector(make_store: Callable[..., Store]) -> None:
    store = make_store(TableEmbeddings(np.eye(4)))
    doc_id = str(uuid.uuid4())
    store.add_texts(["v0 first"], [{"version": 1, "gone": True}], ids=[doc_id])
    store.add_texts(["v1 second"], [{"version": 2}], ids=[doc_id])
    assert store.get_by_ids([doc_id]) == [
        Document(id=doc_id, page_content="v1 second", metadata={"version": 2})
    ]
    nearest = store.similarity_search_with_score("v1", k=5)
    assert [(d.id, round(s, 6)) for d, s in nearest] == [(doc_id, 0.0)]  # one row, with the new vector


def test_get_by_ids_keeps_the_order_asked_and_leaves_out_missing(make_store: Callable[..., Store]) -> None:
    store = make_store()
    ids = store.add_texts(["one", "two", "three"])
    missing = str(uuid.uuid4())
    got = store.get_by_ids([ids[2], missing, ids[0], ids[2]])
    assert [d.id for d in got] == [ids[2], ids[0]]
    assert store.get_by_ids([]) == []


def test_delete_by_ids_by_filter_and_refuses_a_bare_call(make_store: Callable[..., Store]) -> None:
    store = make_store()
    ids = store.add_texts(["a", "b", "c", "d"], [{"k": 1}, {"k": 2}, {"k": 2}, {"k": 3}])
    assert store.delete([ids[0], str(uuid.uuid4())]) is True  # a missing id is ignored
    assert store.delete(filter={"k": 2}) is True
    assert [d.id for d in store.similarity_search("a", k=10)] == [ids[3]]
    with pytest.raises(InvalidInput, match="filter=\\{\\}"):
        store.delete()
    with pytest.raises(InvalidInput, match="not both"):
        store.delete([ids[3]], filter={})
    with pytest.raises(TypeError, match="'everything'"):
        store.delete([ids[3]], everything=True)
    store.delete(filter={})
    assert store.similarity_search("a", k=10) == []


def test_filters_are_memorix_filters(make_store: Callable[..., Store]) -> None:
    store = make_store()
    metadatas = [{"user": "ann", "n": i, "tags": ["x", "odd" if i % 2 else "even"]} for i in range(10)]
    metadatas += [{"user": "bob", "n": i} for i in range(5)]
    ids = store.add_texts([f"text {i}" for i in range(15)], metadatas)
    found = store.similarity_search("text", k=20, filter={"user": "ann", "n": {"$gte": 4}, "tags": "odd"})
    assert sorted(d.id for d in found) == sorted([ids[5], ids[7], ids[9]])
    found = store.max_marginal_relevance_search("text", k=3, fetch_k=10, filter={"user": "bob"})
    assert len(found) == 3 and all(d.metadata["user"] == "bob" for d in found)
    scored = store.similarity_search_with_relevance_scores("text", k=20, filter={"$or": [{"n": 0}, {"n": 1}]})
    assert sorted(d.id for d, _ in scored) == sorted([ids[0], ids[1], ids[10], ids[11]])
    with pytest.raises(FilterError, match=r"\$foo"):
        store.similarity_search("text", filter={"n": {"$foo": 1}})


@pytest.mark.parametrize("distance", ["cosine", "l2", "ip"])
def test_relevance_is_the_clipped_cosine_for_every_distance(
    make_store: Callable[..., Store], distance: str
) -> None:
    vectors = unit_vectors(12, dim=8, seed=5)
    store = make_store(TableEmbeddings(vectors), distance=distance)
    assert store.store.distance == distance
    ids = store.add_texts([f"v{i}" for i in range(1, 12)])
    query = vectors[0]
    scored = store.similarity_search_with_relevance_scores("v0", k=11)
    cosines = {ids[i - 1]: float(vectors[i] @ query) for i in range(1, 12)}
    assert [d.id for d, _ in scored] == sorted(cosines, key=lambda i: -cosines[i])  # nearest first
    for doc, relevance in scored:
        assert 0.0 <= relevance <= 1.0
        assert relevance == pytest.approx(min(1.0, max(0.0, cosines[doc.id])), abs=1e-5)
    assert any(cosines[i] < 0 for i in cosines)  # so the clipping at 0 was exercised
    # and the distances reported alongside agree with pgvector's for this distance
    for doc, d in store.similarity_search_with_score("v0", k=11):
        v = vectors[ids.index(doc.id) + 1]
        want = {"cosine": 1 - v @ query, "l2": np.linalg.norm(v - query), "ip": -(v @ query)}[distance]
        assert d == pytest.approx(float(want), abs=1e-5)


@pytest.mark.parametrize("distance", ["cosine", "l2", "ip"])
def test_relevance_stays_in_range_for_vectors_of_any_length(
    make_store: Callable[..., Store], distance: str
) -> None:
    store = make_store(DeterministicFakeEmbedding(size=8), distance=distance)  # not unit-length
    store.add_texts([f"document {i}" for i in range(20)])
    scored = store.similarity_search_with_relevance_scores("query", k=20)
    assert len(scored) == 20 and all(0.0 <= s <= 1.0 for _, s in scored)
    if distance != "ip":  # inner products of long vectors all clip to 1
        kept = store.similarity_search_with_relevance_scores("document 3", k=20, score_threshold=0.99)
        assert [d.page_content for d, _ in kept] == ["document 3"]


def test_relevance_function_by_distance() -> None:
    assert relevance_from_distance("cosine")(0.25) == 0.75
    assert relevance_from_distance("cosine")(1.5) == 0.0
    assert relevance_from_distance("l2")(math.sqrt(2)) == pytest.approx(0.0)
    assert relevance_from_distance("l2")(0.5) == pytest.approx(0.875)
    assert relevance_from_distance("ip")(-0.5) == 0.5
    assert relevance_from_distance("ip")(-3.0) == 1.0
    with pytest.raises(InvalidInput, match="'dot'"):
        relevance_from_distance("dot")


def test_mmr_trades_similarity_for_diversity(make_store: Callable[..., Store]) -> None:
    # v1..v3 are near-copies of the query's direction, v4 is less similar but different
    table = np.array(
        [[1.0, 0.0, 0.0], [0.99, 0.14, 0.0], [0.99, 0.13, 0.01], [0.99, 0.12, 0.02], [0.7, -0.2, 0.7]],
        dtype=np.float32,
    )
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    store = make_store(TableEmbeddings(table))
    ids = store.add_texts(["v1", "v2", "v3", "v4"])
    assert [d.id for d in store.similarity_search("v0", k=2)] == [ids[2], ids[1]]
    diverse = store.max_marginal_relevance_search("v0", k=2, fetch_k=4, lambda_mult=0.3)
    assert [d.id for d in diverse] == [ids[2], ids[3]]
    by_vector = store.max_marginal_relevance_search_by_vector(
        table[0].tolist(), k=2, fetch_k=4, lambda_mult=0.3
    )
    assert [d.id for d in by_vector] == [d.id for d in diverse]
    assert [d.id for d in store.max_marginal_relevance_search("v0", k=2, lambda_mult=1.0)] == [
        d.id for d in store.similarity_search("v0", k=2)
    ]
    with pytest.raises(InvalidInput, match="lambda_mult"):
        store.max_marginal_relevance_search("v0", lambda_mult=1.5)
    with pytest.raises(InvalidInput, match="fetch_k"):
        store.max_marginal_relevance_search("v0", fetch_k=0)


def test_search_by_vector_and_unknown_arguments(make_store: Callable[..., Store]) -> None:
    store = make_store(TableEmbeddings(np.eye(3)))
    ids = store.add_texts(["v0", "v1", "v2"])
    assert [d.id for d in store.similarity_search_by_vector([0.0, 1.0, 0.1], k=1)] == [ids[1]]
    relevant = store.similarity_search_by_vector_with_relevance_scores([0.0, 0.0, 1.0], k=1)
    assert [(d.id, round(r, 6)) for d, r in relevant] == [(ids[2], 1.0)]
    assert [d.id for d in store.similarity_search("v2", k=1, exact=True)] == [ids[2]]
    with pytest.raises(TypeError, match="'kk'"):
        store.similarity_search("v0", kk=2)
    with pytest.raises(TypeError, match="'upsert'"):
        store.add_texts(["v0"], upsert=True)
    with pytest.raises(InvalidInput, match="2 dimensions; the collection uses 3"):
        store.similarity_search_by_vector([1.0, 0.0], k=1)


def test_bad_documents_are_refused_before_anything_is_embedded_or_written(
    make_store: Callable[..., Store],
) -> None:
    store = make_store()
    with pytest.raises(InvalidInput, match=r"texts\[1\] is empty"):
        store.add_texts(["fine", "  "])
    with pytest.raises(InvalidInput, match="one str"):
        store.add_texts("fine")
    with pytest.raises(InvalidInput, match="metadatas has 1 items"):
        store.add_texts(["a", "b"], [{}])
    with pytest.raises(InvalidInput, match="repeats"):
        store.add_texts(["a", "b"], ids=["7f0c4a57-0000-4000-8000-000000000001"] * 2)
    assert store.similarity_search("fine", k=5) == []


def test_from_texts_and_the_retriever(
    database_url: str, kind: str, event_loop_thread: EventLoopThread
) -> None:
    embedding = DeterministicFakeEmbedding(size=8)
    texts, metadatas = ["red apple", "green pear", "red cherry"], [{"c": "red"}, {"c": "green"}, {"c": "red"}]
    options = {"collection_name": _collection(), "database_url": database_url, "distance": "l2"}
    if kind == "sync":
        store = MemorixVectorStore.from_texts(texts, embedding, metadatas, **options)
    else:
        store = event_loop_thread.run(MemorixVectorStore.afrom_texts(texts, embedding, metadatas, **options))
    assert store.distance == "l2"
    retriever = store.as_retriever(search_kwargs={"k": 5, "filter": {"c": "red"}})
    run = retriever.invoke if kind == "sync" else lambda q: event_loop_thread.run(retriever.ainvoke(q))

    def run_with(r):  # type: ignore[no-untyped-def]
        return lambda q: event_loop_thread.run(r.ainvoke(q))

    assert sorted(d.page_content for d in run("fruit")) == ["red apple", "red cherry"]
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 3})
    assert len(mmr.invoke("fruit")) == 2
    exact = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.999}
    )
    assert [d.page_content for d in exact.invoke("green pear")] == ["green pear"]
    for mode in ("text", "hybrid"):  # memorix's own rankings, by search_type or search_kwargs
        for words in (
            store.as_retriever(search_type=mode, search_kwargs={"k": 3}),
            store.as_retriever(search_kwargs={"k": 3, "mode": mode}),
        ):
            found = [d.page_content for d in (words.invoke if kind == "sync" else run_with(words))("cherry")]
            assert found[0] == "red cherry" and (mode == "hybrid" or found == ["red cherry"])
    typed = store.as_retriever(search_type="text", search_kwargs={"k": 3, "filter": {"c": "green"}})
    assert (typed.invoke if kind == "sync" else run_with(typed))("cherry") == []  # the filter holds
    with pytest.raises(ValueError, match="bm25"):
        store.as_retriever(search_type="bm25")

    def scored(**kwargs):  # type: ignore[no-untyped-def]
        if kind == "sync":
            return dict(
                (d.page_content, s) for d, s in store.similarity_search_with_score("red cherry", 3, **kwargs)
            )
        found = event_loop_thread.run(store.asimilarity_search_with_score("red cherry", 3, **kwargs))
        return dict((d.page_content, s) for d, s in found)

    # "red apple" holds the query's common word only: the text arm ranks it once the cut is off.
    cut, every_match = scored(mode="hybrid"), scored(mode="hybrid", text_cutoff=0.0)
    assert every_match["red apple"] < cut["red apple"] and every_match["red cherry"] == cut["red cherry"]
    with pytest.raises(InvalidInput, match="text_cutoff"):
        scored(mode="hybrid", text_cutoff=2.0)


def test_the_async_methods_are_native(database_url: str, event_loop_thread: EventLoopThread) -> None:
    """With the sync embedding methods switched off, every async method still works: none of
    them runs the sync one in a thread (LangChain's default)."""
    table = unit_vectors(6, dim=4, seed=1)
    embeddings = TableEmbeddings(table, sync_allowed=False)

    async def scenario() -> None:
        store = await MemorixVectorStore.acreate(embeddings, _collection(), database_url)
        ids = await store.aadd_texts(["v1", "v2", "v3"], [{"i": 1}, {"i": 2}, {"i": 3}])
        await store.aadd_documents([Document(page_content="v4", id=str(uuid.uuid4()))])
        assert len(await store.aget_by_ids(ids)) == 3
        assert len(await store.asimilarity_search("v1", k=2)) == 2
        assert len(await store.asimilarity_search_with_score("v1", k=2)) == 2
        assert len(await store.asimilarity_search_with_relevance_scores("v1", k=2)) == 2
        assert len(await store.asimilarity_search_by_vector(table[2].tolist(), k=2)) == 2
        assert len(await store.amax_marginal_relevance_search("v1", k=2, fetch_k=4)) == 2
        await store.adelete([ids[0]])
        assert [d.id for d in await store.aget_by_ids(ids)] == ids[1:]
        again = await MemorixVectorStore.afrom_texts(
            ["v5"], embeddings, collection_name=_collection(), database_url=database_url
        )
        assert [d.page_content for d in await again.asimilarity_search("v5", k=3)] == ["v5"]

    event_loop_thread.run(scenario())
    for name in (
        "aadd_texts",
        "adelete",
        "aget_by_ids",
        "asimilarity_search",
        "asimilarity_search_with_score",
        "asimilarity_search_by_vector",
        "amax_marginal_relevance_search",
        "amax_marginal_relevance_search_by_vector",
        "afrom_texts",
    ):
        assert getattr(MemorixVectorStore, name) is not getattr(VectorStore, name), name


def test_a_store_works_from_one_event_loop_after_another(database_url: str) -> None:
    import asyncio

    store = MemorixVectorStore(DeterministicFakeEmbedding(size=8), _collection(), database_url)
    first = asyncio.run(store.aadd_texts(["made in one loop"]))
    assert [d.id for d in asyncio.run(store.asimilarity_search("x", k=1))] == first  # a new loop


def test_the_collection_records_the_embeddings(database_url: str) -> None:
    name = _collection()
    store = MemorixVectorStore(DeterministicFakeEmbedding(size=6), name, database_url)
    store.add_texts(["kept"])
    assert (
        LangChainEmbedder(DeterministicFakeEmbedding(size=6)).name == "langchain/DeterministicFakeEmbedding"
    )
    with pytest.raises(EmbedderMismatch, match="6 dims"):
        MemorixVectorStore(DeterministicFakeEmbedding(size=7), name, database_url)
    with pytest.raises(InvalidInput, match="Embeddings"):
        MemorixVectorStore("hash", name, database_url)  # type: ignore[arg-type]


def test_memorix_embeddings_share_a_collection_with_memory_api(database_url: str) -> None:
    name = _collection()
    store = MemorixVectorStore(MemorixEmbeddings("hash"), name, database_url)
    [doc_id] = store.add_texts(["User prefers dark mode"], [{"type": "preference"}])
    with MemoryAPI(embedder="hash", collection_name=name, database_url=database_url) as memory:
        [hit] = memory.retrieve("dark mode", top_k=1)
        assert (hit.id, hit.metadata) == (doc_id, {"type": "preference"})
        memory.store("Lives in Lisbon", {"type": "fact"})
    assert [d.page_content for d in store.similarity_search("Lisbon", k=1)] == ["Lives in Lisbon"]
    vectors = MemorixEmbeddings("hash-16").embed_documents(["a", "b"])
    assert len(vectors) == 2 and len(vectors[0]) == 16


def test_langchain_indexing_api_keeps_the_store_in_step(
    make_store: Callable[..., Store], kind: str, event_loop_thread: EventLoopThread
) -> None:
    """LangChain's ``index()`` / ``aindex()`` (record manager, incremental cleanup) on the store."""
    store = make_store().store
    manager = InMemoryRecordManager("memorix")
    manager.create_schema()

    def run(docs: list[Document]) -> dict[str, int]:
        if kind == "sync":
            return dict(
                index(
                    docs, manager, store, cleanup="incremental", source_id_key="source", key_encoder="sha256"
                )
            )
        return dict(
            event_loop_thread.run(
                aindex(
                    docs, manager, store, cleanup="incremental", source_id_key="source", key_encoder="sha256"
                )
            )
        )

    docs = [Document("apples", metadata={"source": "a"}), Document("bananas", metadata={"source": "b"})]
    assert run(docs) == {"num_added": 2, "num_updated": 0, "num_skipped": 0, "num_deleted": 0}
    assert run(docs) == {"num_added": 0, "num_updated": 0, "num_skipped": 2, "num_deleted": 0}
    assert run([Document("apricots", metadata={"source": "a"})]) == {
        "num_added": 1,
        "num_updated": 0,
        "num_skipped": 0,
        "num_deleted": 1,
    }
    assert sorted(d.page_content for d in store.similarity_search("fruit", k=10)) == ["apricots", "bananas"]


def test_delete_collection_drops_it_and_the_store_makes_it_again(
    make_store: Callable[..., Store], database_url: str
) -> None:
    store = make_store(distance="l2")
    name = store.store.collection_name
    store.add_texts(["kept until the drop"])
    store.delete_collection()
    assert name not in [c.name for c in list_collections(database_url)]
    assert store.similarity_search("kept", k=5) == []  # made again, empty, with the store's options
    [summary] = [c for c in list_collections(database_url) if c.name == name]
    assert (summary.distance, summary.count) == ("l2", 0)
    store.add_texts(["after the drop"])
    assert [d.page_content for d in store.similarity_search("after", k=5)] == ["after the drop"]
