"""Memory expiry (TTL) and the analytics views.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "memorix"

# Live memories only: an expired memory is never returned or counted, here as in the API.
COLLECTION_STATS = """
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
"""

DAILY_COUNTS = """
CREATE VIEW memorix.daily_counts AS
SELECT date_trunc('day', m.created_at) AS day,
       c.name AS collection,
       m.metadata ->> 'type' AS type,
       count(*) AS memories
FROM memorix.memories m
JOIN memorix.collections c ON c.id = m.collection_id
WHERE m.expires_at IS NULL OR m.expires_at > now()
GROUP BY 1, 2, 3
"""


def upgrade() -> None:
    op.add_column(
        "memories", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True), schema=SCHEMA
    )
    op.create_index(
        "memories_expires_at_idx",
        "memories",
        ["expires_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.execute(COLLECTION_STATS)
    op.execute(DAILY_COUNTS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS memorix.daily_counts")
    op.execute("DROP VIEW IF EXISTS memorix.collection_stats")
    op.drop_index("memories_expires_at_idx", table_name="memories", schema=SCHEMA)
    op.drop_column("memories", "expires_at", schema=SCHEMA)
