"""Move one tenant's memories to another database, online, by PostgreSQL logical replication.

``move_tenant`` copies every memory of the tenant (in every collection it uses, archives
included: an archive is a collection like any other) from the source to the destination while
the source keeps serving, checks the copy, and only then deletes the tenant at the source:

1. **Preconditions, before anything changes.** The source has ``wal_level = logical`` and its
   schema at the latest revision; the tenant is a valid name and has memories there; source and
   destination are not the same database (same cluster identifier and database name); the
   destination is migrated (as ``MemoryAPI`` does), holds no memory of the tenant yet, and each
   collection the tenant uses is either absent there (it is created with the *same* id and
   configuration, and the destination's id sequence is moved past it) or present with the same
   id and configuration and no memory id the tenant's would collide with. Anything else is
   refused with the fix named.
2. **Replica identity**, read from the catalog at run time. A publication filtered on ``tenant``
   that carries UPDATE and DELETE makes PostgreSQL refuse those statements on the table (every
   tenant's) unless the replica identity covers ``tenant``. A primary key (or replica-identity
   index) that includes ``tenant`` covers it as it is. Otherwise the table gets ``REPLICA
   IDENTITY FULL`` for the move (a brief ACCESS EXCLUSIVE lock) and its previous identity back
   at the end, on success and on failure alike; but PostgreSQL 18 refuses UPDATE and DELETE
   under FULL when a stored generated column (``text_search``) goes unpublished, and publishing
   it fails at a subscriber whose column is generated too. On such a table (the schema at
   migration 0008, on PostgreSQL 18) the identity is left alone and the publication carries
   inserts only; the updates and deletes made during the copy are then applied by the check
   (step 4). TRUNCATE is never published: it would empty the destination's whole table.
3. **Online copy.** ``CREATE PUBLICATION ... FOR TABLE memorix.memories WHERE (tenant = '...')``
   (publications take no parameters: the tenant is composed as a literal) and a logical slot on
   the source; ``CREATE SUBSCRIPTION ... WITH (copy_data = true)`` on the destination, which
   connects to the source with the source URL (``source_conninfo`` when the destination server
   reaches the source by another address). The slot is made apart from the subscription, and
   the subscription is detached from it before it is dropped, so that both also work when the
   two databases share a cluster. The apply worker fires no trigger, so the copy writes no
   history at the destination. The HNSW index of each collection created at the destination is
   built after the initial copy, CONCURRENTLY (a live HNSW index makes the copy ~100x slower).
4. **Check.** After the initial sync (``pg_subscription_rel`` state ``r``) and catch-up (the
   slot's confirmed position reaching the source's current WAL position), each collection's
   count of the tenant's memories and a checksum (the sum of one 64-bit digest per memory over
   id, text, metadata, vector and its update and expiry times, computed by the same SQL on both
   sides) must match. When they do not, the memories whose digests differ are reconciled: a
   memory gone at the source is deleted at the destination, a changed one replaced by the
   source's (a missing one is an insert still on its way, left to replication). Then the check
   is made once more with the source's ``memories`` locked against writes (SHARE ROW EXCLUSIVE:
   reads go on, every tenant's writes wait for the moments of the cutover), after catching up
   to that point and reconciling whatever still differs, so no write slips in between the check
   and the delete. Writers may keep the copy from matching: the whole repeats until it matches
   or ``timeout`` passes. A collection the tenant starts to use meanwhile is checked and
   created at the destination like the others.
5. **Cutover**, still under that lock: the subscription is dropped, the tenant's history
   events are copied to the destination (new event ids there, ``at`` and everything else kept:
   history is per memory, and the memories now live there), and in the same source transaction
   the publication, the tenant's memories and its history rows are deleted; then the slot is
   dropped and the replica identity restored. Source and destination are two databases, so
   this is not one transaction: if the source's commit failed after the history was copied,
   the undo below removes the copy again.

If anything fails before the source transaction commits, everything is undone: subscription,
slots and publication dropped, the replica identity restored, and at the destination the
copied memories, the history events the move caused and the collections it created removed
(the id sequence stays moved past them, which is harmless). The source is left as it was.

This is an administrator's operation across two databases, so it runs on psycopg connections
of its own, as :mod:`memorix_pg.backup` does, not through the per-database operation runner.
The role needs what logical replication needs: a superuser, or the tables' owner with the
``REPLICATION`` attribute at the source and ``pg_create_subscription`` at the destination; it
must see every tenant's rows (row-level security binds other roles). Encrypted texts move as
stored: open the destination with the same key.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .database import libpq_url, redact_url, resolve_database, unavailable
from .errors import ConfigurationError, InvalidInput, MemorixError, PermissionDenied
from .index_builds import build_concurrently, memories_partitions
from .models import SCHEMA
from .steps import Admin, Operation, Result
from .validation import check_tenant
from .vector_index import CollectionInfo, create_index_sql, drop_index_sql, index_definition, index_name

__all__ = ["DEFAULT_TIMEOUT", "MoveReceipt", "move_tenant"]

logger = logging.getLogger("memorix_pg")
T = TypeVar("T")

DEFAULT_TIMEOUT = 600.0
_POLL = 0.2
_ID_CHUNK = 5_000

_MEMORIES = sql.Identifier(SCHEMA, "memories")
_COLLECTIONS = sql.Identifier(SCHEMA, "collections")
_HISTORY = sql.Identifier(SCHEMA, "history")

# What makes two collections the same collection (created_at aside).
_CONFIG = ("name", "embedder", "dimension", "distance", "precision", "text_search_config", "metadata_schema")
_HISTORY_COLUMNS = (
    "collection_id",
    "memory_id",
    "tenant",
    "operation",
    "text_hash_before",
    "text_hash_after",
    "metadata",
    "actor",
    "at",
    "forgotten",
)

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
).format(digest=_DIGEST, table=_MEMORIES)
_DIGESTS = sql.SQL(
    "SELECT collection_id, id, {digest} FROM {table} WHERE tenant = %s AND collection_id = ANY(%s)"
).format(digest=_DIGEST, table=_MEMORIES)


@dataclass(frozen=True)
class MoveReceipt:
    """What :func:`move_tenant` did: memories moved per collection name, history events
    copied, the seconds it took, and whether the tenant was deleted at the source."""

    tenant: str
    collections: dict[str, int]
    history_events: int
    seconds: float
    source_cleaned: bool

    @property
    def total(self) -> int:
        return sum(self.collections.values())


@dataclass
class _Collection:
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
class _Move:
    """The state a move builds up, so that an undo knows what to take back."""

    tenant: str
    source: str
    destination: str
    conninfo: str
    collections: list[_Collection]
    name: str = field(default_factory=lambda: f"memorix_move_{uuid.uuid4().hex[:16]}")
    history_mark: int = 0
    previous_identity: sql.Composable | None = None
    # What the publication carries: "insert, update, delete", or "insert" alone when the replica
    # identity cannot cover ``tenant`` (updates and deletes are then reconciled by the check).
    publish: str = "insert, update, delete"
    created: list[_Collection] = field(default_factory=list)
    publication: bool = False
    slot: bool = False
    subscription_oid: int | None = None
    subscribed: bool = False
    moved: dict[int, int] = field(default_factory=dict)  # memories per collection id, as checked


def move_tenant(
    tenant: str,
    to: str,
    database_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    source_conninfo: str | None = None,
    clean_source: bool = True,
) -> MoveReceipt:
    """Move every memory of ``tenant`` from the database at ``database_url`` (else
    ``MEMORIX_DATABASE_URL``, else the embedded server) to the database at ``to``, online.

    The copy is checked (counts and checksums per collection) before the tenant is deleted at
    the source; on any failure the source is left as it was and the destination cleaned.
    ``timeout`` (seconds) bounds the wait for the copy to catch up and match. ``source_conninfo``
    is how the destination *server* reaches the source (default: the source URL).
    ``clean_source=False`` copies and checks but keeps the tenant at the source.
    """
    checked = check_tenant(tenant)
    if checked is None:
        raise InvalidInput("move_tenant needs a tenant: memories without a tenant cannot be moved alone")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(to, str) or not to:
        raise ConfigurationError("move_tenant needs the destination's database URL (to=)")
    if source_conninfo is not None and (not isinstance(source_conninfo, str) or not source_conninfo):
        raise ConfigurationError(
            f"source_conninfo must be a non-empty connection string, got {source_conninfo!r}"
        )
    if not isinstance(clean_source, bool):
        raise InvalidInput(f"clean_source must be a bool, got {clean_source!r}")
    destination = libpq_url(to)
    source = resolve_database(database_url).url
    started = time.monotonic()
    deadline = started + float(timeout)
    try:
        move = _preflight(checked, source, destination, source_conninfo)
        history_events = _run(move, deadline, clean_source)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied(
            f"moving a tenant needs a superuser, or the tables' owner with the REPLICATION attribute at "
            f"the source and pg_create_subscription at the destination: {str(exc).strip()}"
        ) from None
    except psycopg.Error as exc:  # e.g. no free replication slot, a connection lost half-way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MemorixError(
            f"moving tenant {checked!r} stopped: {reason}; nothing of the move is left and the source "
            "is unchanged"
        ) from None
    return MoveReceipt(
        tenant=checked,
        collections={c.config["name"]: move.moved.get(c.id, 0) for c in move.collections},
        history_events=history_events,
        seconds=round(time.monotonic() - started, 3),
        source_cleaned=clean_source,
    )


@contextlib.contextmanager
def _connect(url: str, *, autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(
            url, autocommit=autocommit, connect_timeout=10, application_name="memorix-pg move"
        )
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from None
    with conn:
        yield conn


def _one(conn: psycopg.Connection[Any], query: str | sql.Composed, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


# -- preconditions --------------------------------------------------------------------------


def _preflight(tenant: str, source: str, destination: str, conninfo: str | None) -> _Move:
    from .core import prepare_database  # the library's migrations, as MemoryAPI runs them
    from .database import get_engine
    from .migrate import current_revision, head_revision

    with _connect(source) as src:
        level = _one(src, "SHOW wal_level")
        if level != "logical":
            raise ConfigurationError(
                f"the source server ({redact_url(source)}) has wal_level = {level!r}; moving a tenant uses "
                "logical replication, which needs wal_level = logical: run ALTER SYSTEM SET wal_level = "
                "logical there and restart that server"
            )
        if current_revision(get_engine(source)) != head_revision():
            raise ConfigurationError(
                f"the memorix schema at the source ({redact_url(source)}) is not at the latest revision; "
                "run `memorix-pg migrate` there first"
            )
        collections = _tenant_collections(src, tenant)
        if not collections:
            raise InvalidInput(
                f"tenant {tenant!r} has no memories at {redact_url(source)}; nothing to move (check the "
                "tenant's spelling and the source URL)"
            )
        here = _database_identity(src)
    with _connect(destination) as dst:
        if _database_identity(dst) == here:
            raise ConfigurationError(
                f"the source and the destination are the same database ({redact_url(destination)}); "
                "give another database as the destination"
            )
    prepare_database(destination, True)
    with _connect(destination) as dst:
        already = _one(dst, sql.SQL("SELECT count(*) FROM {} WHERE tenant = %s").format(_MEMORIES), (tenant,))
        if already:
            raise InvalidInput(
                f"tenant {tenant!r} already has {already} memories at the destination "
                f"({redact_url(destination)}); a move needs a destination without the tenant"
            )
        for collection in collections:
            _check_destination_collection(dst, collection, destination)
        if any(c.exists_at_destination for c in collections) and not _key_includes_tenant(dst):
            with _connect(source) as src:
                _check_id_collisions(src, dst, tenant, [c for c in collections if c.exists_at_destination])
    return _Move(tenant, source, destination, conninfo or source, collections)


def _tenant_collections(src: psycopg.Connection[Any], tenant: str) -> list[_Collection]:
    columns = sql.SQL(", ").join(sql.Identifier("c", col) for col in ("id", *_CONFIG, "created_at"))
    rows = src.execute(
        sql.SQL(
            "SELECT {columns}, n.count FROM (SELECT collection_id, count(*) FROM {memories} "
            "WHERE tenant = %s GROUP BY collection_id) n JOIN {collections} c ON c.id = n.collection_id "
            "ORDER BY c.name"
        ).format(columns=columns, memories=_MEMORIES, collections=_COLLECTIONS),
        (tenant,),
    ).fetchall()
    names = ("id", *_CONFIG, "created_at")
    return [_Collection(dict(zip(names, row[:-1], strict=True)), int(row[-1])) for row in rows]


def _database_identity(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """The cluster's system identifier and the database's name: equal for the same database,
    however it was reached."""
    row = conn.execute(
        "SELECT (SELECT system_identifier FROM pg_control_system()), current_database()"
    ).fetchone()
    assert row is not None
    return tuple(row)


def _check_destination_collection(dst: psycopg.Connection[Any], collection: _Collection, url: str) -> None:
    config = collection.config
    columns = sql.SQL(", ").join(sql.Identifier(col) for col in ("id", *_CONFIG))
    rows = dst.execute(
        sql.SQL("SELECT {} FROM {} WHERE id = %s OR name = %s").format(columns, _COLLECTIONS),
        (config["id"], config["name"]),
    ).fetchall()
    if not rows:
        return
    there = dict(zip(("id", *_CONFIG), rows[0], strict=True))
    differences = [
        f"{key} {there[key]!r} instead of {config[key]!r}"
        for key in ("id", *_CONFIG)
        if there[key] != config[key]
    ]
    if len(rows) > 1 or differences:
        raise ConfigurationError(
            f"collection {config['name']!r} (id {config['id']}) of the tenant conflicts with a collection "
            f"at the destination ({redact_url(url)}): it has "
            f"{'; '.join(differences) or 'another collection with that name'}. Move into a database where "
            "that collection is absent or the same (same id and configuration)"
        )
    collection.exists_at_destination = True


def _key_includes_tenant(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``memories``' primary key includes ``tenant`` (ids are then unique per tenant)."""
    return bool(
        _one(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY (i.indkey::int2[]) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
            "AND a.attname = 'tenant')",
            (f"{SCHEMA}.memories",),
        )
    )


