"""Half precision storage: ``precision="half"`` collections keep their vectors as ``halfvec``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

Until now a half collection stored ``vector`` and only its index and queries were
``halfvec``. The new ``embedding_half`` column holds them at 2 bytes a dimension, half the
table's vector bytes; each row fills exactly one of ``embedding`` and ``embedding_half``.
Existing half collections are moved over and their HNSW indexes rebuilt on the new column
(the index expression names the column, so the old index could not serve them).
"""

from __future__ import annotations

from collections.abc import Sequence

import pgvector.sqlalchemy
import sqlalchemy as sa
from alembic import op
from psycopg import sql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "memorix"
OPCLASS = {"cosine": "halfvec_cosine_ops", "l2": "halfvec_l2_ops", "ip": "halfvec_ip_ops"}


def _half_collections() -> list[tuple[int, int, str]]:
    rows = op.get_bind().execute(
        sa.text("SELECT id, dimension, distance FROM memorix.collections WHERE precision = 'half'")
    )
    return [(int(r.id), int(r.dimension), str(r.distance)) for r in rows]


MOVES = {
    "embedding_half": "UPDATE memorix.memories SET embedding_half = embedding::halfvec, embedding = NULL "
    "WHERE collection_id = :cid",
    "embedding": "UPDATE memorix.memories SET embedding = embedding_half::vector, embedding_half = NULL "
    "WHERE collection_id = :cid",
}


def _move_half_collections(column: str) -> None:
    """Move every half collection's vectors into ``column`` and rebuild its index on it."""
    raw = op.get_bind().connection.driver_connection
    for cid, dim, distance in _half_collections():
        op.execute(sa.text(MOVES[column]).bindparams(cid=cid))
        name = f"memories_embedding_hnsw_{cid}"
        create = sql.SQL(
            "CREATE INDEX {name} ON {table} USING hnsw (({column}::halfvec({dim})) {opclass}) "
            "WITH (m = 20, ef_construction = 80) WHERE collection_id = {cid}"
        ).format(
            name=sql.Identifier(name),
            table=sql.Identifier(SCHEMA, "memories"),
            column=sql.Identifier(column),
            dim=sql.Literal(dim),
            opclass=sql.Identifier(OPCLASS[distance]),
            cid=sql.Literal(cid),
        )
        op.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(SCHEMA, name)).as_string(raw))
        op.execute(create.as_string(raw))


def upgrade() -> None:
    column = sa.Column("embedding_half", pgvector.sqlalchemy.HALFVEC(), nullable=True)
    op.add_column("memories", column, schema=SCHEMA)
    op.alter_column("memories", "embedding", nullable=True, schema=SCHEMA)
    _move_half_collections("embedding_half")
    op.create_check_constraint(
        "memories_one_embedding_check",
        "memories",
        "num_nonnulls(embedding, embedding_half) = 1",
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_constraint("memories_one_embedding_check", "memories", schema=SCHEMA, type_="check")
    _move_half_collections("embedding")
    op.alter_column("memories", "embedding", nullable=False, schema=SCHEMA)
    op.drop_column("memories", "embedding_half", schema=SCHEMA)
