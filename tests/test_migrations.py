"""The alembic migrations: library upgrade/downgrade, the real CLI, and models == migrated schema."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from memorix_pg import MemorixError, MemoryAPI
from memorix_pg.api import forget_database
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


# -- 0005: string ids ---------------------------------------------------------------------------

ROWS_AT_0004 = Path(__file__).resolve().parent / "data" / "rows_at_0004.json"


def _load_rows_written_at_0004(url: str) -> dict[str, Any]:
    """A database at revision 0004 holding the rows that revision's library wrote (encrypted
    texts and metadata bound to UUID ids, a tenant's row, a half-precision collection)."""
    data = json.loads(ROWS_AT_0004.read_text(encoding="utf-8"))
    upgrade(url, "0004")
    with psycopg.connect(url, autocommit=True) as conn:
        for c in data["collections"]:
            conn.execute(
                "INSERT INTO memorix.collections (id, name, embedder, dimension, distance, precision) "
                "VALUES (%(id)s, %(name)s, %(embedder)s, %(dimension)s, %(distance)s, %(precision)s)",
                c,
            )
        conn.execute("SELECT setval(pg_get_serial_sequence('memorix.collections', 'id'), 100)")
        for m in data["memories"]:
            conn.execute(
                "INSERT INTO memorix.memories (id, collection_id, text, embedding, embedding_half, metadata, "
                "content_hash, created_at, tenant) VALUES (%(id)s::uuid, %(collection_id)s, %(text)s, "
                "%(embedding)s::vector, %(embedding_half)s::halfvec, %(metadata)s::jsonb, "
                "decode(%(content_hash)s, 'hex'), %(created_at)s::timestamptz, %(tenant)s)",
                m,
            )
    return data


def test_a_database_at_0004_upgrades_and_every_row_reads_back(database_url: str) -> None:
    data = _load_rows_written_at_0004(database_url)
    encrypted = "SELECT count(*) FROM memorix.memories WHERE starts_with(text, 'mxenc1:')"
    assert sql_value(database_url, encrypted) == 3
    upgrade(database_url)
    assert current_revision(get_engine(database_url)) == head_revision()
    assert (
        sql_value(
            database_url,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'memories_pkey'",
        )
        == "PRIMARY KEY (tenant, collection_id, id)"
    )
    # 0010: "no tenant" is '' (a distribution column is never NULL).
    assert sql_rows(database_url, "SELECT tenant, count(*) FROM memorix.memories GROUP BY 1 ORDER BY 1") == [
        ("", 4),
        ("alice", 1),
    ]
    assert (
        sql_value(
            database_url,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'memorix.memories'::regclass AND attname = 'id'",
        )
        == "text"
    )

    plaintext = data["plaintext"]
    key, encrypted = data["encryption_key"], data["encrypted_metadata"]
    vault = MemoryAPI(
        embedder="hash-16",
        collection_name="vault",
        database_url=database_url,
        encryption_key=key,
        encrypted_metadata=encrypted,
    )
    alice = MemoryAPI(
        embedder="hash-16",
        collection_name="vault",
        database_url=database_url,
        encryption_key=key,
        encrypted_metadata=encrypted,
        tenant="alice",
    )
    notes = MemoryAPI(embedder="hash-16", collection_name="notes", database_url=database_url)
    by_collection = {1: vault, 2: notes}
    for row in data["memories"]:
        api = alice if row["tenant"] == "alice" else by_collection[row["collection_id"]]
        memory = api.get(row["id"])
        assert memory is not None, row["id"]
        assert (memory.text, memory.metadata) == (
            plaintext[row["id"]]["text"],
            plaintext[row["id"]]["metadata"],
        )
        assert memory.created_at == datetime.fromisoformat(row["created_at"])
    assert vault.retrieve("penicillin allergy", top_k=1)[0].text == "allergic to penicillin"
    assert [m.text for m in notes.list(order="oldest")] == ["prefers dark mode", "lives in Lisbon"]
    assert vault.count() == 2 and alice.count() == 1
    # The views came back (with the caller's rights) and count as before.
    assert sql_rows(database_url, "SELECT collection, memories FROM memorix.collection_stats ORDER BY 1") == [
        ("notes", 2),
        ("vault", 3),
    ]
    assert sql_value(database_url, "SELECT sum(memories) FROM memorix.daily_counts") == 5
    # Old ids stay usable as ids: stored again, they upsert under the same encryption binding.
    first = data["memories"][0]["id"]
    vault.store("allergic to penicillin and latex", {"diagnosis": "Z88.0"}, id=first)
    assert vault.get(first).text == "allergic to penicillin and latex"  # type: ignore[union-attr]
    assert vault.count() == 2