def _check_id_collisions(
    src: psycopg.Connection[Any], dst: psycopg.Connection[Any], tenant: str, shared: list[_Collection]
) -> None:
    """With the key ``(collection_id, id)``, memory ids are unique per collection whatever the
    tenant: one of another tenant's ids at the destination would stop the copy half-way, so it
    is found first (compared in chunks of ids)."""
    for collection in shared:
        with src.cursor() as cursor:
            cursor.execute(
                sql.SQL("SELECT id FROM {} WHERE tenant = %s AND collection_id = %s").format(_MEMORIES),
                (tenant, collection.id),
            )
            while chunk := [row[0] for row in cursor.fetchmany(_ID_CHUNK)]:
                clash = dst.execute(
                    sql.SQL("SELECT id FROM {} WHERE collection_id = %s AND id = ANY(%s) LIMIT 1").format(
                        _MEMORIES
                    ),
                    (collection.id, chunk),
                ).fetchone()
                if clash is not None:
                    raise InvalidInput(
                        f"memory id {clash[0]!r} of tenant {tenant!r} in collection "
                        f"{collection.config['name']!r} is taken at the destination by a memory of another "
                        "tenant; ids are unique per collection"
                    )


# -- the move -------------------------------------------------------------------------------


def _run(move: _Move, deadline: float, clean_source: bool) -> int:
    committed = False
    try:
        _prepare_destination(move)
        _start_replication(move)
        _wait_for_initial_sync(move, deadline)
        _build_indexes(move)
        history_events = _check_and_cut_over(move, deadline, clean_source)
        committed = True
    finally:
        if not committed:
            _undo(move)
    _finish(move)
    return history_events


