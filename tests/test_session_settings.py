"""The library's own connections keep the planner costs and the commonest walk's HNSW settings
for the session: an unfiltered search at the planner's floor goes out as one statement, and a
search that needs other values sets them for its transaction alone."""

from __future__ import annotations

from typing import Any

from memorix_pg import MemoryAPI
from memorix_pg.connections import SESSION_SETTINGS, PoolOptions, sync_source
from memorix_pg.planner import EF_MIN
from memorix_pg.runner import watch_statements
from memorix_pg.search import MAX_SCAN_TUPLES
from tests.support.helpers import unit_vectors

ROWS = 1500  # above EXACT_ROWS: an unfiltered search walks the graph


def _session(database_url: str) -> dict[str, str]:
    """The settings a connection of the library's default pool for ``database_url`` has now."""
    source = sync_source(database_url, PoolOptions())
    conn = source.acquire()
    try:
        names = ("hnsw.ef_search", "hnsw.iterative_scan", "hnsw.max_scan_tuples", "random_page_cost")
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in names}  # type: ignore[index]
    finally:
        source.release(conn)


def test_the_session_holds_the_floor_of_an_unfiltered_walk() -> None:
    settings = dict(SESSION_SETTINGS)
    assert settings["hnsw.ef_search"] == str(EF_MIN)
    assert settings["hnsw.max_scan_tuples"] == str(MAX_SCAN_TUPLES)
    assert settings["hnsw.iterative_scan"] == "off"


def test_an_unfiltered_search_is_one_statement_and_other_settings_last_one_transaction(
    make_api: Any, database_url: str
) -> None:
    api = make_api("session")
    vectors = unit_vectors(ROWS, 384, seed=5)
    api.store_batch([f"m{i}" for i in range(ROWS)], embeddings=vectors)
    api.retrieve(None, 5, embedding=vectors[0])  # the first search also reads the planner's sample

    with watch_statements(database_url) as sent:
        first = api.retrieve(None, 5, embedding=vectors[1])
    assert len(sent) == 1, sent
    assert sent[0][0].lstrip().upper().startswith(("SELECT", "WITH")), sent[0][0]
    assert api.explain_retrieve(None, 5, embedding=vectors[1]).ef_search == EF_MIN
    assert first[0].id == api.retrieve(None, 5, embedding=vectors[1], exact=True)[0].id

    with watch_statements(database_url) as sent:
        api.retrieve(None, 5, embedding=vectors[2], ef_search=300)
    texts = [text for text, _ in sent]
    assert texts[0] == "BEGIN" and texts[-1] == "COMMIT", texts
    assert any("SET LOCAL" in t and "ef_search" in t and "'300'" in t for t in texts), texts


def test_a_pooled_connection_is_back_at_the_session_values_after_a_search_that_set_others(
    database_url: str,
) -> None:
    api = MemoryAPI(embedder="hash", collection_name="session", database_url=database_url)
    vectors = unit_vectors(ROWS, 384, seed=7)
    halves = [{"half": i % 2} for i in range(ROWS)]
    api.store_batch([f"m{i}" for i in range(ROWS)], halves, embeddings=vectors)
    api.retrieve(None, 5, embedding=vectors[0], ef_search=300)
    api.retrieve(None, 5, {"half": 1}, embedding=vectors[1], exact=False)
    assert _session(database_url) == {
        "hnsw.ef_search": "100",
        "hnsw.iterative_scan": "off",
        "hnsw.max_scan_tuples": "20000",
        "random_page_cost": "1.1",
    }


def test_a_filtered_walk_sets_its_iterative_scan_for_its_transaction(
    make_api: Any, database_url: str
) -> None:
    api = make_api("walks")
    n = 3000  # enough matching rows that the planner walks the graph rather than scan them
    vectors = unit_vectors(n, 384, seed=6)
    api.store_batch([f"m{i}" for i in range(n)], [{"half": i % 2} for i in range(n)], embeddings=vectors)
    plan = api.explain_retrieve(None, 5, {"half": 1}, embedding=vectors[1])
    assert plan.path == "hnsw", plan
    with watch_statements(database_url) as sent:
        results = api.retrieve(None, 5, {"half": 1}, embedding=vectors[1])
    texts = [text for text, _ in sent]
    assert any("iterative_scan" in t and "relaxed_order" in t for t in texts), texts
    assert texts[0] == "BEGIN" and texts[-1] == "COMMIT", texts
    assert results[0].id == api.retrieve(None, 5, {"half": 1}, embedding=vectors[1], exact=True)[0].id
