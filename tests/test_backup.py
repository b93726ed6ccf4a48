"""Backups: pg_dump / pg_restore of the memorix schema round-trip everything, on the real server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

import memorix_pg
from memorix_pg import InvalidInput, MemoryAPI
from memorix_pg.cli import main
from memorix_pg.database import dispose_engine


@pytest.fixture
def other_database_url(pg_server_url: str) -> Iterator[str]:
    """A second empty database on the session's server, to restore into."""
    name = f"r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(pg_server_url)._replace(path=f"/{name}"))
    yield url
    dispose_engine(url)
    memorix_pg.api.forget_database(url)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _schema_objects(url: str) -> dict[str, object]:
    with psycopg.connect(url) as conn:
        return {
            "indexes": sorted(
                r[0]
                for r in conn.execute(
                    "SELECT indexdef FROM pg_indexes WHERE schemaname = 'memorix'"
                ).fetchall()
            ),
            "policies": sorted(
                conn.execute(
                    "SELECT policyname, qual, with_check FROM pg_policies WHERE schemaname = 'memorix'"
                ).fetchall()
            ),
            "rls": conn.execute(
                "SELECT relrowsecurity FROM pg_class WHERE oid = 'memorix.memories'::regclass"
            ).fetchone(),
            "collections": conn.execute(
                "SELECT name, embedder, dimension, distance, precision, metadata_schema "
                "FROM memorix.collections ORDER BY name"
            ).fetchall(),
            "rows": conn.execute(
                "SELECT collection_id, id, text, metadata, embedding::text, embedding_half::text, "
                "content_hash, created_at, updated_at, expires_at, tenant FROM memorix.memories "
                "ORDER BY collection_id, id"
            ).fetchall(),
            "revision": conn.execute("SELECT version_num FROM memorix.alembic_version").fetchall(),
            "history": conn.execute(
                "SELECT event_id, collection_id, memory_id, operation, text_hash_after, metadata, actor, at "
                "FROM memorix.history ORDER BY event_id"
            ).fetchall(),
            "triggers": sorted(
                conn.execute(
                    "SELECT tgname FROM pg_trigger "
                    "WHERE tgrelid = 'memorix.memories'::regclass AND NOT tgisinternal"
                ).fetchall()
            ),
        }


def _fill(url: str) -> list[str]:
    notes = MemoryAPI(
        embedder="hash-16", collection_name="notes", database_url=url, schema={"type": "object"}
    )
    ids = notes.store_batch(
        [f"note {i}" for i in range(40)], [{"i": i, "user_id": f"u{i % 3}"} for i in range(40)]
    )
    notes.create_index("i", type="number")
    half = MemoryAPI(embedder="hash-16", collection_name="half", database_url=url, precision="half")
    half.store("half precision", {"k": 1})
    MemoryAPI(embedder="hash-16", collection_name="notes", database_url=url, tenant="acme").store(
        "tenant row"
    )
    return ids


def test_backup_and_restore_round_trip_everything(
    database_url: str, other_database_url: str, tmp_path: Path
) -> None:
    ids = _fill(database_url)
    report = memorix_pg.backup(tmp_path / "b.dump", database_url=database_url)
    assert (report.collections, report.memories) == (2, 42) and report.bytes > 0
    restored = memorix_pg.restore(tmp_path / "b.dump", database_url=other_database_url)
    assert (restored.collections, restored.memories) == (2, 42)
    before, after = _schema_objects(database_url), _schema_objects(other_database_url)
    assert after == before
    assert any("hnsw" in d for d in after["indexes"])  # type: ignore[union-attr]
    assert after["policies"] and after["rls"] == (True,)
    # The three history triggers and the one that clears a re-embedding's stale vector.
    assert len(after["history"]) == 42 and len(after["triggers"]) == 4  # type: ignore[arg-type]
    # The restored database serves searches, vectors equal bit for bit.
    original = MemoryAPI(embedder="hash-16", collection_name="notes", database_url=database_url)
    copy = MemoryAPI(embedder="hash-16", collection_name="notes", database_url=other_database_url)
    assert copy.count() == 40 and copy.get_schema() == {"type": "object"}
    a = original.get(ids[7], include_embeddings=True)
    b = copy.get(ids[7], include_embeddings=True)
    assert a is not None and b is not None and np.array_equal(a.embedding, b.embedding)
    assert [m.id for m in copy.retrieve("note 7", top_k=3)] == [
        m.id for m in original.retrieve("note 7", top_k=3)
    ]


def test_restore_refuses_a_database_with_collections_unless_replace(
    database_url: str, other_database_url: str, tmp_path: Path
) -> None:
    _fill(database_url)
    memorix_pg.backup(tmp_path / "b.dump", database_url=database_url)
    MemoryAPI(embedder="hash-16", collection_name="mine", database_url=other_database_url).store("keep me")
    with pytest.raises(InvalidInput, match="replace"):
        memorix_pg.restore(tmp_path / "b.dump", database_url=other_database_url)
    mine = MemoryAPI(embedder="hash-16", collection_name="mine", database_url=other_database_url)
    assert mine.count() == 1  # untouched
    memorix_pg.restore(tmp_path / "b.dump", database_url=other_database_url, replace=True)
    assert _schema_objects(other_database_url) == _schema_objects(database_url)
    with psycopg.connect(other_database_url) as conn:
        schemas = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'memorix%'").fetchall()
    assert schemas == [("memorix",)]  # the replaced schema is gone


def test_a_failed_restore_puts_the_old_schema_back(database_url: str, tmp_path: Path) -> None:
    MemoryAPI(embedder="hash-16", collection_name="mine", database_url=database_url).store("keep me")
    broken = tmp_path / "broken.dump"
    broken.write_bytes(b"PGDMP not really a dump")
    with pytest.raises(memorix_pg.MemorixError, match="pg_restore"):
        memorix_pg.restore(broken, database_url=database_url, replace=True)
    assert MemoryAPI(embedder="hash-16", collection_name="mine", database_url=database_url).count() == 1
    with pytest.raises(InvalidInput, match="no such backup file"):
        memorix_pg.restore(tmp_path / "missing.dump", database_url=database_url)


def test_the_cli_backs_up_and_restores(
    database_url: str, other_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(database_url)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["backup", "memories.dump"], env={"MEMORIX_DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert "2 collections, 42 memories" in result.output
    env = {"MEMORIX_DATABASE_URL": other_database_url}
    MemoryAPI(embedder="hash-16", collection_name="mine", database_url=other_database_url).store("x")
    refused = runner.invoke(main, ["restore", "memories.dump"], env=env)
    assert refused.exit_code == 1 and "--replace" in refused.output and "Traceback" not in refused.output
    result = runner.invoke(main, ["restore", "memories.dump", "--replace"], env=env)
    assert result.exit_code == 0, result.output
    assert _schema_objects(other_database_url) == _schema_objects(database_url)
