"""jsonpath emitter: AST -> one strict-mode jsonpath predicate for ``jsonb_path_exists``.

Why this exists: every predicate without an index-friendly SQL shape (dotted ranges,
``$regex``, ``$size``, ``$elemMatch``...) becomes one ``jsonb_path_exists(metadata, <jsonpath>,
<vars>)`` call, and this jsonpath spells out MongoDB's path traversal (see the package docstring).
User values only enter it as ``$vN`` variables.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from memorix_pg.errors import FilterError

from .nodes import And, Cond, Const, ElemMatch, Node, Not, Or, Path, Regex, TextMatch
from .values import JSONValue, json_type

MAX_JSONPATH: Final = 500_000  # characters of one jsonpath predicate (see _bounded)
_MAX_INDEX: Final = 2**31 - 1  # jsonpath subscripts are int4; no array is longer anyway
_INDEX_RE: Final = re.compile(r"0|[1-9][0-9]*")  # MongoDB matches parts against "0", "1", ... only
JSONPATH_COMPARISONS: Final = {"eq": "==", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

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
IS_OBJECT: Final = '@.type() == "object"'
IS_ARRAY: Final = '@.type() == "array"'


def jsonpath_string(s: str) -> str:
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


def array_index(part: str) -> int | None:
    if _INDEX_RE.fullmatch(part) and int(part) <= _MAX_INDEX:
        return int(part)
    return None


def jsonpath_or(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"


def jsonpath_and(parts: Sequence[str]) -> str:
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


class JsonPath:
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
            return _bounded(jsonpath_and([self.node(i, kind) for i in node.items]))
        if isinstance(node, Or):
            return _bounded(jsonpath_or([self.node(i, kind) for i in node.items]))
        if isinstance(node, Not):
            return _jp_not(self.node(node.item, kind))
        if isinstance(node, TextMatch):  # pragma: no cover - the SQL emitter handles it
            raise FilterError("'$text' and '$contains' cannot be written in jsonpath")
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
            return jsonpath_or(preds), True, any(v is None for v in arg)
        if op in ("gt", "gte", "lt", "lte"):
            return (
                f'(@.type() == "{json_type(arg)}" && @ {JSONPATH_COMPARISONS[op]} {self.var(arg)})',
                True,
                False,
            )
        if op == "regex":
            return self.regex(arg), True, False
        if op == "exists":
            return _TRUE, False, False
        if op == "size":
            return f"({IS_ARRAY} && @.size() == {self.var(arg)})", False, False
        if op == "elem":
            em: ElemMatch = arg
            if em.value_form:
                inner = self.node(em.node)
            else:
                as_obj = self.node(em.node, "object")
                as_arr = self.node(em.node, "array")
                inner = f"(({IS_OBJECT} && {as_obj}) || ({IS_ARRAY} && {as_arr}))"
            return f"({IS_ARRAY} && exists(@[*] ? ({inner})))", False, False
        raise AssertionError(op)

    def equals(self, value: JSONValue) -> str:
        """Structural, type-exact equality of "@" with a JSON value."""
        if value is None:
            return '@.type() == "null"'
        if isinstance(value, list):
            parts = [IS_ARRAY, f"@.size() == {len(value)}"]
            parts += [f"exists(@[{i}] ? ({self.equals(v)}))" for i, v in enumerate(value)]
            return jsonpath_and(parts)
        if isinstance(value, dict):
            parts = [IS_OBJECT]
            parts += [f"exists(@.{jsonpath_string(k)} ? ({self.equals(v)}))" for k, v in value.items()]
            others = " && ".join(f"@.key != {self.var(k)}" for k in value)
            parts.append(f"!exists(@.keyvalue() ? ({others}))" if others else "!exists(@.keyvalue())")
            return jsonpath_and(parts)
        return f'(@.type() == "{json_type(value)}" && @ == {self.var(value)})'

    def regex(self, rx: Regex) -> str:
        # Flag "s" gives the same cflags as SQL's ~ (REG_ADVANCED, "." matches newline).
        flags = "s" + rx.flags.replace("s", "")
        return f'(@.type() == "string" && @ like_regex {jsonpath_string(rx.pattern)} flag "{flags}")'

    # ---- MongoDB path traversal ----

    @staticmethod
    def _access(kind: str, part: str) -> str | None:
        if kind == "object":
            return "@." + jsonpath_string(part)
        i = array_index(part)  # an array seen as a document has keys "0", "1", ...
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
                return f"({phi} || ({IS_ARRAY} && exists(@[*] ? ({phi}))))"
            return phi
        return (
            f"(({IS_OBJECT} && {self.walk('object', rest, phi, expand)})"
            f" || ({IS_ARRAY} && {self._array(rest, phi, expand)}))"
        )

    def _array(self, parts: Path, phi: str, expand: bool) -> str:
        """An array met mid-path: object elements continue the path; a numeric part also picks
        that element (not expanded if the path ends there)."""
        out = [f"exists(@[*] ? ({IS_OBJECT} && {self.walk('object', parts, phi, expand)}))"]
        i = array_index(parts[0])
        if i is not None:
            if len(parts) == 1:
                out.append(f"exists(@[{i}] ? ({phi}))")
            else:
                out.append(f"exists(@[{i}] ? ({self._step(parts[1:], phi, expand)}))")
        return jsonpath_or(out)

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
            f"(({IS_OBJECT} && {self.missing('object', rest)})"
            f" || ({IS_ARRAY} && {self._array_missing(rest)})"
            f' || (@.type() != "object" && @.type() != "array"))'
        )
        return _bounded(f"({absent} || exists({acc} ? ({inner})))")

    def _array_missing(self, parts: Path) -> str:
        out = [f"exists(@[*] ? ({IS_OBJECT} && {self.missing('object', parts)}))"]
        i = array_index(parts[0])
        if i is not None and len(parts) > 1:
            rest = parts[1:]
            out.append(
                f"exists(@[{i}] ? (({IS_OBJECT} && {self.missing('object', rest)})"
                f" || ({IS_ARRAY} && {self._array_missing(rest)})))"
            )
        return jsonpath_or(out)
