"""Batch ingest on a real PostgreSQL: binary COPY, batched embedding, the progress bar,
all-or-nothing batches, idempotent upserts by id, and the deferred HNSW build of a bulk load."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
import pytest

from memorix_pg import HashEmbedder, InvalidInput, MemoryAPI
from memorix_pg import ingest as ingest_module
from memorix_pg.database import get_engine
from memorix_pg.embedding import EMBED_BATCH
from memorix_pg.ingest import COPY_MIN_ROWS
from memorix_pg.runner import watch_statements
from tests.support.helpers import CountingEmbedder, rejecting_text, unit_vectors


def sql(url: str, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def sql_value(url: str, query: str, params: Sequence[Any] | None = None) -> Any:
    rows = sql(url, query, params)
    return rows[0][0] if rows else None


def table_rows(url: str, collection_id: int) -> int:
    return int(
        sql_value(url, "SELECT count(*) FROM memorix.memories WHERE collection_id = %s", (collection_id,))
    )


def hnsw_index_oid(url: str, collection_id: int) -> int | None:
    return sql_value(
        url,
        "SELECT c.oid::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'memorix' AND c.relname = %s",
        (f"memories_embedding_hnsw_{collection_id}",),
    )


@pytest.fixture
def copy_spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Call-through spy on the COPY writer: records the size of every batch written with COPY."""
    sizes: list[int] = []
    real = ingest_module._copy_rows

    def spy(info, rows, *args):  # type: ignore[no-untyped-def]
        sizes.append(len(rows))
        return real(info, rows, *args)

    monkeypatch.setattr(ingest_module, "_copy_rows", spy)
    return sizes


@contextmanager
def captured_sql(api: MemoryAPI) -> Iterator[list[tuple[str, Any]]]:
    with watch_statements(api.database_url) as statements:
        yield statements


# -- COPY, batched embedding, progress --------------------------------------------------------------


def test_large_batches_use_binary_copy_and_small_ones_insert(make_api, database_url, copy_spy):
    api = make_api("copy_paths")
    api.store_batch([f"small {i}" for i in range(COPY_MIN_ROWS - 1)])
    assert copy_spy == []
    ids = api.store_batch([f"large {i}" for i in range(1000)], [{"i": i} for i in range(1000)])
    assert copy_spy == [1000]
    assert api.count() == 1000 + COPY_MIN_ROWS - 1
    # What was copied reads back exactly: text, metadata, embedding.
    m = api.get(ids[777])
    assert m.text == "large 777" and m.metadata == {"i": 777}
    stored = sql_value(
        database_url, "SELECT embedding::text FROM memorix.memories WHERE id = %s", (ids[777],)
    )
    vector = np.array(stored.strip("[]").split(","), dtype=np.float32)
    np.testing.assert_allclose(vector, HashEmbedder(384).embed(["large 777"])[0], rtol=1e-6)
    # Rows of one COPY get distinct, increasing created_at: newest first follows the batch order.
    assert [m.text for m in api.retrieve("", top_k=3)] == ["large 999", "large 998", "large 997"]
    assert len(api.retrieve("", top_k=2000)) == 1000 + COPY_MIN_ROWS - 1


def test_texts_are_embedded_in_batches_with_a_progress_bar(make_api, capsys):
    emb = CountingEmbedder()
    api = make_api("batched", embedder=emb)
    n = 2 * EMBED_BATCH + 100
    api.store_batch([f"text number {i}" for i in range(n)], progress=True)
    sizes = [len(c) for c in emb.calls]
    assert sum(sizes) == n and max(sizes) <= EMBED_BATCH
    assert len(sizes) == -(-n // EMBED_BATCH) == 3
    err = capsys.readouterr().err
    assert err.count("embedding") >= 1 and "100%" in err and f"{n}/{n}" in err
    api.store_batch([f"quiet {i}" for i in range(300)])
    assert capsys.readouterr().err == ""


# -- all or nothing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"texts": ""},
        {"texts": "\x00"},
        {"texts": 42},
        {"metadatas": {"when": {1, 2}}},
        {"metadatas": {"x": float("nan")}},
        {"ids": ""},
        {"embeddings": [float("nan")] * 384},
        {"embeddings": [0.1] * 12},
    ],
    ids=lambda b: f"{next(iter(b))}",
)
def test_one_invalid_item_in_the_middle_stores_nothing(make_api, database_url, bad):
    emb = CountingEmbedder(dim=384)
    api = make_api("all_or_nothing", embedder=emb)
    api.store("already there")
    n = 1000
    texts: list[Any] = [f"item {i}" for i in range(n)]
    metas: list[Any] = [{"i": i} for i in range(n)]
    ids: list[Any] = [str(uuid.uuid4()) for _ in range(n)]
    vectors: list[Any] = list(unit_vectors(n))
    field, value = next(iter(bad.items()))
    {"texts": texts, "metadatas": metas, "ids": ids, "embeddings": vectors}[field][500] = value
    calls_before = len(emb.calls)
    with pytest.raises(InvalidInput):
        api.store_batch(texts, metas, ids=ids, embeddings=vectors if field == "embeddings" else None)
    assert api.count() == 1
    assert table_rows(database_url, api.collection_id) == 1
    assert len(emb.calls) == calls_before  # nothing was even embedded


