"""memorix-pg: a PostgreSQL + pgvector storage engine for AI memory."""

from .aio import AsyncMemoryAPI
from .api import VECTOR_STORES, CollectionSummary, ForgetReceipt, MemoryAPI, forget, list_collections
from .backup import BackupReport, backup, restore
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
    SchemaViolation,
    UndeclaredFilterKey,
)
from .history import HistoryEvent
from .memory import Memory
from .move import MoveReceipt, move_tenant
from .recall import QueryRecall, RecallReport
from .reembed import ReembedReport
from .schemas import SchemaProblem
from .search import SearchPlan

__all__ = [
    "VECTOR_STORES",
    "AsyncMemoryAPI",
    "BackupReport",
    "CollectionNotFound",
    "CollectionSummary",
    "ConfigurationError",
    "DatabaseUnavailable",
    "DecryptionError",
    "Embedder",
    "EmbedderMismatch",
    "FilterError",
    "ForgetReceipt",
    "HashEmbedder",
    "HistoryEvent",
    "InvalidInput",
    "MemorixError",
    "Memory",
    "MemoryAPI",
    "MemoryNotFound",
    "MoveReceipt",
    "PermissionDenied",
    "PgvectorMissing",
    "QueryRecall",
    "RecallReport",
    "ReembedReport",
    "SchemaProblem",
    "SchemaViolation",
    "SearchPlan",
    "SentenceTransformerEmbedder",
    "UndeclaredFilterKey",
    "backup",
    "forget",
    "list_collections",
    "move_tenant",
    "restore",
]

__version__ = "0.1.0"
