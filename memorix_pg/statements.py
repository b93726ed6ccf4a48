"""Statements built once per shape, and filters compiled once per document.

Building a SQLAlchemy statement and compiling it costs more Python than the database spends on
a selective search (~1 ms against ~0.2 ms). So a statement is built and compiled once per
*shape*: the operation, the collection, and the filter's structure (keys, operators, value
types). Later calls with the same shape bind their values to the compiled text, which the
library's connections prepare server-side (with custom plans: see connections.py).

A filter document is compiled (parsed, checked, turned into SQL) once per distinct document
too: an LRU maps it to its expression, shape and values. The values are always bound
parameters; nothing a caller gives is ever part of the SQL text.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.sql.elements import BindParameter

from .filters import compile_filter
from .steps import Query

__all__ = ["Filter", "adhoc", "cached", "compile_where"]

_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled filter: its SQL expression, the key of its shape and its bound values."""

    expression: sa.ColumnElement[bool]
    shape: Hashable
    values: tuple[Any, ...]
    binds: tuple[BindParameter[Any], ...]


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            if len(self._items) > self.size:
                self._items.popitem(last=False)


_KEY_DEPTH = 32  # deeper filters are compiled every time (and the compiler bounds their depth)


class _Uncacheable(Exception):
    pass


def _frozen(value: Any, depth: int = 0) -> Hashable:
    """A hashable key that tells apart what JSON tells apart (``True`` from ``1``, ``1`` from ``1.0``)."""
    if depth > _KEY_DEPTH:
        raise _Uncacheable
    if isinstance(value, Mapping):
        return ("d", tuple((k, _frozen(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("l", tuple(_frozen(v, depth + 1) for v in value))
    if value is None or isinstance(value, str | bool | int | float | datetime | date):
        return (type(value), value)
    return ("id", id(value))  # not JSON: never shared (normalize_value decides what it means)


_filters = _LRU(4096)


def compile_where(filter: Mapping[str, Any] | None) -> Filter:
    """The compiled filter for ``filter`` (raises FilterError for a malformed one)."""
    try:
        key: Hashable | None = _frozen(filter)
        hash(key)
    except (TypeError, _Uncacheable):
        key = None
    if key is not None and (found := _filters.get(key)) is not None:
        return found  # type: ignore[no-any-return]
    expression = compile_filter(filter)
    cache_key = expression._generate_cache_key()
    if cache_key is None:  # pragma: no cover - every filter construct is cacheable
        compiled = Filter(expression, ("uncached", id(expression)), (), ())
    else:
        binds = tuple(cache_key.bindparams)
        compiled = Filter(expression, cache_key.key, tuple(b.effective_value for b in binds), binds)
    if key is not None and isinstance(filter, Mapping | type(None)):
        _filters.put(key, compiled)
    return compiled


@dataclass(frozen=True, slots=True)
class _Compiled:
    text: bytes
    filter_names: tuple[str, ...]
    constants: dict[str, Any]  # the values of the statement's own literals, fixed when built


_statements = _LRU(2048)


def _compile(statement: sa.Executable) -> Any:
    return statement.compile(dialect=_DIALECT)  # type: ignore[attr-defined]


def cached(
    key: Hashable,
    build: Callable[[sa.ColumnElement[bool]], sa.Executable],
    where: Filter,
    params: Mapping[str, Any] | None = None,
) -> Query:
    """``build(where.expression)`` compiled once per (``key``, filter shape), bound to ``where``'s
    values and ``params`` (named ``bindparam``s of the statement), prepared."""
    full_key = (key, where.shape)
    found: _Compiled | None = _statements.get(full_key)
    if found is None:
        statement = build(where.expression)
        compiled = _compile(statement)
        names = tuple(compiled.bind_names.get(b) for b in where.binds)
        if any(name is None for name in names):  # pragma: no cover - a clone hid the filter's binds
            return adhoc(statement, params)
        constants = {k: v for k, v in _processed(compiled).items() if k not in names}
        found = _Compiled(str(compiled).encode(), names, constants)
        _statements.put(full_key, found)
    values = {**found.constants, **dict(zip(found.filter_names, where.values, strict=True))}
    if params:
        values.update(params)
    return Query(found.text, values, prepare=True)


def _processed(compiled: Any) -> dict[str, Any]:
    """The compiled statement's parameter values as the driver takes them (JSON serialised ...)."""
    values: dict[str, Any] = compiled.construct_params(_check=False)
    processors = getattr(compiled, "_bind_processors", {})
    for name, value in values.items():
        processor = processors.get(name)
        if processor is not None and value is not None:
            values[name] = processor(value)
    return values


def adhoc(statement: sa.Executable, params: Mapping[str, Any] | None = None) -> Query:
    """A statement compiled for this call only (rare paths), its literal values bound."""
    compiled = _compile(statement)
    values = _processed(compiled)
    if params:
        values.update(params)
    return Query(str(compiled).encode(), values)