@pytest.mark.parametrize(
    "field, value",
    [
        ("texts", ""),
        ("ids", ""),
        ("ids", "x" * 513),
        ("embeddings", [0.5] * 3),
        ("metadatas", {"x": float("inf")}),
        ("metadatas", {"when": {1, 2}}),
        ("metadatas", "not a dict"),
    ],
)
def test_a_batch_error_names_the_item(make_api, field, value):
    """In a batch of 1,000 the message must say which item is wrong, not only which key."""
    api = make_api("naming", embedder="hash-8")
    n = 1000
    batch: dict[str, list[Any]] = {
        "texts": [f"item {i}" for i in range(n)],
        "metadatas": [{"i": i} for i in range(n)],
        "ids": [str(uuid.uuid4()) for _ in range(n)],
        "embeddings": [[0.5] * 8 for _ in range(n)],
    }
    batch[field][500] = value
    with pytest.raises(InvalidInput, match=rf"{field}\[500\]"):
        api.store_batch(**batch)
    assert api.count() == 0


@pytest.mark.parametrize("n", [10, 1000])  # INSERT and COPY (through the staging table)
def test_an_id_of_another_tenant_is_this_tenants_own_memory(make_api, database_url, n):
    """Ids are unique per tenant and collection: the other tenant's memory is never reached."""
    owner = make_api("shared", tenant="owner")
    taken = owner.store("belongs to owner", {"owner": True})
    api = make_api("shared", tenant="intruder")
    ids = [str(uuid.uuid4()) for _ in range(n)]
    ids[n // 2] = taken
    assert api.store_batch([f"intruder {i}" for i in range(n)], ids=ids) == ids
    assert api.count() == n and table_rows(database_url, api.collection_id) == n + 1
    assert api.get(taken).text == f"intruder {n // 2}"
    m = owner.get(taken)
    assert m.text == "belongs to owner" and m.metadata == {"owner": True}
    assert owner.count() == 1
    # The single-store path too: it replaces the intruder's own memory of that id.
    assert api.store("its own again", id=taken) == taken
    assert api.get(taken).text == "its own again" and owner.get(taken).text == "belongs to owner"


# -- idempotent upserts by id -----------------------------------------------------------------------


def test_storing_the_same_ids_twice_is_idempotent(make_api, database_url, copy_spy):
    api = make_api("idempotent")
    n = 1000
    ids = [str(uuid.uuid4()) for _ in range(n)]
    assert api.store_batch([f"first {i}" for i in range(n)], [{"v": 1}] * n, ids=ids) == ids
    created = dict(
        sql(
            database_url,
            "SELECT id::text, created_at FROM memorix.memories WHERE collection_id = %s",
            (api.collection_id,),
        )
    )
    assert api.store_batch([f"second {i}" for i in range(n)], [{"v": 2}] * n, ids=ids) == ids
    assert copy_spy == [n, n]
    assert api.count() == n and table_rows(database_url, api.collection_id) == n
    assert api.count({"v": 2}) == n
    assert api.get(ids[123]).text == "second 123"
    stored = sql_value(
        database_url, "SELECT embedding::text FROM memorix.memories WHERE id = %s", (ids[123],)
    )
    np.testing.assert_allclose(
        np.array(stored.strip("[]").split(","), dtype=np.float32),
        HashEmbedder(384).embed(["second 123"])[0],
        rtol=1e-6,
    )
    # The new text is what search finds.
    assert api.retrieve("second 123", top_k=1)[0].id == ids[123]
    after = dict(
        sql(
            database_url,
            "SELECT id::text, created_at FROM memorix.memories WHERE collection_id = %s",
            (api.collection_id,),
        )
    )
    assert after == created  # an upsert keeps the original creation time
    # A re-run that overlaps half: only the new half is added.
    more = ids[500:] + [str(uuid.uuid4()) for _ in range(500)]
    api.store_batch([f"third {i}" for i in range(n)], ids=more)
    assert api.count() == 1500 and api.count({"v": 1}) == 0
    # The same on the small INSERT path.
    small = ids[:5]
    api.store_batch(["small a", "small b", "small c", "small d", "small e"], ids=small)
    api.store_batch(["small a", "small b", "small c", "small d", "small e"], ids=small)
    assert api.count() == 1500 and api.get(small[2]).text == "small c"


# -- bulk load: the HNSW index is built once, and used ----------------------------------------------


def _explain(api: MemoryAPI, statement: str, parameters: Any) -> str:
    engine = get_engine(api.database_url)
    with engine.begin() as conn:
        rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters).fetchall()
    return "\n".join(r[0] for r in rows)


