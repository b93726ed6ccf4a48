"""Full text search: each memory's text as a ``tsvector``, indexed with GIN.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

A collection chooses its text search configuration when it is created
(``collections.text_search_config``, ``simple`` by default: no stemming, no stop words, every
language). A generated column cannot read another table, so each memory carries its
collection's configuration in ``ts_config`` and ``text_search`` is generated from
``to_tsvector(ts_config, text)`` (immutable with an explicit configuration). ``ts_config``
defaults to the ``memorix.ts_config`` setting, which the library sets (``SET LOCAL``) in the
transactions that write to a collection with another configuration than ``simple``: a binary
COPY sends no configuration at all, and rows written without the setting get ``simple``.

Cost on ingest, measured with COPY of 5,000 conversation-like texts (~15 words): 11-12 ms into a
text column, 94-108 ms with the generated ``tsvector`` (~19 us a row, about 2% of a 5,000-row
``store_batch`` with 384-d vectors, which the HNSW inserts dominate).

Adding a stored generated column rewrites the table (every text is parsed once), and the GIN
index is built over all of it: on a large database this takes a while.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS_CONFIG_DEFAULT = "coalesce(nullif(current_setting('memorix.ts_config', true), ''), 'simple')::regconfig"


def upgrade() -> None:
    op.execute("ALTER TABLE memorix.collections ADD COLUMN text_search_config text NOT NULL DEFAULT 'simple'")
    op.execute(
        f"ALTER TABLE memorix.memories ADD COLUMN ts_config regconfig NOT NULL DEFAULT {TS_CONFIG_DEFAULT}, "
        "ADD COLUMN text_search tsvector GENERATED ALWAYS AS (to_tsvector(ts_config, text)) STORED"
    )
    op.execute("CREATE INDEX memories_text_search_idx ON memorix.memories USING gin (text_search)")


def downgrade() -> None:
    op.execute("DROP INDEX memorix.memories_text_search_idx")
    op.execute("ALTER TABLE memorix.memories DROP COLUMN text_search, DROP COLUMN ts_config")
    op.execute("ALTER TABLE memorix.collections DROP COLUMN text_search_config")