def _prepare_destination(move: _Move) -> None:
    with _connect(move.destination) as dst:
        move.history_mark = int(
            _one(dst, sql.SQL("SELECT coalesce(max(event_id), 0) FROM {}").format(_HISTORY))
        )
        _create_collections(dst, move, [c for c in move.collections if not c.exists_at_destination])
        _ensure_months(move, dst)


def _ensure_months(move: _Move, dst: psycopg.Connection[Any]) -> None:
    """A destination partitioned by month (migration 0011) gets the months of the tenant's
    memories, and the current and next month, before the copy brings them."""
    if _one(dst, "SELECT to_regproc('memorix.ensure_month_partitions') IS NULL"):
        return
    with _connect(move.source) as src:
        months = [
            r[0]
            for r in src.execute(
                sql.SQL(
                    "SELECT DISTINCT date_trunc('month', created_at, 'UTC') FROM {} WHERE tenant = %s"
                ).format(_MEMORIES),
                (move.tenant,),
            )
        ]
    dst.execute(
        "SELECT memorix.ensure_month_partitions(m, m) FROM unnest(%s::timestamptz[]) AS m ORDER BY m",
        (months,),
    )
    dst.execute("SELECT memorix.ensure_month_partitions(now(), now() + interval '1 month')")


def _create_collections(dst: psycopg.Connection[Any], move: _Move, missing: list[_Collection]) -> None:
    """The collections, with the source's ids and configuration (one transaction)."""
    if missing:
        names = ("id", *_CONFIG, "created_at")
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
                        _COLLECTIONS,
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
                ).format(_COLLECTIONS),
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


