"""Storing, updating and deleting memories: dedupe, embed, encrypt, then hand rows to ingest.

A large text load overlaps the embedder with the database: while chunk n is written, chunk n+1
is embedded in a worker thread (the model releases the GIL while it computes), so the load
runs at close to the embedder's own rate. A load that dwarfs the collection drops the
collection's HNSW index and builds it once at the end (vector_index.deferred).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from psycopg import sql
from psycopg.types.json import Jsonb

from .crypto import Sealer
from .embedding import EMBED_BATCH, Embedding
from .ingest import MemoryRows, write_memories
from .models import SCHEMA, memories
from .planner import Planner
from .reads import MEMORY_COLUMNS, bounded_count
from .scope import Scope
from .statements import Filter, cached, compile_where
from .steps import Operation, Query, execute, fetch_one, offload
from .vector_index import deferred, embedding_column_name, vector_value

__all__ = [
    "DEFER_INDEX_MIN_ROWS",
    "NewMemories",
    "delete",
    "delete_where",
    "locked_metadata",
    "rotate",
    "set_expiry",
    "store",
    "update",
]

# A load of at least this many rows into a collection smaller than the load drops the
# collection's HNSW index and builds it once at the end: a parallel build costs ~0.2 ms a row,
# inserting into a live graph ~1.6 ms (measured: 3,000 texts ingested at 0.53x the embedder's
# own rate with the index live).
DEFER_INDEX_MIN_ROWS = 1_000
# Texts embedded per chunk of an overlapped load: one embedder call. The first chunk is
# embedded before anything can be written; each chunk is one COPY.
OVERLAP_CHUNK = EMBED_BATCH

_ALL = compile_where(None)
_embedder_threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memorix-embed")


@dataclass(frozen=True)
class NewMemories:
    """A validated batch: parallel lists, ``vectors`` when the caller gave embeddings."""

    texts: list[str]
    metadatas: list[dict[str, Any]]
    ids: list[str]
    hashes: list[bytes]
    vectors: npt.NDArray[np.float32] | None
    created_at: list[datetime] | None
    expires_at: datetime | None
    upsert: bool


def _first_new_positions(hashes: list[bytes], existing: dict[bytes, str]) -> list[int]:
    """Positions of texts to write under dedupe: not stored yet, and first of their kind in the batch."""
    seen: set[bytes] = set()
    keep = []
    for i, digest in enumerate(hashes):
        if digest not in existing and digest not in seen:
            keep.append(i)
        seen.add(digest)
    return keep


def _lock_and_find_hashes(scope: Scope, hashes: list[bytes]) -> Operation[dict[bytes, str]]:
    """Serialise concurrent dedupe stores of the same texts, then find those already stored."""
    # One lock per (collection, first byte of the hash): at most 256 whatever the batch size,
    # which keeps PostgreSQL's shared lock table from filling up on a large batch.
    keys = sorted({(scope.info.id << 8) | h[0] for h in hashes})
    lock = Query(b"SELECT pg_advisory_xact_lock(k) FROM unnest(%(keys)s::bigint[]) AS k", {"keys": keys})
    find = cached(
        ("stored hashes", scope.key),
        lambda _: (
            sa.select(memories.c.content_hash, memories.c.id)
            .where(
                scope.live(),
                memories.c.content_hash == sa.any_(sa.bindparam("hashes", type_=sa.ARRAY(sa.LargeBinary))),
            )
            .order_by(memories.c.created_at)
        ),
        _ALL,
        {**scope.params, "hashes": list(set(hashes))},
    )
    rows = (yield from execute(lock, find))[1].rows
    found: dict[bytes, str] = {}
    for digest, row_id in rows:
        found.setdefault(bytes(digest), row_id)
    return found


def _rows(
    new: NewMemories, sealer: Sealer, positions: list[int], vectors: npt.NDArray[np.float32]
) -> MemoryRows:
    ids = [new.ids[i] for i in positions]
    return MemoryRows(
        ids=ids,
        texts=[sealer.seal_text(row_id, new.texts[i]) for row_id, i in zip(ids, positions, strict=True)],
        vectors=vectors,
        metadatas=[
            sealer.seal_metadata(row_id, new.metadatas[i]) for row_id, i in zip(ids, positions, strict=True)
        ],
        hashes=[new.hashes[i] for i in positions],
        created_at=[new.created_at[i] for i in positions] if new.created_at else None,
    )


def _write(
    scope: Scope, new: NewMemories, sealer: Sealer, embedding: Embedding, keep: list[int], progress: bool
) -> Operation[None]:
    info, tenant = scope.info, scope.tenant

    def write(positions: list[int], vectors: npt.NDArray[np.float32], last: bool) -> Operation[None]:
        rows = _rows(new, sealer, positions, vectors)
        yield from write_memories(
            info, rows, expires_at=new.expires_at, upsert=new.upsert, tenant=tenant, commit=last
        )

    if new.vectors is not None:
        yield from write(keep, new.vectors[keep], True)
        return
    chunks = [keep[i : i + OVERLAP_CHUNK] for i in range(0, len(keep), OVERLAP_CHUNK)]
    texts = [[new.texts[i] for i in chunk] for chunk in chunks]
    bar = _embedding_bar(len(keep)) if progress else None
    try:
        vectors = yield from offload(embedding.embed, texts[0])
        for n, chunk in enumerate(chunks):
            if bar is not None:
                bar.update(len(chunk))
            ahead: Future[npt.NDArray[np.float32]] | None = None
            if n + 1 < len(chunks):
                ahead = _embedder_threads.submit(embedding.embed, texts[n + 1])
            try:
                yield from write(chunk, vectors, n + 1 == len(chunks))
            finally:
                if ahead is not None and not ahead.done():
                    ahead.cancel()
            if ahead is not None:
                vectors = yield from offload(ahead.result)
    finally:
        if bar is not None:
            bar.close()


def _embedding_bar(total: int) -> Any:
    """One progress bar for a load's texts, ticking as each chunk's vectors arrive."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="embedding", unit="text")


