"""Tenants: a tenant column and a row-level-security policy on memories.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

A row is visible (and writable) only when its tenant equals the ``memorix.tenant`` setting,
which the library sets per transaction; rows without a tenant are visible when no tenant is
set. The table owner (the migration role) and superusers bypass the policy, as PostgreSQL
does; an application role that does not own the table cannot. The analytics views run with
the caller's rights (security_invoker, PostgreSQL 15+) so the policy applies through them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "memorix"
POLICY = """
CREATE POLICY memories_tenant_isolation ON memorix.memories
USING (tenant IS NOT DISTINCT FROM nullif(current_setting('memorix.tenant', true), ''))
WITH CHECK (tenant IS NOT DISTINCT FROM nullif(current_setting('memorix.tenant', true), ''))
"""


def _supports_security_invoker() -> bool:
    version = op.get_bind().execute(sa.text("SHOW server_version_num")).scalar()
    return int(str(version)) >= 150000


def upgrade() -> None:
    op.add_column("memories", sa.Column("tenant", sa.Text(), nullable=True), schema=SCHEMA)
    op.create_index(
        "memories_collection_tenant_idx",
        "memories",
        ["collection_id", "tenant"],
        schema=SCHEMA,
        postgresql_where=sa.text("tenant IS NOT NULL"),
    )
    op.execute("ALTER TABLE memorix.memories ENABLE ROW LEVEL SECURITY")
    op.execute(POLICY)
    if _supports_security_invoker():
        op.execute("ALTER VIEW memorix.collection_stats SET (security_invoker = true)")
        op.execute("ALTER VIEW memorix.daily_counts SET (security_invoker = true)")


def downgrade() -> None:
    if _supports_security_invoker():
        op.execute("ALTER VIEW memorix.daily_counts RESET (security_invoker)")
        op.execute("ALTER VIEW memorix.collection_stats RESET (security_invoker)")
    op.execute("DROP POLICY IF EXISTS memories_tenant_isolation ON memorix.memories")
    op.execute("ALTER TABLE memorix.memories DISABLE ROW LEVEL SECURITY")
    op.drop_index("memories_collection_tenant_idx", table_name="memories", schema=SCHEMA)
    op.drop_column("memories", "tenant", schema=SCHEMA)
