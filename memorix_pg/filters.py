"""Compile MongoDB-style filter documents into SQLAlchemy boolean expressions over a JSONB column.

Why this exists: callers describe which memories they want with the query language they already
know (``{"importance": {"$gte": 2}, "tags": "work"}``); the engine must answer exactly as MongoDB
would, with every user value and key travelling as a bound parameter, and with the common
predicates written in the shapes PostgreSQL indexes can serve.

The work is split in two:

1. :func:`parse` turns a filter document into a small AST (:class:`Cond` = one operator applied
   to one dotted path, plus :class:`And` / :class:`Or` / :class:`Not` / :class:`Const`).  All
   validation happens here and raises :class:`~memorix_pg.errors.FilterError` naming the path
   and the operator.
2. The emitter turns the AST into SQL.  Index-friendly shapes are used where they are exact
   (see "Index use" below); everything else becomes one ``jsonb_path_exists(metadata,
   <jsonpath>, <vars>)`` call whose jsonpath (strict mode) spells out MongoDB's path traversal.

Semantics (MongoDB's, from its classic matcher):

* A dotted path yields *candidate values*.  Objects are descended into; an array met in the
  middle of a path is traversed one level: each object element continues the path, and a
  numeric part (``"tags.0"``) also selects that element.  A path ending on an array yields each
  element and the array itself (``$size`` / ``$elemMatch`` / ``$contains`` see only the array).
  A key that is missing, or a scalar met in the middle of a path, yields "missing".
* An operator matches when some candidate matches; ``$ne``, ``$nin``, ``$not``, ``$nor`` and
  ``$exists: false`` are the negations of the positive forms, so they match missing keys.
* ``{k: null}``, ``$in: [null]``, ``$gte: null`` and ``$lte: null`` match null or missing;
  ``$gt: null`` / ``$lt: null`` match nothing.
* Type bracketing: comparisons only match values of the operand's JSON type (numbers compare
  numerically, strings by code point = MongoDB's binary order, ``false < true``); ``"5"`` never
  equals ``5``, ``true`` never equals ``1``.  ``datetime`` / ``date`` operands compare as their
  ``isoformat()`` strings, the way metadata stores them.
* Equality with an object or array operand is structural.  Deviation: JSONB does not keep key
  order, so ``{a: {x: 1, y: 2}}`` also matches ``{y: 2, x: 1}`` (MongoDB would not).
* Range operators (``$gt`` ...) with an object or array operand raise FilterError (MongoDB's
  BSON ordering of documents/arrays is not supported).
* ``$regex`` uses PostgreSQL's POSIX (ARE) dialect, evaluated exactly like ``~`` (``~*`` with
  ``$options: "i"``; ``"m"`` makes ``^``/``$`` match at newlines; ``"s"`` is accepted and is
  already the default: ``.`` matches newline).  ``$like`` / ``$ilike`` follow SQL LIKE (``%``,
  ``_``, backslash escape) on string values only; they are run through the same regex engine,
  and ``$ilike`` case folding is the regex engine's.

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

import datetime as _dt
import json
import math
import re
import string
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any, Final, TypeAlias

from sqlalchemy import (
    Boolean,
    Numeric,
    Text,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    or_,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB, JSONPATH
from sqlalchemy.sql.elements import ColumnElement

from memorix_pg.errors import FilterError
from memorix_pg.validation import int_has_json_text

__all__ = [
    "TEXT_INDEX_PREFIX",
    "And",
    "Cond",
    "Const",
    "ElemMatch",
    "Not",
    "Or",
    "Regex",
    "compile_filter",
    "index_expression",
    "normalize_value",
    "parse",
]

TEXT_INDEX_PREFIX: Final = 500
"""Characters of a string value kept in the "text" index expression (4 bytes each at most, so an
index row stays well under btree's ~2.7 kB limit)."""

MAX_FILTER_DEPTH: Final = 64  # dicts and lists; metadata nests 32 deep at most
MAX_JSONPATH: Final = 500_000  # characters of one jsonpath predicate (see _bounded)
_MAX_CONTAINMENT_DEPTH: Final = 3  # 2**depth containment arms at most; deeper paths use jsonpath
_MAX_INDEX: Final = 2**31 - 1  # jsonpath subscripts are int4; no array is longer anyway
_INDEX_RE: Final = re.compile(r"0|[1-9][0-9]*")  # MongoDB matches parts against "0", "1", ... only

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None
Path: TypeAlias = tuple[str, ...]

# --------------------------------------------------------------------------------------------
# AST
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Regex:
    """A regex operand: PostgreSQL ARE pattern plus the flags we accept (subset of "ims")."""

    pattern: str
    flags: str = ""


@dataclass(frozen=True, slots=True)
class ElemMatch:
    """``$elemMatch`` operand: ``value_form`` applies ``node`` to each element itself (its conds
    have the empty path); otherwise ``node`` is a sub-filter applied to each element as a document.
    """

    node: Node
    value_form: bool


@dataclass(frozen=True, slots=True)
class Cond:
    """One operator applied to the candidates of ``path``; ``path == ()`` means "the current array
    element itself" (inside a value-form ``$elemMatch``).

    ``op`` is one of eq, in, gt, gte, lt, lte, exists, size, regex, elem.  Negative operators are
    expressed with :class:`Not`, so every Cond is a positive "some candidate matches" test.
    """

    path: Path
    op: str
    arg: Any = None


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class Const:
    value: bool


Node: TypeAlias = Cond | And | Or | Not | Const

_RANGE_OPS: Final = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
_JP_CMP: Final = {"eq": "==", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

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
            raise FilterError(f"an integer of more than {digits} digits cannot be compared{_at(where)}")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"{value!r} is not a JSON number{_at(where)}")
        return float(value)
    if isinstance(value, str):
        return _check_text(value, where)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [normalize_value(v, where) for v in value]
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise FilterError(f"object keys must be strings, got {k!r}{_at(where)}")
            out[_check_text(k, where)] = normalize_value(v, where)
        return out
    raise FilterError(f"value of type {type(value).__name__} is not JSON{_at(where)}")


def _check_text(s: str, where: str) -> str:
    if "\x00" in s:
        raise FilterError(f"strings cannot contain NUL characters{_at(where)}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError(f"string {s!r} is not valid Unicode{_at(where)}") from None
    return s


def _at(where: str) -> str:
    return f" at path '{where}'" if where else " at top level"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _jtype(value: JSONValue) -> str:
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


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


# --------------------------------------------------------------------------------------------
# Parser: filter document -> AST
# --------------------------------------------------------------------------------------------


def parse(filter: Mapping[str, Any] | None) -> Node:
    """Validate a filter document and return its AST (``Const(True)`` for None / ``{}``)."""
    if filter is None:
        return Const(True)
    _check_depth(filter)
    return _parse_doc(filter, "")


def _check_depth(filter: object) -> None:
    """Bound the nesting of dicts and lists before anything walks the filter recursively: a
    deeper (or self-containing) one would exhaust Python's stack here or in SQLAlchemy."""
    stack: list[tuple[object, int]] = [(filter, 0)]
    while stack:  # depth first, so a cycle reaches the limit at once
        node, depth = stack.pop()
        if depth > MAX_FILTER_DEPTH:
            raise FilterError(f"the filter nests deeper than {MAX_FILTER_DEPTH} levels of dicts and lists")
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)


def _parse_doc(doc: object, where: str) -> Node:
    if not isinstance(doc, Mapping):
        raise FilterError(f"a filter must be a dict, got {type(doc).__name__}{_at(where)}")
    items: list[Node] = []
    for key, value in doc.items():
        if not isinstance(key, str):
            raise FilterError(f"filter keys must be strings, got {key!r}{_at(where)}")
        if key.startswith("$"):
            items.append(_parse_top_op(key, value, where))
        else:
            path = _split_path(key, where)
            items.append(_parse_field(path, value, _join(where, key)))
    return _and(items)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _split_path(key: str, where: str) -> Path:
    parts = tuple(key.split("."))
    for part in parts:
        if not part:
            raise FilterError(f"empty part in field path '{key}'{_at(where)}")
        if part.startswith("$"):
            raise FilterError(f"field path '{key}' has a part starting with '$'{_at(where)}")
        _check_text(part, _join(where, key))
    return parts


def _parse_top_op(op: str, value: object, where: str) -> Node:
    if op in ("$and", "$or", "$nor"):
        if not isinstance(value, list | tuple) or not value:
            raise FilterError(f"operator '{op}' needs a non-empty list of filters{_at(where)}")
        subs = []
        for sub in value:
            if not isinstance(sub, Mapping):
                raise FilterError(
                    f"operator '{op}' needs a list of dicts, got {type(sub).__name__}{_at(where)}"
                )
            subs.append(_parse_doc(sub, where))
        if op == "$and":
            return _and(subs)
        if op == "$or":
            return _or(subs)
        return _and([Not(s) for s in subs])
    if op == "$not":  # our extension: {"$not": filter} == {"$nor": [filter]}
        if not isinstance(value, Mapping):
            raise FilterError(f"operator '$not' needs a filter dict{_at(where)}")
        return Not(_parse_doc(value, where))
    raise FilterError(f"unknown operator '{op}'{_at(where)}")


def _is_operator_doc(value: object, where: str) -> bool:
    if not isinstance(value, Mapping) or not value:
        return False
    dollar = [isinstance(k, str) and k.startswith("$") for k in value]
    if all(dollar):
        return True
    if any(dollar):
        raise FilterError(f"cannot mix operators and field names in {dict(value)!r}{_at(where)}")
    return False


def _parse_field(path: Path, value: object, where: str) -> Node:
    if isinstance(value, re.Pattern):
        return Cond(path, "regex", _regex_from_pattern(value, where))
    if _is_operator_doc(value, where):
        assert isinstance(value, Mapping)
        return _parse_ops(path, value, where)
    return _eq(path, normalize_value(value, where))


def _eq(path: Path, value: JSONValue) -> Node:
    return Cond(path, "eq", value)


def _parse_ops(path: Path, ops: Mapping[str, Any], where: str) -> Node:
    items: list[Node] = []
    if "$options" in ops and "$regex" not in ops:
        raise FilterError(f"operator '$options' needs '$regex'{_at(where)}")
    for op, arg in ops.items():
        items.append(_parse_op(path, op, arg, ops, where))
    return _and(items)


def _parse_op(path: Path, op: str, arg: Any, ops: Mapping[str, Any], where: str) -> Node:
    def err(msg: str) -> FilterError:
        return FilterError(f"operator '{op}' {msg}{_at(where)}")

    if op == "$eq" or op == "$ne":
        if isinstance(arg, re.Pattern):
            raise err("does not take a regex (use $regex)")
        node = _eq(path, normalize_value(arg, where))
        return node if op == "$eq" else Not(node)
    if op in _RANGE_OPS:
        return _range(path, _RANGE_OPS[op], arg, err, where)
    if op == "$in" or op == "$nin":
        node = _in(path, arg, err, where)
        return node if op == "$in" else Not(node)
    if op == "$exists":
        if not isinstance(arg, bool):
            raise err(f"needs true or false, got {arg!r}")
        node = Cond(path, "exists")
        return node if arg else Not(node)
    if op == "$size":
        if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0:
            raise err(f"needs a non-negative integer, got {arg!r}")
        return Cond(path, "size", arg)
    if op == "$all":
        if not isinstance(arg, list | tuple):
            raise err("needs a list")
        if not arg:
            return Const(False)  # MongoDB: $all: [] matches no document
        alls: list[Node] = []
        for item in arg:
            if isinstance(item, Mapping) and len(item) == 1 and "$elemMatch" in item:
                alls.append(Cond(path, "elem", _elem_match(item["$elemMatch"], err, where)))
            elif isinstance(item, re.Pattern):
                alls.append(Cond(path, "regex", _regex_from_pattern(item, where)))
            else:
                alls.append(_eq(path, normalize_value(item, where)))
        return _and(alls)
    if op == "$elemMatch":
        return Cond(path, "elem", _elem_match(arg, err, where))
    if op == "$not":
        if isinstance(arg, re.Pattern):
            return Not(Cond(path, "regex", _regex_from_pattern(arg, where)))
        if not isinstance(arg, Mapping) or not arg:
            raise err("needs an operator document or a regex")
        if not all(isinstance(k, str) and k.startswith("$") for k in arg):
            raise err("needs an operator document (keys starting with '$')")
        return Not(_parse_ops(path, arg, where))
    if op == "$regex":
        options = ops.get("$options", "")
        return Cond(path, "regex", _regex(arg, options, err))
    if op == "$options":
        return Const(True)  # consumed by $regex
    if op == "$like" or op == "$ilike":
        if not isinstance(arg, str):
            raise err(f"needs a string pattern, got {type(arg).__name__}")
        _check_text(arg, where)
        return Cond(path, "regex", Regex(_like_to_regex(arg, err), "i" if op == "$ilike" else ""))
    if op == "$contains":
        value = normalize_value(arg, where)
        return Cond(path, "elem", ElemMatch(Cond((), "eq", value), value_form=True))
    if op == "$between":
        if not isinstance(arg, list | tuple) or len(arg) != 2:
            raise err("needs a list [low, high]")
        return _and([_range(path, "gte", arg[0], err, where), _range(path, "lte", arg[1], err, where)])
    raise FilterError(f"unknown operator '{op}'{_at(where)}")


def _range(path: Path, op: str, arg: Any, err: Any, where: str) -> Node:
    value = normalize_value(arg, where)
    if value is None:
        # Only null and missing are in null's type bracket.
        return _eq(path, None) if op in ("gte", "lte") else Const(False)
    if isinstance(value, list | dict):
        raise err("does not compare with objects or arrays")
    return Cond(path, op, value)


def _in(path: Path, arg: Any, err: Any, where: str) -> Node:
    if not isinstance(arg, list | tuple):
        raise err("needs a list")
    values: list[JSONValue | Regex] = []
    for item in arg:
        if isinstance(item, re.Pattern):
            values.append(_regex_from_pattern(item, where))
        else:
            values.append(normalize_value(item, where))
    if not values:
        return Const(False)
    return Cond(path, "in", tuple(values))


_ELEM_DOC_OPS: Final = frozenset({"$and", "$or", "$nor"})


def _elem_match(arg: Any, err: Any, where: str) -> ElemMatch:
    if not isinstance(arg, Mapping):
        raise err("needs a dict")
    keys = list(arg)
    value_form = bool(keys) and all(
        isinstance(k, str) and k.startswith("$") and k not in _ELEM_DOC_OPS for k in keys
    )
    if value_form:
        return ElemMatch(_parse_ops((), arg, f"{where}.$elemMatch"), value_form=True)
    return ElemMatch(_parse_doc(arg, f"{where}.$elemMatch"), value_form=False)


_REGEX_FLAGS: Final = frozenset("ims")


def _regex(pattern: Any, options: Any, err: Any) -> Regex:
    if isinstance(pattern, re.Pattern):
        base = _regex_from_pattern(pattern, "")
        pattern, options = base.pattern, base.flags + (options if isinstance(options, str) else "")
    if not isinstance(pattern, str):
        raise err(f"needs a string pattern, got {type(pattern).__name__}")
    if not isinstance(options, str) or not set(options) <= _REGEX_FLAGS:
        raise err(f"options must be a string of 'i', 'm', 's', got {options!r}")
    if "\x00" in pattern:
        raise err("pattern cannot contain NUL characters")
    _check_text(pattern, "")
    _validate_regex(pattern, err)
    return Regex(pattern, "".join(sorted(set(options))))


def _validate_regex(pattern: str, err: Any) -> None:
    """Catch patterns that are invalid in both Python and PostgreSQL ARE syntax.

    The dialects disagree mostly about backslash escapes (``\\m``, ``\\y``...) and ``(?`` constructs / ``***``
    directors, so those patterns are left for the server to judge (an invalid one then fails at
    execution with SQLSTATE 2201B, invalid_regular_expression).
    """
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    if trailing % 2:
        raise err("has an invalid regular expression: it ends with an unescaped backslash")
    if "\\" in pattern or "(?" in pattern or pattern.startswith("***"):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. FutureWarning for POSIX classes like [[:alpha:]]
            re.compile(pattern)
    except re.error as exc:
        raise err(f"has an invalid regular expression: {exc}") from None


def _regex_from_pattern(pattern: re.Pattern[Any], where: str) -> Regex:
    if not isinstance(pattern.pattern, str):
        raise FilterError(f"regex patterns must be str{_at(where)}")
    flags = ""
    if pattern.flags & re.IGNORECASE:
        flags += "i"
    if pattern.flags & re.MULTILINE:
        flags += "m"
    if pattern.flags & re.DOTALL:
        flags += "s"
    if pattern.flags & (re.VERBOSE | re.ASCII | re.LOCALE):
        raise FilterError(f"regex flags other than IGNORECASE/MULTILINE/DOTALL{_at(where)}")
    _check_text(pattern.pattern, where)
    return Regex(pattern.pattern, flags)


def _like_to_regex(pattern: str, err: Any) -> str:
    """Translate a SQL LIKE pattern (``%``, ``_``, ``\\`` escape) into an anchored ARE."""
    out = ["^"]
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, None)
            if nxt is None:
                raise err("pattern must not end with the escape character")
            out.append(_are_literal(nxt))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(_are_literal(ch))
    out.append("$")
    return "".join(out)


