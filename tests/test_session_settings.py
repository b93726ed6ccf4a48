"""The library's own connections keep the planner costs and the HNSW settings of the last
one-statement search for the session: a search whose values the session holds goes out as one
statement, one with other values sets them in the same round trip, and the values the library
believes a connection holds are always those the server has."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from memorix_pg import MemoryAPI
from memorix_pg.connections import SESSION_NAMES, SESSION_SETTINGS, PoolOptions, session_values, sync_source
from memorix_pg.planner import EF_MIN
from memorix_pg.runner import SyncRunner, watch_statements
from memorix_pg.search import MAX_SCAN_TUPLES
from memorix_pg.steps import Batch, Call, Operation, Query, Result
from tests.support.helpers import unit_vectors

ROWS = 1500  # above EXACT_ROWS: an unfiltered search walks the graph


def _server_and_tracked(database_url: str) -> tuple[dict[str, str], dict[str, str]]:
    """The session settings of the default pool's most recently used connection, as the server
    has them and as the library tracks them."""
    source = sync_source(database_url, PoolOptions())
    conn = source.acquire()
    try:
        server = {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in SESSION_NAMES}  # type: ignore[index]
        tracked = session_values(conn)
        assert tracked is not None  # the library's own pool keeps session settings
        return server, dict(tracked)
    finally:
        source.release(conn)


def _texts(sent: list[tuple[str, Any]]) -> list[str]:
    return [text for text, _ in sent]


def test_the_session_starts_at_the_floor_of_an_unfiltered_walk() -> None:
    settings = dict(SESSION_SETTINGS)
    assert settings["hnsw.ef_search"] == str(EF_MIN)
    assert settings["hnsw.max_scan_tuples"] == str(MAX_SCAN_TUPLES)
    assert settings["hnsw.iterative_scan"] == "off"


def test_a_search_sets_what_the_session_lacks_once_then_goes_out_alone(
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
    texts = _texts(sent)
    assert len(texts) == 2 and texts[0].startswith("SET ") and "'300'" in texts[0], texts
    assert "BEGIN" not in texts and not any("SET LOCAL" in t for t in texts), texts
    with watch_statements(database_url) as sent:
        api.retrieve(None, 5, embedding=vectors[3], ef_search=300)
    assert len(sent) == 1, sent
    with watch_statements(database_url) as sent:
        again = api.retrieve(None, 5, embedding=vectors[1])
    texts = _texts(sent)
    assert len(texts) == 2 and "ef_search" in texts[0] and f"'{EF_MIN}'" in texts[0], texts
    assert [m.id for m in again] == [m.id for m in first]


def test_the_tracked_session_is_the_server_s_after_walks_of_every_kind(database_url: str) -> None:
    api = MemoryAPI(embedder="hash", collection_name="session", database_url=database_url)
    vectors = unit_vectors(ROWS, 384, seed=7)
    halves = [{"half": i % 2} for i in range(ROWS)]
    api.store_batch([f"m{i}" for i in range(ROWS)], halves, embeddings=vectors)
    searches: list[dict[str, Any]] = [
        {"ef_search": 300},
        {"filter": {"half": 1}, "exact": False},
        {},
        {"filter": {"half": 0}, "exact": False, "ef_search": 150},
        {"exact": True},
        {"ef_search": 120},
    ]
    for j, options in enumerate(searches):
        api.retrieve(None, 5, embedding=vectors[j], **options)
        server, tracked = _server_and_tracked(database_url)
        assert tracked.items() <= server.items(), (options, tracked, server)
    assert server["hnsw.ef_search"] == "120"
    api.close()


def _failing(settings: tuple[tuple[str, str], ...]) -> Call[list[Result]]:
    def make() -> Operation[list[Result]]:
        results: list[Result] = yield Batch((Query(b"SELECT 1 / 0"),), True, settings)
        return results

    return Call(make)


def test_a_failed_statement_undoes_its_set_and_the_library_knows_it(database_url: str) -> None:
    source = sync_source(database_url, PoolOptions())
    runner = SyncRunner(source, database_url)
    with watch_statements(database_url) as sent, pytest.raises(psycopg.errors.DivisionByZero):
        runner.run(_failing((("hnsw.ef_search", "123"),)))
    assert any("'123'" in text for text in _texts(sent)), sent
    server, tracked = _server_and_tracked(database_url)
    assert server["hnsw.ef_search"] != "123"
    assert tracked.items() <= server.items()
    with watch_statements(database_url) as sent, pytest.raises(psycopg.errors.DivisionByZero):
        runner.run(_failing((("hnsw.ef_search", "123"),)))
    assert any("'123'" in text for text in _texts(sent)), sent  # unknown, so set again


def test_a_transaction_that_set_a_value_sets_the_session_s_back_when_a_later_batch_needs_it(
    database_url: str,
) -> None:
    def make() -> Operation[list[str]]:
        shown = []
        for ef, final in (("200", False), (str(EF_MIN), False), ("300", True)):
            results = yield Batch((Query(b"SHOW hnsw.ef_search"),), final, (("hnsw.ef_search", ef),))
            shown.append(str(results[0].rows[0][0]))
        return shown

    runner = SyncRunner(sync_source(database_url, PoolOptions()), database_url)
    assert runner.run(Call(make)) == ["200", str(EF_MIN), "300"]
    server, tracked = _server_and_tracked(database_url)
    assert server["hnsw.ef_search"] == tracked["hnsw.ef_search"] == str(EF_MIN)  # LOCAL values ended


def test_a_filtered_walk_sets_its_iterative_scan_for_its_transaction(
    make_api: Any, database_url: str
) -> None:
    """A filtered walk also checks the sample's candidates: two statements, one transaction."""
    api = make_api("walks")
    n = 3000  # enough matching rows that the planner walks the graph rather than scan them
    vectors = unit_vectors(n, 384, seed=6)
    api.store_batch([f"m{i}" for i in range(n)], [{"half": i % 2} for i in range(n)], embeddings=vectors)
    plan = api.explain_retrieve(None, 5, {"half": 1}, embedding=vectors[1])
    assert plan.path == "hnsw", plan
    with watch_statements(database_url) as sent:
        results = api.retrieve(None, 5, {"half": 1}, embedding=vectors[1])
    texts = _texts(sent)
    assert any(t.startswith("SET LOCAL") and "iterative_scan" in t and "relaxed_order" in t for t in texts), (
        texts
    )
    assert texts[0] == "BEGIN" and texts[-1] == "COMMIT", texts
    assert results[0].id == api.retrieve(None, 5, {"half": 1}, embedding=vectors[1], exact=True)[0].id


def test_a_borrowed_connection_s_session_is_left_as_it_was(database_url: str) -> None:
    def show(pool: ConnectionPool[Any]) -> list[dict[str, str]]:
        conns = [pool.getconn() for _ in range(2)]
        try:
            for conn in conns:  # pgvector's settings exist once its library is loaded
                conn.execute("SELECT '[1]'::vector")
            return [
                {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in SESSION_NAMES}
                for conn in conns
            ]
        finally:
            for conn in conns:
                pool.putconn(conn)

    with ConnectionPool(database_url, min_size=2, max_size=2, open=True) as pool:
        api = MemoryAPI(
            embedder="hash", collection_name="borrowed_session", database_url=database_url, pool=pool
        )
        vectors = unit_vectors(ROWS, 384, seed=8)
        api.store_batch([f"m{i}" for i in range(ROWS)], embeddings=vectors)
        before = show(pool)
        with watch_statements(database_url) as sent:
            api.retrieve(None, 5, embedding=vectors[0], ef_search=300)
        assert any("SET LOCAL" in t and "'300'" in t for t in _texts(sent)), sent
        assert show(pool) == before
        api.drop()
