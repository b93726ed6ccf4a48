"""Filter operands as the JSON they are compared with, and small helpers on JSON values.

Why this exists: the parser, the jsonpath emitter and the SQL emitter must agree on what a value
is (a datetime compares as its ISO string, NaN and NUL characters can never match) and on its
JSON type name; they all take it from here.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from collections.abc import Mapping
from typing import Any, TypeAlias

from memorix_pg.errors import FilterError
from memorix_pg.validation import int_has_json_text

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None

# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def normalize_value(value: Any, where: str = "") -> JSONValue:
    """Return ``value`` as the JSON it is compared with: datetimes become ISO strings (the way
    metadata stores them), tuples become lists.  Anything JSON cannot hold exactly (sets, objects,
    NaN/Infinity, NUL characters, lone surrogates) raises FilterError, since it could never match.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not int_has_json_text(value):
            digits = sys.get_int_max_str_digits()
            raise FilterError(f"an integer of more than {digits} digits cannot be compared{at_path(where)}")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"{value!r} is not a JSON number{at_path(where)}")
        return float(value)
    if isinstance(value, str):
        return check_text(value, where)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [normalize_value(v, where) for v in value]
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise FilterError(f"object keys must be strings, got {k!r}{at_path(where)}")
            out[check_text(k, where)] = normalize_value(v, where)
        return out
    raise FilterError(f"value of type {type(value).__name__} is not JSON{at_path(where)}")


def check_text(s: str, where: str) -> str:
    if "\x00" in s:
        raise FilterError(f"strings cannot contain NUL characters{at_path(where)}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError(f"string {s!r} is not valid Unicode{at_path(where)}") from None
    return s


def at_path(where: str) -> str:
    return f" at path '{where}'" if where else " at top level"


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def json_type(value: JSONValue) -> str:
    """The jsonb_typeof / jsonpath .type() name of a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def is_scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | str)
