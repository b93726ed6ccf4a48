"""``precision="half"``: vectors stored as ``halfvec`` (2 bytes a dimension), end to end.

Every path that writes or reads vectors is exercised on a half collection: INSERT, COPY,
COPY through the upsert table, update, search (both plans), export/import, archive,
compress and find_duplicates; and migration 0004 moving an older half collection over.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from memorix_pg import MemoryAPI
from memorix_pg.migrate import downgrade, upgrade
from memorix_pg.transfer import export_jsonl, import_jsonl
from tests.support.helpers import sql_rows, sql_value, unit_vectors

DIM = 32
K = 10


def half_api(url: str, name: str = "half", **kw: Any) -> MemoryAPI:
    return MemoryAPI(embedder=f"hash-{DIM}", collection_name=name, database_url=url, precision="half", **kw)


def stored_columns(url: str, name: str) -> tuple[int, int, set[str]]:
    """(rows with a vector, rows with a halfvec, the types in embedding_half) of a collection."""
    row = sql_rows(
        url,
        "SELECT count(m.embedding), count(m.embedding_half), "
        "coalesce(array_agg(DISTINCT pg_typeof(m.embedding_half)::text) "
        "FILTER (WHERE m.embedding_half IS NOT NULL), '{}') "
        "FROM memorix.memories m JOIN memorix.collections c ON c.id = m.collection_id WHERE c.name = %s",
        (name,),
    )[0]
    return int(row[0]), int(row[1]), set(row[2])


def test_every_write_path_stores_halfvec_at_half_the_bytes(database_url: str) -> None:
    api = half_api(database_url)
    full = MemoryAPI(embedder=f"hash-{DIM}", collection_name="full", database_url=database_url)
    vectors = unit_vectors(600, DIM, seed=1)
    api.store("one by INSERT", {"i": -1})
    api.store_batch(
        [f"copy {i}" for i in range(300)], [{"i": i} for i in range(300)], embeddings=vectors[:300]
    )
    given = [str(uuid.uuid4()) for _ in range(300)]
    api.store_batch([f"upsert {i}" for i in range(300)], ids=given, embeddings=vectors[300:])
    api.store_batch([f"small {i}" for i in range(3)], ids=given[:3], embeddings=vectors[:3])  # INSERT upsert
    full.store_batch([f"copy {i}" for i in range(300)], embeddings=vectors[:300])
    assert stored_columns(database_url, "half") == (0, 601, {"halfvec"})
    assert stored_columns(database_url, "full") == (300, 0, set())
    sizes = dict(
        sql_rows(
            database_url,
            "SELECT c.name, avg(coalesce(pg_column_size(m.embedding), pg_column_size(m.embedding_half))) "
            "FROM memorix.memories m JOIN memorix.collections c ON c.id = m.collection_id GROUP BY c.name",
        )
    )
    # Datum sizes: a header of at most 8 bytes plus 2 (halfvec) or 4 (vector) bytes a dimension.
    assert 2 * DIM < float(sizes["half"]) <= 2 * DIM + 8, sizes
    assert 4 * DIM < float(sizes["full"]) <= 4 * DIM + 8, sizes
    # Values survive at half precision: the stored vector is the given one to ~1e-3.
    out = io.StringIO()
    export_jsonl(api, out)
    by_text = {r["text"]: r for r in map(json.loads, out.getvalue().splitlines())}
    assert np.allclose(by_text["copy 7"]["embedding"], vectors[7], atol=2e-3)
    assert np.allclose(by_text["small 1"]["embedding"], vectors[1], atol=2e-3)
    assert np.allclose(by_text["upsert 250"]["embedding"], vectors[550], atol=2e-3)


def test_search_on_half_storage_uses_its_index_and_finds_the_true_neighbours(database_url: str) -> None:
    api = half_api(database_url)
    n = 3000
    vectors = unit_vectors(n, DIM, seed=2)
    ids = api.store_batch([f"m {i}" for i in range(n)], [{"g": i % 10} for i in range(n)], embeddings=vectors)
    plan = sql_rows(
        database_url,
        "SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'memories_embedding_hnsw_%%'",
    )
    assert len(plan) == 1 and f"(embedding_half)::halfvec({DIM})" in plan[0][0], plan
    recalls = []
    for query in unit_vectors(20, DIM, seed=3):
        truth = [ids[i] for i in np.argsort(-(vectors @ query))[:K]]
        exact = api.retrieve(None, top_k=K, embedding=query, exact=True)
        assert len({h.id for h in exact} & set(truth)) >= 9  # float16 may swap near-ties
        walk = api.retrieve(None, top_k=K, embedding=query, exact=False)
        assert len(walk) == K
        recalls.append(len({h.id for h in walk} & set(truth)) / K)
        filtered = api.retrieve(None, top_k=K, embedding=query, filter={"g": 3})
        assert len(filtered) == K and all(h.metadata["g"] == 3 for h in filtered)
    assert np.mean(recalls) >= 0.95
    assert api.explain_retrieve(None, top_k=K, embedding=unit_vectors(1, DIM, seed=4)[0]).path == "hnsw"


def test_update_archive_compress_duplicates_and_import_keep_half_storage(
    database_url: str, tmp_path: Path
) -> None:
    api = half_api(database_url, "notes")
    first = api.store("the cat sat on the mat", {"session_id": "s", "kind": "chat"})
    api.store("the cat sat on the mat!", {"session_id": "s", "kind": "chat"})
    api.store("dogs bark at night", {"session_id": "s", "kind": "old"})
    updated = api.update(first, text="a cat sat on a mat")
    assert updated.text == "a cat sat on a mat"
    assert api.retrieve("a cat sat on a mat", top_k=1)[0].id == first
    assert api.find_duplicates(threshold=0.5)
    assert api.archive({"kind": "old"}, to="notes_archive") == 1
    assert stored_columns(database_url, "notes_archive") == (0, 1, {"halfvec"})
    report = api.compress(window=timedelta(days=1))
    assert report.windows == 1 and api.count() == 1
    assert stored_columns(database_url, "notes") == (0, 1, {"halfvec"})
    dump = tmp_path / "notes.jsonl"
    with dump.open("w") as out:
        export_jsonl(api, out)
    assert api.delete_by_filter({}) == 1
    assert import_jsonl(api, dump) == 1  # ids are global: the round trip goes back to its collection
    assert stored_columns(database_url, "notes") == (0, 1, {"halfvec"})
    with pytest.raises(Exception, match="precision"):
        MemoryAPI(
            embedder=f"hash-{DIM}", collection_name="notes", database_url=database_url, precision="full"
        )


def test_a_row_cannot_hold_both_or_neither_vector(database_url: str) -> None:
    api = half_api(database_url)
    api.store("x")
    for assignment in ("embedding = embedding_half::vector", "embedding_half = NULL"):
        with pytest.raises(Exception, match="memories_one_embedding_check"):
            sql_value(database_url, f"UPDATE memorix.memories SET {assignment} RETURNING 1")


def test_migration_0004_moves_older_half_collections_and_downgrade_moves_them_back(database_url: str) -> None:
    upgrade(database_url, "0003")
    sql_value(
        database_url,
        "INSERT INTO memorix.collections (name, embedder, dimension, distance, precision) "
        "VALUES ('old_half', 'hash-8', 8, 'cosine', 'half'), ('old_full', 'hash-8', 8, 'l2', 'full') "
        "RETURNING 1",
    )
    sql_value(
        database_url,
        "INSERT INTO memorix.memories (id, collection_id, text, embedding, content_hash) "
        "SELECT gen_random_uuid(), c.id, 'row ' || g, ARRAY[g, 1, 2, 0, 0, 0, 0, 0]::real[]::vector, '\\x00' "
        "FROM memorix.collections c, generate_series(1, 5) g RETURNING 1",
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE INDEX memories_embedding_hnsw_1 ON memorix.memories USING hnsw "
            "((embedding::halfvec(8)) halfvec_cosine_ops) WHERE collection_id = 1"
        )
    upgrade(database_url)
    assert stored_columns(database_url, "old_half") == (0, 5, {"halfvec"})
    assert stored_columns(database_url, "old_full") == (5, 0, set())
    index = sql_value(
        database_url, "SELECT indexdef FROM pg_indexes WHERE indexname = 'memories_embedding_hnsw_1'"
    )
    assert "(embedding_half)::halfvec(8)" in index and "halfvec_cosine_ops" in index
    api = MemoryAPI(embedder="hash-8", collection_name="old_half", database_url=database_url)
    hits = api.retrieve(None, top_k=2, embedding=[5.0, 1.0, 2.0, 0, 0, 0, 0, 0])
    assert hits[0].text == "row 5"
    downgrade(database_url, "0003")
    assert sql_value(database_url, "SELECT count(*) FROM memorix.memories WHERE embedding IS NOT NULL") == 10
    index = sql_value(
        database_url, "SELECT indexdef FROM pg_indexes WHERE indexname = 'memories_embedding_hnsw_1'"
    )
    assert "(embedding)::halfvec(8)" in index
