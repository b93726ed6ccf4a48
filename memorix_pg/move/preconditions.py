"""Step 1 of a move (see the package docstring): everything checked before anything changes, at
the source and at the destination, each refusal naming its fix."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ..database import redact_url
from ..errors import ConfigurationError, InvalidInput
from ..models import SCHEMA
from .state import COLLECTIONS, CONFIG, MEMORIES, Move, TenantCollection, connect, scalar

__all__ = ["check_destination_collection", "preflight", "tenant_collections"]

_ID_CHUNK = 5_000


def preflight(tenant: str, source: str, destination: str, conninfo: str | None) -> Move:
    """Everything a move needs, checked at the source and the destination (migrated here as
    ``MemoryAPI`` does): the move's state, or a refusal that names the fix."""
    from ..core import prepare_database  # the library's migrations, as MemoryAPI runs them
    from ..database import get_engine
    from ..migrate import current_revision, head_revision

    with connect(source) as src:
        level = scalar(src, "SHOW wal_level")
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
        collections = tenant_collections(src, tenant)
        if not collections:
            raise InvalidInput(
                f"tenant {tenant!r} has no memories at {redact_url(source)}; nothing to move (check the "
                "tenant's spelling and the source URL)"
            )
        here = _database_identity(src)
    with connect(destination) as dst:
        if _database_identity(dst) == here:
            raise ConfigurationError(
                f"the source and the destination are the same database ({redact_url(destination)}); "
                "give another database as the destination"
            )
    prepare_database(destination, True)
    with connect(destination) as dst:
        already = scalar(
            dst, sql.SQL("SELECT count(*) FROM {} WHERE tenant = %s").format(MEMORIES), (tenant,)
        )
        if already:
            raise InvalidInput(
                f"tenant {tenant!r} already has {already} memories at the destination "
                f"({redact_url(destination)}); a move needs a destination without the tenant"
            )
        for collection in collections:
            check_destination_collection(dst, collection, destination)
        if any(c.exists_at_destination for c in collections) and not _key_includes_tenant(dst):
            with connect(source) as src:
                _check_id_collisions(src, dst, tenant, [c for c in collections if c.exists_at_destination])
    return Move(tenant, source, destination, conninfo or source, collections)


def tenant_collections(src: psycopg.Connection[Any], tenant: str) -> list[TenantCollection]:
    """The collections the tenant has memories in at the source, with their configuration."""
    columns = sql.SQL(", ").join(sql.Identifier("c", col) for col in ("id", *CONFIG, "created_at"))
    rows = src.execute(
        sql.SQL(
            "SELECT {columns}, n.count FROM (SELECT collection_id, count(*) FROM {memories} "
            "WHERE tenant = %s GROUP BY collection_id) n JOIN {collections} c ON c.id = n.collection_id "
            "ORDER BY c.name"
        ).format(columns=columns, memories=MEMORIES, collections=COLLECTIONS),
        (tenant,),
    ).fetchall()
    names = ("id", *CONFIG, "created_at")
    return [TenantCollection(dict(zip(names, row[:-1], strict=True)), int(row[-1])) for row in rows]


def _database_identity(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """The cluster's system identifier and the database's name: equal for the same database,
    however it was reached."""
    row = conn.execute(
        "SELECT (SELECT system_identifier FROM pg_control_system()), current_database()"
    ).fetchone()
    assert row is not None
    return tuple(row)


def check_destination_collection(
    dst: psycopg.Connection[Any], collection: TenantCollection, url: str
) -> None:
    config = collection.config
    columns = sql.SQL(", ").join(sql.Identifier(col) for col in ("id", *CONFIG))
    rows = dst.execute(
        sql.SQL("SELECT {} FROM {} WHERE id = %s OR name = %s").format(columns, COLLECTIONS),
        (config["id"], config["name"]),
    ).fetchall()
    if not rows:
        return
    there = dict(zip(("id", *CONFIG), rows[0], strict=True))
    differences = [
        f"{key} {there[key]!r} instead of {config[key]!r}"
        for key in ("id", *CONFIG)
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
        scalar(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY (i.indkey::int2[]) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
            "AND a.attname = 'tenant')",
            (f"{SCHEMA}.memories",),
        )
    )


def _check_id_collisions(
    src: psycopg.Connection[Any], dst: psycopg.Connection[Any], tenant: str, shared: list[TenantCollection]
) -> None:
    """With the key ``(collection_id, id)``, memory ids are unique per collection whatever the
    tenant: one of another tenant's ids at the destination would stop the copy half-way, so it
    is found first (compared in chunks of ids)."""
    for collection in shared:
        with src.cursor() as cursor:
            cursor.execute(
                sql.SQL("SELECT id FROM {} WHERE tenant = %s AND collection_id = %s").format(MEMORIES),
                (tenant, collection.id),
            )
            while chunk := [row[0] for row in cursor.fetchmany(_ID_CHUNK)]:
                clash = dst.execute(
                    sql.SQL("SELECT id FROM {} WHERE collection_id = %s AND id = ANY(%s) LIMIT 1").format(
                        MEMORIES
                    ),
                    (collection.id, chunk),
                ).fetchone()
                if clash is not None:
                    raise InvalidInput(
                        f"memory id {clash[0]!r} of tenant {tenant!r} in collection "
                        f"{collection.config['name']!r} is taken at the destination by a memory of another "
                        "tenant; ids are unique per collection"
                    )
