"""String ids: a memory's id is any string, unique within its collection.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

``memories.id`` becomes ``text`` (collation "C": ids are opaque keys, compared byte by byte)
and the primary key ``(collection_id, id)``, so the same id may name memories of two
collections. Every existing id becomes its canonical UUID string (lowercase, hyphenated),
which is exactly what the library returned for it, and what the encryption of its text and
metadata was bound to (crypto.py binds a canonical UUID string by its 16 bytes, as before), so
every row, encrypted or not, reads back unchanged.

Changing the column's type rewrites the table and rebuilds its indexes, the HNSW ones included:
on a large database this takes about as long as loading it. The analytics views read the
column, so they are dropped and created again around the change.

The downgrade needs every id to be a canonical UUID string, each in one collection only; it
stops with a message naming an id that is not, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from memorix_pg.errors import MemorixError

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "memorix"

# As created by 0002 (and made security_invoker by 0003 where the server has it).
VIEWS = {
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

CANONICAL_UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _supports_security_invoker() -> bool:
    version = op.get_bind().execute(sa.text("SHOW server_version_num")).scalar()
    return int(str(version)) >= 150000


def _drop_views() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {SCHEMA}.{name}")


def _create_views() -> None:
    for name, definition in VIEWS.items():
        op.execute(definition)
        if _supports_security_invoker():
            op.execute(f"ALTER VIEW {SCHEMA}.{name} SET (security_invoker = true)")


def upgrade() -> None:
    _drop_views()
    op.execute("ALTER TABLE memorix.memories DROP CONSTRAINT memories_pkey")
    op.execute('ALTER TABLE memorix.memories ALTER COLUMN id TYPE text COLLATE "C" USING id::text')
    op.execute("ALTER TABLE memorix.memories ADD CONSTRAINT memories_pkey PRIMARY KEY (collection_id, id)")
    _create_views()


def _check_downgradable() -> None:
    bind = op.get_bind()
    not_uuid = bind.execute(
        sa.text("SELECT id, count(*) OVER () FROM memorix.memories WHERE id !~ :pattern LIMIT 1"),
        {"pattern": CANONICAL_UUID},
    ).first()
    if not_uuid is not None:
        raise MemorixError(
            f"cannot downgrade below revision 0005: {not_uuid[1]} memories have ids that are not "
            f"UUIDs (e.g. {not_uuid[0]!r:.80}), which the older schema cannot hold; delete them, or "
            "store them again under UUIDs, first"
        )
    shared = bind.execute(
        sa.text(
            "SELECT id, count(*) OVER () FROM memorix.memories GROUP BY id HAVING count(*) > 1 LIMIT 1"
        )
    ).first()
    if shared is not None:
        raise MemorixError(
            f"cannot downgrade below revision 0005: {shared[1]} ids are used in more than one "
            f"collection (e.g. {shared[0]!r}), and the older schema needs each id to be unique; "
            "delete or re-id one of each first"
        )


def downgrade() -> None:
    _check_downgradable()
    _drop_views()
    op.execute("ALTER TABLE memorix.memories DROP CONSTRAINT memories_pkey")
    op.execute("ALTER TABLE memorix.memories ALTER COLUMN id TYPE uuid USING id::uuid")
    op.execute("ALTER TABLE memorix.memories ADD CONSTRAINT memories_pkey PRIMARY KEY (id)")
    _create_views()
