"""The AST between the parser and the emitters.

:func:`~memorix_pg.filters.parser.parse` produces it and the jsonpath and SQL emitters consume it;
it is the only thing the layers share.  :class:`Cond` is one operator applied to one dotted path;
:class:`And` / :class:`Or` / :class:`Not` / :class:`Const` combine them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

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
class TextMatch:
    """A test of the memory's text, not its metadata: ``search`` is full text search
    (``{"$text": {"$search": ...}}``, PostgreSQL's ``websearch_to_tsquery`` syntax), ``contains``
    a case-sensitive substring (top-level ``{"$contains": ...}``)."""

    kind: str
    value: str


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


Node: TypeAlias = Cond | TextMatch | And | Or | Not | Const
