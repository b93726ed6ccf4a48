"""Running operations (steps.py) on real connections: transactions, pipelines, errors, retries.

The sync and the async runner differ only in ``await``: each drives the same generator, sends
``BEGIN``, the ``SET LOCAL`` settings and a batch's statements in one pipeline (one round trip),
commits with the batch the operation marks final, rolls back on any error or cancellation, and
translates the database's errors into the library's own by psycopg's error classes. A call
that is one statement goes out alone, in its own implicit transaction; on the library's own
connections its settings are session ``SET``s in the same pipeline, sent only when the
connection's session holds other values.

A connection that turns out dead is replaced and the call run again once, when that is safe:
always when no connection could be opened (nothing was sent), otherwise only for idempotent
calls (reads). A dead embedded server is started again first.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.pq import TransactionStatus

from .connections import SESSION_NAMES, AsyncSource, SyncSource, session_values
from .database import libpq_url, redact_url, unavailable
from .errors import CollectionNotFound, FilterError, MemorixError, PermissionDenied
from .steps import (
    Admin,
    Batch,
    Call,
    Copy,
    Offload,
    Operation,
    Query,
    Result,
    Rollback,
    Step,
    set_local,
    set_session,
)

__all__ = ["AsyncRunner", "SyncRunner", "translate", "watch_statements"]

T = TypeVar("T")
C = TypeVar("C", psycopg.Connection[Any], psycopg.AsyncConnection[Any])

# The foreign key from a memory to its collection (migration 0001's name): a write into a
# collection that another object dropped breaks it.
COLLECTION_KEY = "memories_collection_id_fkey"
_BEGIN = Query(b"BEGIN")
_COMMIT = Query(b"COMMIT")
_ROLLBACK = Query(b"ROLLBACK")
_LOST_CLASSES = (
    pg_errors.AdminShutdown,
    pg_errors.CrashShutdown,
    pg_errors.CannotConnectNow,
    pg_errors.ConnectionException,
)


def is_lost(exc: BaseException, conn: Any = None) -> bool:
    """The server is unreachable or went away (not a failed statement)."""
    if isinstance(exc, _LOST_CLASSES):
        return True
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        # No SQLSTATE: the connection failed, not a statement (a lock timeout has one).
        return exc.sqlstate is None or (conn is not None and (conn.closed or conn.broken))
    return False


def translate(exc: BaseException, url: str) -> BaseException:
    """The library's error for a database error a caller can cause; others pass unchanged."""
    if isinstance(exc, MemorixError):
        return exc
    if isinstance(exc, pg_errors.InvalidRegularExpression):
        return FilterError(f"invalid $regex: {str(exc).splitlines()[0]}")
    if isinstance(exc, pg_errors.ForeignKeyViolation) and exc.diag.constraint_name == COLLECTION_KEY:
        return CollectionNotFound(
            "the collection was dropped while this object was using it (by drop() elsewhere); "
            "make a new MemoryAPI to create it again"
        )
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        message = str(exc).splitlines()[0]
        return PermissionDenied(f"the database refused: {message} (role in {redact_url(url)})")
    if is_lost(exc):
        return unavailable(url, exc)
    return exc


_watchers: dict[str, list[list[tuple[str, Any]]]] = {}
_watchers_lock = threading.Lock()


def _distinct(conn: C | None, admin: C | None) -> list[C]:
    """The connections an operation holds, each once: the admin steps share the transaction's
    connection while it has no transaction open, so that a pool of one connection serves every
    call (an index build, or the index check at open, would wait for a second one forever)."""
    out: list[C] = []
    if conn is not None:
        out.append(conn)
    if admin is not None and admin is not conn:
        out.append(admin)
    return out


