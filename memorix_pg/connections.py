"""Where connections come from: the library's own pools, or a pool or engine the user passes in.

By default one pool per process, URL and pool options is shared by every ``MemoryAPI`` (one
per user, say). A pool hands out psycopg connections in autocommit mode: the operations send
their own ``BEGIN`` in the same pipeline as their statements (see steps.py).

* **No ping.** A connection taken from the pool is checked by polling its socket (no round
  trip): a server that closed it has sent a termination message or EOF, which makes the socket
  readable while the connection is idle. A connection that dies later fails its call, which
  the runner retries once when the call is idempotent.
* **Custom plans.** Statements are prepared server-side, and every connection runs with
  ``plan_cache_mode = force_custom_plan``: after five executions PostgreSQL may otherwise switch
  a prepared statement to a generic plan that cannot see the filter's values (measured earlier:
  30-190 ms sequential scans instead of 1-3 ms through the GIN/btree indexes).
* **Fork safety.** A pool belongs to the process that made it. After ``fork`` (gunicorn,
  multiprocessing) the child gets a pool of its own and never touches the parent's sockets
  (psycopg does not close a connection from a process other than the one that opened it).
* A connection is configured once, on first use: the pgvector types and the query-vector
  dumper are registered on it, not globally.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types import TypeInfo

from .errors import ConfigurationError, DatabaseUnavailable
from .query_vector import register_query_vector
from .steps import set_session

__all__ = [
    "AsyncSource",
    "PoolOptions",
    "SyncSource",
    "async_source",
    "close_pools",
    "session_values",
    "sync_source",
]

CONFIGURE_SQL = b"SET plan_cache_mode = force_custom_plan"
# The planner costs searches run with (measured in search.py) ...
PLANNER_COSTS = (("cpu_index_tuple_cost", "0.05"), ("random_page_cost", "1.1"))
# ... and the HNSW settings of the commonest search, an unfiltered walk at the planner's floor
# (planner.EF_MIN; MAX_SCAN_TUPLES in search.py). The library's own connections start their
# session with both, and each remembers the values it holds (session_values): a search that is
# one statement sets what differs at session level in the same round trip (``SET`` + the
# statement in one pipeline, an implicit transaction) and the next search with the same values
# is the statement alone (5 statements in a pipeline -> 1: 0.1-0.2 ms less per search at 20k).
# The session keeps the values until another search changes them: a walk whose floor the
# planner raised, or a filtered walk repeated, costs one statement too. Searches inside a longer
# transaction set theirs with SET LOCAL. A borrowed connection gets them per transaction,
# leaving the user's session as it was, and so does every connection to a Citus coordinator,
# which hands its shards SET LOCAL only.
WALK_DEFAULTS = (("hnsw.ef_search", "100"), ("hnsw.iterative_scan", "off"), ("hnsw.max_scan_tuples", "20000"))
SESSION_SETTINGS = frozenset(PLANNER_COSTS + WALK_DEFAULTS)
SESSION_NAMES = frozenset(name for name, _ in SESSION_SETTINGS)  # the settings a session may hold
# set_session composes each SET as bytes (steps.py): one string of all five, sent once per connection.
_SESSION_SQL = b"; ".join(
    cast(bytes, set_session(name, value).text) for name, value in sorted(SESSION_SETTINGS)
)
_CITUS_SQL = b"SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')"


@dataclass(frozen=True)
class PoolOptions:
    """``pool_size`` connections are kept open, up to ``max_overflow`` more are opened under load;
    a call waits at most ``pool_timeout`` seconds for a free one, ``connect_timeout`` to open one."""

    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout: float = 30.0
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("pool_size", "max_overflow"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{name} must be an int >= 0, got {value!r}")
        if self.pool_size + self.max_overflow < 1:
            raise ConfigurationError("pool_size + max_overflow must allow at least one connection")
        for name in ("pool_timeout", "connect_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")


# -- configuring a connection once --------------------------------------------------------------

_configured: weakref.WeakSet[Any] = weakref.WeakSet()
# Per library-owned connection: the SESSION_NAMES values it holds now. A name is absent while a
# change is in flight (a failed or cancelled statement may have undone it): absent is resent.
_session: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def session_values(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> dict[str, str] | None:
    """The session settings ``conn`` holds, to update as they change; None when it takes every
    setting per transaction (a borrowed connection, a Citus coordinator)."""
    return _session.get(conn)


def _register_types(conn: psycopg.Connection[Any], infos: list[TypeInfo | None]) -> None:
    from pgvector.psycopg.halfvec import register_halfvec_info
    from pgvector.psycopg.vector import register_vector_info

    vector, halfvec = infos
    if vector is not None:
        register_vector_info(conn, vector)
    if halfvec is not None:
        register_halfvec_info(conn, halfvec)


def configure(conn: psycopg.Connection[Any], session: bool = False) -> None:
    """Register the types on ``conn``; with ``session``, start its session with SESSION_SETTINGS
    unless the server is a Citus coordinator."""
    if conn in _configured:
        return
    register_query_vector(conn)
    conn.execute(CONFIGURE_SQL)
    if session and not _scalar(conn.execute(_CITUS_SQL).fetchone()):
        conn.execute(_SESSION_SQL)
        _session[conn] = dict(SESSION_SETTINGS)
    infos = [TypeInfo.fetch(conn, "vector"), TypeInfo.fetch(conn, "halfvec")]
    _register_types(conn, infos)
    if infos[0] is not None:  # before the first migration there is no vector type yet
        _configured.add(conn)


async def configure_async(conn: psycopg.AsyncConnection[Any], session: bool = False) -> None:
    if conn in _configured:
        return
    register_query_vector(conn)
    await conn.execute(CONFIGURE_SQL)
    if session and not _scalar(await (await conn.execute(_CITUS_SQL)).fetchone()):
        await conn.execute(_SESSION_SQL)
        _session[conn] = dict(SESSION_SETTINGS)
    infos = [await TypeInfo.fetch(conn, "vector"), await TypeInfo.fetch(conn, "halfvec")]
    _register_types(conn, infos)  # type: ignore[arg-type]
    if infos[0] is not None:
        _configured.add(conn)


def _scalar(row: tuple[Any, ...] | None) -> Any:
    return None if row is None else row[0]


def looks_alive(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """True unless the connection is closed, mid-transaction, or its server has hung up (no round trip)."""
    if conn.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _discard(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Close a connection we will not reuse (sync close: it only sends a Terminate message)."""
    try:
        conn.pgconn.finish()
    except Exception:
        pass


