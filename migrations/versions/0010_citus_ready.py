"""A Citus-ready schema: every key leads with the tenant, so memories can be distributed by it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

A distributed (or hash-partitioned) table needs its distribution column in every unique
constraint, and that column must never be NULL. So:

* ``memories.tenant`` and ``history.tenant`` become ``NOT NULL DEFAULT ''``: ``''`` is "no
  tenant" (it was NULL; the library maps ``tenant=None`` to it), and existing NULLs become ``''``.
* ``memories``' key becomes ``PRIMARY KEY (tenant, collection_id, id)``: an id is unique within
  a tenant's collection (the same id under two tenants is two memories). ``history``'s becomes
  ``(tenant, event_id)``. The key's prefix serves the tenant lookups, so the partial
  ``memories_collection_tenant_idx`` goes.
* The row-level-security policies compare ``tenant = coalesce(current_setting('memorix.tenant',
  true), '')``; the history trigger matches old and new rows on the tenant too.
* The analytics views aggregate ``memories`` first and join ``collections`` after (Citus cannot
  plan the outer join of a reference table to a distributed one's rows for a non-owner).

``MEMORIX_TENANT_PARTITIONS=N`` (N >= 2), set for the migrating process, makes a *new* database's
``memories`` and ``history`` tables ``PARTITION BY HASH (tenant)`` with N partitions and the
same constraints: the local stand-in of a Citus distributed table (docs/scaling.md). The
partitions get the tenant policy too and no grants, so a role cannot read around the
parent's row-level security. It is refused (with nothing changed) when ``memories`` holds rows.

The downgrade restores NULL tenants and the old keys; it needs every id unique within its
collection whatever the tenant, and a table that is not partitioned, and stops with a message
otherwise, changing nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from psycopg import sql

from memorix_pg.errors import MemorixError

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "memorix"
PARTITIONS_ENV = "MEMORIX_TENANT_PARTITIONS"
MAX_PARTITIONS = 1024
TABLES = ("memories", "history")
TRIGGER_EVENTS = ("insert", "update", "delete")
TRIGGERS = {
    "insert": "REFERENCING NEW TABLE AS new_rows",
    "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "delete": "REFERENCING OLD TABLE AS old_rows",
}

TENANT_POLICY = "tenant = coalesce(current_setting('memorix.tenant', true), '')"
OLD_TENANT_POLICY = "tenant IS NOT DISTINCT FROM nullif(current_setting('memorix.tenant', true), '')"

VIEWS = {
    "collection_stats": """
CREATE VIEW memorix.collection_stats AS
SELECT c.name AS collection,
       c.embedder,
       c.dimension,
       coalesce(m.memories, 0) AS memories,
       coalesce(m.bytes, 0)::bigint AS bytes,
       m.oldest,
       m.newest
FROM memorix.collections c
LEFT JOIN (
    SELECT r.collection_id,
           count(*) AS memories,
           sum(pg_column_size(r.*)) AS bytes,
           min(r.created_at) AS oldest,
           max(r.created_at) AS newest
    FROM memorix.memories r
    WHERE r.expires_at IS NULL OR r.expires_at > now()
    GROUP BY r.collection_id
) m ON m.collection_id = c.id
""",
    "daily_counts": """
CREATE VIEW memorix.daily_counts AS
SELECT d.day,
       c.name AS collection,
       d.type,
       d.memories
FROM (
    SELECT date_trunc('day', r.created_at) AS day,
           r.collection_id,
           r.metadata ->> 'type' AS type,
           count(*) AS memories
    FROM memorix.memories r
    WHERE r.expires_at IS NULL OR r.expires_at > now()
    GROUP BY 1, 2, 3
) d
JOIN memorix.collections c ON c.id = d.collection_id
""",
}

# As created by 0002 (and recreated by 0005).
OLD_VIEWS = {
    "collection_stats": """
CREATE VIEW memorix.collection_stats AS
SELECT c.name AS collection,
       c.embedder,
       c.dimension,
       count(m.id) AS memories,
       coalesce(sum(pg_column_size(m.*)), 0)::bigint AS bytes,
       min(m.created_at) AS oldest,
       max(m.created_at) AS newest
FROM memorix.collections c
LEFT JOIN memorix.memories m
       ON m.collection_id = c.id AND (m.expires_at IS NULL OR m.expires_at > now())
