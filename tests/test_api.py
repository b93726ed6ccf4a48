"""MemoryAPI against a real PostgreSQL + pgvector server: every method, validation and the HNSW path."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from memorix_pg import (
    EmbedderMismatch,
    FilterError,
    HashEmbedder,
    InvalidInput,
    MemorixError,
    Memory,
    MemoryNotFound,
    SentenceTransformerEmbedder,
)
from tests.support.helpers import CountingEmbedder, rejecting_text, sql_rows, sql_value, unit_vectors

HASH_DIM = 384


def ids_of(memories: list[Memory]) -> list[str]:
    return [m.id for m in memories]


def hnsw_indexdef(api) -> str | None:  # type: ignore[no-untyped-def]
    return sql_value(
        api.database_url,
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'memorix' AND indexname = %s",
        (f"memories_embedding_hnsw_{api.collection_id}",),
    )


# -- store ------------------------------------------------------------------------------------


def test_store_returns_a_uuid_string_and_the_memory_can_be_read_back(make_api) -> None:
    api = make_api()
    memory_id = api.store("the sky is blue", {"kind": "fact", "n": 1})
    assert isinstance(memory_id, str)
    assert str(uuid.UUID(memory_id)) == memory_id
    memory = api.get(memory_id)
    assert memory is not None
    assert (memory.id, memory.text, memory.metadata) == (
        memory_id,
        "the sky is blue",
        {"kind": "fact", "n": 1},
    )
    assert memory.collection == "test"
    assert memory.score is None
    assert memory.created_at is not None and memory.created_at.tzinfo is not None


def test_store_with_a_given_id_uses_it_and_the_same_id_replaces(make_api) -> None:
    api = make_api()
    given = str(uuid.uuid4())
    assert api.store("first version", {"v": 1}, id=given) == given
    assert api.store("second version", {"v": 2}, id=given) == given
    assert api.count() == 1
    memory = api.get(given)
    assert memory is not None
    assert (memory.text, memory.metadata) == ("second version", {"v": 2})
    # The embedding was replaced too: the new text is an exact match.
    best = api.retrieve("second version", top_k=1)[0]
    assert best.id == given and best.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("size", [2, 300])  # INSERT, COPY
def test_updated_at_is_created_at_until_the_memory_is_replaced_or_updated(make_api, size: int) -> None:
    api = make_api()
    ids = [str(uuid.uuid4()) for _ in range(size)]
    api.store_batch([f"version one {i}" for i in range(size)], ids=ids)
    first = api.get(ids[-1])
    assert first is not None and first.updated_at == first.created_at
    assert all(m.updated_at == m.created_at for m in api.list(limit=size))

    api.store_batch([f"version two {i}" for i in range(size)], ids=ids)
    replaced = api.get(ids[-1])
    assert replaced is not None and replaced.text == f"version two {size - 1}"
    assert replaced.created_at == first.created_at
    assert replaced.updated_at is not None and replaced.updated_at > first.created_at

    updated = api.update(ids[-1], metadata={"seen": True})
    assert updated.created_at == first.created_at
    assert updated.updated_at is not None and updated.updated_at > replaced.updated_at
    assert api.get(ids[-1]) == updated
    ranked = api.retrieve(f"version two {size - 1}", top_k=1)[0]
    assert (ranked.id, ranked.created_at, ranked.updated_at) == (
        ids[-1],
        updated.created_at,
        updated.updated_at,
    )


def test_store_converts_datetimes_in_metadata_to_iso_strings(make_api) -> None:
    api = make_api()
    when = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    memory = api.get(api.store("dated", {"at": when, "pair": (1, 2)}))
    assert memory is not None
    assert memory.metadata == {"at": when.isoformat(), "pair": [1, 2]}


# -- store_batch --------------------------------------------------------------------------------


def test_store_batch_with_ids_metadatas_and_precomputed_embeddings(make_api) -> None:
    api = make_api()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    vectors = unit_vectors(3, HASH_DIM, seed=1)
    returned = api.store_batch(
        ["one", "two", "three"], [{"i": 1}, {"i": 2}, None], ids=ids, embeddings=vectors
    )
    assert returned == ids
    assert api.count() == 3
    assert [api.get(i).metadata for i in ids] == [{"i": 1}, {"i": 2}, {}]  # type: ignore[union-attr]
    # The stored vectors are the given ones, not embeddings of the texts.
    for memory_id, vector in zip(ids, vectors, strict=True):
        best = api.retrieve(None, top_k=1, embedding=vector)[0]
        assert best.id == memory_id
        assert best.score == pytest.approx(1.0, abs=1e-5)
    assert api.retrieve("two", top_k=1)[0].score < 0.5


def test_store_batch_without_ids_returns_new_distinct_ids_in_order(make_api) -> None:
    api = make_api()
    ids = api.store_batch(["a cat", "a dog", "a bird"])
    assert len(set(ids)) == 3
    assert [api.get(i).text for i in ids] == ["a cat", "a dog", "a bird"]  # type: ignore[union-attr]
    assert api.store_batch([]) == []


def _nan_embeddings() -> np.ndarray:
    vectors = unit_vectors(3, HASH_DIM, seed=2)
    vectors[1, 5] = np.nan
    return vectors


FIXED_ID = str(uuid.uuid4())
INVALID_BATCHES = {
    "empty text": {"texts": ["alpha", "", "gamma"]},
    "blank text": {"texts": ["alpha", "   ", "gamma"]},
    "NUL byte in text": {"texts": ["alpha", "be\x00ta", "gamma"]},
    "text not a str": {"texts": ["alpha", 42, "gamma"]},
    "non-JSON metadata": {"metadatas": [{}, {"obj": object()}, {}]},
    "NaN in metadata": {"metadatas": [{}, {"x": float("nan")}, {}]},
    "non-str metadata key": {"metadatas": [{}, {1: "x"}, {}]},
    "NaN embedding": {"embeddings": _nan_embeddings()},
    "wrong-dim embedding": {"embeddings": [*unit_vectors(2, HASH_DIM), unit_vectors(1, 100)[0]]},
    "empty id": {"ids": [str(uuid.uuid4()), "", str(uuid.uuid4())]},
    "id not a str": {"ids": ["a", 7, "c"]},
    "id too long": {"ids": ["a", "b" * 513, "c"]},
    "NUL in id": {"ids": ["a", "b\x00", "c"]},
    "duplicated id": {"ids": [FIXED_ID, str(uuid.uuid4()), FIXED_ID]},
    "metadatas length": {"metadatas": [{}, {}]},
}


@pytest.mark.parametrize("overrides", INVALID_BATCHES.values(), ids=INVALID_BATCHES.keys())
def test_store_batch_with_one_invalid_item_writes_nothing(make_api, overrides: dict) -> None:
    api = make_api()
    existing = api.store("already here")
    kwargs = {"texts": ["alpha", "beta", "gamma"], **overrides}
    with pytest.raises(InvalidInput) as excinfo:
        api.store_batch(**kwargs)
    assert isinstance(excinfo.value, MemorixError) and isinstance(excinfo.value, ValueError)
    assert api.count() == 1
    assert sql_value(api.database_url, "SELECT count(*) FROM memorix.memories") == 1
    assert api.get(existing) is not None


@pytest.mark.parametrize("size", [2, 300, 6_000], ids=["insert", "copy", "copy-deferred-index"])
def test_store_batch_rolls_back_when_the_database_rejects_one_row(make_api, size: int) -> None:
    """A row the database itself refuses (here a CHECK constraint) is only found by the write:
    the rows written before it must be rolled back (and a dropped-for-the-load HNSW index restored)."""
    api = make_api("shared", tenant="mine")
    other = make_api("shared", tenant="other")
    kept = other.store("belongs to other")
    with rejecting_text(api.database_url, "refused"), pytest.raises(psycopg.errors.CheckViolation):
        api.store_batch([f"row {i}" for i in range(size - 1)] + ["refused"])
    assert api.count() == 0
    assert "USING hnsw" in (hnsw_indexdef(api) or "")
    assert other.get(kept).text == "belongs to other"  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [3, 300], ids=["insert", "copy"])
def test_a_batch_is_stamped_in_order_so_newest_first_follows_it(make_api, size: int) -> None:
    api = make_api()
    ids = api.store_batch([f"item {i}" for i in range(size)])
    newest = api.retrieve("", top_k=size)
    assert len({m.created_at for m in newest}) == size
    assert ids_of(newest) == ids[::-1]


# -- retrieve -----------------------------------------------------------------------------------

TEXTS = [
    "the cat sat on the mat",
    "stock markets fell sharply today",
    "a recipe for tomato soup",
    "the quarterly tax filing deadline",
    "hiking in the alps in summer",
    "python list comprehensions",
    "the dog chased the ball",
]


def test_retrieve_ranks_the_identical_text_first_with_score_one(make_api) -> None:
    api = make_api()
    ids = api.store_batch(TEXTS)
    for text, memory_id in zip(TEXTS, ids, strict=True):
        results = api.retrieve(text, top_k=3)
        assert results[0].id == memory_id
        assert results[0].text == text
        assert results[0].score == pytest.approx(1.0, abs=1e-5)
        assert all(r.score < 0.999 for r in results[1:])


def test_retrieve_respects_top_k_and_orders_by_score(make_api) -> None:
    api = make_api()
    api.store_batch(TEXTS)
    for k in (1, 3, len(TEXTS), 50):
        results = api.retrieve("the cat and the dog", top_k=k)
        assert len(results) == min(k, len(TEXTS))
        scores = [r.score for r in results]
        assert scores == sorted(scores, reverse=True)
        assert all(r.collection == "test" for r in results)


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True])
def test_retrieve_rejects_a_bad_top_k(make_api, top_k: object) -> None:
    with pytest.raises(InvalidInput):
        make_api().retrieve("x", top_k=top_k)


def test_retrieve_applies_the_filter(make_api) -> None:
    api = make_api()
    api.store_batch(TEXTS, [{"even": i % 2 == 0} for i in range(len(TEXTS))])
    results = api.retrieve(TEXTS[1], top_k=10, filter={"even": True})
    assert sorted(r.text for r in results) == sorted(TEXTS[0::2])
    assert TEXTS[1] not in [r.text for r in results]


def test_retrieve_with_a_precomputed_query_embedding(make_api) -> None:
    api = make_api()
    ids = api.store_batch(TEXTS)
    query = HashEmbedder(HASH_DIM).embed([TEXTS[4]])[0]
    results = api.retrieve(None, top_k=2, embedding=query)
    assert results[0].id == ids[4] and results[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InvalidInput, match="dimensions"):
        api.retrieve(None, embedding=query[:10])


@pytest.mark.parametrize("query", ["", None])
def test_empty_query_returns_newest_first_without_embedding(make_api, query: str | None) -> None:
    embedder = CountingEmbedder(16)
    api = make_api(embedder=embedder)
    stored = [api.store(text, {"n": i}) for i, text in enumerate(["first", "second", "third", "fourth"])]
    embedder.calls.clear()
    results = api.retrieve(query, top_k=3)
    assert ids_of(results) == stored[::-1][:3]
    assert all(r.score is None for r in results)
    filtered = api.retrieve(query, top_k=10, filter={"n": {"$lt": 2}})
    assert ids_of(filtered) == [stored[1], stored[0]]
    assert embedder.calls == []


# -- update -------------------------------------------------------------------------------------


def test_update_merges_metadata_and_none_removes_a_key(make_api) -> None:
    api = make_api()
    memory_id = api.store("unchanged text", {"a": 1, "b": 2, "c": 3})
    updated = api.update(memory_id, metadata={"b": 20, "c": None, "d": {"nested": True}})
    expected = {"a": 1, "b": 20, "d": {"nested": True}}
    assert updated.metadata == expected
    assert updated.text == "unchanged text"
    stored = api.get(memory_id)
    assert stored is not None and stored.metadata == expected
    assert api.retrieve("unchanged text", top_k=1)[0].score == pytest.approx(1.0, abs=1e-5)


def test_update_text_re_embeds_it(make_api) -> None:
    api = make_api()
    ids = api.store_batch(TEXTS)
    new_text = "volcanic eruptions in iceland"
    updated = api.update(ids[2], text=new_text)
    assert (updated.id, updated.text) == (ids[2], new_text)
    best = api.retrieve(new_text, top_k=1)[0]
    assert best.id == ids[2] and best.score == pytest.approx(1.0, abs=1e-5)
    old_best = api.retrieve(TEXTS[2], top_k=1)[0]
    assert old_best.score < 0.999
    assert api.count() == len(TEXTS)


def test_update_of_an_unknown_id_raises_memory_not_found(make_api) -> None:
    api = make_api()
    with pytest.raises(MemoryNotFound) as excinfo:
        api.update(str(uuid.uuid4()), metadata={"x": 1})
    assert isinstance(excinfo.value, KeyError) and isinstance(excinfo.value, MemorixError)
    with pytest.raises(MemoryNotFound, match="'not-a-uuid'"):
        api.update("not-a-uuid", metadata={"x": 1})
    with pytest.raises(InvalidInput, match="id is empty"):
        api.update("", metadata={"x": 1})


# -- get / delete / delete_by_filter / count ---------------------------------------------------


def test_get_returns_a_memory_or_none(make_api) -> None:
    api = make_api()
    memory_id = api.store("findable", {"k": "v"})
    memory = api.get(memory_id)
    assert isinstance(memory, Memory) and memory.text == "findable"
    assert api.get(str(uuid.uuid4())) is None


def test_delete_returns_whether_a_memory_was_deleted(make_api) -> None:
    api = make_api()
    keep, drop = api.store_batch(["keep me", "drop me"])
    assert api.delete(drop) is True
    assert api.delete(drop) is False
    assert api.get(drop) is None
    assert api.count() == 1 and api.get(keep) is not None


def test_delete_by_filter_deletes_only_matches_in_this_collection(make_api) -> None:
    api = make_api("a")
    other = make_api("b")
    api.store_batch(["x1", "x2", "y1"], [{"type": "x"}, {"type": "x"}, {"type": "y"}])
    other.store("x in b", {"type": "x"})
    assert api.delete_by_filter({"type": "x"}) == 2
    assert [m.text for m in api.retrieve(None, top_k=10)] == ["y1"]
    assert api.delete_by_filter({"type": "x"}) == 0
    assert other.count() == 1
    assert api.delete_by_filter({}) == 1
    assert api.count() == 0 and other.count() == 1
    with pytest.raises(FilterError):
        api.delete_by_filter(None)  # type: ignore[arg-type]


def test_count_with_and_without_filter(make_api) -> None:
    api = make_api()
    assert api.count() == 0
    api.store_batch([f"m{i}" for i in range(5)], [{"type": "a" if i < 3 else "b", "i": i} for i in range(5)])
    assert api.count() == 5
    assert api.count({"type": "a"}) == 3
    assert api.count({"type": "b", "i": 4}) == 1
    assert api.count({"type": "missing"}) == 0


def test_a_filter_that_is_not_a_dict_raises_filter_error(make_api) -> None:
    api = make_api()
    api.store("something")
    for call in (lambda: api.count("d41d8cd98f00b204e9800998ecf8427e"), lambda: api.retrieve("x", 5, "abc")):
        with pytest.raises(FilterError):
            call()


def test_database_url_reaches_the_rows(make_api) -> None:
    api = make_api()
    ids = api.store_batch(["row one", "row two"], [{"n": 1}, {"n": 2}])
    rows = sql_rows(
        api.database_url,
        "SELECT id::text, text, metadata FROM memorix.memories WHERE collection_id = %s ORDER BY text",
        (api.collection_id,),
    )
    assert rows == [(ids[0], "row one", {"n": 1}), (ids[1], "row two", {"n": 2})]
    assert api.database_url.startswith("postgresql://")


# -- Memory, configuration, embedders -----------------------------------------------------------


def test_memory_is_a_frozen_dataclass_with_the_documented_fields() -> None:
    names = [f.name for f in dataclasses.fields(Memory)]
    assert names == [
        "id",
        "text",
        "metadata",
        "score",
        "created_at",
        "collection",
        "updated_at",
        "embedding",
        "expires_at",
        "ranks",
    ]
    memory = Memory(id="x", text="t")
    assert (memory.metadata, memory.score, memory.created_at, memory.collection) == ({}, None, None, "")
    assert memory.updated_at is None
    assert (memory.embedding, memory.expires_at) == (None, None)  # filled by list(include_embeddings=True)
    assert memory.ranks is None  # filled by retrieve(ranks=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        memory.text = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("vector_store", ["pgvector", "postgres", "postgresql"])
def test_accepted_vector_stores(make_api, vector_store: str) -> None:
    api = make_api(vector_store=vector_store)
    assert api.count() == 0


def test_an_unsupported_vector_store_lists_the_accepted_values(make_api) -> None:
    with pytest.raises(ValueError) as excinfo:
        make_api(vector_store="chroma")
    message = str(excinfo.value)
    assert "chroma" in message
    for accepted in ("'pgvector'", "'postgres'", "'postgresql'"):
        assert accepted in message


@pytest.mark.parametrize(
    ("spec", "cls", "name"),
    [
        ("hash", HashEmbedder, "hash-384"),
        ("sentence-transformers", SentenceTransformerEmbedder, "sentence-transformers/all-MiniLM-L6-v2"),
        (
            "sentence-transformers/all-MiniLM-L6-v2",
            SentenceTransformerEmbedder,
            "sentence-transformers/all-MiniLM-L6-v2",
        ),
    ],
)
def test_embedder_strings(make_api, spec: str, cls: type, name: str) -> None:
    api = make_api(embedder=spec)
    assert isinstance(api.embedder, cls)
    assert (api.embedder.name, api.embedder.dim) == (name, 384)
    row = sql_rows(
        api.database_url,
        "SELECT embedder, dimension FROM memorix.collections WHERE id = %s",
        (api.collection_id,),
    )
    assert row == [(name, 384)]


def test_both_spellings_of_the_default_model_open_the_same_collection(make_api) -> None:
    first = make_api("st", embedder="sentence-transformers")
    second = make_api("st", embedder="sentence-transformers/all-MiniLM-L6-v2")
    assert first.collection_id == second.collection_id


def test_an_unknown_embedder_string_raises_value_error(make_api) -> None:
    with pytest.raises(ValueError, match="word2vec") as excinfo:
        make_api(embedder="word2vec")
    assert "'hash'" in str(excinfo.value) and "'sentence-transformers'" in str(excinfo.value)


def test_a_custom_embedder_object_is_used(make_api) -> None:
    embedder = CountingEmbedder(16)
    api = make_api(embedder=embedder)
    assert api.embedder is embedder
    memory_id = api.store("custom embedded text")
    assert embedder.calls == [["custom embedded text"]]
    best = api.retrieve("custom embedded text", top_k=1)[0]
    assert best.id == memory_id and best.score == pytest.approx(1.0, abs=1e-5)
    assert (
        sql_value(api.database_url, "SELECT dimension FROM memorix.collections WHERE name = %s", ("test",))
        == 16
    )


def test_reopening_a_collection_with_another_embedder_raises_embedder_mismatch(make_api) -> None:
    make_api("shared", embedder="hash").store("made with hash")
    with pytest.raises(EmbedderMismatch) as excinfo:
        make_api("shared", embedder=CountingEmbedder(16))
    message = str(excinfo.value)
    assert "hash-384" in message and "counting-16" in message and "shared" in message
    assert make_api("shared", embedder="hash").count() == 1


def test_collections_are_isolated(make_api) -> None:
    a = make_api("a")
    b = make_api("b")
    a_id = a.store("shared text", {"owner": "a"})
    b_id, _ = b.store_batch(["shared text", "only in b"], [{"owner": "b"}, {"owner": "b"}])
    assert (a.count(), b.count()) == (1, 2)
    assert ids_of(a.retrieve("shared text", top_k=10)) == [a_id]
    assert ids_of(a.retrieve(None, top_k=10)) == [a_id]
    assert a.count({"owner": "b"}) == 0
    assert a.get(b_id) is None
    assert a.delete(b_id) is False
    with pytest.raises(MemoryNotFound):
        a.update(b_id, metadata={"owner": "a"})
    # Ids are unique per collection: the same id in another collection is another memory.
    assert a.store("not a hijack", id=b_id) == b_id
    assert a.get(b_id).text == "not a hijack"  # type: ignore[union-attr]
    assert b.get(b_id).metadata == {"owner": "b"}  # type: ignore[union-attr]
    assert b.count() == 2 and a.count() == 2


# -- the seed's filters ------------------------------------------------------------------------


def test_seed_filter_type_and_session(make_api) -> None:
    api = make_api()
    docs = [
        ("s1 conversation", {"type": "conversation", "session_id": "s1"}),
        ("s2 conversation", {"type": "conversation", "session_id": "s2"}),
        ("s1 knowledge", {"type": "knowledge", "session_id": "s1"}),
        ("no session", {"type": "conversation", "session_id": None}),
    ]
    api.store_batch([t for t, _ in docs], [m for _, m in docs])
    flt = {"type": "conversation", "session_id": "s1"}
    assert [m.text for m in api.retrieve("conversation", top_k=10, filter=flt)] == ["s1 conversation"]
    assert api.count(flt) == 1
    assert api.count({"type": "conversation"}) == 3


def test_seed_filter_in_on_a_list_field(make_api) -> None:
    api = make_api()
    docs = [
        ("python and postgres", {"tags": ["python", "postgres"]}),
        ("rust only", {"tags": ["rust"]}),
        ("go as a scalar", {"tags": "go"}),
        ("no tags", {}),
        ("empty tags", {"tags": []}),
    ]
    api.store_batch([t for t, _ in docs], [m for _, m in docs])
    found = api.retrieve("", top_k=10, filter={"tags": {"$in": ["python", "go"]}})
    assert sorted(m.text for m in found) == ["go as a scalar", "python and postgres"]
    assert api.count({"tags": {"$in": ["rust"]}}) == 1
    assert api.count({"tags": {"$in": ["java"]}}) == 0


def test_seed_filter_timestamp_gte_on_iso_strings(make_api) -> None:
    api = make_api()
    now = datetime.now()
    stamps = {"old": now - timedelta(days=40), "edge": now - timedelta(days=1), "new": now}
    api.store_batch(list(stamps), [{"timestamp": t.isoformat()} for t in stamps.values()])
    cutoff = (now - timedelta(days=1)).isoformat()
    assert sorted(m.text for m in api.retrieve("", top_k=10, filter={"timestamp": {"$gte": cutoff}})) == [
        "edge",
        "new",
    ]
    assert api.count({"timestamp": {"$lt": cutoff}}) == 1


def test_seed_filter_ne_true_matches_memories_lacking_the_key(make_api) -> None:
    api = make_api()
    api.store_batch(
        ["compressed", "not compressed", "never marked", "null"],
        [{"compressed": True}, {"compressed": False}, {}, {"compressed": None}],
    )
    found = api.retrieve("", top_k=10, filter={"compressed": {"$ne": True}})
    assert sorted(m.text for m in found) == ["never marked", "not compressed", "null"]
    assert api.delete_by_filter({"compressed": {"$ne": True}}) == 3
    assert [m.text for m in api.retrieve(None, top_k=10)] == ["compressed"]


# -- the HNSW index ------------------------------------------------------------------------------


def test_a_new_collection_gets_its_hnsw_index(make_api) -> None:
    api = make_api("indexed")
    indexdef = hnsw_indexdef(api)
    assert indexdef is not None
    assert "USING hnsw" in indexdef
    assert "vector_cosine_ops" in indexdef and "(384)" in indexdef
    assert f"WHERE (collection_id = {api.collection_id})" in indexdef


def test_a_small_collection_is_searched_exactly(make_api) -> None:
    api = make_api()
    api.store_batch(TEXTS)
    plan = api.explain_retrieve("the cat", top_k=3)
    assert plan.path == "exact"
    assert plan.matches_counted == len(TEXTS)
    assert api.explain_retrieve("", top_k=3).path == "recent"


def test_a_large_collection_uses_hnsw_with_high_recall(make_api) -> None:
    dim, n, k, chunk = 32, 20_000, 10, 5_000
    api = make_api("large", embedder=f"hash-{dim}")
    vectors = unit_vectors(n, dim, seed=7)
    started = time.monotonic()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        api.store_batch(
            [f"memory {i}" for i in range(start, stop)],
            [{"bucket": i % 100} for i in range(start, stop)],
            embeddings=vectors[start:stop],
        )
    assert api.count() == n
    assert "USING hnsw" in (hnsw_indexdef(api) or "")  # rebuilt after the deferred first load
    print(f"stored {n} rows in {time.monotonic() - started:.1f}s")

    queries = unit_vectors(20, dim, seed=8)
    recalls = []
    for query in queries:
        plan = api.explain_retrieve(None, top_k=k, embedding=query)
        assert plan.path == "hnsw", plan
        approx = api.retrieve(None, top_k=k, embedding=query)
        exact = api.retrieve(None, top_k=k, embedding=query, exact=True)
        assert len(approx) == len(exact) == k
        recalls.append(len(set(ids_of(approx)) & set(ids_of(exact))) / k)
    identical = sum(r == 1.0 for r in recalls)
    print(f"recall@{k}: mean {np.mean(recalls):.3f}, identical on {identical}/{len(recalls)}")
    assert np.mean(recalls) >= 0.9
    assert identical >= len(recalls) // 2

    # A selective filter (200 of 20,000 rows) is searched exactly, and only matches come back.
    plan = api.explain_retrieve(None, top_k=k, embedding=queries[0], filter={"bucket": 7})
    assert (plan.path, plan.matches_counted) == ("exact", 200)
    filtered = api.retrieve(None, top_k=k, embedding=queries[0], filter={"bucket": 7})
    assert len(filtered) == k and all(m.metadata == {"bucket": 7} for m in filtered)
