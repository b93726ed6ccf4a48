"""History: one event per memory written, changed or removed, in the same statement.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

``memorix.history`` gets a row for every memory a statement inserts, updates or deletes,
written by statement-level triggers on ``memories`` from its transition tables: one
``INSERT ... SELECT`` per statement (a COPY, a bulk DELETE or an archive's UPDATE included), in
the same transaction, whoever ran it (the library or direct SQL). The library names the
operation (``store``, ``archive``, ``compress``, ``purge``, ``forget``...) and the actor with the
``memorix.operation`` / ``memorix.actor`` settings; without them the event is ``store``,
``update`` or ``delete`` and the actor the session's role.

Texts are kept only as their content hash (before / after); ``metadata`` is the memory's
document after the change (none for a removal). A ``forget`` writes tombstones: no id, hash or
metadata. The trigger function is SECURITY DEFINER (owned by the migration role) so an
application role records history without privileges on the table; row-level security on
``history`` gives readers their tenant's events, as on ``memories``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = """
CREATE TABLE memorix.history (
    event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection_id bigint NOT NULL,
    memory_id text COLLATE "C",
    tenant text,
    operation text NOT NULL,
    text_hash_before bytea,
    text_hash_after bytea,
    metadata jsonb,
    actor text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    forgotten boolean NOT NULL DEFAULT false
)
"""

POLICY = """
CREATE POLICY history_tenant_isolation ON memorix.history
USING (tenant IS NOT DISTINCT FROM nullif(current_setting('memorix.tenant', true), ''))
WITH CHECK (tenant IS NOT DISTINCT FROM nullif(current_setting('memorix.tenant', true), ''))
"""

FUNCTION = """
CREATE FUNCTION memorix.record_history() RETURNS trigger
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

TRIGGERS = {
    "INSERT": "REFERENCING NEW TABLE AS new_rows",
    "UPDATE": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "DELETE": "REFERENCING OLD TABLE AS old_rows",
}


def upgrade() -> None:
    op.execute(TABLE)
    op.execute("CREATE INDEX history_memory_idx ON memorix.history (memory_id, event_id)")
    op.execute("CREATE INDEX history_collection_at_idx ON memorix.history (collection_id, at)")
    op.execute("CREATE INDEX history_metadata_gin_idx ON memorix.history USING gin (metadata jsonb_path_ops)")
    op.execute("ALTER TABLE memorix.history ENABLE ROW LEVEL SECURITY")
    op.execute(POLICY)
    op.execute(FUNCTION)
    for event, referencing in TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER memories_history_{event.lower()} AFTER {event} ON memorix.memories "
            f"{referencing} FOR EACH STATEMENT EXECUTE FUNCTION memorix.record_history()"
        )


def downgrade() -> None:
    for event in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS memories_history_{event.lower()} ON memorix.memories")
    op.execute("DROP FUNCTION IF EXISTS memorix.record_history()")
    op.execute("DROP TABLE IF EXISTS memorix.history")