OVERFLOW_IDLE_SECONDS = 30.0


def _expired(idle: list[tuple[Any, float]], keep: int) -> list[Any]:
    """Take out of ``idle`` the connections past ``keep`` that were unused for OVERFLOW_IDLE_SECONDS.

    Overflow connections stay open while the load lasts: closing each one as soon as it comes
    back would make every call under load open a connection (~5 ms) of its own.
    """
    cutoff = time.monotonic() - OVERFLOW_IDLE_SECONDS
    expired = []
    while len(idle) > keep and idle[0][1] < cutoff:
        expired.append(idle.pop(0)[0])
    return expired


def _pool_exhausted(options: PoolOptions) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"no database connection became free within {options.pool_timeout:g} s "
        f"(pool_size={options.pool_size}, max_overflow={options.max_overflow}); raise pool_timeout "
        "or the pool's size, or close MemoryAPI objects you no longer use"
    )


# -- sources --------------------------------------------------------------------------------------


class SyncSource:
    """Where a sync runner takes connections from and gives them back."""

    def acquire(self) -> psycopg.Connection[Any]:
        raise NotImplementedError

    def release(self, conn: psycopg.Connection[Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close what this source owns (nothing, for a pool the user passed in)."""


class AsyncSource:
    async def acquire(self) -> psycopg.AsyncConnection[Any]:
        raise NotImplementedError

    async def release(self, conn: psycopg.AsyncConnection[Any]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Close what this source owns."""


class _Pool(SyncSource):
    def __init__(self, url: str, options: PoolOptions) -> None:
        self.url = url
        self.options = options
        self.pid = os.getpid()
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []  # most recently used last
        self._slots = threading.BoundedSemaphore(options.pool_size + options.max_overflow)
        self._lock = threading.Lock()

    def acquire(self) -> psycopg.Connection[Any]:
        if not self._slots.acquire(timeout=self.options.pool_timeout):
            raise _pool_exhausted(self.options)
        try:
            while True:
                with self._lock:
                    conn = self._idle.pop()[0] if self._idle else None
                if conn is None:
                    break
                if looks_alive(conn):
                    return conn
                _discard(conn)
            conn = psycopg.Connection.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, round(self.options.connect_timeout)),
                application_name="memorix-pg",
            )
            configure(conn, session=True)
            return conn
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: psycopg.Connection[Any]) -> None:
        try:
            if conn.closed or conn.broken:
                return
            if conn.info.transaction_status != TransactionStatus.IDLE:
                _discard(conn)
                return
            with self._lock:
                self._idle.append((conn, time.monotonic()))
                expired = _expired(self._idle, self.options.pool_size)
            for old in expired:
                old.close()
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