def _are_literal(ch: str) -> str:
    # In an ARE, backslash + non-alphanumeric is that character; alphanumerics and non-ASCII
    # characters are never special, and escaping them would turn some into escapes.
    return "\\" + ch if ch in string.punctuation else ch


def _and(items: Sequence[Node]) -> Node:
    flat: list[Node] = []
    for item in items:
        if isinstance(item, And):
            flat.extend(item.items)
        elif isinstance(item, Const) and item.value:
            continue
        else:
            flat.append(item)
    if any(isinstance(i, Const) and not i.value for i in flat):
        return Const(False)
    if not flat:
        return Const(True)
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def _or(items: Sequence[Node]) -> Node:
    flat: list[Node] = []
    for item in items:
        if isinstance(item, Or):
            flat.extend(item.items)
        elif isinstance(item, Const) and not item.value:
            continue
        else:
            flat.append(item)
    if any(isinstance(i, Const) and i.value for i in flat):
        return Const(True)
    if not flat:
        return Const(False)
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


# --------------------------------------------------------------------------------------------
# jsonpath emitter: AST -> strict-mode jsonpath predicate on the current item "@"
# --------------------------------------------------------------------------------------------
#
# Every predicate below is evaluated with "@" bound to an object (or, inside a document-form
# $elemMatch, possibly an array element that is an array: kind == "array").  In strict mode a
# missing key raises an error that jsonpath turns into "unknown" inside exists() / filters; the
# positive predicates are written so that unknown only ever stands for "no such candidate"
# (false), and every negation goes through _jp_not, which makes the operand two-valued first.