@contextmanager
def watch_statements(url: str) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the library sends to ``url`` while the block runs, as (SQL text with
    ``%(name)s`` placeholders, parameters): for tests, and to see what a call costs."""
    key = libpq_url(url)
    sent: list[tuple[str, Any]] = []
    with _watchers_lock:
        _watchers.setdefault(key, []).append(sent)
    try:
        yield sent
    finally:
        with _watchers_lock:
            _watchers[key].remove(sent)
            if not _watchers[key]:
                del _watchers[key]


def _record(url: str, conn: Any, text: Any, params: Any) -> None:
    statement = text.as_string(conn) if isinstance(text, sql.Composable) else bytes(text).decode()
    for sent in _watchers.get(url, ()):
        sent.append((statement, params))


class _Lost(Exception):
    """The connection died; ``sent`` says whether anything may have reached the server."""

    def __init__(self, cause: BaseException, sent: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.sent = sent


@dataclass
class _Transaction:
    settings: tuple[Query, ...]
    open: bool = False
    local: dict[str, str] = field(default_factory=dict)  # SET LOCAL values of the open transaction

    def plan(self, batch: Batch, session: dict[str, str] | None) -> tuple[list[Query], int, dict[str, str]]:
        """The statements to send for ``batch``, where its own results start, and the session
        settings they change. ``session``: the values the connection holds (connections.py),
        which a batch's settings need not repeat unless the transaction set others."""
        if not self.open:
            self.local.clear()
        settings = batch.settings
        if settings:
            held = self.local if session is None else {**session, **self.local}
            settings = tuple(s for s in settings if held.get(s[0]) != s[1])
        queries: list[Query] = []
        if not self.open:
            if not batch.queries:
                return [], 0, {}  # nothing to run, no transaction to end
            if batch.final and not self.settings and len(batch.queries) == 1:
                if not settings:
                    return list(batch.queries), 0, {}  # one statement: its own implicit transaction
                if session is not None and all(name in SESSION_NAMES for name, _ in settings):
                    # The search's values kept for the session: SET and the statement are one
                    # implicit transaction, so a failure undoes both.
                    sets = [set_session(name, value) for name, value in settings]
                    return [*sets, *batch.queries], len(sets), dict(settings)
            queries += [_BEGIN, *self.settings]
            self.open = True
        queries += [set_local(name, value) for name, value in settings]
        self.local.update(settings)
        start = len(queries)
        queries += batch.queries
        if batch.final:
            queries.append(_COMMIT)
            self.open = False
        return queries, start, {}


def _unknown(session: dict[str, str] | None, changes: dict[str, str]) -> None:
    """Forget the values ``changes`` replaces until the server confirms them: a statement that
    fails or is cancelled may undo its SET, and a forgotten value is simply set again."""
    if session is not None:
        for name in changes:
            session.pop(name, None)


def _result(cursor: Any) -> Result:
    rows = cursor.fetchall() if cursor.description is not None else []
    return Result(rows, cursor.rowcount)


class SyncRunner:
    """Runs calls on connections from ``source``; ``settings`` open every scoped transaction."""

    def __init__(
        self,
        source: SyncSource,
        url: str,
        settings: tuple[Query, ...] = (),
        restart: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.url = url
        self.settings = settings
        self.restart = restart

    def run(self, call: Call[T]) -> T:
        try:
            return self._run_once(call)
        except _Lost as lost:
            if lost.sent and not call.idempotent:
                raise unavailable(self.url, lost.cause) from None
            if self.restart is not None:
                self.restart()
            try:
                return self._run_once(call)
            except _Lost as again:
                raise unavailable(self.url, again.cause) from None

    def _acquire(self) -> psycopg.Connection[Any]:
        try:
            return self.source.acquire()
        except psycopg.Error as exc:
            raise _Lost(exc, sent=False) from None

    def _run_once(self, call: Call[T]) -> T:
        op: Operation[T] = call.make()
        tx = _Transaction((*self.settings, *call.settings) if call.scoped else call.settings)
        conn: psycopg.Connection[Any] | None = None
        admin: psycopg.Connection[Any] | None = None
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    step: Step = op.send(value) if error is None else op.throw(error)
                except StopIteration as stop:
                    if conn is not None and tx.open:
                        self._send(conn, [_COMMIT])
                        tx.open = False
                    return stop.value  # type: ignore[no-any-return]
                value, error = None, None
                try:
                    if isinstance(step, Offload):
                        value = step.function(*step.args)
                    elif isinstance(step, Rollback):
                        if conn is not None and tx.open:
                            tx.open = False
                            self._send(conn, [_ROLLBACK])
                    elif isinstance(step, Admin):
                        if admin is None or (admin is conn and tx.open):
                            admin = conn if conn is not None and not tx.open else self._acquire()
                        value = self._send(admin, list(step.queries))
                    else:
                        conn = conn or admin or self._acquire()
                        value = self._in_transaction(conn, tx, step)
                except psycopg.Error as exc:
                    if is_lost(exc, conn if not isinstance(step, Admin) else admin):
                        op.close()
                        raise _Lost(exc, sent=True) from None
                    error = exc
                except Exception as exc:
                    error = exc
        except _Lost:
            raise
        except BaseException as exc:
            translated = translate(exc, self.url)
            if translated is exc:
                raise
            raise translated from None
        finally:
            for held in _distinct(conn, admin):
                self._give_back(held)

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        status = conn.info.transaction_status
        if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR) and not conn.broken:
            try:
                conn.execute(b"ROLLBACK")
            except psycopg.Error:
                pass
        self.source.release(conn)

    def _in_transaction(self, conn: psycopg.Connection[Any], tx: _Transaction, step: Batch | Copy) -> Any:
        if isinstance(step, Copy):
            if not tx.open:
                self._send(conn, [_BEGIN, *tx.settings])
                tx.open = True
            if _watchers:
                _record(self.url, conn, step.statement, None)
            with conn.cursor() as cursor, cursor.copy(step.statement) as copy:
                copy.set_types(list(step.types))
                count = 0
                for row in step.rows:
                    copy.write_row(row)
                    count += 1
            return count
        session = session_values(conn)
        queries, start, changes = tx.plan(step, session)
        if not queries:
            return []
        _unknown(session, changes)
        results = self._send(conn, queries)
        if changes and session is not None:
            session.update(changes)
        return results[start : start + len(step.queries)]

    def _send(self, conn: psycopg.Connection[Any], queries: list[Query]) -> list[Result]:
        if _watchers:
            for q in queries:
                _record(self.url, conn, q.text, q.params)
        if len(queries) == 1:
            q = queries[0]
            return [_result(conn.execute(q.text, q.params, prepare=q.prepare))]
        with conn.pipeline():
            cursors = [conn.execute(q.text, q.params, prepare=q.prepare) for q in queries]
        return [_result(c) for c in cursors]