class _AsyncPool(AsyncSource):
    def __init__(self, url: str, options: PoolOptions) -> None:
        self.url = url
        self.options = options
        self.pid = os.getpid()
        self._idle: list[tuple[psycopg.AsyncConnection[Any], float]] = []
        self._slots = asyncio.BoundedSemaphore(options.pool_size + options.max_overflow)

    async def acquire(self) -> psycopg.AsyncConnection[Any]:
        if self._slots.locked():  # a deadline only when waiting (asyncio.timeout: no extra task)
            try:
                async with asyncio.timeout(self.options.pool_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise _pool_exhausted(self.options) from None
        else:
            await self._slots.acquire()  # a free slot: taken at once
        try:
            while self._idle:
                conn = self._idle.pop()[0]
                if looks_alive(conn):
                    return conn
                _discard(conn)
            conn = await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, round(self.options.connect_timeout)),
                application_name="memorix-pg",
            )
            await configure_async(conn, session=True)
            return conn
        except BaseException:
            self._slots.release()
            raise

    async def release(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            if conn.closed or conn.broken:
                return
            if conn.info.transaction_status != TransactionStatus.IDLE:
                _discard(conn)
                return
            self._idle.append((conn, time.monotonic()))
            for old in _expired(self._idle, self.options.pool_size):
                await old.close()
        finally:
            self._slots.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()

    def discard_idle(self) -> None:
        """Close the idle connections without awaiting (their event loop may be gone)."""
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            _discard(conn)


class _Borrowed(SyncSource):
    """A psycopg_pool.ConnectionPool or SQLAlchemy Engine of the user's: autocommit while we hold it."""

    def __init__(self, get: Callable[[], tuple[psycopg.Connection[Any], Callable[[], None]]]) -> None:
        self._get = get
        self._returns: dict[int, tuple[Callable[[], None], bool]] = {}

    def acquire(self) -> psycopg.Connection[Any]:
        conn, give_back = self._get()
        was = conn.autocommit
        if conn.info.transaction_status == TransactionStatus.INTRANS:
            conn.rollback()
        conn.autocommit = True
        configure(conn)
        self._returns[id(conn)] = (give_back, was)
        return conn

    def release(self, conn: psycopg.Connection[Any]) -> None:
        give_back, was = self._returns.pop(id(conn))
        try:
            if not (conn.closed or conn.broken) and conn.info.transaction_status == TransactionStatus.IDLE:
                conn.autocommit = was
        finally:
            give_back()


class _AsyncBorrowed(AsyncSource):
    def __init__(
        self, get: Callable[[], Awaitable[tuple[psycopg.AsyncConnection[Any], Callable[[], Awaitable[None]]]]]
    ) -> None:
        self._get = get
        self._returns: dict[int, tuple[Callable[[], Awaitable[None]], bool]] = {}

    async def acquire(self) -> psycopg.AsyncConnection[Any]:
        conn, give_back = await self._get()
        was = conn.autocommit
        if conn.info.transaction_status == TransactionStatus.INTRANS:
            await conn.rollback()
        await conn.set_autocommit(True)
        await configure_async(conn)
        self._returns[id(conn)] = (give_back, was)
        return conn

    async def release(self, conn: psycopg.AsyncConnection[Any]) -> None:
        give_back, was = self._returns.pop(id(conn))
        try:
            if not (conn.closed or conn.broken) and conn.info.transaction_status == TransactionStatus.IDLE:
                await conn.set_autocommit(was)
        finally:
            await give_back()


def _borrow(pool_or_engine: Any) -> SyncSource:
    from psycopg_pool import ConnectionPool

    if isinstance(pool_or_engine, ConnectionPool):
        pool = pool_or_engine

        def from_pool() -> tuple[psycopg.Connection[Any], Callable[[], None]]:
            conn = pool.getconn()
            return conn, lambda: pool.putconn(conn)

        return _Borrowed(from_pool)
    import sqlalchemy as sa

    if isinstance(pool_or_engine, sa.Engine):
        engine = pool_or_engine
        if engine.dialect.driver != "psycopg":
            raise ConfigurationError(
                f"the engine uses the {engine.dialect.driver!r} driver; memorix-pg needs postgresql+psycopg"
            )

        def from_engine() -> tuple[psycopg.Connection[Any], Callable[[], None]]:
            raw = engine.raw_connection()
            return raw.driver_connection, raw.close  # type: ignore[return-value]

        return _Borrowed(from_engine)
    raise ConfigurationError(
        "pool must be a psycopg_pool.ConnectionPool or a SQLAlchemy Engine, "
        f"got {type(pool_or_engine).__name__}"
    )


def _borrow_async(pool_or_engine: Any) -> AsyncSource:
    from psycopg_pool import AsyncConnectionPool

    if isinstance(pool_or_engine, AsyncConnectionPool):
        pool = pool_or_engine

        async def from_pool() -> tuple[psycopg.AsyncConnection[Any], Callable[[], Awaitable[None]]]:
            conn = await pool.getconn()
            return conn, lambda: pool.putconn(conn)

        return _AsyncBorrowed(from_pool)
    from sqlalchemy.ext.asyncio import AsyncEngine

    if isinstance(pool_or_engine, AsyncEngine):
        engine = pool_or_engine

        async def from_engine() -> tuple[psycopg.AsyncConnection[Any], Callable[[], Awaitable[None]]]:
            raw = await engine.raw_connection()
            conn = raw.driver_connection

            async def give_back() -> None:
                raw.close()

            return conn, give_back  # type: ignore[return-value]

        return _AsyncBorrowed(from_engine)
    raise ConfigurationError(
        "pool must be a psycopg_pool.AsyncConnectionPool or a SQLAlchemy AsyncEngine, "
        f"got {type(pool_or_engine).__name__}"
    )


# -- the shared pools -----------------------------------------------------------------------------

_pools: dict[tuple[Any, ...], Any] = {}
_pools_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # The parent's connections stay open in the parent: forget them without closing.
    _pools.clear()
    _configured.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def sync_source(url: str, options: PoolOptions, pool: Any = None) -> SyncSource:
    """The user's pool or engine, else the process's shared pool for (url, options)."""
    if pool is not None:
        return _borrow(pool)
    key = ("sync", url, options)
    with _pools_lock:
        found = _pools.get(key)
        if found is None:
            found = _pools[key] = _Pool(url, options)
    return found


def async_source(url: str, options: PoolOptions, pool: Any = None) -> AsyncSource:
    """As :func:`sync_source`, one shared pool per event loop (asyncio objects belong to one loop)."""
    if pool is not None:
        return _borrow_async(pool)
    key = ("async", url, options, id(asyncio.get_running_loop()))
    with _pools_lock:
        found = _pools.get(key)
        if found is None or found.loop_closed():
            found = _pools[key] = _LoopPool(url, options)
    return found.pool


class _LoopPool:
    def __init__(self, url: str, options: PoolOptions) -> None:
        self.pool = _AsyncPool(url, options)
        self.loop = weakref.ref(asyncio.get_running_loop())

    def loop_closed(self) -> bool:
        loop = self.loop()
        return loop is None or loop.is_closed()


def close_pools(url: str | None = None) -> None:
    """Close the shared sync pools (of ``url``, or all); async pools close with their loop's objects."""
    with _pools_lock:
        keys = [k for k in _pools if url is None or k[1] == url]
        found = [_pools.pop(k) for k in keys]
    for item in found:
        if isinstance(item, _Pool):
            item.close()
        else:
            item.pool.discard_idle()