def _store(
    scope: Scope, new: NewMemories, sealer: Sealer, embedding: Embedding, dedupe: bool, progress: bool
) -> Operation[list[str]]:
    existing: dict[bytes, str] = {}
    if dedupe:
        existing = yield from _lock_and_find_hashes(scope, new.hashes)
    keep = _first_new_positions(new.hashes, existing) if dedupe else list(range(len(new.texts)))
    result = [existing.get(h) or new.ids[i] for i, h in enumerate(new.hashes)]
    if dedupe:  # an in-batch repeat takes the id of its first occurrence
        first_id: dict[bytes, str] = {}
        for i, h in enumerate(new.hashes):
            result[i] = existing.get(h) or first_id.setdefault(h, new.ids[i])
    if keep:
        yield from _write(scope, new, sealer, embedding, keep, progress)
    yield from execute(final=True)  # sends nothing when the write committed already
    return result


def store(
    scope: Scope,
    planner: Planner,
    new: NewMemories,
    sealer: Sealer,
    embedding: Embedding,
    *,
    dedupe: bool,
    progress: bool = False,
) -> Operation[list[str]]:
    """Store the batch in one transaction: all of it, or nothing."""
    body = _store(scope, new, sealer, embedding, dedupe, progress)
    incoming = len(new.texts)
    if incoming >= DEFER_INDEX_MIN_ROWS:
        collection_size = yield from bounded_count(scope, _ALL, incoming, live=False)
        yield from execute(final=True)
        if collection_size < incoming:
            body = deferred(scope.info, body, collection_size + incoming)
    ids = yield from body
    planner.changed_rows(incoming)
    return ids


def update(
    scope: Scope,
    row_id: str,
    kept: dict[str, Any],
    removed: list[str],
    text: tuple[str, npt.NDArray[np.float32], bytes] | None,
) -> Operation[tuple[Any, ...] | None]:
    """Merge ``kept`` into the metadata, drop the ``removed`` keys and, with ``text`` (sealed
    text, vector, hash), replace the text and its embedding. The updated row, or None."""
    merged = memories.c.metadata.op("||")(sa.bindparam("patch", type_=memories.c.metadata.type))
    values: dict[str, Any] = {
        "metadata": merged.op("-")(sa.bindparam("removed", type_=sa.ARRAY(sa.Text))) if removed else merged,
        "updated_at": sa.func.now(),
    }
    params: dict[str, Any] = {**scope.params, "id": row_id, "patch": Jsonb(kept), "removed": removed}
    if text is not None:
        sealed, vector, digest = text
        values.update(
            text=sa.bindparam("new_text"),
            **{embedding_column_name(scope.info): sa.bindparam("vector")},
            content_hash=sa.bindparam("hash"),
        )
        params.update(new_text=sealed, vector=vector_value(scope.info, vector), hash=digest)
    query = cached(
        ("update", scope.key, bool(removed), text is not None),
        lambda _: (
            sa.update(memories)
            .where(scope.live(), memories.c.id == sa.bindparam("id"))
            .values(**values)
            .returning(*MEMORY_COLUMNS)
        ),
        _ALL,
        params,
    )
    return (yield from fetch_one(query, final=True))