GROUP BY c.id, c.name, c.embedder, c.dimension
""",
    "daily_counts": """
CREATE VIEW memorix.daily_counts AS
SELECT date_trunc('day', m.created_at) AS day,
       c.name AS collection,
       m.metadata ->> 'type' AS type,
       count(*) AS memories
FROM memorix.memories m
JOIN memorix.collections c ON c.id = m.collection_id
WHERE m.expires_at IS NULL OR m.expires_at > now()
GROUP BY 1, 2, 3
""",
}

# 0009's function with the tenant in the join of old and new rows (``{tenant_join}``).
FUNCTION = """
CREATE OR REPLACE FUNCTION memorix.record_history() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    label text := nullif(current_setting('memorix.operation', true), '');
    who text := coalesce(nullif(current_setting('memorix.actor', true), ''), session_user);
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO memorix.history
            (collection_id, memory_id, tenant, operation, text_hash_after, metadata, actor)
        SELECT n.collection_id, n.id, n.tenant, coalesce(label, 'store'), n.content_hash, n.metadata, who
        FROM new_rows n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO memorix.history
            (collection_id, memory_id, tenant, operation, text_hash_before, text_hash_after, metadata, actor)
        SELECT n.collection_id, n.id, n.tenant, coalesce(label, 'update'), o.content_hash,
               n.content_hash, n.metadata, who
        FROM new_rows n
        JOIN old_rows o
          ON {tenant_join}o.id = n.id AND (o.collection_id = n.collection_id OR label = 'archive')
        WHERE label IS DISTINCT FROM 'reembed-clear'
           OR o.content_hash IS DISTINCT FROM n.content_hash
           OR o.metadata IS DISTINCT FROM n.metadata
           OR o.tenant IS DISTINCT FROM n.tenant
           OR o.text IS DISTINCT FROM n.text
           OR o.expires_at IS DISTINCT FROM n.expires_at;
    ELSIF label = 'forget' THEN
        INSERT INTO memorix.history (collection_id, memory_id, tenant, operation, actor, forgotten)
        SELECT o.collection_id, NULL, o.tenant, 'forget', who, true FROM old_rows o;
    ELSE
        INSERT INTO memorix.history
            (collection_id, memory_id, tenant, operation, text_hash_before, actor)
        SELECT o.collection_id, o.id, o.tenant, coalesce(label, 'delete'), o.content_hash, who
        FROM old_rows o;
    END IF;
    RETURN NULL;
END
$$
"""

# The history table of a partitioned database (0007's, with the tenant in its key).
HISTORY_TABLE = """
CREATE TABLE memorix.history (
    event_id bigint GENERATED ALWAYS AS IDENTITY,
    collection_id bigint NOT NULL,
    memory_id text COLLATE "C",
    tenant text NOT NULL DEFAULT '',
    operation text NOT NULL,
    text_hash_before bytea,
    text_hash_after bytea,
    metadata jsonb,
    actor text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    forgotten boolean NOT NULL DEFAULT false,
    CONSTRAINT history_pkey PRIMARY KEY (tenant, event_id)
) PARTITION BY HASH (tenant)
"""

HISTORY_INDEXES = (
    "CREATE INDEX history_memory_idx ON memorix.history (memory_id, event_id)",
    "CREATE INDEX history_collection_at_idx ON memorix.history (collection_id, at)",
    "CREATE INDEX history_metadata_gin_idx ON memorix.history USING gin (metadata jsonb_path_ops)",
)

MEMORIES_INDEXES = (
    "CREATE INDEX memories_collection_created_idx ON memorix.memories (collection_id, created_at)",
    "CREATE INDEX memories_collection_hash_idx ON memorix.memories (collection_id, content_hash)",
    "CREATE INDEX memories_expires_at_idx ON memorix.memories (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX memories_metadata_gin_idx ON memorix.memories USING gin (metadata jsonb_path_ops)",
    "CREATE INDEX memories_text_search_idx ON memorix.memories USING gin (text_search)",
)


def _composed(template: str, table: str) -> str:
    """``template`` with the schema's ``table`` put in as an identifier."""
    raw = op.get_bind().connection.driver_connection
    return sql.SQL(template).format(sql.Identifier(SCHEMA, table)).as_string(raw)


