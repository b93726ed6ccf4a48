"""Metadata schemas: a JSON Schema stored with a collection, checked on every write.

The schema lives in ``memorix.collections.metadata_schema`` so every process that opens the
collection enforces the same rules. Checking happens in the library, before a statement is
sent (the ``jsonschema`` package; PostgreSQL has no JSON Schema validator), on the plaintext
metadata: encrypted values are checked before they are sealed. A filter on a key the schema
does not declare is usually a typo that silently matches nothing, so it can warn or raise.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError

from .errors import ConfigurationError, FilterError, SchemaViolation, UndeclaredFilterKey
from .filters import And, Cond, Node, Not, Or, parse

__all__ = ["STRICT_FILTERS", "MetadataSchema", "SchemaProblem", "check_strict_filters"]

STRICT_FILTERS = ("error", "warn", "off")


@dataclass(frozen=True)
class SchemaProblem:
    """One stored memory whose metadata breaks the schema, as ``validate_existing`` reports it."""

    id: str
    path: str
    message: str


def check_strict_filters(value: object) -> str:
    if value not in STRICT_FILTERS:
        raise ConfigurationError(
            f"strict_filters must be one of {', '.join(map(repr, STRICT_FILTERS))}, got {value!r:.80}"
        )
    return str(value)


def _json_path(error: ValidationError) -> str:
    parts = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return "$" + parts


class MetadataSchema:
    """A checked JSON Schema (any draft ``jsonschema`` knows; the ``$schema`` key picks it)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        if not isinstance(schema, Mapping):
            raise ConfigurationError(f"schema must be a JSON Schema dict, got {type(schema).__name__}")
        document = dict(schema)
        cls = jsonschema.validators.validator_for(document)
        try:
            cls.check_schema(document)
        except SchemaError as exc:
            raise ConfigurationError(f"schema is not a valid JSON Schema: {exc.message}") from None
        self.document = document
        self._validator = cls(document)

    def errors(self, metadata: Mapping[str, Any]) -> Iterator[ValidationError]:
        return iter(sorted(self._validator.iter_errors(dict(metadata)), key=lambda e: list(e.absolute_path)))

    def check(self, metadata: Mapping[str, Any], index: int, where: str) -> None:
        """Raise SchemaViolation for the first rule ``metadata`` breaks."""
        for error in self.errors(metadata):
            path = _json_path(error)
            raise SchemaViolation(
                f"{where} breaks the metadata schema at {path} (rule {error.validator!r}): "
                f"{error.message:.200}",
                index=index,
                path=path,
                rule=str(error.validator),
            )

    def problems(self, row_id: str, metadata: Mapping[str, Any]) -> list[SchemaProblem]:
        return [SchemaProblem(row_id, _json_path(e), e.message) for e in self.errors(metadata)]

    def undeclared(self, path: tuple[str, ...]) -> bool:
        """Whether the schema's ``properties`` leave the dotted ``path`` undeclared. A level
        without ``properties`` (a free-form object, an array) declares whatever lies below it."""
        node: Any = self.document
        for part in path:
            if not isinstance(node, Mapping):
                return False
            if isinstance(node.get("items"), Mapping) and "properties" not in node:
                node = node["items"]  # an array of objects: the path continues in each element
                if part.isdigit():
                    continue
            properties = node.get("properties") if isinstance(node, Mapping) else None
            if not isinstance(properties, Mapping):
                return False
            if part not in properties:
                return True
            node = properties[part]
        return False

    def check_filter(self, filter: Mapping[str, Any] | None, mode: str) -> None:
        """Warn about (or refuse) a filter on keys the schema does not declare."""
        if mode == "off" or not filter:
            return
        unknown = sorted({".".join(p) for p in _paths(parse(filter)) if self.undeclared(p)})
        if not unknown:
            return
        message = (
            f"filter names metadata key(s) {', '.join(map(repr, unknown))} that the collection's "
            "schema does not declare"
        )
        if mode == "error":
            raise FilterError(message)
        warnings.warn(message, UndeclaredFilterKey, stacklevel=4)


def _paths(node: Node) -> Iterator[tuple[str, ...]]:
    """The dotted paths a filter's conditions test (an ``$elemMatch``'s inner paths are relative
    to the array, and are left out)."""
    if isinstance(node, Cond):
        if node.path:
            yield node.path
    elif isinstance(node, And | Or):
        for item in node.items:
            yield from _paths(item)
    elif isinstance(node, Not):
        yield from _paths(node.item)
