"""Re-embedding in place: a second vector slot, the run's state, and what keeps them honest.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30

A collection keeps its vectors in one of two slots: ``embedding`` / ``embedding_half`` (slot 0)
or ``embedding_alt`` / ``embedding_half_alt`` (slot 1), named by ``collections.vector_slot``.
A re-embedding fills the other slot while the collection keeps serving from its own, builds the
HNSW index on it, then switches the slot in one UPDATE of the collection's row. New columns
without a default cost nothing to add (no rewrite).

``memorix.reembed_runs`` holds one row per collection being re-embedded: the target embedder,
dimension and slot, the phase (``filling`` until the switch, ``clearing`` after it) and the last
id filled, so a run killed at any point resumes where it stopped. Every role may read it: a
process that opens the collection during a run computes the new vectors of what it writes too.

Two functions change what writes do, neither on the common path:

- ``memorix.reembed_stale()``, a BEFORE UPDATE row trigger that fires only when a memory's
  content hash changes: while its collection is being filled, the new-slot vector (computed from
  the old text) is cleared, so the run embeds the new text again.
- ``memorix.record_history()`` (0007's) records no event for an UPDATE labelled
  ``reembed-clear`` that changed nothing but vectors: the switch clears the old slot, and the
  memory's ``reembed`` event was written by the statement that filled the new one.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNS = """
CREATE TABLE memorix.reembed_runs (
    collection_id bigint PRIMARY KEY REFERENCES memorix.collections (id) ON DELETE CASCADE,
    embedder text NOT NULL,
    dimension integer NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
    slot smallint NOT NULL CHECK (slot IN (0, 1)),
    phase text NOT NULL DEFAULT 'filling' CHECK (phase IN ('filling', 'clearing')),
    after_id text COLLATE "C" NOT NULL DEFAULT '',
    filled bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now()
)
"""

STALE = """
CREATE FUNCTION memorix.reembed_stale() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target smallint;
BEGIN
    SELECT r.slot INTO target FROM memorix.reembed_runs r
    WHERE r.collection_id = NEW.collection_id AND r.phase = 'filling';
    IF target = 1 THEN
        NEW.embedding_alt := NULL;
        NEW.embedding_half_alt := NULL;
    ELSIF target = 0 THEN
        NEW.embedding := NULL;
        NEW.embedding_half := NULL;
    END IF;
    RETURN NEW;
END
$$
"""

STALE_TRIGGER = """
CREATE TRIGGER memories_reembed_stale BEFORE UPDATE ON memorix.memories FOR EACH ROW
WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash)
EXECUTE FUNCTION memorix.reembed_stale()
"""

HISTORY = """
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
        JOIN old_rows o ON o.id = n.id AND (o.collection_id = n.collection_id OR label = 'archive')
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

HISTORY_0007 = """
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
        JOIN old_rows o ON o.id = n.id AND (o.collection_id = n.collection_id OR label = 'archive');
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


def upgrade() -> None:
    op.execute("ALTER TABLE memorix.collections ADD COLUMN vector_slot smallint NOT NULL DEFAULT 0")
    op.execute(
        "ALTER TABLE memorix.collections "
        "ADD CONSTRAINT collections_vector_slot_check CHECK (vector_slot IN (0, 1))"
    )
    op.execute(
        "ALTER TABLE memorix.memories ADD COLUMN embedding_alt vector, ADD COLUMN embedding_half_alt halfvec"
    )
    op.execute("ALTER TABLE memorix.memories DROP CONSTRAINT memories_one_embedding_check")
    # One slot serves the collection; the other is filled during a re-embedding.
    op.execute(
        "ALTER TABLE memorix.memories ADD CONSTRAINT memories_one_embedding_check "
        "CHECK (num_nonnulls(embedding, embedding_half) <= 1 "
        "AND num_nonnulls(embedding_alt, embedding_half_alt) <= 1 "
        "AND num_nonnulls(embedding, embedding_half, embedding_alt, embedding_half_alt) >= 1)"
    )
    op.execute(RUNS)
    # Every process that writes to a collection reads whether a run is filling it (no secret there).
    op.execute("GRANT SELECT ON memorix.reembed_runs TO PUBLIC")
    op.execute(STALE)
    op.execute(STALE_TRIGGER)
    op.execute(HISTORY)


def downgrade() -> None:
    op.execute(HISTORY_0007)
    op.execute("DROP TRIGGER IF EXISTS memories_reembed_stale ON memorix.memories")
    op.execute("DROP FUNCTION IF EXISTS memorix.reembed_stale()")
    op.execute("DROP TABLE IF EXISTS memorix.reembed_runs")
    # A collection re-embedded into slot 1 moves back to slot 0 (its index is rebuilt on next open).
    op.execute(
        "UPDATE memorix.memories m SET embedding = m.embedding_alt, embedding_half = m.embedding_half_alt "
        "FROM memorix.collections c WHERE c.id = m.collection_id AND c.vector_slot = 1"
    )
    op.execute(
        "DO $$ DECLARE r record; BEGIN "
        "FOR r IN SELECT id FROM memorix.collections WHERE vector_slot = 1 LOOP "
        "EXECUTE format('DROP INDEX IF EXISTS memorix.%I', 'memories_embedding_alt_hnsw_' || r.id); "
        "END LOOP; END $$"
    )
    op.execute("ALTER TABLE memorix.memories DROP CONSTRAINT memories_one_embedding_check")
    op.execute("ALTER TABLE memorix.memories DROP COLUMN embedding_alt, DROP COLUMN embedding_half_alt")
    op.execute(
        "ALTER TABLE memorix.memories ADD CONSTRAINT memories_one_embedding_check "
        "CHECK (num_nonnulls(embedding, embedding_half) = 1)"
    )
    op.execute("ALTER TABLE memorix.collections DROP COLUMN vector_slot")
