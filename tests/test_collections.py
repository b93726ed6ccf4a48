"""Collections as a whole: list_collections, drop(), get(ids=...) and include_embeddings on reads."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from click.testing import CliRunner

from memorix_pg import (
    CollectionNotFound,
    CollectionSummary,
    InvalidInput,
    MemorixError,
    PermissionDenied,
    list_collections,
)
from memorix_pg.cli import main
from tests.support.helpers import CapturedSQL, sql_exec, sql_value, unit_vectors


def _hnsw_index(url: str, collection_id: int) -> str | None:
    return sql_value(  # type: ignore[no-any-return]
        url,
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'memorix' AND indexname = %s",
        (f"memories_embedding_hnsw_{collection_id}",),
    )


# -- list_collections ---------------------------------------------------------------------------


def test_list_collections_reports_each_collection_with_its_live_memories(
    make_api, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    assert list_collections(database_url) == []  # a new database: migrated, nothing in it
    notes = make_api("notes")
    ids = notes.store_batch(["one", "two", "three"])
    sql_exec(
        database_url,
        "UPDATE memorix.memories SET expires_at = now() - interval '1 s' WHERE id = %s",
        (ids[0],),
    )
    make_api("vectors", embedder="hash-16", distance="l2", precision="half").store("v")
    make_api("alice_notes", tenant="alice").store_batch(["a", "b"])
    found = list_collections(database_url)
    assert all(isinstance(c, CollectionSummary) for c in found)
    assert [(c.name, c.embedder, c.dimensions, c.distance, c.precision, c.count) for c in found] == [
        ("alice_notes", "hash-384", 384, "cosine", "full", 2),
        ("notes", "hash-384", 384, "cosine", "full", 2),
        ("vectors", "hash-16", 16, "l2", "half", 1),
    ]
    assert all(c.created_at.tzinfo is not None for c in found)
    with pytest.raises(AttributeError):
        found[0].count = 5  # type: ignore[misc]
    # Without a URL: MEMORIX_DATABASE_URL, as MemoryAPI.
    monkeypatch.setenv("MEMORIX_DATABASE_URL", database_url)
    assert [c.name for c in list_collections()] == ["alice_notes", "notes", "vectors"]
    # The command line prints the same.
    result = CliRunner().invoke(main, ["collections"], env={"MEMORIX_DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["collection", "memories", "embedder", "dimensions", "distance", "precision"]
    assert lines[3].split() == ["vectors", "1", "hash-16", "16", "l2", "half"]


# -- drop -----------------------------------------------------------------------------------------


def test_drop_removes_the_collection_its_memories_and_its_index(make_api, database_url: str) -> None:  # type: ignore[no-untyped-def]
    doomed = make_api("doomed")
    kept = make_api("kept")
    ids = ["one", "two"]
    doomed.store_batch(["doomed one", "doomed two"], ids=ids)
    kept.store_batch(["kept one", "kept two"], ids=ids)
    index = doomed.create_index("n", type="number")
    cid = doomed.collection_id
    assert _hnsw_index(database_url, cid) is not None

    assert doomed.drop() is True
    assert (
        sql_value(database_url, "SELECT count(*) FROM memorix.memories WHERE collection_id = %s", (cid,)) == 0
    )
    assert sql_value(database_url, "SELECT count(*) FROM memorix.collections WHERE name = 'doomed'") == 0
    assert _hnsw_index(database_url, cid) is None
    # The expression index of create_index serves every collection: it stays.
    assert sql_value(database_url, "SELECT count(*) FROM pg_indexes WHERE indexname = %s", (index,)) == 1
    assert [m.text for m in kept.get(ids=ids)] == ["kept one", "kept two"]
    assert _hnsw_index(database_url, kept.collection_id) is not None

    # The dropped object refuses every call, as a closed one does.
    for call in (lambda: doomed.get("one"), lambda: doomed.store("again"), doomed.count, doomed.drop):
        with pytest.raises(CollectionNotFound, match="'doomed' was dropped"):
            call()
    # A new object creates it again, empty.
    again = make_api("doomed")
    assert again.count() == 0 and again.collection_id != cid
    assert [c.name for c in list_collections(database_url)] == ["doomed", "kept"]


def test_another_object_on_a_dropped_collection_gets_a_clear_error(make_api) -> None:  # type: ignore[no-untyped-def]
    first, second = make_api("shared_drop"), make_api("shared_drop")
    second.store("written before the drop")
    assert first.drop() is True
    with pytest.raises(CollectionNotFound, match="dropped"):
        second.store("written after the drop")
    assert second.drop() is False  # gone already


def test_a_tenant_may_drop_only_a_collection_of_its_own(make_api, database_url: str) -> None:  # type: ignore[no-untyped-def]
    alice = make_api("tenanted", tenant="alice")
    make_api("tenanted", tenant="bob").store("bob's")
    alice.store("alice's")
    with pytest.raises(PermissionDenied, match="other tenants"):
        alice.drop()
    assert alice.count() == 1 and make_api("tenanted", tenant="bob").count() == 1
    own = make_api("alice_only", tenant="alice")
    own.store("alice's alone")
    assert own.drop() is True
    assert "alice_only" not in [c.name for c in list_collections(database_url)]


# -- get(ids=...) ---------------------------------------------------------------------------------


def test_get_many_returns_what_exists_in_the_order_asked_in_one_round_trip(make_api) -> None:  # type: ignore[no-untyped-def]
    api = make_api("many")
    api.store_batch(["first", "second", "third"], ids=["a", "b", "c"])
    make_api("other").store("elsewhere", id="d")
    with CapturedSQL(api.database_url) as log:
        found = api.get(ids=["c", "missing", "a", "d", "c"])
    assert [(m.id, m.text) for m in found] == [("c", "third"), ("a", "first"), ("c", "third")]
    assert len(log.statements) == 1
    assert api.get(ids=[]) == []
    assert api.get("b").text == "second"  # type: ignore[union-attr]
    assert api.get("missing") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "id is None"),
        ({"id": "a", "ids": ["a"]}, "were both given"),
        ({"ids": "abc"}, "ids must be a list"),
        ({"ids": ["a", ""]}, "ids[1]"),
        ({"ids": ["a"], "include_embeddings": "yes"}, "include_embeddings"),
    ],
)
def test_get_rejects_bad_arguments(make_api, kwargs: dict, message: str) -> None:  # type: ignore[no-untyped-def]
    api = make_api("bad_get")
    with pytest.raises(InvalidInput) as caught:
        api.get(**kwargs)
    assert message in str(caught.value)
    assert isinstance(caught.value, MemorixError)


# -- include_embeddings -----------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["full", "half"])
def test_include_embeddings_fills_every_read(make_api, precision: str) -> None:  # type: ignore[no-untyped-def]
    api = make_api(f"vectors_{precision}", embedder="hash-16", precision=precision)
    vectors = unit_vectors(4, dim=16, seed=5)
    ids = api.store_batch([f"v{i}" for i in range(4)], ids=["w", "x", "y", "z"], embeddings=vectors)
    expected = dict(zip(ids, vectors, strict=True))
    tolerance = 1e-6 if precision == "full" else 2e-3

    def check(memories) -> None:  # type: ignore[no-untyped-def]
        assert memories
        for m in memories:
            assert isinstance(m.embedding, np.ndarray) and m.embedding.dtype == np.float32
            np.testing.assert_allclose(m.embedding, expected[m.id], atol=tolerance)

    check([api.get("x", include_embeddings=True)])
    check(api.get(ids=["z", "w"], include_embeddings=True))
    check(api.list(include_embeddings=True))
    check(api.retrieve(None, top_k=4, include_embeddings=True))  # newest first, nothing ranked
    for exact in (True, False):
        hits = api.retrieve(None, top_k=2, embedding=vectors[2], exact=exact, include_embeddings=True)
        assert hits[0].id == "y"
        check(hits)
    hits = api.retrieve("v1", top_k=2, include_embeddings=True)
    check(hits)
    # Not asked for: not read.
    assert api.get("x").embedding is None  # type: ignore[union-attr]
    assert all(m.embedding is None for m in api.get(ids=ids))
    assert all(m.embedding is None for m in api.retrieve(None, top_k=2, embedding=vectors[0]))
    with pytest.raises(InvalidInput, match="include_embeddings"):
        api.retrieve("v1", include_embeddings=1)


def test_drop_of_an_expiring_collection_counts_nothing_left(make_api, database_url: str) -> None:  # type: ignore[no-untyped-def]
    api = make_api("short_lived")
    api.store("gone soon", ttl=timedelta(hours=1))
    assert [c.count for c in list_collections(database_url) if c.name == "short_lived"] == [1]
    api.drop()
    assert [c.name for c in list_collections(database_url)] == []
