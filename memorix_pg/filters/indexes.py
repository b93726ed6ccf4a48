"""The btree index expressions that range filters are written against.

Why this exists: a range filter on a top-level key can only use an index built on exactly the
expression the SQL emitter compares; :func:`index_expression` is that expression, for the caller
who creates the index and for the emitter alike (see "Index use" in
:mod:`memorix_pg.filters.sql`).  The small SQL builders on the JSONB column live here too.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Numeric, Text, case, cast, func, literal, literal_column
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from memorix_pg.errors import FilterError

from .values import check_text

TEXT_INDEX_PREFIX: Final = 500
"""Characters of a string value kept in the "text" index expression (4 bytes each at most, so an
index row stays well under btree's ~2.7 kB limit)."""


def text_literal(value: str) -> ColumnElement[str]:
    return literal(value, Text)


def _get(column: ColumnElement[Any], key: str) -> ColumnElement[Any]:
    return column.op("->", return_type=JSONB)(text_literal(key))


def get_text(column: ColumnElement[Any], key: str) -> ColumnElement[str]:
    return column.op("->>", return_type=Text)(text_literal(key))


def json_typeof(column: ColumnElement[Any], key: str) -> ColumnElement[str]:
    return func.jsonb_typeof(_get(column, key), type_=Text)


NUMERIC_NAN: Final = "'NaN'::numeric"


def _validate_index_key(key: object) -> str:
    if not isinstance(key, str) or not key or "." in key or key.startswith("$"):
        raise FilterError(f"index key must be a non-empty top-level key without '.', got {key!r}")
    return check_text(key, key)


def index_expression(key: str, type: str, column: ColumnElement[Any] | None = None) -> ColumnElement[Any]:
    """The expression a btree index on metadata key ``key`` must use for range filters to use it.

    ``type="number"``: ``CASE WHEN (jsonb_typeof(metadata -> 'k') = 'number') THEN
    CAST(metadata -> 'k' AS NUMERIC) WHEN (jsonb_typeof(metadata -> 'k') = 'array') THEN
    'NaN'::numeric END`` (safe on every row: non-numbers give NULL, arrays NaN).
    ``type="text"``: ``left(metadata ->> 'k', 500) COLLATE "C"``.
    Compile it with ``literal_binds`` to put it in ``CREATE INDEX``.
    """
    key = _validate_index_key(key)
    col = default_column(column)
    if type == "number":
        return number_index_expression(col, key)
    if type == "text":
        return text_index_expression(col, key)
    raise FilterError(f"index type must be 'text' or 'number', got {type!r}")


def number_index_expression(column: ColumnElement[Any], key: str) -> ColumnElement[Any]:
    typ = json_typeof(column, key)
    return case(
        (typ == literal_column("'number'"), cast(_get(column, key), Numeric)),
        (typ == literal_column("'array'"), literal_column(NUMERIC_NAN, Numeric)),
    )


def text_index_expression(column: ColumnElement[Any], key: str) -> ColumnElement[Any]:
    return func.left(get_text(column, key), literal_column(str(TEXT_INDEX_PREFIX)), type_=Text).collate("C")


def default_column(column: ColumnElement[Any] | None) -> ColumnElement[Any]:
    if column is not None:
        return column
    from memorix_pg.models import metadata_column

    return metadata_column
