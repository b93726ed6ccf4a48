"""Vectors stay in the row: ``STORAGE MAIN`` for the four vector columns.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

pgvector's types default to ``STORAGE EXTERNAL``: when a row passes ~2 kB, PostgreSQL moves its
vector to the TOAST table before anything else. A 384-dim vector is 1,544 bytes, so a memory with
a few hundred characters of text (plus its metadata and the tsvector of 0008) had its vector out
of line, and an exact scan read it back through the TOAST index for every matching row (measured
at 100k memories, 1,000 matches: 4,035 buffers and 2.7 ms; with the vectors in the row 1,047
buffers and 0.76 ms). ``MAIN`` moves the text and metadata out first and the vector only when the
row still does not fit, which a vector of 2,000 dimensions (8 kB) alone can do.

Only rows written afterwards are laid out anew; ``VACUUM FULL memorix.memories`` (or an
export and import) rewrites older ones. On a partitioned ``memories`` the change reaches every
partition, and a month made later copies it (``LIKE ... INCLUDING STORAGE``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The vector columns of 0001, 0004 and 0009.
VECTOR_COLUMNS = ("embedding", "embedding_half", "embedding_alt", "embedding_half_alt")


def _set_storage(storage: str) -> None:
    preparer = op.get_bind().dialect.identifier_preparer
    table = preparer.format_table(memories_table())
    for column in VECTOR_COLUMNS:
        op.execute(
            sa.text(f"ALTER TABLE {table} ALTER COLUMN {preparer.quote(column)} SET STORAGE {storage}")
        )


def memories_table() -> sa.Table:
    return sa.Table("memories", sa.MetaData(), schema="memorix")


def upgrade() -> None:
    _set_storage("MAIN")


def downgrade() -> None:
    _set_storage("EXTERNAL")