def _start_replication(move: _Move) -> None:
    with _connect(move.source) as src:
        kind, restore, covered = _replica_identity(src)
        if not covered:
            if not _full_identity_works(src):
                move.publish = "insert"
            elif kind != "f":
                src.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(_MEMORIES))
                move.previous_identity = restore
        # Never TRUNCATE: it would empty the destination's table, every tenant's rows included.
        src.execute(
            # Via the root: a source partitioned by month publishes its rows as memories' own.
            sql.SQL(
                "CREATE PUBLICATION {} FOR TABLE {} WHERE (tenant = {}) "
                "WITH (publish = {}, publish_via_partition_root = true)"
            ).format(
                sql.Identifier(move.name), _MEMORIES, sql.Literal(move.tenant), sql.Literal(move.publish)
            )
        )
        move.publication = True
        src.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (move.name,))
        move.slot = True
    with _connect(move.destination) as dst:
        try:
            _subscribe(dst, move)
        except psycopg.OperationalError as exc:
            raise ConfigurationError(
                f"the destination server ({redact_url(move.destination)}) could not connect to the source "
                f"with {redact_url(move.conninfo)}: {str(exc).strip().splitlines()[0]}. Pass the address by "
                "which that server reaches the source as source_conninfo (--source-conninfo)"
            ) from None
        move.subscription_oid = int(
            _one(dst, "SELECT oid FROM pg_subscription WHERE subname = %s", (move.name,))
        )


