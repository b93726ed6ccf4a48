"""Steps 2 and 3 of a move (see the package docstring): the replica identity, the publication,
slot and subscription, the collections created at the destination, and the waits for the
initial copy and for the copy to catch up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..database import redact_url
from ..errors import ConfigurationError, MemorixError
from ..index_builds import build_concurrently, memories_partitions
from ..models import SCHEMA
from ..steps import Admin, Operation, Result
from ..vector_index import create_index_sql, index_definition, index_name
from .preconditions import check_destination_collection, tenant_collections
from .state import (
    COLLECTIONS,
    CONFIG,
    HISTORY,
    MEMORIES,
    POLL,
    Move,
    TenantCollection,
    connect,
    scalar,
    timed_out,
)

__all__ = [
    "adopt_new_collections",
    "build_indexes",
    "prepare_destination",
    "start_replication",
    "wait_for_catch_up",
    "wait_for_initial_sync",
]

T = TypeVar("T")


def prepare_destination(move: Move) -> None:
    """Mark where the destination's history stood (an undo removes what follows) and create the
    collections it lacks."""
    with connect(move.destination) as dst:
        move.history_mark = int(
            scalar(dst, sql.SQL("SELECT coalesce(max(event_id), 0) FROM {}").format(HISTORY))
        )
        _create_collections(dst, move, [c for c in move.collections if not c.exists_at_destination])
        _ensure_months(move, dst)


def _ensure_months(move: Move, dst: psycopg.Connection[Any]) -> None:
    """A destination partitioned by month (migration 0011) gets the months of the tenant's
    memories, and the current and next month, before the copy brings them."""
    if scalar(dst, "SELECT to_regproc('memorix.ensure_month_partitions') IS NULL"):
        return
    with connect(move.source) as src:
        months = [
            r[0]
            for r in src.execute(
                sql.SQL(
                    "SELECT DISTINCT date_trunc('month', created_at, 'UTC') FROM {} WHERE tenant = %s"
                ).format(MEMORIES),
                (move.tenant,),
            )
        ]
    dst.execute(
        "SELECT memorix.ensure_month_partitions(m, m) FROM unnest(%s::timestamptz[]) AS m ORDER BY m",
        (months,),
    )
    dst.execute("SELECT memorix.ensure_month_partitions(now(), now() + interval '1 month')")


def _create_collections(dst: psycopg.Connection[Any], move: Move, missing: list[TenantCollection]) -> None:
    """The collections, with the source's ids and configuration (one transaction)."""
    if missing:
        names = ("id", *CONFIG, "created_at")
        with dst.transaction():
            for collection in missing:
                values = [
                    Jsonb(collection.config[n])
                    if n == "metadata_schema" and collection.config[n] is not None
                    else collection.config[n]
                    for n in names
                ]
                dst.execute(
                    sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})").format(
                        COLLECTIONS,
                        sql.SQL(", ").join(map(sql.Identifier, names)),
                        sql.SQL(", ").join(sql.Placeholder() * len(names)),
                    ),
                    values,
                )
                move.created.append(collection)
            # New collections there must never take an id a moved one holds.
            dst.execute(
                sql.SQL(
                    "SELECT setval(seq, greatest((SELECT max(id) FROM {}), "
                    "pg_sequence_last_value(seq::regclass))) "
                    "FROM (SELECT pg_get_serial_sequence(%s, 'id') AS seq) s"
                ).format(COLLECTIONS),
                (f"{SCHEMA}.collections",),
            )


def _replica_identity(src: psycopg.Connection[Any]) -> tuple[str, sql.Composable, bool]:
    """The table's replica identity (``relreplident``), the clause that restores it, and
    whether it covers ``tenant`` (a primary key, or replica-identity index, that includes it)."""
    row = src.execute(
        """
        SELECT c.relreplident,
               (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                WHERE i.indrelid = c.oid AND i.indisreplident),
               EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
                       ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                       WHERE i.indrelid = c.oid AND a.attname = 'tenant'
                         AND ((c.relreplident = 'd' AND i.indisprimary)
                              OR (c.relreplident = 'i' AND i.indisreplident)))
        FROM pg_class c WHERE c.oid = to_regclass(%s)
        """,
        (f"{SCHEMA}.memories",),
    ).fetchone()
    assert row is not None
    kind, index, tenant_in_key = row
    restore: sql.Composable = {
        "d": sql.SQL("DEFAULT"),
        "f": sql.SQL("FULL"),
        "n": sql.SQL("NOTHING"),
    }.get(kind) or sql.SQL("USING INDEX {}").format(sql.Identifier(index))
    return kind, restore, bool(tenant_in_key)


def _full_identity_works(src: psycopg.Connection[Any]) -> bool:
    """PostgreSQL 18 refuses UPDATE and DELETE under a REPLICA IDENTITY FULL whose stored
    generated columns (``text_search``) go unpublished, and publishing them fails at a
    subscriber whose column is generated too: FULL serves only older servers, or a table
    without such columns."""
    row = src.execute(
        "SELECT current_setting('server_version_num')::int < 180000 OR NOT EXISTS (SELECT 1 FROM "
        "pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
        "AND attgenerated = 's')",
        (f"{SCHEMA}.memories",),
    ).fetchone()
    return bool(row and row[0])


