"""The alembic migrations: library upgrade/downgrade, the real CLI, and models == migrated schema."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from memorix_pg.database import get_engine
from memorix_pg.migrate import current_revision, downgrade, head_revision, upgrade
from memorix_pg.models import SCHEMA, Base
from tests.support.helpers import REPO_ROOT, python_env, sql_rows, sql_value

TABLES = ("collections", "memories")


def table_exists(url: str, name: str) -> bool:
    return sql_value(url, "SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{name}",))


def index_defs(url: str) -> dict[str, str]:
    rows = sql_rows(url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (SCHEMA,))
    return dict(rows)  # type: ignore[arg-type]


def alembic_cli(url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO_ROOT,
        env=python_env(MEMORIX_DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_upgrade_creates_the_schema(database_url: str) -> None:
    assert not any(table_exists(database_url, t) for t in TABLES)
    upgrade(database_url)
    assert all(table_exists(database_url, t) for t in TABLES)
    assert sql_value(database_url, "SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == 1
    indexes = index_defs(database_url)
    assert "USING gin (metadata jsonb_path_ops)" in indexes["memories_metadata_gin_idx"]
    assert "USING btree (collection_id, created_at)" in indexes["memories_collection_created_idx"]
    assert "USING btree (collection_id, content_hash)" in indexes["memories_collection_hash_idx"]
    assert current_revision(get_engine(database_url)) == head_revision()
    upgrade(database_url)  # idempotent
    assert current_revision(get_engine(database_url)) == head_revision()


def test_downgrade_to_base_removes_the_tables_and_upgrade_works_again(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")
    assert not any(table_exists(database_url, t) for t in TABLES)
    assert current_revision(get_engine(database_url)) is None
    upgrade(database_url)
    assert all(table_exists(database_url, t) for t in TABLES)
    assert current_revision(get_engine(database_url)) == head_revision()


def test_the_alembic_cli_upgrades_and_reports_the_revision(database_url: str) -> None:
    head = head_revision()
    alembic_cli(database_url, "upgrade", "head")
    assert all(table_exists(database_url, t) for t in TABLES)
    assert sql_value(database_url, f"SELECT version_num FROM {SCHEMA}.alembic_version") == head
    assert f"{head} (head)" in alembic_cli(database_url, "current")
    alembic_cli(database_url, "downgrade", "base")
    assert not table_exists(database_url, "memories")
    assert f"{head} (head)" not in alembic_cli(database_url, "current")


def _ignore_runtime_indexes(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    return not (type_ == "index" and name is not None and name.startswith("memories_embedding_hnsw_"))


def test_the_models_match_the_migrated_schema(make_api, database_url: str) -> None:
    make_api("with_an_hnsw_index").store("the collection's index must be ignored")
    assert any(name.startswith("memories_embedding_hnsw_") for name in index_defs(database_url))
    with get_engine(database_url).connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "include_object": _ignore_runtime_indexes,
                "version_table_schema": SCHEMA,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_alembic_check_finds_nothing_to_generate(make_api, database_url: str) -> None:
    make_api("indexed").store("an hnsw index exists")
    assert "No new upgrade operations detected" in alembic_cli(database_url, "check")