def _supports_security_invoker() -> bool:
    version = op.get_bind().execute(sa.text("SHOW server_version_num")).scalar()
    return int(str(version)) >= 150000


def _drop_views() -> None:
    op.execute("DROP VIEW IF EXISTS memorix.daily_counts")
    op.execute("DROP VIEW IF EXISTS memorix.collection_stats")


def _create_views(views: dict[str, str]) -> None:
    for name, definition in views.items():
        op.execute(definition)
        if _supports_security_invoker():
            op.execute(f"ALTER VIEW {SCHEMA}.{name} SET (security_invoker = true)")


def _policies(condition: str) -> None:
    for table in ("memories", "history"):
        op.execute(f"DROP POLICY IF EXISTS {table}_tenant_isolation ON memorix.{table}")
        op.execute(
            f"CREATE POLICY {table}_tenant_isolation ON memorix.{table} "
            f"USING ({condition}) WITH CHECK ({condition})"
        )


def _triggers(enable: bool) -> None:
    action = "ENABLE" if enable else "DISABLE"
    for event in TRIGGER_EVENTS:
        op.execute(f"ALTER TABLE memorix.memories {action} TRIGGER memories_history_{event}")


def _create_triggers() -> None:
    for event, referencing in TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER memories_history_{event} AFTER {event.upper()} ON memorix.memories "
            f"{referencing} FOR EACH STATEMENT EXECUTE FUNCTION memorix.record_history()"
        )


def _partitions_wanted() -> int:
    """N from MEMORIX_TENANT_PARTITIONS (0: not set)."""
    value = os.environ.get(PARTITIONS_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit() or not 2 <= int(value) <= MAX_PARTITIONS:
        raise MemorixError(
            f"{PARTITIONS_ENV} must be a whole number from 2 to {MAX_PARTITIONS}, got {value!r:.40}"
        )
    return int(value)


def _is_partitioned() -> bool:
    kind = op.get_bind().execute(
        sa.text("SELECT relkind FROM pg_catalog.pg_class WHERE oid = 'memorix.memories'::regclass")
    )
    return str(kind.scalar()) == "p"


def _partition(table: str, n: int) -> None:
    """``table``'s N hash partitions, with its tenant policy and no privileges of their own."""
    bind = op.get_bind()
    raw = bind.connection.driver_connection
    policy = sql.SQL(TENANT_POLICY)
    for i in range(n):
        part = sql.Identifier(SCHEMA, f"{table}_p{i}")
        statements = (
            sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS {}, REMAINDER {})").format(
                part, sql.Identifier(SCHEMA, table), sql.Literal(n), sql.Literal(i)
            ),
            # A direct read of a partition skips the parent's policy: the partition has its own.
            sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(part),
            sql.SQL("CREATE POLICY {} ON {} USING ({}) WITH CHECK ({})").format(
                sql.Identifier(f"{table}_p{i}_tenant_isolation"), part, policy, policy
            ),
            sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(part),
        )
        for statement in statements:
            op.execute(statement.as_string(raw))


def _partition_tables(n: int) -> None:
    """Rebuild the (empty) ``memories`` and ``history`` as hash-partitioned tables by tenant."""
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM memorix.memories)")).scalar():
        raise MemorixError(
            f"{PARTITIONS_ENV} applies to new databases only: memorix.memories holds rows already; "
            "unset it to upgrade this database (nothing was changed)"
        )
    op.execute("DROP TABLE memorix.history")
    op.execute("ALTER TABLE memorix.memories RENAME TO memories_plain")
    op.execute(
        "CREATE TABLE memorix.memories (LIKE memorix.memories_plain INCLUDING DEFAULTS INCLUDING GENERATED "
        "INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION) PARTITION BY HASH (tenant)"
    )
    # Its per-collection HNSW indexes go with it; opening each collection builds them again.
    op.execute("DROP TABLE memorix.memories_plain CASCADE")
    op.execute(
        "ALTER TABLE memorix.memories ADD CONSTRAINT memories_pkey PRIMARY KEY (tenant, collection_id, id)"
    )
    op.execute(
        "ALTER TABLE memorix.memories ADD CONSTRAINT memories_collection_id_fkey FOREIGN KEY (collection_id) "
        "REFERENCES memorix.collections (id) ON DELETE CASCADE"
    )
    for statement in MEMORIES_INDEXES:
        op.execute(statement)
    op.execute(HISTORY_TABLE)
    for statement in HISTORY_INDEXES:
        op.execute(statement)
    for table in ("memories", "history"):
        op.execute(f"ALTER TABLE memorix.{table} ENABLE ROW LEVEL SECURITY")
        _partition(table, n)
    _create_triggers()
    # 0009's trigger that clears a re-embedding's stale vector when the text changes.
    op.execute(
        "CREATE TRIGGER memories_reembed_stale BEFORE UPDATE ON memorix.memories FOR EACH ROW "
        "WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash) EXECUTE FUNCTION memorix.reembed_stale()"
    )


