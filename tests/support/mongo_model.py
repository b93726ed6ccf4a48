"""A small, independent Python model of MongoDB's classic matcher (``mongo_match``), and the
rewriting of filters into plain MongoDB that mongomock gets right (``to_mongomock``) with the
mongomock deviations it excuses (``excused_deviation``).

The model follows the path iterator of src/mongo/db/matcher/path.cpp and the leaf/array
expressions, written from MongoDB's documented semantics, not from memorix_pg.filters; it
understands our extensions ($like, $ilike, $contains, $between, top-level $not) natively. The
numbered deviations are listed in the docstring of tests/test_filters_oracle.py.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from typing import Any

# --------------------------------------------------------------------------------------------
# The reference model of MongoDB matching
# --------------------------------------------------------------------------------------------


class _Missing:
    def __init__(self, why: str) -> None:
        self.why = why  # "key": a missing key; "scalar": a scalar or null met mid-path

    def __repr__(self) -> str:
        return f"MISSING({self.why})"


MISSING_KEY = _Missing("key")
MISSING_SCALAR = _Missing("scalar")


def _is_missing(v: object) -> bool:
    return isinstance(v, _Missing)


def candidates(doc: Any, parts: list[str], expand: bool = True) -> list[Any]:
    """The values MongoDB's path iterator yields for ``parts`` in ``doc`` (a dict, or a list seen
    as a document whose keys are "0", "1", ... inside a document-form $elemMatch)."""
    cur = doc
    for i, part in enumerate(parts):
        if isinstance(cur, dict):
            if part not in cur:
                return [MISSING_KEY]
            value = cur[part]
        else:  # list root
            if part.isdigit() and str(int(part)) == part and int(part) < len(cur):
                value = cur[int(part)]
            else:
                return [MISSING_KEY]
        last = i == len(parts) - 1
        if isinstance(value, list):
            if last:
                return [*value, value] if expand else [value]
            return _array_candidates(value, parts[i + 1 :], expand)
        if last:
            return [value]
        if isinstance(value, dict):
            cur = value
            continue
        return [MISSING_SCALAR]
    raise AssertionError("empty path")


def _array_candidates(arr: list[Any], parts: list[str], expand: bool) -> list[Any]:
    out: list[Any] = []
    head = parts[0]
    for idx, elem in enumerate(arr):
        offset = head == str(idx)
        if isinstance(elem, dict):
            out += candidates(elem, parts, expand)
            if offset:
                out += [elem] if len(parts) == 1 else candidates(elem, parts[1:], expand)
        elif offset:
            if len(parts) == 1:
                out.append(elem)
            elif isinstance(elem, list):
                out += _array_candidates(elem, parts[1:], expand)
    return out


def _jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def json_eq(a: Any, b: Any) -> bool:
    """MongoDB equality, except that object key order is ignored (JSONB cannot keep it)."""
    if _is_missing(a) or _jtype(a) != _jtype(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_eq(a[k], b[k]) for k in a)
    return bool(a == b)


def _cmp(a: Any, op: str, b: Any) -> bool:
    if _is_missing(a) or _jtype(a) != _jtype(b) or _jtype(b) not in ("number", "string", "bool"):
        return False
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def _norm(v: Any) -> Any:
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def like_to_python(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    out = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars)))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("(?s)^" + "".join(out) + r"\Z", re.IGNORECASE if ignore_case else 0)


def _py_regex(pattern: str | re.Pattern[str], options: str = "") -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        return pattern
    flags = re.DOTALL  # PostgreSQL's "." matches newline
    if "i" in options:
        flags |= re.IGNORECASE
    if "m" in options:
        flags |= re.MULTILINE
    return re.compile(pattern, flags)


def _regex_hit(v: Any, rx: re.Pattern[str]) -> bool:
    return isinstance(v, str) and rx.search(v) is not None


def mongo_match(flt: Mapping[str, Any], doc: Any) -> bool:
    """Does MongoDB (plus our extensions) select ``doc`` with ``flt``?"""
    for key, spec in flt.items():
        if key == "$and":
            ok = all(mongo_match(f, doc) for f in spec)
        elif key == "$or":
            ok = any(mongo_match(f, doc) for f in spec)
        elif key == "$nor":
            ok = not any(mongo_match(f, doc) for f in spec)
        elif key == "$not":
            ok = not mongo_match(spec, doc)
        else:
            ok = _field_match(doc, key.split("."), spec)
        if not ok:
            return False
    return True


def is_ops(spec: Any) -> bool:
    return isinstance(spec, dict) and bool(spec) and all(k.startswith("$") for k in spec)


def _field_match(doc: Any, parts: list[str], spec: Any) -> bool:
    if isinstance(spec, re.Pattern):
        return any(_regex_hit(c, spec) for c in candidates(doc, parts))
    if not is_ops(spec):
        return _eq(doc, parts, _norm(spec))
    return all(_op_match(doc, parts, op, arg, spec) for op, arg in spec.items())


def _eq(doc: Any, parts: list[str], value: Any) -> bool:
    cands = candidates(doc, parts)
    if value is None:
        return any(c is None or _is_missing(c) for c in cands)
    return any(json_eq(c, value) for c in cands)


def _op_match(doc: Any, parts: list[str], op: str, arg: Any, spec: Mapping[str, Any]) -> bool:
    arg = arg if isinstance(arg, re.Pattern) else _norm(arg)
    if op == "$eq":
        return _eq(doc, parts, arg)
    if op == "$ne":
        return not _eq(doc, parts, arg)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if arg is None:
            return op in ("$gte", "$lte") and _eq(doc, parts, None)
        return any(_cmp(c, op, arg) for c in candidates(doc, parts))
    if op == "$between":
        return _op_match(doc, parts, "$gte", arg[0], spec) and _op_match(doc, parts, "$lte", arg[1], spec)
    if op in ("$in", "$nin"):
        hit = any(
            _field_match(doc, parts, v) if isinstance(v, re.Pattern) else _eq(doc, parts, v) for v in arg
        )
        return hit if op == "$in" else not hit
    if op == "$exists":
        return any(not _is_missing(c) for c in candidates(doc, parts)) == arg
    if op == "$size":
        return any(isinstance(c, list) and len(c) == arg for c in candidates(doc, parts, expand=False))
    if op == "$all":
        if not arg:
            return False
        return all(
            _op_match(doc, parts, "$elemMatch", v["$elemMatch"], spec)
            if isinstance(v, dict) and "$elemMatch" in v
            else _eq(doc, parts, v)
            for v in arg
        )
    if op in ("$elemMatch", "$contains"):
        sub = {"$eq": arg} if op == "$contains" else arg
        return any(
            isinstance(c, list) and any(_elem_ok(e, sub) for e in c)
            for c in candidates(doc, parts, expand=False)
        )
    if op == "$not":
        if isinstance(arg, re.Pattern):
            return not _field_match(doc, parts, arg)
        return not _field_match(doc, parts, arg)
    if op == "$regex":
        rx = _py_regex(arg, spec.get("$options", ""))
        return any(_regex_hit(c, rx) for c in candidates(doc, parts))
    if op == "$options":
        return True
    if op in ("$like", "$ilike"):
        rx = like_to_python(arg, op == "$ilike")
        return any(_regex_hit(c, rx) for c in candidates(doc, parts))
    raise AssertionError(op)


def _elem_ok(elem: Any, sub: Mapping[str, Any]) -> bool:
    value_form = bool(sub) and all(k.startswith("$") and k not in ("$and", "$or", "$nor") for k in sub)
    if not value_form:  # document form: elements that are documents (or arrays, keyed "0", "1"...)
        return isinstance(elem, dict | list) and mongo_match(sub, elem)
    return all(_single(elem, op, arg, sub) for op, arg in sub.items())


def _single(e: Any, op: str, arg: Any, spec: Mapping[str, Any]) -> bool:
    """matchesSingleElement: one array element against one operator, no array expansion."""
    arg = arg if isinstance(arg, re.Pattern) else _norm(arg)
    if op == "$eq":
        return json_eq(e, arg)
    if op == "$ne":
        return not json_eq(e, arg)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if arg is None:
            return op in ("$gte", "$lte") and e is None
        return _cmp(e, op, arg)
    if op == "$between":
        return _single(e, "$gte", arg[0], spec) and _single(e, "$lte", arg[1], spec)
    if op in ("$in", "$nin"):
        hit = any(_regex_hit(e, v) if isinstance(v, re.Pattern) else json_eq(e, v) for v in arg)
        return hit if op == "$in" else not hit
    if op == "$exists":
        return bool(arg)
    if op == "$size":
        return isinstance(e, list) and len(e) == arg
    if op == "$all":
        return bool(arg) and all(json_eq(e, v) for v in arg)
    if op in ("$elemMatch", "$contains"):
        sub = {"$eq": arg} if op == "$contains" else arg
        return isinstance(e, list) and any(_elem_ok(x, sub) for x in e)
    if op == "$not":
        if isinstance(arg, re.Pattern):
            return not _regex_hit(e, arg)
        return not all(_single(e, o, a, arg) for o, a in arg.items())
    if op == "$regex":
        return _regex_hit(e, _py_regex(arg, spec.get("$options", "")))
    if op == "$options":
        return True
    if op in ("$like", "$ilike"):
        return _regex_hit(e, like_to_python(arg, op == "$ilike"))
    raise AssertionError(op)


# --------------------------------------------------------------------------------------------
# mongomock: rewriting and excused deviations
# --------------------------------------------------------------------------------------------

NEVER: dict[str, Any] = {"zz_never_present": {"$exists": True}}


def to_mongomock(flt: Mapping[str, Any]) -> dict[str, Any]:
    """Rewrite our extensions and the operators mongomock gets wrong into equivalent MongoDB."""
    conds: list[dict[str, Any]] = []
    for key, spec in flt.items():
        if key in ("$and", "$or", "$nor"):
            conds.append({key: [to_mongomock(f) for f in spec]})
        elif key == "$not":  # deviation 2
            conds.append({"$nor": [to_mongomock(spec)]})
        else:
            conds.extend(_field_to_mongomock(key, spec))
    if len(conds) == 1:
        return conds[0]
    return {"$and": conds} if conds else {}


def _field_to_mongomock(path: str, spec: Any) -> list[dict[str, Any]]:
    if isinstance(spec, re.Pattern) or not is_ops(spec):
        return [_eq_to_mongomock(path, spec)]
    out: list[dict[str, Any]] = []
    for op, arg in spec.items():
        arg = arg if isinstance(arg, re.Pattern) else _norm(arg)
        if op == "$eq":
            out.append(_eq_to_mongomock(path, arg))
        elif op == "$ne":  # deviation 5
            out.append({"$nor": [_eq_to_mongomock(path, arg)]})
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            if arg is None:  # deviation 4
                out.append({path: None} if op in ("$gte", "$lte") else NEVER)
            else:
                out.append({path: {op: arg}})
        elif op == "$between":
            out += _field_to_mongomock(path, {"$gte": arg[0], "$lte": arg[1]})
        elif op == "$in":  # deviation 6
            out.append({"$or": [_eq_to_mongomock(path, v) for v in arg]} if arg else NEVER)
        elif op == "$nin":
            if arg:
                out.append({"$nor": [_eq_to_mongomock(path, v) for v in arg]})
        elif op == "$exists":
            out.append({path: {"$exists": True}} if arg else {"$nor": [{path: {"$exists": True}}]})
        elif op == "$size":  # deviation 7
            out.append({path: {"$size": arg, "$type": "array"}})
        elif op == "$all":  # deviation 3
            if not arg:
                out.append(NEVER)
            for v in arg:
                if isinstance(v, dict) and "$elemMatch" in v:
                    out.append({path: {"$elemMatch": _elem_to_mongomock(v["$elemMatch"])}})
                else:
                    out.append(_eq_to_mongomock(path, v))
        elif op == "$elemMatch":
            out.append({path: {"$elemMatch": _elem_to_mongomock(arg)}})
        elif op == "$contains":
            out.append({path: {"$elemMatch": {"$eq": arg}}})
        elif op == "$not":
            positive = [{path: arg}] if isinstance(arg, re.Pattern) else _field_to_mongomock(path, arg)
            out.append({"$nor": [positive[0] if len(positive) == 1 else {"$and": positive}]})
        elif op == "$regex":
            rx: dict[str, Any] = {"$regex": arg}
            if spec.get("$options"):
                rx["$options"] = spec["$options"]
            out.append({path: rx})
        elif op == "$options":
            pass
        elif op in ("$like", "$ilike"):
            out.append({path: like_to_python(arg, op == "$ilike")})
        else:
            raise AssertionError(op)
    return out or [{}]


def _eq_to_mongomock(path: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):  # deviation 11: {path: {}} would not be a positive condition
        return {path: {"$eq": value}}
    return {path: value if isinstance(value, re.Pattern) else _norm(value)}


def _elem_to_mongomock(sub: Mapping[str, Any]) -> dict[str, Any]:
    value_form = bool(sub) and all(k.startswith("$") and k not in ("$and", "$or", "$nor") for k in sub)
    if not value_form:
        return to_mongomock(sub)
    return _value_ops_to_mongomock(sub)


def _value_ops_to_mongomock(sub: Mapping[str, Any]) -> dict[str, Any]:
    """The value form of $elemMatch tests each element on its own, so operators stay in place."""
    out: dict[str, Any] = {}
    for op, arg in sub.items():
        if op in ("$like", "$ilike"):
            out["$regex"] = like_to_python(arg, op == "$ilike")
        elif op == "$between":
            out["$gte"], out["$lte"] = _norm(arg[0]), _norm(arg[1])
        elif op == "$contains":
            out["$elemMatch"] = {"$eq": _norm(arg)}
        elif op == "$size":  # deviation 7
            out["$size"], out["$type"] = arg, "array"
        elif op == "$not" and isinstance(arg, Mapping):
            out["$not"] = _value_ops_to_mongomock(arg)
        elif op == "$elemMatch":
            out["$elemMatch"] = _elem_to_mongomock(arg)
        elif op == "$regex":  # deviation 13
            out["$regex"] = _py_regex(arg, sub.get("$options", ""))
        elif op == "$options":
            pass
        else:
            out[op] = arg if isinstance(arg, re.Pattern) else _norm(arg)
    if next(iter(out)) == "$not":  # deviation 12
        out = {"$exists": True, **out}
    return out


def _paths(flt: Any) -> Iterator[tuple[str, Any]]:
    """(path, operator spec) of every field condition, including inside logical operators."""
    if not isinstance(flt, Mapping):
        return
    for key, spec in flt.items():
        if key in ("$and", "$or", "$nor"):
            for f in spec:
                yield from _paths(f)
        elif key == "$not":
            yield from _paths(spec)
        elif not key.startswith("$"):
            yield key, spec


def _uses_op(spec: Any, ops: set[str]) -> bool:
    if isinstance(spec, Mapping):
        return any(k in ops or _uses_op(v, ops) for k, v in spec.items())
    if isinstance(spec, list):
        return any(_uses_op(v, ops) for v in spec)
    return False


def _tests_null(spec: Any) -> bool:
    """Can this condition be satisfied by a missing value (directly or under a negation)?"""
    if spec is None:
        return True
    if isinstance(spec, Mapping):
        return any(_tests_null(v) for v in spec.values())
    if isinstance(spec, list):
        return any(_tests_null(v) for v in spec)
    return False


def excused_deviation(flt: Mapping[str, Any], doc: dict[str, Any]) -> str | None:
    """The documented mongomock deviation that explains a disagreement on ``doc``, if any."""
    for path, spec in _paths(flt):
        parts = path.split(".")
        if any(p.isdigit() for p in parts):
            return "index-path"  # deviation 9
        cands = candidates(doc, parts)
        if any(c is MISSING_SCALAR for c in cands) and _tests_null(spec):
            return "scalar-mid-path"  # deviation 8
        if _uses_op(spec, {"$elemMatch", "$contains"}):
            for c in candidates(doc, parts, expand=False):
                if isinstance(c, list) and any(not isinstance(e, dict) for e in c):
                    return "elemmatch-nested"  # deviation 10
    return None