def _subscribe(dst: psycopg.Connection[Any], move: _Move) -> None:
    """The slot exists already (made apart, see the module docstring): the subscription only
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


def _raise_on_apply_errors(dst: psycopg.Connection[Any], move: _Move) -> None:
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


def _timed_out(move: _Move, what: str) -> MemorixError:
    return MemorixError(
        f"moving tenant {move.tenant!r}: {what} within the timeout; the move was undone and the source "
        "is unchanged (retry with a longer timeout, or when fewer writes arrive)"
    )


def _wait(move: _Move, deadline: float, done: Callable[[], bool], what: str) -> None:
    with _connect(move.destination) as dst:
        while not done():
            _raise_on_apply_errors(dst, move)
            if time.monotonic() > deadline:
                raise _timed_out(move, what)
            time.sleep(_POLL)


def _wait_for_initial_sync(move: _Move, deadline: float) -> None:
    def synced() -> bool:
        with _connect(move.destination) as dst:
            states = [
                r[0]
                for r in dst.execute(
                    "SELECT srsubstate FROM pg_subscription_rel WHERE srsubid = %s", (move.subscription_oid,)
                ).fetchall()
            ]
        return bool(states) and all(state == "r" for state in states)

    _wait(move, deadline, synced, "the initial copy did not finish")


def _build_indexes(move: _Move, collections: list[_Collection] | None = None) -> None:
    """The HNSW index of each collection created here, built once over the copied rows."""
    built = move.created if collections is None else collections
    with _connect(move.destination) as dst:
        partitions = _admin_steps(dst, memories_partitions())
        for collection in built:
            if partitions:  # CONCURRENTLY is refused on a partitioned parent: each partition's, attached
                info = collection.info
                definition = index_definition(info, collection.count)
                _admin_steps(dst, build_concurrently(index_name(info), definition, partitions))
            else:
                dst.execute(create_index_sql(collection.info, concurrently=True, rows=collection.count))
        if built:
            dst.execute(sql.SQL("ANALYZE {}").format(_MEMORIES))


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


def _adopt_new_collections(move: _Move, src: psycopg.Connection[Any]) -> None:
    """A collection the tenant started to use during the move: its rows replicate with its id,
    so it is checked and created at the destination as the others were (or the move stops)."""
    known = {c.id for c in move.collections}
    new = [c for c in _tenant_collections(src, move.tenant) if c.id not in known]
    if not new:
        return
    with _connect(move.destination) as dst:
        for collection in new:
            _check_destination_collection(dst, collection, move.destination)
        missing = [c for c in new if not c.exists_at_destination]
        _create_collections(dst, move, missing)
    move.collections.extend(new)
    _build_indexes(move, missing)


def _wait_for_catch_up(move: _Move, lsn: str, deadline: float) -> None:
    def caught_up() -> bool:
        with _connect(move.source) as src:
            return bool(
                _one(
                    src,
                    "SELECT coalesce(bool_or(confirmed_flush_lsn >= %s::pg_lsn), false) "
                    "FROM pg_replication_slots WHERE slot_name = %s",
                    (lsn, move.name),
                )
            )

    _wait(move, deadline, caught_up, "the destination did not catch up with the source")


def _checksums(conn: psycopg.Connection[Any], tenant: str) -> dict[int, tuple[int, Any]]:
    return {int(r[0]): (int(r[1]), r[2]) for r in conn.execute(_CHECKSUMS, (tenant,)).fetchall()}


def _differing(move: _Move, source_sums: dict[int, tuple[int, Any]]) -> set[int]:
    """The collections whose count or checksum differs between the source and the copy."""
    with _connect(move.destination) as dst:
        copy_sums = _checksums(dst, move.tenant)
    return {
        cid for cid in source_sums.keys() | copy_sums.keys() if source_sums.get(cid) != copy_sums.get(cid)
    }


def _check_and_cut_over(move: _Move, deadline: float, clean_source: bool) -> int:
    while True:
        # Unlocked first: writers go on while the copy catches up with them.
        with _connect(move.source) as src:
            lsn = str(_one(src, "SELECT pg_current_wal_lsn()"))
        _wait_for_catch_up(move, lsn, deadline)
        with _connect(move.source) as src:
            _adopt_new_collections(move, src)
            differing = _differing(move, _checksums(src, move.tenant))
            if differing:
                _reconcile(move, src, differing, complete=False)
        moved = _cut_over(move, deadline, clean_source)
        if moved is not None:
            return moved
        if time.monotonic() > deadline:
            raise _timed_out(move, "the copy's counts and checksums did not match the source's")


def _cut_over(move: _Move, deadline: float, clean_source: bool) -> int | None:
    """Under a lock against writes at the source: the last check, then the switch. None when
    the check failed (writes arrived in between): the caller waits and tries again."""
    events: int | None = None
    with _connect(move.source, autocommit=False) as src:
        with src.transaction():
            remaining = max(deadline - time.monotonic(), 1.0)
            src.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(remaining * 1000)}ms",))
            try:
                src.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(_MEMORIES))
            except psycopg.errors.LockNotAvailable:
                raise _timed_out(move, "the source's writes did not pause for the final check") from None
            lsn = str(_one(src, "SELECT pg_current_wal_lsn()"))
            source_sums = _checksums(src, move.tenant)
            _adopt_new_collections(move, src)
            _wait_for_catch_up(move, lsn, deadline)
            differing = _differing(move, source_sums)
            if differing:
                # Nothing is in flight now: what still differs is an update or a delete that an
                # insert-only publication does not carry.
                _reconcile(move, src, differing, complete=True)
                if _differing(move, source_sums):
                    raise psycopg.Rollback()
            _drop_subscription(move)
            move.moved = {collection_id: count for collection_id, (count, _sum) in source_sums.items()}
            events = _copy_history(src, move)
            src.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(move.name)))
            if clean_source:
                src.execute("SELECT set_config('memorix.operation', 'move', true)")
                src.execute(sql.SQL("DELETE FROM {} WHERE tenant = %s").format(_MEMORIES), (move.tenant,))
                # After the memories: their deletion's own events go too.
                src.execute(sql.SQL("DELETE FROM {} WHERE tenant = %s").format(_HISTORY), (move.tenant,))
    if events is not None:
        move.publication = False
    return events


def _reconcile(move: _Move, src: psycopg.Connection[Any], collections: set[int], *, complete: bool) -> None:
    """In the ``collections`` whose checksums differ, make each of the tenant's memories at the
    destination that differs from the source's like the source's: deleted there when gone at
    the source, replaced when changed, and (``complete``, with writes paused and the copy caught
    up) added when missing. Without ``complete`` a missing memory is an insert still on its way,
    and left to replication.

    The destination is read first: a memory the source deletes between the two reads is then
    seen at the destination only, and deleted there too. The history events these writes make
    at the destination are removed in the same transaction."""
    with _connect(move.destination) as dst:
        there = {(r[0], r[1]): r[2] for r in dst.execute(_DIGESTS, (move.tenant, sorted(collections)))}
    here = {(r[0], r[1]): r[2] for r in src.execute(_DIGESTS, (move.tenant, sorted(collections)))}
    stale = [key for key, digest in there.items() if here.get(key) != digest]
    fresh = [key for key, digest in here.items() if there.get(key) != digest and (complete or key in there)]
    if not stale and not fresh:
        return
    columns = _plain_columns(src)
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    as_text = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns)
    with _connect(move.destination, autocommit=False) as dst, dst.transaction():
        dst.execute("SELECT set_config('memorix.operation', 'move', true)")
        for collection_id, ids in _by_collection(stale).items():
            dst.execute(
                sql.SQL("DELETE FROM {} WHERE tenant = %s AND collection_id = %s AND id = ANY(%s)").format(
                    _MEMORIES
                ),
                (move.tenant, collection_id, ids),
            )
        with (
            dst.cursor() as target,
            target.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(_MEMORIES, names)) as copy,
        ):
            for collection_id, ids in _by_collection(fresh).items():
                rows = src.execute(
                    sql.SQL(
                        "SELECT {} FROM {} WHERE tenant = %s AND collection_id = %s AND id = ANY(%s)"
                    ).format(as_text, _MEMORIES),
                    (move.tenant, collection_id, ids),
                )
                for row in rows:
                    copy.write_row(row)
        dst.execute(
            sql.SQL("DELETE FROM {} WHERE event_id > %s AND tenant = %s AND operation = 'move'").format(
                _HISTORY
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


def _copy_history(src: psycopg.Connection[Any], move: _Move) -> int:
    """The tenant's events, oldest first, appended at the destination (new event ids)."""
    columns = sql.SQL(", ").join(map(sql.Identifier, _HISTORY_COLUMNS))
    copied = 0
    select = sql.SQL("SELECT {} FROM {} WHERE tenant = %s ORDER BY event_id").format(columns, _HISTORY)
    with _connect(move.destination, autocommit=False) as dst, dst.transaction():
        with (
            src.cursor(name=f"{move.name}_history") as events,
            dst.cursor() as target,
            target.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(_HISTORY, columns)) as copy,
        ):
            events.execute(select, (move.tenant,))
            for row in events:
                copy.write_row([Jsonb(v) if isinstance(v, (dict, list)) else v for v in row])
                copied += 1
    return copied