def upgrade() -> None:
    partitions = _partitions_wanted()
    _drop_views()
    # Filling in the tenant records no history: nothing about the memories changed.
    _triggers(enable=False)
    for table in TABLES:
        op.execute(_composed("UPDATE {} SET tenant = '' WHERE tenant IS NULL", table))
        op.execute(_composed("ALTER TABLE {} ALTER COLUMN tenant SET DEFAULT ''", table))
        op.execute(_composed("ALTER TABLE {} ALTER COLUMN tenant SET NOT NULL", table))
    _triggers(enable=True)
    # Dropping and adding a key must be separate statements on Citus.
    op.execute("ALTER TABLE memorix.memories DROP CONSTRAINT memories_pkey")
    op.execute(
        "ALTER TABLE memorix.memories ADD CONSTRAINT memories_pkey PRIMARY KEY (tenant, collection_id, id)"
    )
    op.execute("DROP INDEX IF EXISTS memorix.memories_collection_tenant_idx")
    op.execute("ALTER TABLE memorix.history DROP CONSTRAINT history_pkey")
    op.execute("ALTER TABLE memorix.history ADD CONSTRAINT history_pkey PRIMARY KEY (tenant, event_id)")
    op.execute(FUNCTION.format(tenant_join="o.tenant = n.tenant AND "))
    if partitions:
        _partition_tables(partitions)
    _policies(TENANT_POLICY)
    _create_views(VIEWS)


def _check_downgradable() -> None:
    if _is_partitioned():
        raise MemorixError(
            "cannot downgrade below revision 0010: memorix.memories is partitioned by tenant "
            f"({PARTITIONS_ENV}), which the older schema cannot be; dump the memories and load "
            "them into a database made without it"
        )
    shared = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT collection_id, id, count(*) OVER () FROM memorix.memories "
                "GROUP BY collection_id, id HAVING count(*) > 1 LIMIT 1"
            )
        )
        .first()
    )
    if shared is not None:
        raise MemorixError(
            f"cannot downgrade below revision 0010: {shared[2]} ids are used by more than one tenant "
            f"in the same collection (e.g. {shared[1]!r:.80}), and the older schema needs each id to "
            "be unique in its collection; delete or re-id one of each first"
        )


def downgrade() -> None:
    _check_downgradable()
    _drop_views()
    _policies(OLD_TENANT_POLICY)
    op.execute(FUNCTION.format(tenant_join=""))
    op.execute("ALTER TABLE memorix.history DROP CONSTRAINT history_pkey")
    op.execute("ALTER TABLE memorix.history ADD CONSTRAINT history_pkey PRIMARY KEY (event_id)")
    op.execute("ALTER TABLE memorix.memories DROP CONSTRAINT memories_pkey")
    op.execute("ALTER TABLE memorix.memories ADD CONSTRAINT memories_pkey PRIMARY KEY (collection_id, id)")
    op.execute(
        "CREATE INDEX memories_collection_tenant_idx ON memorix.memories (collection_id, tenant) "
        "WHERE tenant IS NOT NULL"
    )
    _triggers(enable=False)
    for table in TABLES:
        op.execute(_composed("ALTER TABLE {} ALTER COLUMN tenant DROP NOT NULL", table))
        op.execute(_composed("ALTER TABLE {} ALTER COLUMN tenant DROP DEFAULT", table))
        op.execute(_composed("UPDATE {} SET tenant = NULL WHERE tenant = ''", table))
    _triggers(enable=True)
    _create_views(OLD_VIEWS)
