"""Writing memories: one prepared INSERT over arrays for a few rows, binary COPY for many.

A batch of up to ``COPY_MIN_ROWS`` rows is one ``INSERT ... SELECT FROM unnest(arrays)``: one
statement text for any batch size, so it is prepared once and sent in one round trip. Larger
batches use binary COPY (measured ~60k rows/s against ~3.7k for SQLAlchemy's INSERT).

Rows with caller-given ids are upserted (``ON CONFLICT (tenant, collection_id, id) DO UPDATE``:
ids are unique per tenant and collection, and the tenant leads the key so that the table can be
distributed by it) so that re-running an interrupted import neither loses nor duplicates
anything; COPY cannot upsert, so those rows go through a temporary table first. The same id
under another tenant is another memory: an upsert never reaches another tenant's row.
``updated_at`` is taken from ``EXCLUDED`` (the row's own stamp), not ``now()``: Citus needs
the expressions of ``DO UPDATE SET`` to be immutable.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.types.json import Jsonb

from . import time_partitions
from .models import SCHEMA, TS_CONFIG_SETTING
from .scope import stored_tenant
from .steps import Copy, Operation, Query, execute, fetch_one
from .vector_index import CollectionInfo, embedding_column_name, vector_value

__all__ = ["COPY_MIN_ROWS", "MemoryRows", "write_memories"]

# Below this a single INSERT over arrays is as fast and needs no temporary table.
COPY_MIN_ROWS = 256

_TABLE = sql.Identifier(SCHEMA, "memories")
# A partitioned write's retry point (see _write_partitioned).
_SAVEPOINT = Query(b"SAVEPOINT memorix_partition")
_COLUMNS = ("id", "collection_id", "text", "<vector>", "metadata", "content_hash", "expires_at", "tenant")


@dataclass(frozen=True)
class MemoryRows:
    """Validated, embedded rows ready to write (parallel lists)."""

    ids: list[str]
    texts: list[str]
    vectors: npt.NDArray[np.float32]
    metadatas: list[dict[str, Any]]
    hashes: list[bytes]
    # When given (an import), kept as is; otherwise the server's clock stamps each row.
    created_at: list[datetime] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _columns(info: CollectionInfo) -> list[str]:
    # A new row's updated_at is its created_at (the column default, now(), is the transaction's
    # start: earlier than the row's own clock_timestamp()).
    names = [embedding_column_name(info) if c == "<vector>" else c for c in _COLUMNS]
    return [*names, "created_at", "updated_at"]


def _upsert_clause(info: CollectionInfo) -> sql.Composed:
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
        for c in ("text", embedding_column_name(info), "metadata", "content_hash", "expires_at")
    )
    return sql.SQL(
        "ON CONFLICT (tenant, collection_id, id) DO UPDATE SET {updates}, updated_at = EXCLUDED.updated_at"
    ).format(updates=updates)


@functools.lru_cache(maxsize=256)
def _insert_sql(info: CollectionInfo, upsert: bool) -> bytes:
    """One statement for any batch of up to COPY_MIN_ROWS rows (composed once per collection).
    The vectors go as a binary array (``%b``): formatting them as text cost ~0.13 ms a row.

    Rows with ids the library generated (UUID4) cannot conflict, so they are inserted without
    ``ON CONFLICT``: an upsert fires the UPDATE history trigger too, measured at +1.5 ms for a
    one-row store (2.66 ms against 1.11)."""
    vector_type = sql.SQL("halfvec[]" if info.precision == "half" else "vector[]")
    return (
        sql.SQL(
            # MATERIALIZED: clock_timestamp() runs once per row, for created_at and updated_at alike.
            "WITH u AS MATERIALIZED (SELECT v.*, coalesce(v.created_at, clock_timestamp()) AS at "
            "FROM unnest(%(ids)s::text[], %(texts)s::text[], %(vectors)b::{vector_type}, "
            "%(metadatas)s::jsonb[], %(hashes)s::bytea[], %(created)s::timestamptz[]) "
            "AS v(id, text, embedding, metadata, content_hash, created_at)) "
            "INSERT INTO {table} ({columns}) "
            "SELECT u.id, %(collection_id)s::bigint, u.text, u.embedding, u.metadata, u.content_hash, "
            "%(expires_at)s::timestamptz, %(tenant)s::text, u.at, u.at FROM u "
            "{upsert} RETURNING id"
        )
        .format(
            table=_TABLE,
            columns=sql.SQL(", ").join(map(sql.Identifier, _columns(info))),
            vector_type=vector_type,
            upsert=_upsert_clause(info) if upsert else sql.SQL(""),
        )
        .as_bytes(None)
    )


@functools.lru_cache(maxsize=256)
def _partitioned_upsert_sql(info: CollectionInfo) -> bytes:
    """:func:`_insert_sql`'s upsert on a table partitioned by month (time_partitions.py): the
    same rows, updated where their id is stored and inserted elsewhere."""
    vector_type = sql.SQL("halfvec[]" if info.precision == "half" else "vector[]")
    columns = _columns(info)
    prefix = sql.SQL(
        "WITH u AS MATERIALIZED (SELECT v.*, coalesce(v.created_at, clock_timestamp()) AS at "
        "FROM unnest(%(ids)s::text[], %(texts)s::text[], %(vectors)b::{vector_type}, "
        "%(metadatas)s::jsonb[], %(hashes)s::bytea[], %(created)s::timestamptz[]) "
        "AS v(id, text, embedding, metadata, content_hash, created_at)), "
        "r ({columns}) AS MATERIALIZED (SELECT u.id, %(collection_id)s::bigint, u.text, u.embedding, "
        "u.metadata, u.content_hash, %(expires_at)s::timestamptz, %(tenant)s::text, u.at, u.at FROM u),"
    ).format(vector_type=vector_type, columns=sql.SQL(", ").join(map(sql.Identifier, columns)))
    statement = time_partitions.upsert_statement(
        sql.Identifier("r"), columns, embedding_column_name(info), prefix
    )
    return statement.as_bytes(None)


def _vector_values(info: CollectionInfo, vectors: npt.NDArray[np.float32]) -> list[Any]:
    return [vector_value(info, v) for v in vectors]


def _insert(
    info: CollectionInfo,
    rows: MemoryRows,
    expires_at: datetime | None,
    tenant: str | None,
    commit: bool,
    upsert: bool,
) -> Operation[int]:
    params = {
        "collection_id": info.id,
        "expires_at": expires_at,
        "tenant": stored_tenant(tenant),
        "ids": rows.ids,
        "texts": rows.texts,
        "vectors": _vector_values(info, rows.vectors),
        "metadatas": [Jsonb(m) for m in rows.metadatas],
        "hashes": rows.hashes,
        # clock_timestamp() per row when not given: rows of one batch get distinct, increasing times.
        "created": rows.created_at if rows.created_at is not None else [None] * len(rows),
    }
    settings = ts_config_settings(info)
    if not info.time_partitioned:
        query = Query(_insert_sql(info, upsert), params, prepare=True)
        return len((yield from execute(query, final=commit, settings=settings))[0].rows)
    if not upsert:
        query = Query(_insert_sql(info, False), params, prepare=True)
        return len((yield from execute(_SAVEPOINT, query, settings=settings))[1].rows)
    lock = time_partitions.upsert_lock(info.id, stored_tenant(tenant))
    query = Query(_partitioned_upsert_sql(info), params, prepare=True)
    return len((yield from execute(_SAVEPOINT, lock, query, settings=settings))[2].rows)


def ts_config_settings(info: CollectionInfo) -> tuple[tuple[str, str], ...]:
    """``SET LOCAL memorix.ts_config`` for a collection whose configuration is not ``simple``:
    the default of ``memories.ts_config``, from which ``text_search`` is generated (migration 0008)."""
    return () if info.text_search_config == "simple" else ((TS_CONFIG_SETTING, info.text_search_config),)


def _copy_records(
    info: CollectionInfo, rows: MemoryRows, expires_at: datetime | None, tenant: str | None
) -> Iterator[tuple[Any, ...]]:
    assert rows.created_at is not None
    owner = stored_tenant(tenant)
    for row_id, text, vector, meta, digest, created_at in zip(
        rows.ids, rows.texts, rows.vectors, rows.metadatas, rows.hashes, rows.created_at, strict=True
    ):
        value = vector_value(info, vector)
        yield (row_id, info.id, text, value, Jsonb(meta), digest, expires_at, owner, created_at, created_at)


def _copy_rows(
    info: CollectionInfo, rows: MemoryRows, expires_at: datetime | None, upsert: bool, tenant: str | None
) -> Operation[int]:
    if info.time_partitioned:
        yield from execute(_SAVEPOINT)  # a missing month is retried from here, staging table and all
    if settings := ts_config_settings(info):
        yield from execute(Query(b"SELECT 1"), settings=settings)
    if rows.created_at is None:
        # COPY cannot call clock_timestamp() per row: stamp distinct, increasing times here,
        # as the INSERT path does, so that "newest first" follows the batch order.
        start = yield from fetch_one(Query(b"SELECT clock_timestamp()"))
        assert start is not None
        rows = MemoryRows(
            rows.ids,
            rows.texts,
            rows.vectors,
            rows.metadatas,
            rows.hashes,
            [start[0] + timedelta(microseconds=i) for i in range(len(rows))],
        )
    columns = sql.SQL(", ").join(map(sql.Identifier, _columns(info)))
    vector = "halfvec" if info.precision == "half" else "vector"
    types = ("text", "int8", "text", vector, "jsonb", "bytea", "timestamptz", "text") + ("timestamptz",) * 2
    target = sql.Identifier("memorix_ingest") if upsert else _TABLE
    if upsert:
        yield from execute(
            Query(
                sql.SQL("CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                    target, columns, _TABLE
                )
            )
        )
    copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, columns)
    written: int = yield Copy(copy, types, _copy_records(info, rows, expires_at, tenant))
    if not upsert:
        return written
    drop = Query(sql.SQL("DROP TABLE {}").format(target))
    if info.time_partitioned:
        lock = time_partitions.upsert_lock(info.id, stored_tenant(tenant))
        merged = time_partitions.upsert_statement(
            target, _columns(info), embedding_column_name(info), sql.SQL("WITH")
        )
        results = yield from execute(lock, Query(merged), drop)
        return len(results[1].rows)
    merge = sql.SQL("INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} {upsert}").format(
        table=_TABLE, columns=columns, staging=target, upsert=_upsert_clause(info)
    )
    results = yield from execute(Query(merge), drop)
    return results[0].rowcount


def write_memories(
    info: CollectionInfo,
    rows: MemoryRows,
    *,
    expires_at: datetime | None = None,
    upsert: bool = True,
    tenant: str | None = None,
    commit: bool = False,
) -> Operation[None]:
    """Write ``rows`` into collection ``info`` inside the operation's transaction.

    ``commit``: new ids (no upsert) cannot conflict, so a small batch's INSERT may carry the
    COMMIT in its own round trip.
    """
    if info.time_partitioned:
        yield from _write_partitioned(info, rows, expires_at, upsert, tenant)
    elif len(rows) >= COPY_MIN_ROWS:
        yield from _copy_rows(info, rows, expires_at, upsert, tenant)
    else:
        yield from _insert(info, rows, expires_at, tenant, commit and not upsert, upsert)


def _write_partitioned(
    info: CollectionInfo, rows: MemoryRows, expires_at: datetime | None, upsert: bool, tenant: str | None
) -> Operation[None]:
    """:func:`write_memories` on a table partitioned by month: the rows' own months are ensured
    first; a write that still finds a month missing (its partition dropped since this process
    ensured it) is undone to its savepoint, the months ensured, and run once more."""
    if rows.created_at is not None:
        yield from time_partitions.ensure_months(rows.created_at)

    def write() -> Operation[int]:
        if len(rows) >= COPY_MIN_ROWS:
            return (yield from _copy_rows(info, rows, expires_at, upsert, tenant))
        return (yield from _insert(info, rows, expires_at, tenant, False, upsert))

    try:
        yield from write()
        return
    except pg_errors.CheckViolation as exc:
        if not time_partitions.missing_partition(exc):
            raise
    yield from execute(Query(b"ROLLBACK TO SAVEPOINT memorix_partition"))
    now = yield from fetch_one(Query(b"SELECT now()"))
    assert now is not None
    yield from time_partitions.ensure_months([*(rows.created_at or []), now[0]])
    yield from write()