def set_expiry(scope: Scope, row_ids: list[str], expires_at: datetime | None) -> Operation[int]:
    """Set ``expires_at`` (None: never) of the scope's live memories among ``row_ids``: one UPDATE.

    An expired memory stays expired (it is gone for every read already). ``updated_at`` is left
    alone: the content did not change.
    """
    query = cached(
        ("set expiry", scope.key),
        lambda _: (
            sa.update(memories)
            .where(
                scope.live(),
                memories.c.id == sa.any_(sa.bindparam("ids", type_=sa.ARRAY(memories.c.id.type))),
            )
            .values(expires_at=sa.bindparam("expires_at", type_=memories.c.expires_at.type))
        ),
        _ALL,
        {**scope.params, "ids": row_ids, "expires_at": expires_at},
    )
    return int((yield from execute(query, final=True))[0].rowcount)


def delete(scope: Scope, planner: Planner, row_id: str) -> Operation[bool]:
    query = cached(
        ("delete", scope.key),
        lambda _: sa.delete(memories).where(scope.rows(), memories.c.id == sa.bindparam("id")),
        _ALL,
        {**scope.params, "id": row_id},
    )
    deleted = (yield from execute(query, final=True))[0].rowcount
    planner.changed_rows(deleted)
    return bool(deleted)


def delete_where(
    scope: Scope, planner: Planner, where: sa.ColumnElement[bool], f: Filter, key: Any, params: dict[str, Any]
) -> Operation[int]:
    """One DELETE of the rows matching ``where`` (built on ``f``; its shape named by ``key``)."""
    query = cached(
        ("delete where", scope.key, key),
        lambda _: sa.delete(memories).where(where),
        f,
        {**scope.params, **params},
    )
    deleted = (yield from execute(query, final=True))[0].rowcount
    planner.changed_rows(deleted)
    return int(deleted)


def rotate(scope: Scope, old: Sealer, new: Sealer, batch: int) -> Operation[int]:
    """Re-encrypt the scope's memories from ``old`` to ``new`` (and recompute their dedup hashes)
    in one transaction, ``batch`` rows per UPDATE."""
    select = cached(
        ("rotate rows", scope.key),
        lambda _: (
            sa.select(memories.c.id, memories.c.text, memories.c.metadata)
            .where(scope.rows())
            .order_by(memories.c.id)
            .with_for_update()
        ),
        _ALL,
        scope.params,
    )
    rows = (yield from execute(select))[0].rows
    rewrite = Query(
        sql.SQL(
            "UPDATE {table} AS m SET text = u.text, metadata = u.metadata, content_hash = u.hash "
            "FROM unnest(%(ids)s::text[], %(texts)s::text[], %(metas)s::jsonb[], %(hashes)s::bytea[]) "
            "AS u(id, text, metadata, hash) "
            "WHERE m.tenant = %(tenant)s AND m.collection_id = %(cid)s AND m.id = u.id"
        ).format(table=sql.Identifier(SCHEMA, "memories")),
    )
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        texts, metas, hashes = [], [], []
        for row_id, stored, metadata in part:
            text = old.open_text(row_id, stored)
            texts.append(new.seal_text(row_id, text))
            metas.append(Jsonb(new.seal_metadata(row_id, old.open_metadata(row_id, dict(metadata)))))
            hashes.append(new.content_hash(text))
        params = {
            "ids": [r[0] for r in part],
            "texts": texts,
            "metas": metas,
            "hashes": hashes,
            "cid": scope.info.id,
            **scope.params,
        }
        yield from execute(Query(rewrite.text, params))
    yield from execute(final=True)
    return len(rows)


def locked_metadata(scope: Scope, row_id: str) -> Operation[dict[str, Any] | None]:
    """The live memory's stored metadata, its row locked until the transaction ends (an update
    checks the merged result against the schema before writing it), or None."""
    query = cached(
        ("locked metadata", scope.key),
        lambda _: (
            sa.select(memories.c.metadata)
            .where(scope.live(), memories.c.id == sa.bindparam("id"))
            .with_for_update()
        ),
        _ALL,
        {**scope.params, "id": row_id},
    )
    row = yield from fetch_one(query)
    return dict(row[0]) if row is not None else None
