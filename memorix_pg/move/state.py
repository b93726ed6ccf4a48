"""What every step of a move shares: the state it builds up (so that an undo knows what to take
back), the tables it reads and writes, and connections of its own (see the package docstring)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..database import unavailable
from ..errors import MemorixError
from ..models import SCHEMA
from ..vector_index import CollectionInfo

__all__ = [
    "COLLECTIONS",
    "CONFIG",
    "HISTORY",
    "MEMORIES",
    "POLL",
    "Move",
    "TenantCollection",
    "connect",
    "scalar",
    "timed_out",
]

POLL = 0.2  # seconds between two looks at the replication's progress, or at a slot's sender

MEMORIES = sql.Identifier(SCHEMA, "memories")
COLLECTIONS = sql.Identifier(SCHEMA, "collections")
HISTORY = sql.Identifier(SCHEMA, "history")
# What makes two collections the same collection (created_at aside).
CONFIG = ("name", "embedder", "dimension", "distance", "precision", "text_search_config", "metadata_schema")


@dataclass
class TenantCollection:
    """A collection the tenant has memories in: its row at the source (the configuration the
    destination's copy must have), the tenant's count there, and whether the destination has it."""

    config: dict[str, Any]
    count: int
    exists_at_destination: bool = False

    @property
    def id(self) -> int:
        return int(self.config["id"])

    @property
    def info(self) -> CollectionInfo:
        c = self.config
        return CollectionInfo(
            c["id"],
            c["name"],
            c["embedder"],
            c["dimension"],
            c["distance"],
            c["precision"],
            c["text_search_config"],
        )


@dataclass
class Move:
    """The state a move builds up, so that an undo knows what to take back."""

    tenant: str
    source: str
    destination: str
    conninfo: str
    collections: list[TenantCollection]
    name: str = field(default_factory=lambda: f"memorix_move_{uuid.uuid4().hex[:16]}")
    history_mark: int = 0
    previous_identity: sql.Composable | None = None
    # What the publication carries: "insert, update, delete", or "insert" alone when the replica
    # identity cannot cover ``tenant`` (updates and deletes are then reconciled by the check).
    publish: str = "insert, update, delete"
    created: list[TenantCollection] = field(default_factory=list)
    publication: bool = False
    slot: bool = False
    subscription_oid: int | None = None
    subscribed: bool = False
    moved: dict[int, int] = field(default_factory=dict)  # memories per collection id, as checked


@contextlib.contextmanager
def connect(url: str, *, autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the move's own (an administrator's operation across two databases, not the
    per-database runner's), an unreachable server reported as the library reports it."""
    try:
        conn = psycopg.connect(
            url, autocommit=autocommit, connect_timeout=10, application_name="memorix-pg move"
        )
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from None
    with conn:
        yield conn


def scalar(conn: psycopg.Connection[Any], query: str | sql.Composed, params: Any = None) -> Any:
    """The first column of the one row ``query`` returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def timed_out(move: Move, what: str) -> MemorixError:
    """The error a move raises when ``what`` did not happen within its timeout (it is undone)."""
    return MemorixError(
        f"moving tenant {move.tenant!r}: {what} within the timeout; the move was undone and the source "
        "is unchanged (retry with a longer timeout, or when fewer writes arrive)"
    )
