"""What only the async API (and the shared core under it) can show: cancellation, concurrency,
prepared statements keeping custom plans, and pools that survive a fork."""

from __future__ import annotations

import asyncio
import multiprocessing
import os

import numpy as np
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from memorix_pg import AsyncMemoryAPI, MemoryAPI
from memorix_pg.errors import DatabaseUnavailable
from memorix_pg.runner import watch_statements
from tests.support.helpers import CountingEmbedder, sql_value, unit_vectors


class SlowEmbedder(CountingEmbedder):
    """Embeds slowly, so a call can be cancelled while its transaction is open (or, a deduplicating
    store embedding after its lock, holds its connection meanwhile)."""

    def __init__(self, dim: int = 32, delay: float = 0.05, per_text: float = 0.0004) -> None:
        super().__init__(dim)
        self.delay = delay
        self.per_text = per_text  # a 3,000-text load takes ~1.2 s however it is split into calls

    def embed(self, texts):  # type: ignore[no-untyped-def]
        import time

        time.sleep(self.delay + self.per_text * len(texts))
        return super().embed(texts)


def test_a_cancelled_store_batch_leaves_nothing_and_the_connection_clean(database_url: str) -> None:
    async def scenario() -> tuple[int, int]:
        memory = AsyncMemoryAPI(
            embedder=SlowEmbedder(16), collection_name="cancel", database_url=database_url
        )
        await memory.store("before")
        texts = [f"text {i}" for i in range(3000)]  # several overlapped chunks, each embedded slowly
        task = asyncio.create_task(memory.store_batch(texts))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await memory.store_batch(texts)
        return await memory.count(), len(await memory.retrieve("before", 5))

    count, found = asyncio.run(scenario())
    assert count == 1 and found == 1
    assert sql_value(database_url, "SELECT count(*) FROM memorix.memories") == 1
    busy = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'memorix-pg' AND state <> 'idle'"
    assert sql_value(database_url, busy) == 0


def test_concurrent_retrieves_each_get_their_own_neighbours(database_url: str) -> None:
    vectors = unit_vectors(500, 16, seed=3)

    async def scenario() -> tuple[list[str], list[str]]:
        memory = AsyncMemoryAPI(
            embedder=CountingEmbedder(16), collection_name="many", database_url=database_url
        )
        ids = await memory.store_batch([f"m{i}" for i in range(500)], embeddings=vectors)
        results = await asyncio.gather(*(memory.retrieve(None, 1, embedding=vectors[i]) for i in range(32)))
        return ids[:32], [r[0].id for r in results]

    expected, got = asyncio.run(scenario())
    assert got == expected


def test_prepared_statements_keep_custom_plans(database_url: str) -> None:
    """After many runs of one statement PostgreSQL would switch to a generic plan that cannot
    see the filter's value; the library's connections force custom plans, and EXPLAIN of the
    prepared statement, with the values a call binds, shows the GIN index."""
    # Two connections: a call may hold a second one for index maintenance.
    with ConnectionPool(database_url, min_size=2, max_size=2, open=True) as pool:
        memory = MemoryAPI(embedder="hash", collection_name="plans", database_url=database_url, pool=pool)
        metas = [{"kind": "rare" if i == 7 else "common"} for i in range(3000)]
        memory.store_batch([f"t{i}" for i in range(3000)], metas, embeddings=unit_vectors(3000, 384))
        with pool.connection() as conn:
            conn.execute("ANALYZE memorix.memories")
        with watch_statements(database_url) as sent:
            for _ in range(12):
                assert memory.count({"kind": "rare"}) == 1
        text, params = sent[-1]
        assert "count(" in text
        conns = [pool.getconn(), pool.getconn()]
        try:
            stats = [
                row
                for conn in conns
                for row in conn.execute(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                    "WHERE statement LIKE 'SELECT count(*)%%' AND statement LIKE '%%metadata @>%%'",
                ).fetchall()
            ]
            assert stats, "the count statement was prepared"
            assert sum(g for g, _ in stats) == 0 and sum(c for _, c in stats) >= 12
            conn = conns[0]
            conn.execute("SET plan_cache_mode = force_generic_plan")
            conn.execute("PREPARE memorix_probe AS " + _positional(text, params))
            conn.execute("SET plan_cache_mode = force_custom_plan")
            explain = psycopg.sql.SQL("EXPLAIN EXECUTE memorix_probe({})").format(
                psycopg.sql.SQL(", ").join(psycopg.sql.Literal(v) for v in params.values())
            )
            plan = "\n".join(r[0] for r in conn.execute(explain).fetchall())
        finally:
            for conn in conns:
                pool.putconn(conn)
        assert "memories_metadata_gin_idx" in plan, plan


def _positional(text: str, params: dict[str, object]) -> str:
    """``%(name)s`` placeholders as ``$1, $2, ...`` in the order of ``params``, for PREPARE."""
    for n, name in enumerate(params, start=1):
        text = text.replace(f"%({name})s", f"${n}")
    return text.replace("%%", "%")


def _count_in_child(url: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    memory = MemoryAPI(embedder="hash", collection_name="fork", database_url=url)
    queue.put((os.getpid(), memory.count()))


def test_a_forked_child_gets_its_own_connections(database_url: str) -> None:
    memory = MemoryAPI(embedder="hash", collection_name="fork", database_url=database_url)
    memory.store_batch(["a", "b"], embeddings=np.eye(384, dtype=np.float32)[:2])
    assert memory.count() == 2  # the parent's pool now holds a connection
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_count_in_child, args=(database_url, queue)) for _ in range(2)]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert [n for _, n in results] == [2, 2]
    # The parent's pooled connection was never used by a child: it still works.
    memory.store("c")
    assert memory.count() == 3


def test_a_users_pool_or_engine_serves_the_calls(database_url: str) -> None:
    import sqlalchemy as sa
    from psycopg_pool import AsyncConnectionPool

    from memorix_pg.database import sqlalchemy_url

    engine = sa.create_engine(sqlalchemy_url(database_url))
    memory = MemoryAPI(embedder="hash", collection_name="borrowed", database_url=database_url, pool=engine)
    memory.store("kept in the user's engine")
    with engine.connect() as conn:  # the engine's connections come back usable, in a transaction as before
        assert conn.execute(sa.text("SELECT count(*) FROM memorix.memories")).scalar() == 1
        assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]
    engine.dispose()

    async def scenario() -> int:
        async with AsyncConnectionPool(database_url, min_size=2, max_size=2, open=False) as pool:
            async with AsyncMemoryAPI(
                embedder="hash", collection_name="borrowed", database_url=database_url, pool=pool
            ) as memory:
                await memory.store("and in the user's async pool")
                return await memory.count()

    assert asyncio.run(scenario()) == 2


def test_a_call_that_finds_no_free_connection_in_time_says_so(database_url: str) -> None:
    async def scenario() -> str:
        async with AsyncMemoryAPI(
            embedder=SlowEmbedder(delay=1.0),  # holds the store's connection for a second
            collection_name="crowded",
            database_url=database_url,
            dedupe=True,
            pool_size=1,
            max_overflow=0,
            pool_timeout=0.3,
        ) as memory:
            slow = asyncio.create_task(memory.store_batch(["holds the only connection"]))
            await asyncio.sleep(0.3)
            with pytest.raises(DatabaseUnavailable, match=r"within 0.3 s \(pool_size=1, max_overflow=0\)"):
                await memory.count()
            await slow
            return str(await memory.count())  # the pool serves again once the connection is back

    assert asyncio.run(scenario()) == "1"
