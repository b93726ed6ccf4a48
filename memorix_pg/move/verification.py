"""Step 4 of a move (see the package docstring): the copy checked by counts and checksums per
collection, and the memories that still differ reconciled."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ..models import SCHEMA
from .state import HISTORY, MEMORIES, Move, connect

__all__ = ["checksums", "differing_collections", "reconcile"]

# Each of the tenant's memories summed up as one 64-bit number (a slice of an md5) over what a
# copy must carry bit for bit: id, text, metadata, vector, and the times an update changes.
_DIGEST = sql.SQL(
    "('x' || substr(md5(md5(id) || md5(text) || md5(metadata::text) "
    "|| md5(coalesce(embedding::text, embedding_half::text, '')) "
    "|| extract(epoch FROM updated_at)::text || coalesce(extract(epoch FROM expires_at)::text, '')"
    "), 1, 16))::bit(64)::bigint"
)
# Per collection: the tenant's memories counted, and the sum of their digests (order-free).
_CHECKSUMS = sql.SQL(
    "SELECT collection_id, count(*), sum({digest}::numeric) FROM {table} WHERE tenant = %s "
    "GROUP BY collection_id"
).format(digest=_DIGEST, table=MEMORIES)
_DIGESTS = sql.SQL(
    "SELECT collection_id, id, {digest} FROM {table} WHERE tenant = %s AND collection_id = ANY(%s)"
).format(digest=_DIGEST, table=MEMORIES)


def checksums(conn: psycopg.Connection[Any], tenant: str) -> dict[int, tuple[int, Any]]:
    """Per collection id: the tenant's memories counted, and the sum of their digests."""
    return {int(r[0]): (int(r[1]), r[2]) for r in conn.execute(_CHECKSUMS, (tenant,)).fetchall()}


def differing_collections(move: Move, source_sums: dict[int, tuple[int, Any]]) -> set[int]:
    """The collections whose count or checksum differs between the source and the copy."""
    with connect(move.destination) as dst:
        copy_sums = checksums(dst, move.tenant)
    return {
        cid for cid in source_sums.keys() | copy_sums.keys() if source_sums.get(cid) != copy_sums.get(cid)
    }


def reconcile(move: Move, src: psycopg.Connection[Any], collections: set[int], *, complete: bool) -> None:
    """In the ``collections`` whose checksums differ, make each of the tenant's memories at the
    destination that differs from the source's like the source's: deleted there when gone at
    the source, replaced when changed, and (``complete``, with writes paused and the copy caught
    up) added when missing. Without ``complete`` a missing memory is an insert still on its way,
    and left to replication.

    The destination is read first: a memory the source deletes between the two reads is then
    seen at the destination only, and deleted there too. The history events these writes make
    at the destination are removed in the same transaction."""
    with connect(move.destination) as dst:
        there = {(r[0], r[1]): r[2] for r in dst.execute(_DIGESTS, (move.tenant, sorted(collections)))}
    here = {(r[0], r[1]): r[2] for r in src.execute(_DIGESTS, (move.tenant, sorted(collections)))}
    stale = [key for key, digest in there.items() if here.get(key) != digest]
    fresh = [key for key, digest in here.items() if there.get(key) != digest and (complete or key in there)]
    if not stale and not fresh:
        return
    columns = _plain_columns(src)
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    as_text = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns)
    with connect(move.destination, autocommit=False) as dst, dst.transaction():
        dst.execute("SELECT set_config('memorix.operation', 'move', true)")
        for collection_id, ids in _by_collection(stale).items():
            dst.execute(
                sql.SQL("DELETE FROM {} WHERE tenant = %s AND collection_id = %s AND id = ANY(%s)").format(
                    MEMORIES
                ),
                (move.tenant, collection_id, ids),
            )
        with (
            dst.cursor() as target,
            target.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(MEMORIES, names)) as copy,
        ):
            for collection_id, ids in _by_collection(fresh).items():
                rows = src.execute(
                    sql.SQL(
                        "SELECT {} FROM {} WHERE tenant = %s AND collection_id = %s AND id = ANY(%s)"
                    ).format(as_text, MEMORIES),
                    (move.tenant, collection_id, ids),
                )
                for row in rows:
                    copy.write_row(row)
        dst.execute(
            sql.SQL("DELETE FROM {} WHERE event_id > %s AND tenant = %s AND operation = 'move'").format(
                HISTORY
            ),
            (move.history_mark, move.tenant),
        )


def _by_collection(keys: list[tuple[int, str]]) -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = {}
    for collection_id, memory_id in keys:
        grouped.setdefault(collection_id, []).append(memory_id)
    return grouped


def _plain_columns(src: psycopg.Connection[Any]) -> list[str]:
    """The columns of ``memories`` a row is written with (generated ones are computed)."""
    rows = src.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
        "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
        (f"{SCHEMA}.memories",),
    ).fetchall()
    return [r[0] for r in rows]