_TRUE: Final = "exists(@)"
_FALSE: Final = "!exists(@)"
_IS_OBJ: Final = '@.type() == "object"'
_IS_ARR: Final = '@.type() == "array"'


def _jp_str(s: str) -> str:
    """A jsonpath string literal: every character is literal, never syntax."""
    out = ['"']
    for ch in s:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _index(part: str) -> int | None:
    if _INDEX_RE.fullmatch(part) and int(part) <= _MAX_INDEX:
        return int(part)
    return None


def _jp_or(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"


def _jp_and(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else "(" + " && ".join(parts) + ")"


def _bounded(pred: str) -> str:
    """Each dotted-path level writes the rest of the path twice (objects and arrays; three times
    with an index part), so a short filter could ask for gigabytes: refuse past MAX_JSONPATH.
    Strings at least double per level, so the work done before refusing is bounded too."""
    if len(pred) > MAX_JSONPATH:
        raise FilterError(
            f"the filter is too complex: its jsonpath would exceed {MAX_JSONPATH:,} characters "
            "(a long dotted path with index parts, or deeply nested $elemMatch)"
        )
    return pred


def _jp_not(pred: str) -> str:
    return f"!exists(@ ? ({pred}))"


class _JsonPath:
    """Builds one jsonpath predicate; user values only enter it as ``$vN`` variables."""

    def __init__(self) -> None:
        self.vars: dict[str, JSONValue] = {}

    def var(self, value: JSONValue) -> str:
        name = f"v{len(self.vars)}"
        self.vars[name] = value
        return "$" + name

    # ---- nodes ----

    def node(self, node: Node, kind: str = "object") -> str:
        if isinstance(node, Const):
            return _TRUE if node.value else _FALSE
        if isinstance(node, And):
            return _bounded(_jp_and([self.node(i, kind) for i in node.items]))
        if isinstance(node, Or):
            return _bounded(_jp_or([self.node(i, kind) for i in node.items]))
        if isinstance(node, Not):
            return _jp_not(self.node(node.item, kind))
        return _bounded(self.cond(node, kind))

    @staticmethod
    def _matches_missing(cond: Cond) -> bool:
        if cond.op == "eq":
            return cond.arg is None
        if cond.op == "in":
            return any(v is None for v in cond.arg)
        return False

    def cond(self, cond: Cond, kind: str) -> str:
        if cond.path and self._access(kind, cond.path[0]) is None:
            # An array seen as a document has no such key: only "missing" can match. Building phi
            # here for nothing would double the work at every level of nested $elemMatch.
            return self.missing(kind, cond.path) if self._matches_missing(cond) else _FALSE
        phi, expand, null_matches = self.phi(cond)
        if not cond.path:
            return phi
        pred = self.walk(kind, cond.path, phi, expand)
        if null_matches:
            pred = f"({pred} || {self.missing(kind, cond.path)})"
        return pred

    # ---- what one candidate must satisfy ----

    def phi(self, cond: Cond) -> tuple[str, bool, bool]:
        """(predicate on a candidate "@", expand leaf arrays?, does "missing" match too?)"""
        op, arg = cond.op, cond.arg
        if op == "eq":
            return self.equals(arg), True, arg is None
        if op == "in":
            preds = [self.regex(v) if isinstance(v, Regex) else self.equals(v) for v in arg]
            return _jp_or(preds), True, any(v is None for v in arg)
        if op in ("gt", "gte", "lt", "lte"):
            return f'(@.type() == "{_jtype(arg)}" && @ {_JP_CMP[op]} {self.var(arg)})', True, False
        if op == "regex":
            return self.regex(arg), True, False
        if op == "exists":
            return _TRUE, False, False
        if op == "size":
            return f"({_IS_ARR} && @.size() == {self.var(arg)})", False, False
        if op == "elem":
            em: ElemMatch = arg
            if em.value_form:
                inner = self.node(em.node)
            else:
                as_obj = self.node(em.node, "object")
                as_arr = self.node(em.node, "array")
                inner = f"(({_IS_OBJ} && {as_obj}) || ({_IS_ARR} && {as_arr}))"
            return f"({_IS_ARR} && exists(@[*] ? ({inner})))", False, False
        raise AssertionError(op)

    def equals(self, value: JSONValue) -> str:
        """Structural, type-exact equality of "@" with a JSON value."""
        if value is None:
            return '@.type() == "null"'
        if isinstance(value, list):
            parts = [_IS_ARR, f"@.size() == {len(value)}"]
            parts += [f"exists(@[{i}] ? ({self.equals(v)}))" for i, v in enumerate(value)]
            return _jp_and(parts)
        if isinstance(value, dict):
            parts = [_IS_OBJ]
            parts += [f"exists(@.{_jp_str(k)} ? ({self.equals(v)}))" for k, v in value.items()]
            others = " && ".join(f"@.key != {self.var(k)}" for k in value)
            parts.append(f"!exists(@.keyvalue() ? ({others}))" if others else "!exists(@.keyvalue())")
            return _jp_and(parts)
        return f'(@.type() == "{_jtype(value)}" && @ == {self.var(value)})'

    def regex(self, rx: Regex) -> str:
        # Flag "s" gives the same cflags as SQL's ~ (REG_ADVANCED, "." matches newline).
        flags = "s" + rx.flags.replace("s", "")
        return f'(@.type() == "string" && @ like_regex {_jp_str(rx.pattern)} flag "{flags}")'

    # ---- MongoDB path traversal ----

    @staticmethod
    def _access(kind: str, part: str) -> str | None:
        if kind == "object":
            return "@." + _jp_str(part)
        i = _index(part)  # an array seen as a document has keys "0", "1", ...
        return None if i is None else f"@[{i}]"

    def walk(self, kind: str, parts: Path, phi: str, expand: bool) -> str:
        """Some (non-missing) candidate of ``parts`` from "@" satisfies ``phi``."""
        acc = self._access(kind, parts[0])
        if acc is None:
            return _FALSE
        return _bounded(f"exists({acc} ? ({self._step(parts[1:], phi, expand)}))")

    def _step(self, rest: Path, phi: str, expand: bool) -> str:
        if not rest:  # "@" is the value at the end of the path
            if expand:
                return f"({phi} || ({_IS_ARR} && exists(@[*] ? ({phi}))))"
            return phi
        return (
            f"(({_IS_OBJ} && {self.walk('object', rest, phi, expand)})"
            f" || ({_IS_ARR} && {self._array(rest, phi, expand)}))"
        )

    def _array(self, parts: Path, phi: str, expand: bool) -> str:
        """An array met mid-path: object elements continue the path; a numeric part also picks
        that element (not expanded if the path ends there)."""
        out = [f"exists(@[*] ? ({_IS_OBJ} && {self.walk('object', parts, phi, expand)}))"]
        i = _index(parts[0])
        if i is not None:
            if len(parts) == 1:
                out.append(f"exists(@[{i}] ? ({phi}))")
            else:
                out.append(f"exists(@[{i}] ? ({self._step(parts[1:], phi, expand)}))")
        return _jp_or(out)

    def missing(self, kind: str, parts: Path) -> str:
        """The path yields "missing" somewhere (a missing key, or a scalar met mid-path)."""
        acc = self._access(kind, parts[0])
        if acc is None:
            return _TRUE
        absent = f"!exists(@ ? (exists({acc})))"
        if len(parts) == 1:
            return absent
        rest = parts[1:]
        inner = (
            f"(({_IS_OBJ} && {self.missing('object', rest)})"
            f" || ({_IS_ARR} && {self._array_missing(rest)})"
            f' || (@.type() != "object" && @.type() != "array"))'
        )
        return _bounded(f"({absent} || exists({acc} ? ({inner})))")

    def _array_missing(self, parts: Path) -> str:
        out = [f"exists(@[*] ? ({_IS_OBJ} && {self.missing('object', parts)}))"]
        i = _index(parts[0])
        if i is not None and len(parts) > 1:
            rest = parts[1:]
            out.append(
                f"exists(@[{i}] ? (({_IS_OBJ} && {self.missing('object', rest)})"
                f" || ({_IS_ARR} && {self._array_missing(rest)})))"
            )
        return _jp_or(out)


# --------------------------------------------------------------------------------------------
# SQL emitter
# --------------------------------------------------------------------------------------------


def _text(value: str) -> ColumnElement[str]:
    return literal(value, Text)


def _get(column: ColumnElement[Any], key: str) -> ColumnElement[Any]:
    return column.op("->", return_type=JSONB)(_text(key))


def _get_text(column: ColumnElement[Any], key: str) -> ColumnElement[str]:
    return column.op("->>", return_type=Text)(_text(key))


def _typeof(column: ColumnElement[Any], key: str) -> ColumnElement[str]:
    return func.jsonb_typeof(_get(column, key), type_=Text)


def _contains(column: ColumnElement[Any], doc: JSONValue) -> ColumnElement[bool]:
    return column.op("@>", is_comparison=True)(cast(_text(_dumps(doc)), JSONB))


def _has_key(column: ColumnElement[Any], key: str) -> ColumnElement[bool]:
    return column.op("?", is_comparison=True)(_text(key))


def _jsonpath_exists(column: ColumnElement[Any], pred: str, jp: _JsonPath) -> ColumnElement[bool]:
    fn = func.jsonb_path_exists(
        column,
        cast(_text(f"strict $ ? ({pred})"), JSONPATH),
        cast(_text(_dumps(jp.vars)), JSONB),
        type_=Boolean,
    )
    return fn


_NAN: Final = "'NaN'::numeric"


def _validate_index_key(key: object) -> str:
    if not isinstance(key, str) or not key or "." in key or key.startswith("$"):
        raise FilterError(f"index key must be a non-empty top-level key without '.', got {key!r}")
    return _check_text(key, key)


def index_expression(key: str, type: str, column: ColumnElement[Any] | None = None) -> ColumnElement[Any]:
    """The expression a btree index on metadata key ``key`` must use for range filters to use it.

    ``type="number"``: ``CASE WHEN (jsonb_typeof(metadata -> 'k') = 'number') THEN
    CAST(metadata -> 'k' AS NUMERIC) WHEN (jsonb_typeof(metadata -> 'k') = 'array') THEN
    'NaN'::numeric END`` (safe on every row: non-numbers give NULL, arrays NaN).
    ``type="text"``: ``left(metadata ->> 'k', 500) COLLATE "C"``.
    Compile it with ``literal_binds`` to put it in ``CREATE INDEX``.
    """
    key = _validate_index_key(key)
    col = _default_column(column)
    if type == "number":
        return _number_expr(col, key)
    if type == "text":
        return _text_index_expr(col, key)
    raise FilterError(f"index type must be 'text' or 'number', got {type!r}")


def _number_expr(column: ColumnElement[Any], key: str) -> ColumnElement[Any]:
    typ = _typeof(column, key)
    return case(
        (typ == literal_column("'number'"), cast(_get(column, key), Numeric)),
        (typ == literal_column("'array'"), literal_column(_NAN, Numeric)),
    )


def _text_index_expr(column: ColumnElement[Any], key: str) -> ColumnElement[Any]:
    return func.left(_get_text(column, key), literal_column(str(TEXT_INDEX_PREFIX)), type_=Text).collate("C")


def _default_column(column: ColumnElement[Any] | None) -> ColumnElement[Any]:
    if column is not None:
        return column
    from memorix_pg.models import metadata_column

    return metadata_column


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

    def _jsonpath(self, nodes: Sequence[Node], conjunction: bool) -> ColumnElement[bool]:
        jp = _JsonPath()
        preds = [jp.node(n) for n in nodes]
        return _jsonpath_exists(self.col, _jp_and(preds) if conjunction else _jp_or(preds), jp)

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
        if not _is_scalar(value) or len(path) > _MAX_CONTAINMENT_DEPTH:
            return None
        if len(path) > 1 and any(_index(p) is not None for p in path):
            return None  # a numeric part may index an array: containment cannot say that
        return or_(*(_contains(self.col, doc) for doc in _containment_docs(path, value)))

    def _range(self, key: str, kind: str, conds: Sequence[Cond]) -> ColumnElement[bool]:
        """Scalar branch on the index expression OR array branch (any element, via jsonpath)."""
        jp = _JsonPath()
        acc = "@." + _jp_str(key)
        elem_preds = [
            f'exists({acc}[*] ? (@.type() == "{kind}" && @ {_JP_CMP[c.op]} {jp.var(c.arg)}))' for c in conds
        ]
        array_check = _jsonpath_exists(self.col, _jp_and([f"exists({acc} ? ({_IS_ARR}))", *elem_preds]), jp)
        if kind == "number":
            expr = _number_expr(self.col, key)
            nan = literal_column(_NAN, Numeric)
            scalar = [_compare(expr, c.op, cast(_text(_dumps(c.arg)), Numeric)) for c in conds]
            return or_(and_(*scalar, expr != nan), and_(expr == nan, array_check))
        idx = _text_index_expr(self.col, key)
        full = _get_text(self.col, key).collate("C")
        scalar = [_typeof(self.col, key) == literal_column("'string'")]
        for c in conds:
            prefix = _text(str(c.arg)[:TEXT_INDEX_PREFIX])
            scalar.append(idx >= prefix if c.op in ("gt", "gte") else idx <= prefix)
            scalar.append(_compare(full, c.op, _text(str(c.arg))))
        array = [idx >= _text("["), idx < _text("\\"), _typeof(self.col, key) == literal_column("'array'")]
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
    kind = _jtype(cond.arg)
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
    return _SqlEmitter(_default_column(column)).emit(node)