def test_bulk_load_builds_the_hnsw_index_once_and_search_uses_it(make_api, database_url):
    api = make_api("bulk")
    cid = api.collection_id
    index = f"memories_embedding_hnsw_{cid}"
    before = hnsw_index_oid(database_url, cid)
    assert before is not None  # a new collection has its (empty) index
    n = 6000
    vectors = unit_vectors(n, seed=5)
    metas = [{"type": ["conversation", "knowledge", "episode"][i % 3], "i": i} for i in range(n)]
    t0 = time.perf_counter()
    ids = api.store_batch([f"bulk memory {i}" for i in range(n)], metas, embeddings=vectors)
    load_seconds = time.perf_counter() - t0
    assert api.count() == n
    after = hnsw_index_oid(database_url, cid)
    assert after is not None and after != before  # dropped for the load, built once at the end
    assert (
        sql_value(
            database_url,
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'memorix' AND indexname = %s",
            (index,),
        )
        == 1
    )
    assert sql_value(database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = %s", (after,)) is True
    print(f"6,000-row load with deferred index: {load_seconds:.2f} s")

    for probe in (17, 2999, 5998):
        query = vectors[probe]
        with captured_sql(api) as statements:
            plan = api.explain_retrieve(None, top_k=5, embedding=query, exact=False)
        assert plan.path == "hnsw", plan
        hnsw_hits = api.retrieve(None, top_k=5, embedding=query, exact=False)
        exact_hits = api.retrieve(None, top_k=5, embedding=query, exact=True)
        assert hnsw_hits[0].id == exact_hits[0].id == ids[probe]
        assert hnsw_hits[0].score == pytest.approx(1.0, abs=1e-5)
        # The planner really walks the collection's index for that statement.
        [(stmt, params)] = [(s, p) for s, p in statements if "ORDER BY" in s and "LIMIT" in s]
        assert index in _explain(api, stmt, params)
    # A default (unforced) retrieve over 6,000 rows is below EXACT_LIMIT: exact, same first hit.
    assert api.retrieve(None, top_k=1, embedding=vectors[42])[0].id == ids[42]


def test_a_failed_bulk_load_keeps_the_index(make_api, database_url):
    api = make_api("bulk_fail", tenant="loader")
    cid = api.collection_id
    before = hnsw_index_oid(database_url, cid)
    n = 5200
    texts = [f"x {i}" for i in range(n - 1)] + ["refused"]
    with rejecting_text(database_url, "refused"), pytest.raises(psycopg.errors.CheckViolation):
        api.store_batch(texts, embeddings=unit_vectors(n, seed=9))
    assert api.count() == 0
    after = hnsw_index_oid(database_url, cid)
    assert before is not None and after is not None  # the index is there after the failed load
    assert sql_value(database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = %s", (after,)) is True


def test_a_bulk_load_does_not_block_other_collections(make_api, database_url):
    """Loading one collection must not stall reads of another (one shared table holds all)."""
    other = make_api("bystander")
    other.store_batch([f"bystander {i}" for i in range(20)])
    api = make_api("bulk_blocker")
    n = 6000
    vectors = unit_vectors(n, seed=13)
    done = threading.Event()
    load_time: list[float] = []

    def load() -> None:
        t = time.perf_counter()
        try:
            api.store_batch([f"load {i}" for i in range(n)], embeddings=vectors)
        finally:
            load_time.append(time.perf_counter() - t)
            done.set()

    loader = threading.Thread(target=load)
    loader.start()
    worst, polls = 0.0, 0
    while not done.is_set():
        polls += 1
        t = time.perf_counter()
        assert other.count() == 20
        worst = max(worst, time.perf_counter() - t)
        time.sleep(0.05)
    loader.join()
    print(f"load {load_time[0]:.2f} s; slowest count() on another collection during it: {worst:.2f} s")
    assert polls > 3
    assert worst < 0.5, (
        f"a count() on another collection waited {worst:.2f} s behind a {load_time[0]:.2f} s bulk load"
    )