def test_downgrade_below_0005_needs_uuid_ids_each_in_one_collection(database_url: str) -> None:
    data = _load_rows_written_at_0004(database_url)
    upgrade(database_url)
    notes = MemoryAPI(embedder="hash-16", collection_name="notes", database_url=database_url)
    notes.store("a note under a string id", id="note:1")
    with pytest.raises(
        MemorixError, match=re.escape("1 memories have ids that are not UUIDs (e.g. 'note:1')")
    ):
        downgrade(database_url, "0004")
    assert current_revision(get_engine(database_url)) == head_revision()
    notes.delete("note:1")
    shared = data["memories"][0]["id"]
    notes.store("the same id in another collection", id=shared)
    with pytest.raises(MemorixError, match=re.escape(f"used in more than one collection (e.g. '{shared}')")):
        downgrade(database_url, "0004")
    notes.delete(shared)

    downgrade(database_url, "0004")
    assert current_revision(get_engine(database_url)) == "0004"
    rows = sql_rows(database_url, "SELECT id, text FROM memorix.memories ORDER BY created_at")
    assert [(str(i), t) for i, t in rows] == [(m["id"], m["text"]) for m in data["memories"]]
    assert (
        sql_value(
            database_url,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'memories_pkey'",
        )
        == "PRIMARY KEY (id)"
    )
    assert sql_value(database_url, "SELECT sum(memories) FROM memorix.collection_stats") == 5
    forget_database(database_url)
    upgrade(database_url)  # and up again
    assert MemoryAPI(embedder="hash-16", collection_name="notes", database_url=database_url).count() == 2


# -- 0010: the Citus-ready key ---------------------------------------------------------------


def test_downgrade_below_0010_restores_null_tenants_and_needs_ids_unique_per_collection(
    database_url: str,
) -> None:
    upgrade(database_url)
    plain = MemoryAPI(embedder="hash-16", collection_name="notes", database_url=database_url)
    alice = MemoryAPI(embedder="hash-16", collection_name="notes", database_url=database_url, tenant="alice")
    plain.store("a note without a tenant", id="n1")
    alice.store("alice's note under the same id", id="n1")
    alice.store("alice's other note", id="n2")
    assert sql_value(database_url, "SELECT count(*) FROM memorix.history WHERE tenant = ''") == 1
    with pytest.raises(MemorixError, match=re.escape("1 ids are used by more than one tenant") + ".*'n1'"):
        downgrade(database_url, "0008")
    assert current_revision(get_engine(database_url)) == head_revision()
    alice.delete("n1")

    downgrade(database_url, "0008")
    assert current_revision(get_engine(database_url)) == "0008"
    assert sql_rows(database_url, "SELECT id, tenant FROM memorix.memories ORDER BY id") == [
        ("n1", None),
        ("n2", "alice"),
    ]
    assert (
        sql_value(
            database_url,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'memories_pkey'",
        )
        == "PRIMARY KEY (collection_id, id)"
    )
    assert sql_value(database_url, "SELECT count(*) FROM memorix.history WHERE tenant IS NULL") == 1
    assert sql_value(database_url, "SELECT sum(memories) FROM memorix.collection_stats") == 2
    forget_database(database_url)
    upgrade(database_url)  # and up again: the same rows, keyed by tenant
    assert sql_rows(database_url, "SELECT id, tenant FROM memorix.memories ORDER BY id") == [
        ("n1", ""),
        ("n2", "alice"),
    ]
    assert [m.id for m in alice.list()] == ["n2"] and plain.get("n1") is not None
