"""Time-partitioned retention: memories partitioned by month of ``created_at`` (opt-in).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30

``MEMORIX_TIME_PARTITIONS=month``, set for the migrating process, makes a *new* database's
``memorix.memories`` ``PARTITION BY RANGE (created_at)`` with one partition a month, named
``memories_YYYY_MM`` (UTC months). Without the variable this revision changes nothing. Dropping a
month is then how ``cleanup`` removes old memories (docs/scaling.md): no dead rows, no VACUUM, no
WAL for the rows.

* A partitioned table needs its partition key in every unique index, so the key becomes
  ``PRIMARY KEY (tenant, collection_id, id, created_at)``; the library keeps an id unique per
  tenant and collection by its writes (time_partitions.py), not by the key.
* ``memorix.ensure_month_partitions(first, last)`` (SECURITY DEFINER, owned by the migrating
  role, EXECUTE for every role) creates the missing months from ``first`` to ``last``, each with
  the tenant policy of its own and no privilege for anyone but its owner: a partition read
  directly would skip the parent's row-level security. It creates a month as a plain table and
  then attaches it (``ATTACH PARTITION`` takes a SHARE UPDATE EXCLUSIVE lock on ``memories``,
  which blocks no reader or writer; ``CREATE TABLE ... PARTITION OF`` would take an ACCESS
  EXCLUSIVE one). The current and the next month are created here.
* ``history`` is not partitioned: its rows are few and pruned by ``history_retention``.

It is refused, with nothing changed, when ``memories`` holds rows (export, migrate a new
database with the variable, import: a backup restores its own, unpartitioned, table) or is
already partitioned by tenant (``MEMORIX_TENANT_PARTITIONS``, 0010). The downgrade refuses a
time-partitioned database.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

from memorix_pg.errors import MemorixError

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME_PARTITIONS_ENV = "MEMORIX_TIME_PARTITIONS"
ACCEPTED = ("month",)
# Bounds one call's work (a restore spanning a century still fits).
MAX_MONTHS = 1200

# A month: a plain table shaped like memories, checked to hold the month only (so ATTACH need
# not scan it), with the tenant policy, no privileges but its owner's, then attached.
FUNCTION = r"""
CREATE FUNCTION memorix.ensure_month_partitions(first timestamptz, last timestamptz)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    month timestamptz;
    stop timestamptz;
    name text;
    policy text := 'tenant = coalesce(current_setting(''memorix.tenant'', true), '''')';
    grantee oid;
    made integer := 0;
BEGIN
    IF first IS NULL OR last IS NULL OR last < first THEN
        RAISE EXCEPTION 'memorix.ensure_month_partitions needs first <= last, got % and %', first, last
            USING ERRCODE = '22023';
    END IF;
    IF first < '0001-01-01 00:00:00+00' OR last >= '10000-01-01 00:00:00+00' THEN
        RAISE EXCEPTION 'memorix.ensure_month_partitions: % to % lies outside the years 1 to 9999',
            first, last USING ERRCODE = '22008';
    END IF;
    month := date_trunc('month', first);
    stop := date_trunc('month', last);
    IF stop >= month + make_interval(months => {max_months}) THEN
        RAISE EXCEPTION 'memorix.ensure_month_partitions: at most {max_months} months at a time'
            USING ERRCODE = '22023';
    END IF;
    WHILE month <= stop LOOP
        name := 'memories_' || to_char(month, 'YYYY_MM');
        IF to_regclass(format('memorix.%I', name)) IS NULL THEN
            -- Two writers creating the same month: the second finds it made.
            PERFORM pg_advisory_xact_lock(hashtext('memorix.ensure_month_partitions'));
            IF to_regclass(format('memorix.%I', name)) IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE memorix.%I (LIKE memorix.memories INCLUDING DEFAULTS INCLUDING GENERATED '
                    'INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)', name);
                EXECUTE format(
                    'ALTER TABLE memorix.%I ADD CONSTRAINT %I CHECK (created_at >= %L AND created_at < %L)',
                    name, name || '_month', month, month + interval '1 month');
                EXECUTE format('ALTER TABLE memorix.%I ENABLE ROW LEVEL SECURITY', name);
                EXECUTE format('CREATE POLICY %I ON memorix.%I USING (%s) WITH CHECK (%s)',
                    name || '_tenant_isolation', name, policy, policy);
                EXECUTE format('REVOKE ALL ON memorix.%I FROM PUBLIC', name);
                FOR grantee IN
                    SELECT DISTINCT a.grantee FROM pg_class c, aclexplode(c.relacl) a
                    WHERE c.oid = format('memorix.%I', name)::regclass
                      AND a.grantee <> c.relowner AND a.grantee <> 0
                LOOP
                    EXECUTE format('REVOKE ALL ON memorix.%I FROM %I', name,
                        (SELECT rolname FROM pg_roles WHERE oid = grantee));
                END LOOP;
                EXECUTE format(
                    'ALTER TABLE memorix.memories ATTACH PARTITION memorix.%I FOR VALUES FROM (%L) TO (%L)',
                    name, month, month + interval '1 month');
                EXECUTE format('ALTER TABLE memorix.%I DROP CONSTRAINT %I', name, name || '_month');
                made := made + 1;
            END IF;
        END IF;
        month := month + interval '1 month';
    END LOOP;
    RETURN made;
END
$$
""".replace("{max_months}", str(MAX_MONTHS))


def _citus_ready() -> ModuleType:
    """Revision 0010's module: the index, view, policy and trigger definitions it wrote."""
    path = Path(__file__).with_name("0010_citus_ready.py")
    spec = importlib.util.spec_from_file_location("memorix_migration_0010", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wanted() -> bool:
    value = os.environ.get(TIME_PARTITIONS_ENV, "").strip()
    if not value:
        return False
    if value not in ACCEPTED:
        raise MemorixError(
            f"{TIME_PARTITIONS_ENV} accepts only 'month' (memories partitioned by month of created_at), "
            f"got {value!r:.40}; unset it to migrate without partitions"
        )
    return True


def _strategy() -> str | None:
    """How memories is partitioned: 'h' (by tenant, 0010), 'r' (by month, here), or None."""
    row = op.get_bind().execute(
        sa.text(
            "SELECT partstrat FROM pg_catalog.pg_partitioned_table "
            "WHERE partrelid = 'memorix.memories'::regclass"
        )
    )
    value = row.scalar()
    return str(value) if value is not None else None


def _partition_by_month() -> None:
    bind = op.get_bind()
    if _strategy() == "h":
        raise MemorixError(
            f"{TIME_PARTITIONS_ENV} cannot apply: memorix.memories is partitioned by tenant "
            "(MEMORIX_TENANT_PARTITIONS); a table has one partition key. Unset one of the two "
            "(nothing was changed)"
        )
    if bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM memorix.memories)")).scalar():
        raise MemorixError(
            f"{TIME_PARTITIONS_ENV} applies to new databases only: memorix.memories holds rows already. "
            "Export the memories (memorix-pg export), migrate a new database with the variable set and "
            "import them there (memorix-pg import keeps ids, vectors and created_at); a backup will not "
            "do, its restore brings back its own unpartitioned table. Or unset the variable (nothing "
            "was changed)"
        )
    old = _citus_ready()
    old._drop_views()
    op.execute("ALTER TABLE memorix.memories RENAME TO memories_plain")
    op.execute(
        "CREATE TABLE memorix.memories (LIKE memorix.memories_plain INCLUDING DEFAULTS INCLUDING GENERATED "
        "INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION) PARTITION BY RANGE (created_at)"
    )
    # Its per-collection HNSW indexes go with it; opening each collection builds them again.
    op.execute("DROP TABLE memorix.memories_plain CASCADE")
    op.execute(
        "ALTER TABLE memorix.memories ADD CONSTRAINT memories_pkey "
        "PRIMARY KEY (tenant, collection_id, id, created_at)"
    )
    op.execute(
        "ALTER TABLE memorix.memories ADD CONSTRAINT memories_collection_id_fkey FOREIGN KEY (collection_id) "
        "REFERENCES memorix.collections (id) ON DELETE CASCADE"
    )
    for statement in old.MEMORIES_INDEXES:
        op.execute(statement)
    op.execute("ALTER TABLE memorix.memories ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY memories_tenant_isolation ON memorix.memories "
        f"USING ({old.TENANT_POLICY}) WITH CHECK ({old.TENANT_POLICY})"
    )
    old._create_triggers()
    # 0009's trigger that clears a re-embedding's stale vector when the text changes.
    op.execute(
        "CREATE TRIGGER memories_reembed_stale BEFORE UPDATE ON memorix.memories FOR EACH ROW "
        "WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash) EXECUTE FUNCTION memorix.reembed_stale()"
    )
    old._create_views(old.VIEWS)
    op.execute(FUNCTION)
    function = "FUNCTION memorix.ensure_month_partitions(timestamptz, timestamptz)"
    op.execute(f"REVOKE ALL ON {function} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON {function} TO PUBLIC")  # app roles call it; it only makes months
    op.execute("SELECT memorix.ensure_month_partitions(now(), now() + interval '1 month')")


def upgrade() -> None:
    if _wanted():
        _partition_by_month()


def downgrade() -> None:
    if _strategy() == "r":
        raise MemorixError(
            "cannot downgrade below revision 0011: memorix.memories is partitioned by month "
            f"({TIME_PARTITIONS_ENV}), which the older schema cannot be; export the memories and "
            "import them into a database made without the variable"
        )