# -- cleaning up ----------------------------------------------------------------------------


def _drop_subscription(move: _Move) -> None:
    """Detached from its slot first (the slot is dropped at the source): a subscription into
    the same cluster would otherwise wait for itself."""
    if not move.subscribed:
        return
    name = sql.Identifier(move.name)
    with _connect(move.destination) as dst:
        dst.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(name))
        dst.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(name))
        dst.execute(sql.SQL("DROP SUBSCRIPTION {}").format(name))
    move.subscribed = False


def _drop_slots(move: _Move) -> None:
    """The move's slot, and any table-sync slot an interrupted initial copy left, once their
    sender has gone (it exits shortly after the subscription is dropped)."""
    sync_slots = f"pg\\_{move.subscription_oid}\\_sync\\_%" if move.subscription_oid is not None else None
    deadline = time.monotonic() + 30
    with _connect(move.source) as src:
        while True:
            rows = src.execute(
                "SELECT slot_name, active FROM pg_replication_slots "
                "WHERE slot_name = %s OR slot_name LIKE coalesce(%s, '')",
                (move.name, sync_slots),
            ).fetchall()
            for slot, active in rows:
                if not active:
                    with contextlib.suppress(psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                        src.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            if not any(active for _slot, active in rows) or time.monotonic() > deadline:
                break
            time.sleep(_POLL)
    move.slot = False


def _restore_identity(move: _Move) -> None:
    if move.previous_identity is None:
        return
    with _connect(move.source) as src:
        src.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(_MEMORIES, move.previous_identity))
    move.previous_identity = None


