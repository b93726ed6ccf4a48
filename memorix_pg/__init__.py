"""memorix-pg: a PostgreSQL + pgvector storage engine for AI memory."""

from .aio import AsyncMemoryAPI
from .api import VECTOR_STORES, CollectionSummary, MemoryAPI, list_collections
from .embedders import Embedder, HashEmbedder, SentenceTransformerEmbedder
from .errors import (
    CollectionNotFound,
    ConfigurationError,
    DatabaseUnavailable,
    DecryptionError,
    EmbedderMismatch,
    FilterError,
    InvalidInput,
    MemorixError,
    MemoryNotFound,
    PermissionDenied,
    PgvectorMissing,
)
from .memory import Memory

__all__ = [
    "VECTOR_STORES",
    "AsyncMemoryAPI",
    "CollectionNotFound",
    "CollectionSummary",
    "ConfigurationError",
    "DatabaseUnavailable",
    "DecryptionError",
    "Embedder",
    "EmbedderMismatch",
    "FilterError",
    "HashEmbedder",
    "InvalidInput",
    "MemorixError",
    "Memory",
    "MemoryAPI",
    "MemoryNotFound",
    "PermissionDenied",
    "PgvectorMissing",
    "SentenceTransformerEmbedder",
    "list_collections",
]

__version__ = "0.1.0"