def start_replication(move: Move) -> None:
    """The replica identity set, the publication and slot made at the source, and the
    subscription at the destination, which starts the initial copy."""
    with connect(move.source) as src:
        kind, restore, covered = _replica_identity(src)
        if not covered:
            if not _full_identity_works(src):
                move.publish = "insert"
            elif kind != "f":
                src.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(MEMORIES))
                move.previous_identity = restore
        # Never TRUNCATE: it would empty the destination's table, every tenant's rows included.
        src.execute(
            # Via the root: a source partitioned by month publishes its rows as memories' own.
            sql.SQL(
                "CREATE PUBLICATION {} FOR TABLE {} WHERE (tenant = {}) "
                "WITH (publish = {}, publish_via_partition_root = true)"
            ).format(
                sql.Identifier(move.name), MEMORIES, sql.Literal(move.tenant), sql.Literal(move.publish)
            )
        )
        move.publication = True
        src.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (move.name,))
        move.slot = True
    with connect(move.destination) as dst:
        try:
            _subscribe(dst, move)
        except psycopg.OperationalError as exc:
            raise ConfigurationError(
                f"the destination server ({redact_url(move.destination)}) could not connect to the source "
                f"with {redact_url(move.conninfo)}: {str(exc).strip().splitlines()[0]}. Pass the address by "
                "which that server reaches the source as source_conninfo (--source-conninfo)"
            ) from None
        move.subscription_oid = int(
            scalar(dst, "SELECT oid FROM pg_subscription WHERE subname = %s", (move.name,))
        )


def _subscribe(dst: psycopg.Connection[Any], move: Move) -> None:
    """The slot exists already (made apart, see the package docstring): the subscription only
    uses it, and copies the rows that were there before it."""
    dst.execute(
        sql.SQL(
            "CREATE SUBSCRIPTION {name} CONNECTION {conninfo} PUBLICATION {name} "
            "WITH (copy_data = true, create_slot = false, slot_name = {slot})"
        ).format(
            name=sql.Identifier(move.name),
            conninfo=sql.Literal(move.conninfo),
            slot=sql.Literal(move.name),
        )
    )
    move.subscribed = True


def _raise_on_apply_errors(dst: psycopg.Connection[Any], move: Move) -> None:
    row = dst.execute(
        "SELECT apply_error_count + sync_error_count FROM pg_stat_subscription_stats WHERE subid = %s",
        (move.subscription_oid,),
    ).fetchone()
    if row is not None and row[0]:
        raise MemorixError(
            f"the destination ({redact_url(move.destination)}) could not copy the tenant's memories "
            f"({row[0]} replication errors; its server log says why, e.g. it cannot reach the source with "
            "the source URL: pass source_conninfo / --source-conninfo); nothing was changed"
        )


def _wait(move: Move, deadline: float, done: Callable[[], bool], what: str) -> None:
    with connect(move.destination) as dst:
        while not done():
            _raise_on_apply_errors(dst, move)
            if time.monotonic() > deadline:
                raise timed_out(move, what)
            time.sleep(POLL)


def wait_for_initial_sync(move: Move, deadline: float) -> None:
    """Until the subscription's initial copy is done (``pg_subscription_rel`` state ``r``)."""

    def synced() -> bool:
        with connect(move.destination) as dst:
            states = [
                r[0]
                for r in dst.execute(
                    "SELECT srsubstate FROM pg_subscription_rel WHERE srsubid = %s", (move.subscription_oid,)
                ).fetchall()
            ]
        return bool(states) and all(state == "r" for state in states)

    _wait(move, deadline, synced, "the initial copy did not finish")


def build_indexes(move: Move, collections: list[TenantCollection] | None = None) -> None:
    """The HNSW index of each collection created here, built once over the copied rows."""
    built = move.created if collections is None else collections
    with connect(move.destination) as dst:
        partitions = _admin_steps(dst, memories_partitions())
        for collection in built:
            if partitions:  # CONCURRENTLY is refused on a partitioned parent: each partition's, attached
                info = collection.info
                definition = index_definition(info, collection.count)
                _admin_steps(dst, build_concurrently(index_name(info), definition, partitions))
            else:
                dst.execute(create_index_sql(collection.info, concurrently=True, rows=collection.count))
        if built:
            dst.execute(sql.SQL("ANALYZE {}").format(MEMORIES))


def _admin_steps(conn: psycopg.Connection[Any], operation: Operation[T]) -> T:
    """An operation of :mod:`memorix_pg.index_builds` (admin steps only) on this autocommit connection."""
    value: Any = None
    while True:
        try:
            step = operation.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        assert isinstance(step, Admin)
        value = []
        for query in step.queries:
            cursor = conn.execute(query.text, query.params)
            value.append(Result(cursor.fetchall() if cursor.description else [], cursor.rowcount))


def adopt_new_collections(move: Move, src: psycopg.Connection[Any]) -> None:
    """A collection the tenant started to use during the move: its rows replicate with its id,
    so it is checked and created at the destination as the others were (or the move stops)."""
    known = {c.id for c in move.collections}
    new = [c for c in tenant_collections(src, move.tenant) if c.id not in known]
    if not new:
        return
    with connect(move.destination) as dst:
        for collection in new:
            check_destination_collection(dst, collection, move.destination)
        missing = [c for c in new if not c.exists_at_destination]
        _create_collections(dst, move, missing)
    move.collections.extend(new)
    build_indexes(move, missing)


def wait_for_catch_up(move: Move, lsn: str, deadline: float) -> None:
    """Until the slot's confirmed position reaches ``lsn`` at the source."""

    def caught_up() -> bool:
        with connect(move.source) as src:
            return bool(
                scalar(
                    src,
                    "SELECT coalesce(bool_or(confirmed_flush_lsn >= %s::pg_lsn), false) "
                    "FROM pg_replication_slots WHERE slot_name = %s",
                    (lsn, move.name),
                )
            )

    _wait(move, deadline, caught_up, "the destination did not catch up with the source")
