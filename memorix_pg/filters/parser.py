"""Parser: filter document -> AST.

Why this exists: all validation happens here, before anything is emitted, and raises
:class:`~memorix_pg.errors.FilterError` naming the path and the operator; the emitters can then
trust the AST.  Negative operators (``$ne``, ``$nin``, ``$not``, ``$nor``, ``$exists: false``)
become :class:`~memorix_pg.filters.nodes.Not` of the positive form.
"""

from __future__ import annotations

import re
import string
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Final

from memorix_pg.errors import FilterError

from .nodes import And, Cond, Const, ElemMatch, Node, Not, Or, Path, Regex, TextMatch
from .values import JSONValue, at_path, check_text, normalize_value

MAX_FILTER_DEPTH: Final = 64  # dicts and lists; metadata nests 32 deep at most

_RANGE_OPS: Final = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}

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
        raise FilterError(f"a filter must be a dict, got {type(doc).__name__}{at_path(where)}")
    items: list[Node] = []
    for key, value in doc.items():
        if not isinstance(key, str):
            raise FilterError(f"filter keys must be strings, got {key!r}{at_path(where)}")
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
            raise FilterError(f"empty part in field path '{key}'{at_path(where)}")
        if part.startswith("$"):
            raise FilterError(f"field path '{key}' has a part starting with '$'{at_path(where)}")
        check_text(part, _join(where, key))
    return parts


def _parse_top_op(op: str, value: object, where: str) -> Node:
    if op in ("$and", "$or", "$nor"):
        if not isinstance(value, list | tuple) or not value:
            raise FilterError(f"operator '{op}' needs a non-empty list of filters{at_path(where)}")
        subs = []
        for sub in value:
            if not isinstance(sub, Mapping):
                raise FilterError(
                    f"operator '{op}' needs a list of dicts, got {type(sub).__name__}{at_path(where)}"
                )
            subs.append(_parse_doc(sub, where))
        if op == "$and":
            return _and(subs)
        if op == "$or":
            return _or(subs)
        return _and([Not(s) for s in subs])
    if op == "$not":  # our extension: {"$not": filter} == {"$nor": [filter]}
        if not isinstance(value, Mapping):
            raise FilterError(f"operator '$not' needs a filter dict{at_path(where)}")
        return Not(_parse_doc(value, where))
    if op == "$text":
        if not isinstance(value, Mapping) or set(value) != {"$search"}:
            raise FilterError(f"operator '$text' needs {{'$search': str}}{at_path(where)}")
        return TextMatch("search", _text_operand("$text.$search", value["$search"], where))
    if op == "$contains":
        return TextMatch("contains", _text_operand("$contains", value, where))
    raise FilterError(f"unknown operator '{op}'{at_path(where)}")


def _text_operand(op: str, value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FilterError(f"operator '{op}' needs a non-empty string, got {value!r:.80}{at_path(where)}")
    check_text(value, op)
    return value


def _has_text_match(node: Node) -> bool:
    if isinstance(node, TextMatch):
        return True
    if isinstance(node, And | Or):
        return any(_has_text_match(i) for i in node.items)
    if isinstance(node, Not):
        return _has_text_match(node.item)
    return False


def _is_operator_doc(value: object, where: str) -> bool:
    if not isinstance(value, Mapping) or not value:
        return False
    dollar = [isinstance(k, str) and k.startswith("$") for k in value]
    if all(dollar):
        return True
    if any(dollar):
        raise FilterError(f"cannot mix operators and field names in {dict(value)!r}{at_path(where)}")
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
        raise FilterError(f"operator '$options' needs '$regex'{at_path(where)}")
    for op, arg in ops.items():
        items.append(_parse_op(path, op, arg, ops, where))
    return _and(items)


def _parse_op(path: Path, op: str, arg: Any, ops: Mapping[str, Any], where: str) -> Node:
    def err(msg: str) -> FilterError:
        return FilterError(f"operator '{op}' {msg}{at_path(where)}")

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
        check_text(arg, where)
        return Cond(path, "regex", Regex(like_to_regex(arg, err), "i" if op == "$ilike" else ""))
    if op == "$contains":
        value = normalize_value(arg, where)
        return Cond(path, "elem", ElemMatch(Cond((), "eq", value), value_form=True))
    if op == "$between":
        if not isinstance(arg, list | tuple) or len(arg) != 2:
            raise err("needs a list [low, high]")
        return _and([_range(path, "gte", arg[0], err, where), _range(path, "lte", arg[1], err, where)])
    raise FilterError(f"unknown operator '{op}'{at_path(where)}")


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
    node = _parse_doc(arg, f"{where}.$elemMatch")
    if _has_text_match(node):
        raise err("cannot hold '$text' or '$contains', which test the memory's text")
    return ElemMatch(node, value_form=False)


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
    check_text(pattern, "")
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
        raise FilterError(f"regex patterns must be str{at_path(where)}")
    flags = ""
    if pattern.flags & re.IGNORECASE:
        flags += "i"
    if pattern.flags & re.MULTILINE:
        flags += "m"
    if pattern.flags & re.DOTALL:
        flags += "s"
    if pattern.flags & (re.VERBOSE | re.ASCII | re.LOCALE):
        raise FilterError(f"regex flags other than IGNORECASE/MULTILINE/DOTALL{at_path(where)}")
    check_text(pattern.pattern, where)
    return Regex(pattern.pattern, flags)


def like_to_regex(pattern: str, err: Any) -> str:
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
