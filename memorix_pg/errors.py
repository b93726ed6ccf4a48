"""The library's exceptions.

Every mistake a caller can make surfaces as a subclass of :class:`MemorixError` that names
what was wrong; raw psycopg / SQLAlchemy errors never reach the caller for bad input.
Errors about bad arguments also subclass :class:`ValueError` so generic handlers still work.
"""

from __future__ import annotations

__all__ = [
    "CollectionNotFound",
    "ConfigurationError",
    "DatabaseUnavailable",
    "DecryptionError",
    "EmbedderMismatch",
    "FilterError",
    "InvalidInput",
    "MemorixError",
    "MemoryNotFound",
    "PermissionDenied",
    "PgvectorMissing",
    "SchemaViolation",
    "UndeclaredFilterKey",
]


class MemorixError(Exception):
    """Base class of every error raised by memorix-pg."""


class ConfigurationError(MemorixError, ValueError):
    """An option given to the library is not one it accepts (the message lists what is)."""


class InvalidInput(MemorixError, ValueError):
    """A text, metadata document, id or embedding cannot be stored as given; nothing was written."""


class FilterError(MemorixError, ValueError):
    """A filter document is malformed; the message names the path and the operator."""


class MemoryNotFound(MemorixError, KeyError):
    """No memory with the given id exists in the collection."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "memory not found"


class CollectionNotFound(MemorixError, KeyError):
    """The named collection does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "collection not found"


class EmbedderMismatch(MemorixError):
    """A collection is used with an embedder other than the one it was created with."""


class DatabaseUnavailable(MemorixError):
    """The PostgreSQL server cannot be reached; the message names the URL (password hidden)."""


class DecryptionError(MemorixError):
    """A stored value does not decrypt: the encryption key is wrong, or the data was altered."""


class PermissionDenied(MemorixError):
    """The database role may not do this (a privilege, or a row-level-security policy, says no)."""


class PgvectorMissing(MemorixError):
    """The server has no pgvector extension available; the message says how to install it."""


class SchemaViolation(InvalidInput):
    """A memory's metadata breaks the collection's metadata schema; nothing was written.

    ``index`` is the memory's position in the batch (0 for a single store or an update),
    ``path`` the JSON path of the offending value (``$.user_id``) and ``rule`` the schema
    keyword it broke (``type``, ``required``, ``pattern``...)."""

    def __init__(self, message: str, *, index: int, path: str, rule: str) -> None:
        super().__init__(message)
        self.index, self.path, self.rule = index, path, rule


class UndeclaredFilterKey(UserWarning):
    """A filter names a metadata key the collection's schema does not declare (a typo, often);
    warned with ``strict_filters="warn"``, raised as FilterError with ``"error"``."""
