"""Metadata schemas: a JSON Schema stored with each collection.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

``collections.metadata_schema`` (jsonb, NULL: no schema) holds the JSON Schema that every
write's metadata must satisfy; the library checks it (schemas.py). Adding a nullable column
without a default rewrites nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "memorix"


def upgrade() -> None:
    op.add_column("collections", sa.Column("metadata_schema", JSONB(), nullable=True), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("collections", "metadata_schema", schema=SCHEMA)
