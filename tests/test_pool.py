"""A pool of one connection serves every call, the index maintenance included.

The index steps (the check at open, the build after a bulk load, create_index) run on an
administration connection; while the call has no transaction open they share its connection
instead of waiting for a second one that a pool of one never frees.
"""

from __future__ import annotations

from memorix_pg.writes import DEFER_INDEX_MIN_ROWS
from tests.support.helpers import sql_value, unit_vectors


def test_a_pool_of_one_connection_serves_every_call(make_api, database_url: str) -> None:  # type: ignore[no-untyped-def]
    api = make_api("single", pool_size=1, max_overflow=0, pool_timeout=5)
    rows = DEFER_INDEX_MIN_ROWS + 200  # a bulk load: index dropped, loaded, built again
    vectors = unit_vectors(rows, 384, seed=3)
    texts, metadatas = [f"memory {i}" for i in range(rows)], [{"i": i} for i in range(rows)]
    ids = api.store_batch(texts, metadatas, embeddings=vectors)
    assert api.count() == rows
    index = f"memories_embedding_hnsw_{api.collection_id}"
    assert sql_value(database_url, "SELECT count(*) FROM pg_indexes WHERE indexname = %s", (index,)) == 1
    hits = api.retrieve(None, top_k=5, embedding=vectors[7])
    assert hits[0].id == ids[7]
    assert api.create_index("i", "number")
    assert api.count({"i": {"$lt": 100}}) == 100
    again = make_api("single", pool_size=1, max_overflow=0, pool_timeout=5)  # opens: the index check
    assert again.get(ids[0]) is not None
