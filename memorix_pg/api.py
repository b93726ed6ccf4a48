"""``MemoryAPI``: the seed's memory interface, served from PostgreSQL + pgvector.

Each method is one transaction; filters compile to SQL (:mod:`memorix_pg.filters`), so
counting, deleting and searching happen in the database, not in Python loops.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError

from .analytics import fold_groups, group_count_query
from .catalog import ensure_collection
from .database import check_pgvector, get_engine, resolve_database, unavailable
from .embedders import Embedder, resolve_embedder
from .errors import ConfigurationError, FilterError, InvalidInput, MemoryNotFound
from .filters import compile_filter
from .memory import Memory
from .migrate import current_revision, head_revision, upgrade
from .models import memories
from .search import SearchPlan, search
from .validation import (
    check_batch_lengths,
    check_collection_name,
    check_embedding,
    check_text,
    clean_metadata,
    parse_id,
)
from .vector_index import collection_predicate, score_from_distance

__all__ = ["VECTOR_STORES", "MemoryAPI"]

VECTOR_STORES = ("pgvector", "postgres", "postgresql")

_prepared: set[str] = set()
_prepared_lock = threading.Lock()


def _prepare_database(url: str, auto_migrate: bool) -> None:
    """Once per URL per process: check pgvector is there and bring the schema to head."""
    with _prepared_lock:
        if url in _prepared:
            return
        engine = get_engine(url)
        check_pgvector(engine, url)
        try:
            at_head = current_revision(engine) == head_revision()
        except (OperationalError, InterfaceError) as exc:
            raise unavailable(url, exc) from None
        if not at_head:
            if not auto_migrate:
                raise ConfigurationError(
                    "the memorix schema is not at the latest revision; run `memorix-pg migrate` "
                    "(or `alembic upgrade head`) with a role that may create tables, "
                    "or pass auto_migrate=True"
                )
            upgrade(url)
        _prepared.add(url)


def _content_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class MemoryAPI:
    """Store, retrieve, update and delete memories in one collection.

    ``database_url`` (else ``MEMORIX_DATABASE_URL``, else an embedded server) picks the
    database. ``distance`` (cosine, l2, ip) and ``precision`` (full, half) apply when the
    collection is created and are fixed after.
    """

    def __init__(
        self,
        vector_store: str = "pgvector",
        embedder: str | Embedder = "sentence-transformers",
        collection_name: str = "default",
        database_url: str | None = None,
        *,
        distance: str | None = None,
        precision: str | None = None,
        auto_migrate: bool = True,
    ) -> None:
        if vector_store not in VECTOR_STORES:
            raise ConfigurationError(
                f"vector_store {vector_store!r} is not supported; memorix-pg accepts "
                + ", ".join(repr(v) for v in VECTOR_STORES)
            )
        self.embedder: Embedder = resolve_embedder(embedder)
        self.collection_name = check_collection_name(collection_name)
        resolved = resolve_database(database_url)
        self._url = resolved.url
        self.embedded = resolved.embedded
        self._engine = get_engine(self._url)
        _prepare_database(self._url, auto_migrate)
        with self._db_errors():
            self._collection = ensure_collection(
                self._engine,
                self.collection_name,
                self.embedder.name,
                self.embedder.dim,
                distance=distance,
                precision=precision,
            )

    # -- plumbing -------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        """The libpq URL in use (the embedded server's too), for psql or direct SQL."""
        return self._url

    @property
    def collection_id(self) -> int:
        return self._collection.id

    @contextmanager
    def _db_errors(self) -> Iterator[None]:
        """Turn a lost server into DatabaseUnavailable and a bad regex into FilterError."""
        try:
            yield
        except (OperationalError, InterfaceError) as exc:
            raise unavailable(self._url, exc) from None
        except DataError as exc:
            code = getattr(exc.orig, "sqlstate", None)
            if code == "2201B":  # invalid_regular_expression
                raise FilterError(f"invalid $regex: {str(exc.orig).splitlines()[0]}") from None
            raise
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise unavailable(self._url, exc) from None
            raise

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._db_errors(), self._engine.begin() as conn:
            yield conn

    def _embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        vectors = np.asarray(self.embedder.embed(list(texts)), dtype=np.float32)
        if vectors.shape != (len(texts), self.embedder.dim):
            raise InvalidInput(
                f"embedder {self.embedder.name!r} returned shape {vectors.shape}, "
                f"expected ({len(texts)}, {self.embedder.dim})"
            )
        return vectors

    def _where(self, filter: Mapping[str, Any] | None) -> sa.ColumnElement[bool]:
        return sa.and_(collection_predicate(self._collection), compile_filter(filter))

    def _memory(self, row: Any, score: float | None = None) -> Memory:
        return Memory(
            id=str(row.id),
            text=row.text,
            metadata=dict(row.metadata),
            score=score,
            created_at=row.created_at,
            collection=self.collection_name,
        )

    # -- writing --------------------------------------------------------------------------

    def store(self, text: str, metadata: Mapping[str, Any] | None = None, id: str | None = None) -> str:
        """Store one memory and return its id (a UUID string). An existing id is replaced."""
        return self.store_batch([text], [metadata] if metadata is not None else None, [id] if id else None)[0]

    def store_batch(
        self,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
        embeddings: Sequence[Sequence[float]] | npt.NDArray[np.floating[Any]] | None = None,
    ) -> list[str]:
        """Store many memories in one transaction: all of them, or none if any is invalid."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInput("texts must be a list of str")
        check_batch_lengths(texts, metadatas=metadatas, ids=ids, embeddings=embeddings)
        if not texts:
            return []
        clean_texts = [check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
        clean_metas = [
            clean_metadata(m, f"metadatas[{i}]") for i, m in enumerate(metadatas or [None] * len(texts))
        ]
        row_ids = (
            [parse_id(v, f"ids[{i}]") for i, v in enumerate(ids)] if ids else [uuid.uuid4() for _ in texts]
        )
        if len(set(row_ids)) != len(row_ids):
            raise InvalidInput("ids contains the same id more than once")
        if embeddings is not None:
            vectors = np.stack(
                [check_embedding(e, self.embedder.dim, f"embeddings[{i}]") for i, e in enumerate(embeddings)]
            )
        else:
            vectors = self._embed(clean_texts)
        rows = [
            {
                "id": row_id,
                "collection_id": self._collection.id,
                "text": text,
                "embedding": vector,
                "metadata": meta,
                "content_hash": _content_hash(text),
            }
            for row_id, text, meta, vector in zip(row_ids, clean_texts, clean_metas, vectors, strict=True)
        ]
        # clock_timestamp(), not now(): rows of one batch get distinct, increasing times.
        stmt = pg_insert(memories).values(created_at=sa.func.clock_timestamp())
        stmt = stmt.on_conflict_do_update(
            index_elements=[memories.c.id],
            set_={
                "text": stmt.excluded.text,
                "embedding": stmt.excluded.embedding,
                "metadata": stmt.excluded.metadata,
                "content_hash": stmt.excluded.content_hash,
                "updated_at": sa.func.now(),
            },
            where=memories.c.collection_id == stmt.excluded.collection_id,
        ).returning(memories.c.id)
        with self._transaction() as conn:
            written = conn.execute(stmt, rows).fetchall()
            if len(written) != len(rows):
                taken = set(row_ids) - {r.id for r in written}
                raise InvalidInput(
                    f"id {next(iter(taken))} already belongs to another collection; nothing was stored"
                )
        return [str(r) for r in row_ids]

    def update(self, id: str, text: str | None = None, metadata: Mapping[str, Any] | None = None) -> Memory:
        """Merge ``metadata`` into the stored metadata (a key set to None is removed) and,
        when ``text`` is given, replace the text and its embedding. Returns the updated memory."""
        row_id = parse_id(id)
        patch = clean_metadata(metadata)
        removed = [k for k, v in patch.items() if v is None]
        kept = {k: v for k, v in patch.items() if v is not None}
        merged = memories.c.metadata.op("||")(sa.cast(kept, memories.c.metadata.type))
        values: dict[str, Any] = {
            "metadata": merged.op("-")(sa.cast(removed, sa.ARRAY(sa.Text))) if removed else merged,
            "updated_at": sa.func.now(),
        }
        if text is not None:
            new_text = check_text(text)
            values.update(
                text=new_text, embedding=self._embed([new_text])[0], content_hash=_content_hash(new_text)
            )
        stmt = (
            sa.update(memories)
            .where(collection_predicate(self._collection), memories.c.id == row_id)
            .values(**values)
            .returning(memories.c.id, memories.c.text, memories.c.metadata, memories.c.created_at)
        )
        with self._transaction() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            raise MemoryNotFound(f"no memory with id {id} in collection {self.collection_name!r}")
        return self._memory(row)

    def delete(self, id: str) -> bool:
        """Delete one memory; False when it did not exist."""
        row_id = parse_id(id)
        with self._transaction() as conn:
            result = conn.execute(
                sa.delete(memories).where(collection_predicate(self._collection), memories.c.id == row_id)
            )
        return bool(result.rowcount)

    def delete_by_filter(self, filter: Mapping[str, Any]) -> int:
        """Delete every memory matching ``filter`` in one statement; ``{}`` deletes the whole collection."""
        if filter is None:
            raise FilterError(
                "delete_by_filter needs a filter; pass {} to delete every memory in the collection"
            )
        where = self._where(filter)
        with self._transaction() as conn:
            result = conn.execute(sa.delete(memories).where(where))
        return int(result.rowcount)

    # -- reading --------------------------------------------------------------------------

    def get(self, id: str) -> Memory | None:
        row_id = parse_id(id)
        stmt = sa.select(memories.c.id, memories.c.text, memories.c.metadata, memories.c.created_at).where(
            collection_predicate(self._collection), memories.c.id == row_id
        )
        with self._transaction() as conn:
            row = conn.execute(stmt).first()
        return self._memory(row) if row is not None else None

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """How many memories match ``filter`` (all of the collection's without one): one COUNT."""
        where = self._where(filter)
        with self._transaction() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(memories).where(where)).scalar_one()
            )

    def retrieve(
        self,
        query: str | None,
        top_k: int = 5,
        filter: Mapping[str, Any] | None = None,
        embedding: Sequence[float] | npt.NDArray[np.floating[Any]] | None = None,
        *,
        exact: bool | None = None,
        ef_search: int | None = None,
    ) -> list[Memory]:
        """The ``top_k`` memories most similar to ``query`` among those matching ``filter``.

        With an empty query and no ``embedding`` nothing is ranked (and nothing embedded):
        the matching memories come back newest first, with ``score`` None.
        """
        return self._retrieve(query, top_k, filter, embedding, exact, ef_search)[0]

    def explain_retrieve(
        self,
        query: str | None,
        top_k: int = 5,
        filter: Mapping[str, Any] | None = None,
        embedding: Sequence[float] | npt.NDArray[np.floating[Any]] | None = None,
        *,
        exact: bool | None = None,
        ef_search: int | None = None,
    ) -> SearchPlan:
        """Which search path ``retrieve`` takes for these arguments, and why."""
        return self._retrieve(query, top_k, filter, embedding, exact, ef_search)[1]

    def _retrieve(
        self,
        query: str | None,
        top_k: int,
        filter: Mapping[str, Any] | None,
        embedding: Sequence[float] | npt.NDArray[np.floating[Any]] | None,
        exact: bool | None,
        ef_search: int | None,
    ) -> tuple[list[Memory], SearchPlan]:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidInput(f"top_k must be a positive int, got {top_k!r}")
        if query is not None and not isinstance(query, str):
            raise InvalidInput(f"query must be a str or None, got {type(query).__name__}")
        filter_clause = compile_filter(filter)
        if embedding is not None:
            vector = check_embedding(embedding, self.embedder.dim)
        elif query:
            vector = self._embed([check_text(query, "query")])[0]
        else:
            return self._newest(filter_clause, top_k), SearchPlan("recent", "empty query: newest first", None)
        with self._transaction() as conn:
            rows, plan = search(
                conn, self._collection, filter_clause, vector, top_k, exact=exact, ef_search=ef_search
            )
        distance = self._collection.distance
        return [self._memory(r, score_from_distance(distance, float(r.distance))) for r in rows], plan

    def _newest(self, filter_clause: sa.ColumnElement[bool], top_k: int) -> list[Memory]:
        stmt = (
            sa.select(memories.c.id, memories.c.text, memories.c.metadata, memories.c.created_at)
            .where(collection_predicate(self._collection), filter_clause)
            .order_by(memories.c.created_at.desc(), memories.c.id.desc())
            .limit(top_k)
        )
        with self._transaction() as conn:
            return [self._memory(r) for r in conn.execute(stmt)]

    def stats(self, group_by: str | None = None) -> dict[str, Any]:
        """``{"total": n, "groups": {value: count}}``: one GROUP BY over a metadata key.

        Memories without the key (or with a null) count under ``None``.
        """
        if group_by is None:
            return {"total": self.count(), "groups": {}}
        stmt = group_count_query(self._where(None), group_by)
        with self._transaction() as conn:
            groups = fold_groups(conn.execute(stmt))
        return {"total": sum(groups.values()), "groups": groups}

    def __repr__(self) -> str:
        return f"MemoryAPI(collection_name={self.collection_name!r}, embedder={self.embedder.name!r})"
