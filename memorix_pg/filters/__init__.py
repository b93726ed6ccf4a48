"""Compile MongoDB-style filter documents into SQLAlchemy boolean expressions over a JSONB column.

Why this exists: callers describe which memories they want with the query language they already
know (``{"importance": {"$gte": 2}, "tags": "work"}``); the engine must answer exactly as MongoDB
would, with every user value and key travelling as a bound parameter, and with the common
predicates written in the shapes PostgreSQL indexes can serve.

The work is split in two, over one AST (:mod:`.nodes`, the only thing the layers share):

1. :func:`parse` (:mod:`.parser`) turns a filter document into a small AST (:class:`Cond` = one
   operator applied to one dotted path, plus :class:`And` / :class:`Or` / :class:`Not` /
   :class:`Const`).  All validation happens here and raises
   :class:`~memorix_pg.errors.FilterError` naming the path and the operator; operands are
   normalized by :mod:`.values`.
2. The emitter (:mod:`.sql`) turns the AST into SQL.  Index-friendly shapes are used where they
   are exact (see "Index use" in :mod:`.sql`, and :func:`index_expression` in :mod:`.indexes`);
   everything else becomes one ``jsonb_path_exists(metadata, <jsonpath>, <vars>)`` call whose
   jsonpath (strict mode, :mod:`.jsonpath`) spells out MongoDB's path traversal.

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
"""

from __future__ import annotations

from memorix_pg.errors import FilterError as FilterError

from .indexes import TEXT_INDEX_PREFIX, index_expression
from .jsonpath import MAX_JSONPATH as MAX_JSONPATH
from .nodes import And, Cond, Const, ElemMatch, Not, Or, Regex, TextMatch
from .nodes import Node as Node
from .nodes import Path as Path
from .parser import MAX_FILTER_DEPTH as MAX_FILTER_DEPTH
from .parser import parse
from .sql import compile_filter
from .values import JSONValue as JSONValue
from .values import normalize_value

__all__ = [
    "TEXT_INDEX_PREFIX",
    "And",
    "Cond",
    "Const",
    "ElemMatch",
    "Not",
    "Or",
    "Regex",
    "TextMatch",
    "compile_filter",
    "index_expression",
    "normalize_value",
    "parse",
]
