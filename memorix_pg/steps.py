"""What an operation asks of the database, written once for the sync and the async API.

Every public call is an *operation*: a generator that yields steps (:class:`Batch`, :class:`Copy`,
:class:`Admin`, :class:`Offload`) and receives their results. It never touches a connection,
so the same generator runs under :class:`memorix_pg.runner.SyncRunner` (psycopg's blocking
connections) and :class:`memorix_pg.runner.AsyncRunner` (``await``). The statements, the
planner and the transactions live in the operations; the runners only move bytes.

A transaction begins lazily with the first :class:`Batch` or :class:`Copy` and ends with a
batch marked ``final`` (its COMMIT travels in the same pipeline) or when the operation
returns. ``BEGIN``, the ``SET LOCAL`` settings and the statements of a batch are pipelined:
one round trip for the common call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from psycopg import sql

__all__ = [
    "Admin",
    "Batch",
    "Call",
    "Copy",
    "Offload",
    "Operation",
    "Query",
    "Result",
    "Rollback",
    "Step",
    "ensure",
    "execute",
    "fetch_all",
    "fetch_one",
    "offload",
    "set_local",
    "set_session",
]

T = TypeVar("T")

QueryText = bytes | sql.SQL | sql.Composed


@dataclass(frozen=True, slots=True)
class Query:
    """One statement with its parameters. ``prepare``: statements built once per shape are
    prepared server-side (the library's connections keep custom plans, see connections.py)."""

    text: QueryText
    params: Mapping[str, Any] | Sequence[Any] | None = None
    prepare: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    rows: list[tuple[Any, ...]]
    rowcount: int


@dataclass(frozen=True, slots=True)
class Batch:
    """Statements sent together in the current transaction; ``settings`` become ``SET LOCAL``
    (values computed in Python and sent as literals: Citus propagates only that), or a session
    ``SET`` before a one-statement batch on the library's own connections (connections.py)."""

    queries: tuple[Query, ...]
    final: bool = False
    settings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Copy:
    """Binary ``COPY ... FROM STDIN`` of ``rows`` in the current transaction."""

    statement: sql.Composed
    types: tuple[str, ...]
    rows: Iterable[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Admin:
    """Statements on a separate autocommit connection (``CREATE INDEX CONCURRENTLY`` and
    session advisory locks), which outlives the operation's transactions."""

    queries: tuple[Query, ...]


@dataclass(frozen=True, slots=True)
class Rollback:
    """End the current transaction, undoing it (before cleanup that must not wait for it)."""


@dataclass(frozen=True, slots=True)
class Offload:
    """CPU-bound work (embedding): called directly by the sync runner, in a thread by the async one."""

    function: Callable[..., Any]
    args: tuple[Any, ...] = ()


Step = Batch | Copy | Admin | Offload | Rollback
Operation = Generator[Step, Any, T]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """An operation to run: ``make`` builds a fresh generator, so an idempotent call whose
    connection died under it can be run again on another connection."""

    make: Callable[[], Operation[T]]
    idempotent: bool = False
    # Run with the tenant's settings (False for catalog work that is not tenant-scoped).
    scoped: bool = True
    # ``SET LOCAL``s of this call's every transaction (the operation history records it under).
    settings: tuple[Query, ...] = ()
    # Only reads: with read replicas (replicas.py) it may run on a standby.
    read: bool = False


@functools.lru_cache(maxsize=1024)
def _set(scope: str, name: str, value: str) -> Query:
    """``SET [LOCAL] name = 'value'``: a literal composed by psycopg (SET takes no parameters),
    once per setting and value."""
    statement = sql.SQL("{} {} = {}").format(
        sql.SQL(scope), sql.Identifier(*name.split(".")), sql.Literal(value)
    )
    return Query(statement.as_bytes(None))


def set_local(name: str, value: str) -> Query:
    """``SET LOCAL name = 'value'``, for the current transaction."""
    return _set("SET LOCAL", name, value)


def set_session(name: str, value: str) -> Query:
    """``SET name = 'value'``, for the session."""
    return _set("SET", name, value)


def execute(
    *queries: Query, final: bool = False, settings: tuple[tuple[str, str], ...] = ()
) -> Operation[list[Result]]:
    """Run ``queries`` in one round trip; their results in order."""
    results: list[Result] = yield Batch(queries, final, settings)
    return results


def fetch_all(query: Query, *, final: bool = False) -> Operation[list[tuple[Any, ...]]]:
    return (yield from execute(query, final=final))[0].rows


def fetch_one(query: Query, *, final: bool = False) -> Operation[tuple[Any, ...] | None]:
    rows = (yield from execute(query, final=final))[0].rows
    return rows[0] if rows else None


def ensure(
    body: Operation[T], cleanup: Callable[[], Operation[Any]], *, rollback: bool = False
) -> Operation[T]:
    """``body``, then ``cleanup`` whether it failed or not: an operation's ``try/finally``.

    Not when the runner abandons the operation (its connection died): a generator cannot run
    steps while it is being closed, and what cleanup would do is redone on next use.
    """
    try:
        result = yield from body
    except GeneratorExit:
        raise
    except BaseException:
        if rollback:  # first end the failed transaction, which the cleanup might wait for
            yield Rollback()
        yield from cleanup()
        raise
    yield from cleanup()
    return result


def offload(function: Callable[..., T], *args: Any) -> Operation[T]:
    value: T = yield Offload(function, args)
    return value