def _finish(move: _Move) -> None:
    """After a committed cutover: what is left at the source goes, whatever else fails."""
    _attempt(move, "drop the replication slot", lambda: _drop_slots(move))
    _attempt(move, "restore the replica identity of memorix.memories", lambda: _restore_identity(move))


def _undo(move: _Move) -> None:
    _attempt(move, "drop the subscription", lambda: _drop_subscription(move))
    _attempt(move, "drop the replication slots", lambda: _drop_slots(move) if move.slot else None)
    _attempt(move, "drop the publication", lambda: _drop_publication(move))
    _attempt(move, "restore the replica identity of memorix.memories", lambda: _restore_identity(move))
    _attempt(move, "remove the copy at the destination", lambda: _remove_copy(move))


def _drop_publication(move: _Move) -> None:
    if move.publication:
        with _connect(move.source) as src:
            src.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(move.name)))
        move.publication = False


def _remove_copy(move: _Move) -> None:
    """The tenant's copied memories, the collections this move created and the history events
    it caused (the deletes' own included) go; the destination is as it was."""
    with _connect(move.destination) as dst:
        with dst.transaction():
            dst.execute(sql.SQL("DELETE FROM {} WHERE tenant = %s").format(_MEMORIES), (move.tenant,))
            if move.created:
                dst.execute(
                    sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(_COLLECTIONS),
                    ([c.id for c in move.created],),
                )
            dst.execute(
                sql.SQL("DELETE FROM {} WHERE event_id > %s AND tenant = %s").format(_HISTORY),
                (move.history_mark, move.tenant),
            )
        for collection in move.created:
            dst.execute(drop_index_sql(collection.info, concurrently=True))
    move.created = []


def _attempt(move: _Move, what: str, step: Callable[[], object]) -> None:
    try:
        step()
    except Exception as exc:  # the move's own error, or its success, is what the caller sees
        logger.error("moving tenant %r: could not %s: %s", move.tenant, what, exc)
