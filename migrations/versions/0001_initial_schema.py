"""Initial schema: pgvector, collections, memories and their indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

The per-collection HNSW indexes are not here: each collection's index is built over
``embedding::vector(dim)`` with its own operator class when the collection is created
(see memorix_pg/vector_index.py), because collections differ in dimension and distance.
"""

from __future__ import annotations

from collections.abc import Sequence

import pgvector.sqlalchemy
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "memorix"


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "collections",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False, unique=True),
        sa.Column("embedder", sa.Text(), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("distance", sa.Text(), nullable=False, server_default="cosine"),
        sa.Column("precision", sa.Text(), nullable=False, server_default="full"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("distance IN ('cosine', 'l2', 'ip')", name="collections_distance_check"),
        sa.CheckConstraint("precision IN ('full', 'half')", name="collections_precision_check"),
        sa.CheckConstraint("dimension BETWEEN 1 AND 16000", name="collections_dimension_check"),
        schema=SCHEMA,
    )
    op.create_table(
        "memories",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "collection_id",
            sa.BigInteger(),
            sa.ForeignKey(f"{SCHEMA}.collections.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("embedding", pgvector.sqlalchemy.Vector(), nullable=False),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("content_hash", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=SCHEMA,
    )
    op.create_index(
        "memories_collection_created_idx", "memories", ["collection_id", "created_at"], schema=SCHEMA
    )
    op.create_index(
        "memories_collection_hash_idx", "memories", ["collection_id", "content_hash"], schema=SCHEMA
    )
    # jsonb_path_ops: smaller and faster than the default opclass for the containment (@>)
    # predicates that equality and $in filters compile to.
    op.create_index(
        "memories_metadata_gin_idx",
        "memories",
        ["metadata"],
        schema=SCHEMA,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )


def downgrade() -> None:
    # The schema itself stays: it holds alembic's version table. The extension stays too:
    # other schemas may use it.
    op.drop_table("memories", schema=SCHEMA)
    op.drop_table("collections", schema=SCHEMA)
