"""SQL emitter: AST -> a SQLAlchemy boolean expression over the JSONB column.

Why this exists: the common predicates must be written in the shapes PostgreSQL indexes can
serve; where a shape is exact it is used, and the rest shares one jsonpath scan
(:mod:`memorix_pg.filters.jsonpath`).  :func:`compile_filter` is the entry point.

Index use (top-level key ``k``; ``metadata`` is the JSONB column):

* Equality / ``$in`` / ``$all`` with scalar values on a path of at most 3 parts (no numeric
  part) compile to JSONB containment, ``metadata @> CAST(:json AS JSONB)``, with one OR arm per
  way the path can run through objects or arrays (``{"k": v}`` and ``{"k": [v]}``...).  The GIN
  ``jsonb_path_ops`` index serves each arm (a BitmapOr).
* Ranges (``$gt``/``$gte``/``$lt``/``$lte``/``$between``) on a top-level key with a number or
  string operand are written against the expression that :func:`index_expression` returns:

  - ``"number"``: ``CASE WHEN (jsonb_typeof(metadata -> 'k') = 'number') THEN
    CAST(metadata -> 'k' AS NUMERIC) WHEN (jsonb_typeof(metadata -> 'k') = 'array') THEN
    'NaN'::numeric END``.
    Every row is safe to index; arrays sort as NaN so that the array branch of the predicate
    (any element in range, checked by jsonpath) is an index scan too (``= 'NaN'``).
  - ``"text"``: ``left(metadata ->> 'k', 500) COLLATE "C"``.  The ``left`` keeps index rows
    under the btree size limit; the predicate is ``prefix range on the index expression AND
    the exact comparison on the full string COLLATE "C"``.  Arrays (whose text starts with
    ``[``) are reached through the index range ``['[', '\\')`` and checked by jsonpath.

  The index must be created on exactly that expression, e.g. by compiling
  ``index_expression(key, type)`` with ``literal_binds``.
* Everything else (dotted ranges, ``$regex``, ``$size``, ``$elemMatch``...) is a jsonpath scan.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from itertools import product
from typing import Any, Final

from sqlalchemy import Boolean, Numeric, Text, and_, cast, false, func, literal, literal_column, or_, true
from sqlalchemy.dialects.postgresql import JSONB, JSONPATH
from sqlalchemy.sql.elements import ColumnElement

from memorix_pg.errors import FilterError

from .indexes import (
    NUMERIC_NAN,
    TEXT_INDEX_PREFIX,
    default_column,
    get_text,
    json_typeof,
    number_index_expression,
    text_index_expression,
    text_literal,
)
from .jsonpath import (
    IS_ARRAY,
    JSONPATH_COMPARISONS,
    JsonPath,
    array_index,
    jsonpath_and,
    jsonpath_or,
    jsonpath_string,
)
from .nodes import And, Cond, Const, Node, Not, Or, Path, Regex, TextMatch
from .parser import parse
from .values import JSONValue, is_scalar, json_text, json_type

_MAX_CONTAINMENT_DEPTH: Final = 3  # 2**depth containment arms at most; deeper paths use jsonpath

# --------------------------------------------------------------------------------------------
# SQL emitter
# --------------------------------------------------------------------------------------------


def _contains(column: ColumnElement[Any], doc: JSONValue) -> ColumnElement[bool]:
    return column.op("@>", is_comparison=True)(cast(text_literal(json_text(doc)), JSONB))


def _has_key(column: ColumnElement[Any], key: str) -> ColumnElement[bool]:
    return column.op("?", is_comparison=True)(text_literal(key))


def _jsonpath_exists(column: ColumnElement[Any], pred: str, jp: JsonPath) -> ColumnElement[bool]:
    fn = func.jsonb_path_exists(
        column,
        cast(text_literal(f"strict $ ? ({pred})"), JSONPATH),
        cast(text_literal(json_text(jp.vars)), JSONB),
        type_=Boolean,
    )
    return fn


class _SqlEmitter:
    def __init__(self, column: ColumnElement[Any]) -> None:
        self.col = column

    def emit(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, Const):
            return true() if node.value else false()
        if isinstance(node, Not):
            # IS NOT TRUE: a NULL from a CASE-based range must count as "no match" before negating.
            return self.emit(node.item).is_not(true())
        if isinstance(node, And):
            return self._combine(node.items, conjunction=True)
        if isinstance(node, Or):
            return self._combine(node.items, conjunction=False)
        if isinstance(node, TextMatch):
            return self._text(node)
        fast = self._fast(node)
        if fast is not None:
            return fast
        return self._jsonpath([node], conjunction=True)

    def _combine(self, items: Sequence[Node], conjunction: bool) -> ColumnElement[bool]:
        sql: list[ColumnElement[bool]] = []
        rest: list[Node] = []
        ranges: dict[tuple[str, str], list[Cond]] = {}
        for item in items:
            if conjunction and isinstance(item, Cond) and (rk := _range_key(item)) is not None:
                ranges.setdefault(rk, []).append(item)
                continue
            if isinstance(item, Cond):
                fast = self._fast(item)
                if fast is None:
                    rest.append(item)
                else:
                    sql.append(fast)
            else:
                sql.append(self.emit(item))
        for (key, kind), conds in ranges.items():
            sql.append(self._range(key, kind, conds))
        if rest:  # everything without an indexable shape shares one jsonpath scan
            sql.append(self._jsonpath(rest, conjunction))
        return and_(*sql) if conjunction else or_(*sql)

    def _text(self, node: TextMatch) -> ColumnElement[bool]:
        """``$text``: the row's ``text_search`` against the query parsed with the row's own
        configuration; ``$contains``: ``strpos`` (no pattern characters to escape)."""
        table = getattr(self.col, "table", None)
        if table is None or "text_search" not in table.c:
            raise FilterError("'$text' and '$contains' apply to memories only")
        value = literal(node.value, Text())
        if node.kind == "contains":
            return func.strpos(table.c.text, value) > 0
        query = func.websearch_to_tsquery(table.c.ts_config, value)
        matches: ColumnElement[bool] = table.c.text_search.op("@@", return_type=Boolean())(query)
        return matches

    def _jsonpath(self, nodes: Sequence[Node], conjunction: bool) -> ColumnElement[bool]:
        jp = JsonPath()
        preds = [jp.node(n) for n in nodes]
        return _jsonpath_exists(self.col, jsonpath_and(preds) if conjunction else jsonpath_or(preds), jp)

    # ---- index-friendly shapes ----

    def _fast(self, cond: Cond) -> ColumnElement[bool] | None:
        path, op, arg = cond.path, cond.op, cond.arg
        if not path:
            return None
        if op == "eq":
            return self._eq(path, arg)
        if op == "in":
            arms: list[ColumnElement[bool]] = []
            slow: list[JSONValue | Regex] = []
            for value in arg:
                fast = None if isinstance(value, Regex) else self._eq(path, value)
                if fast is None:
                    slow.append(value)
                else:
                    arms.append(fast)
            if not arms:
                return None
            if slow:
                arms.append(self._jsonpath([Cond(path, "in", tuple(slow))], conjunction=True))
            return or_(*arms)
        if op == "exists" and len(path) == 1:
            return _has_key(self.col, path[0])
        if (rk := _range_key(cond)) is not None:
            return self._range(rk[0], rk[1], [cond])
        return None

    def _eq(self, path: Path, value: JSONValue) -> ColumnElement[bool] | None:
        if value is None:
            if len(path) != 1:
                return None
            key = path[0]
            return or_(
                ~_has_key(self.col, key),
                _contains(self.col, {key: None}),
                _contains(self.col, {key: [None]}),
            )
        if not is_scalar(value) or len(path) > _MAX_CONTAINMENT_DEPTH:
            return None
        if len(path) > 1 and any(array_index(p) is not None for p in path):
            return None  # a numeric part may index an array: containment cannot say that
        return or_(*(_contains(self.col, doc) for doc in _containment_docs(path, value)))

    def _range(self, key: str, kind: str, conds: Sequence[Cond]) -> ColumnElement[bool]:
        """Scalar branch on the index expression OR array branch (any element, via jsonpath)."""
        jp = JsonPath()
        acc = "@." + jsonpath_string(key)
        elem_preds = [
            f'exists({acc}[*] ? (@.type() == "{kind}" && @ {JSONPATH_COMPARISONS[c.op]} {jp.var(c.arg)}))'
            for c in conds
        ]
        array_check = _jsonpath_exists(
            self.col, jsonpath_and([f"exists({acc} ? ({IS_ARRAY}))", *elem_preds]), jp
        )
        if kind == "number":
            expr = number_index_expression(self.col, key)
            nan = literal_column(NUMERIC_NAN, Numeric)
            scalar = [_compare(expr, c.op, cast(text_literal(json_text(c.arg)), Numeric)) for c in conds]
            return or_(and_(*scalar, expr != nan), and_(expr == nan, array_check))
        idx = text_index_expression(self.col, key)
        full = get_text(self.col, key).collate("C")
        scalar = [json_typeof(self.col, key) == literal_column("'string'")]
        for c in conds:
            prefix = text_literal(str(c.arg)[:TEXT_INDEX_PREFIX])
            scalar.append(idx >= prefix if c.op in ("gt", "gte") else idx <= prefix)
            scalar.append(_compare(full, c.op, text_literal(str(c.arg))))
        array = [
            idx >= text_literal("["),
            idx < text_literal("\\"),
            json_typeof(self.col, key) == literal_column("'array'"),
        ]
        return or_(and_(*scalar), and_(*array, array_check))


def _compare(left: ColumnElement[Any], op: str, right: ColumnElement[Any]) -> ColumnElement[bool]:
    if op == "gt":
        return left > right
    if op == "gte":
        return left >= right
    if op == "lt":
        return left < right
    return left <= right


def _range_key(cond: Cond) -> tuple[str, str] | None:
    """(key, "number" | "string") when ``cond`` is a range an index expression can serve."""
    if cond.op not in ("gt", "gte", "lt", "lte") or len(cond.path) != 1:
        return None
    kind = json_type(cond.arg)
    return (cond.path[0], kind) if kind in ("number", "string") else None


def _containment_docs(path: Path, value: JSONValue) -> Iterator[JSONValue]:
    """Every JSON shape in which ``path`` can reach ``value`` through objects or (one level of)
    arrays: ``a.b = v`` gives {"a": {"b": v}}, {"a": {"b": [v]}}, {"a": [{"b": v}]}, ...
    (``@>`` does not look for a scalar inside a nested array by itself)."""
    for wraps in product((False, True), repeat=len(path)):
        doc: JSONValue = [value] if wraps[-1] else value
        for part, wrap in zip(reversed(path), reversed((False, *wraps[:-1])), strict=True):
            doc = {part: doc}
            if wrap:
                doc = [doc]
        yield doc


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def compile_filter(
    filter: Mapping[str, Any] | None, column: ColumnElement[Any] | None = None
) -> ColumnElement[bool]:
    """Compile a MongoDB-style filter into a boolean SQL expression over the JSONB ``column``
    (``memories.metadata`` by default).  ``None`` or ``{}`` gives ``true()``.

    Raises FilterError for a malformed filter.  Pure: no database access.
    """
    node = parse(filter)
    return _SqlEmitter(default_column(column)).emit(node)