class AsyncRunner:
    """The same as :class:`SyncRunner`, awaited."""

    def __init__(
        self,
        source: AsyncSource,
        url: str,
        settings: tuple[Query, ...] = (),
        restart: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.url = url
        self.settings = settings
        self.restart = restart

    async def run(self, call: Call[T]) -> T:
        try:
            return await self._run_once(call)
        except _Lost as lost:
            if lost.sent and not call.idempotent:
                raise unavailable(self.url, lost.cause) from None
            if self.restart is not None:
                await asyncio.to_thread(self.restart)
            try:
                return await self._run_once(call)
            except _Lost as again:
                raise unavailable(self.url, again.cause) from None

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await self.source.acquire()
        except psycopg.Error as exc:
            raise _Lost(exc, sent=False) from None

    async def _run_once(self, call: Call[T]) -> T:
        op: Operation[T] = call.make()
        tx = _Transaction((*self.settings, *call.settings) if call.scoped else call.settings)
        conn: psycopg.AsyncConnection[Any] | None = None
        admin: psycopg.AsyncConnection[Any] | None = None
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    step: Step = op.send(value) if error is None else op.throw(error)
                except StopIteration as stop:
                    if conn is not None and tx.open:
                        await self._send(conn, [_COMMIT])
                        tx.open = False
                    return stop.value  # type: ignore[no-any-return]
                value, error = None, None
                try:
                    if isinstance(step, Offload):
                        value = await asyncio.to_thread(step.function, *step.args)
                    elif isinstance(step, Rollback):
                        if conn is not None and tx.open:
                            tx.open = False
                            await self._send(conn, [_ROLLBACK])
                    elif isinstance(step, Admin):
                        if admin is None or (admin is conn and tx.open):
                            admin = conn if conn is not None and not tx.open else await self._acquire()
                        value = await self._send(admin, list(step.queries))
                    else:
                        conn = conn or admin or await self._acquire()
                        value = await self._in_transaction(conn, tx, step)
                except psycopg.Error as exc:
                    if is_lost(exc, conn if not isinstance(step, Admin) else admin):
                        op.close()
                        raise _Lost(exc, sent=True) from None
                    error = exc
                except Exception as exc:
                    error = exc
        except _Lost:
            raise
        except BaseException as exc:
            translated = translate(exc, self.url)
            if translated is exc:
                raise
            raise translated from None
        finally:
            for held in _distinct(conn, admin):
                await self._give_back(held)

    async def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        status = conn.info.transaction_status
        if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR) and not conn.broken:
            try:
                await conn.execute(b"ROLLBACK")
            except (psycopg.Error, asyncio.CancelledError):
                pass
        await self.source.release(conn)

    async def _in_transaction(
        self, conn: psycopg.AsyncConnection[Any], tx: _Transaction, step: Batch | Copy
    ) -> Any:
        if isinstance(step, Copy):
            if not tx.open:
                await self._send(conn, [_BEGIN, *tx.settings])
                tx.open = True
            if _watchers:
                _record(self.url, conn, step.statement, None)
            async with conn.cursor() as cursor, cursor.copy(step.statement) as copy:
                copy.set_types(list(step.types))
                count = 0
                for row in step.rows:
                    await copy.write_row(row)
                    count += 1
            return count
        session = session_values(conn)
        queries, start, changes = tx.plan(step, session)
        if not queries:
            return []
        _unknown(session, changes)
        results = await self._send(conn, queries)
        if changes and session is not None:
            session.update(changes)
        return results[start : start + len(step.queries)]

    async def _send(self, conn: psycopg.AsyncConnection[Any], queries: list[Query]) -> list[Result]:
        if _watchers:
            for q in queries:
                _record(self.url, conn, q.text, q.params)
        if len(queries) == 1:
            q = queries[0]
            cursor = await conn.execute(q.text, q.params, prepare=q.prepare)
            return [Result(await cursor.fetchall() if cursor.description else [], cursor.rowcount)]
        async with conn.pipeline():
            cursors = [await conn.execute(q.text, q.params, prepare=q.prepare) for q in queries]
        return [Result(await c.fetchall() if c.description else [], c.rowcount) for c in cursors]
