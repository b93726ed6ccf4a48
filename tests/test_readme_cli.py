"""The README's "Command line" block runs: every ``memorix-pg`` line of it, in order, as the real
CLI (click's CliRunner, as in tests/test_cli.py) on a fresh database, in a temporary working
directory, with the offline hash embedder given to every command that takes ``--embedder``.

A line that cannot run here is listed in NOT_RUN with the reason; every other line needs a check
in CHECKS, so a new README line fails this module until it is handled. Some checks have data
stored first (an old conversation for cleanup's dry run, dated memories for archive, a Chroma
store at ./chroma_db) so that what they assert can fail. `memorix-pg demo` with its default
model is run by tests/test_readme.py::test_dev_demo_command_runs."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import psycopg
import pytest
from click.testing import CliRunner

from memorix_pg import MemoryAPI
from memorix_pg.cli import main
from memorix_pg.embedders import resolve_embedder
from memorix_pg.server import embedded_server_status
from tests.support.helpers import private_data_dir, sql_exec, sql_rows, sql_value

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

# README lines (as shlex.join of their words, comment dropped) that this module does not run.
NOT_RUN: dict[str, str] = {
    "memorix-pg move-tenant acme --to postgresql://user:pass@db2/memorix": (
        "needs a second server reachable at db2; tests/test_move_tenant.py::"
        "test_the_cli_moves_a_tenant_and_prints_the_receipt runs move-tenant between two real servers"
    ),
}


def readme_lines() -> list[list[str]]:
    """The words of each line of the ```bash block after the "## Command line" heading."""
    section = README.split("\n## Command line\n", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert match is not None, 'no ```bash block after "## Command line"'
    lines = [shlex.split(line, comments=True) for line in match.group(1).splitlines()]
    return [words for words in lines if words]


def command_path(words: list[str]) -> tuple[str, ...]:
    """The (sub)command names a line calls, e.g. ("server", "start")."""
    group: click.Command = main
    path: list[str] = []
    for word in words[1:]:
        if not isinstance(group, click.Group) or word not in group.commands:
            break
        path.append(word)
        group = group.commands[word]
    return tuple(path)


def hash_embedder_defaults(group: click.Group) -> dict[str, Any]:
    """A default_map giving ``--embedder hash`` to every command that has the option (the README
    lines stay as written: their default is the sentence-transformers model)."""
    defaults: dict[str, Any] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            defaults[name] = hash_embedder_defaults(command)
        elif any(param.name == "embedder" for param in command.params):
            defaults[name] = {"embedder": "hash"}
    return defaults


@dataclass
class Session:
    """What the lines share: the database, the working and data directories, and what earlier
    lines left (counts before a line, ids)."""

    url: str
    workdir: Path
    data_dir: Path
    seen: dict[str, Any] = field(default_factory=dict)
    stderr: str = ""  # the last line's (progress bars, export's count)

    def count(self, collection: str) -> int:
        return int(
            sql_value(
                self.url,
                "SELECT count(*) FROM memorix.memories m JOIN memorix.collections c "
                "ON c.id = m.collection_id WHERE c.name = %s",
                (collection,),
            )
        )

    def api(self, collection: str) -> MemoryAPI:
        return MemoryAPI(embedder="hash", collection_name=collection, database_url=self.url)


def option(words: list[str], name: str, default: str | None = None) -> str | None:
    return words[words.index(name) + 1] if name in words else default


def connects_to_memorix(url: str) -> None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row == ("memorix",), row


# What runs before a line: the data that makes its check say something.


def seed_orders(s: Session, words: list[str]) -> None:
    if "--mode" in words:  # upserted by id: the second hybrid line finds the same memory
        s.api("notes").store("Order 48213 shipped on Monday", {"type": "order"}, id="order-48213")


def seed_old_conversation(s: Session, words: list[str]) -> None:
    api = s.api(option(words, "--collection", "default") or "default")
    old = api.store("We talked about the weather", {"type": "conversation"})
    api.store("We talked about the weekend", {"type": "conversation"})
    sql_exec(
        s.url, "UPDATE memorix.memories SET created_at = now() - interval '40 days' WHERE id = %s", (old,)
    )
    s.seen["before"] = s.count(api.collection_name)


def seed_expired(s: Session, words: list[str]) -> None:
    gone = s.api("notes").store("One-time code 4711", {"type": "code"}, ttl=timedelta(hours=1))
    sql_exec(
        s.url, "UPDATE memorix.memories SET expires_at = now() - interval '1 minute' WHERE id = %s", (gone,)
    )
    s.seen["before"] = s.count("notes")


def seed_dated(s: Session, words: list[str]) -> None:
    api = s.api("notes")
    api.store("Renewed the passport", {"type": "event", "timestamp": "2025-03-14"})
    api.store("Moved to Lisbon", {"type": "event", "timestamp": "2025-11-02"})
    api.store("Started a new job", {"type": "event", "timestamp": "2026-02-01"})
    s.seen["before"] = s.count("notes")


def seed_chroma(s: Session, words: list[str]) -> None:
    import chromadb

    texts = ["PostgreSQL is a relational database", "pgvector adds vector search", "HNSW is a graph index"]
    client = chromadb.PersistentClient(path=str(s.workdir / words[2]))
    source = client.get_or_create_collection(
        option(words, "--collection") or "knowledge", embedding_function=None
    )
    s.seen["chroma_ids"] = [f"doc-{i}" for i in range(len(texts))]
    source.add(
        ids=s.seen["chroma_ids"],
        documents=texts,
        embeddings=resolve_embedder("hash").embed(texts).tolist(),
        metadatas=[{"topic": "db"}, {"topic": "search"}, {"topic": "index"}],
    )
    del client


# What each command's output and the database must show afterwards.


def check_demo(s: Session, words: list[str], out: str) -> None:
    assert "embedder: hash" in out
    assert "1. conversation: stored 6 messages" in out
    assert "retention: deleted 2 memories" in out
    assert "'archive': 3" in out


def check_migrate(s: Session, words: list[str], out: str) -> None:
    from memorix_pg.migrate import head_revision

    assert f"is at revision {head_revision()}" in out


def check_server_start(s: Session, words: list[str], out: str) -> None:
    connects_to_memorix(out.strip())
    status = embedded_server_status(s.data_dir)
    assert status.running and status.keep_running


def check_server_status(s: Session, words: list[str], out: str) -> None:
    status = embedded_server_status(s.data_dir)
    assert f"data dir: {status.data_dir}" in out
    assert f"running:  yes (pid {status.pid}, kept running)" in out
    assert f"url:      {status.url}" in out


def check_server_url(s: Session, words: list[str], out: str) -> None:
    connects_to_memorix(out.strip())


def check_server_stop(s: Session, words: list[str], out: str) -> None:
    assert out.strip() == "stopped"
    assert not embedded_server_status(s.data_dir).running


def check_store(s: Session, words: list[str], out: str) -> None:
    memory = s.api(option(words, "--collection") or "default").get(out.strip())
    assert memory is not None, out
    assert memory.text == words[2]
    assert memory.metadata == json.loads(option(words, "-m") or "{}")


def check_search(s: Session, words: list[str], out: str) -> None:
    lines = out.splitlines()
    assert 0 < len(lines) <= int(option(words, "--top-k", "10") or 10)
    if "--mode" in words:  # the memory that has the query's exact words comes first
        assert "Order 48213 shipped" in lines[0], out
    else:
        assert "User prefers dark mode" in lines[0], out
    if "--filter" in words:
        assert all('"type": "preference"' in line for line in lines), out


def check_collections(s: Session, words: list[str], out: str) -> None:
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["collection", "memories", "embedder", "dimensions", "distance", "precision"], out
    notes = next(row for row in rows if row[0] == "notes")
    assert notes[1:] == [str(s.count("notes")), "hash-384", "384", "cosine", "full"], out


def check_stats(s: Session, words: list[str], out: str) -> None:
    assert f"collection 'notes': {s.count('notes')} memories" in out
    counts = dict(
        sql_rows(
            s.url,
            "SELECT metadata->>'type', count(*) FROM memorix.memories m "
            "JOIN memorix.collections c ON c.id = m.collection_id WHERE c.name = 'notes' "
            "GROUP BY 1",
        )
    )
    assert counts["preference"] == 1
    for kind, count in counts.items():
        assert re.search(rf"^{kind}\s+{count}$", out, flags=re.M), (kind, count, out)


def check_recall(s: Session, words: list[str], out: str) -> None:
    # Every stored memory serves as a query (up to --queries); a few are found exactly.
    queries = min(int(option(words, "--queries", "100") or 100), s.count("notes"))
    assert out.startswith(f"recall@10 over {queries} queries: 1.0000 "), out
    assert "suggested ef_search: " in out, out


def check_cleanup(s: Session, words: list[str], out: str) -> None:
    assert "--dry-run" in words
    assert out.strip() == "would delete 1 memories older than 30d"
    assert s.count(option(words, "--collection", "default") or "default") == s.seen["before"]


def check_purge_expired(s: Session, words: list[str], out: str) -> None:
    assert out.strip() == "deleted 1 expired memories"
    assert s.count("notes") == s.seen["before"] - 1


def check_archive(s: Session, words: list[str], out: str) -> None:
    assert out.strip() == "moved 2 memories from 'notes' to 'archive_2025'"
    assert s.count("notes") == s.seen["before"] - 2
    moved = s.api("archive_2025").list()
    assert sorted(m.metadata["timestamp"] for m in moved) == ["2025-03-14", "2025-11-02"]


def check_export(s: Session, words: list[str], out: str) -> None:
    lines = (s.workdir / (option(words, "-o") or "")).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == s.count("notes") > 0
    assert all(len(row["embedding"]) == 384 for row in rows)
    assert f"exported {len(rows)} memories from 'notes'" in s.stderr
    s.seen["exported"] = len(rows)


def check_import(s: Session, words: list[str], out: str) -> None:
    assert f"imported {s.seen['exported']} memories into 'notes'" in out
    assert s.count("notes") == s.seen["exported"]  # upserted by id: nothing doubled


def check_import_chroma(s: Session, words: list[str], out: str) -> None:
    ids = s.seen["chroma_ids"]
    assert out.strip() == f"knowledge -> knowledge: {len(ids)} memories"
    assert sorted(m.id for m in s.api("knowledge").list()) == ids


Check = Callable[[Session, list[str], str], None]
Before = Callable[[Session, list[str]], None]

CHECKS: dict[tuple[str, ...], tuple[Before | None, Check]] = {
    ("demo",): (None, check_demo),
    ("migrate",): (None, check_migrate),
    ("server", "start"): (None, check_server_start),
    ("server", "status"): (None, check_server_status),
    ("server", "url"): (None, check_server_url),
    ("server", "stop"): (None, check_server_stop),
    ("store",): (None, check_store),
    ("search",): (seed_orders, check_search),
    ("collections",): (None, check_collections),
    ("stats",): (None, check_stats),
    ("check-recall",): (None, check_recall),
    ("cleanup",): (seed_old_conversation, check_cleanup),
    ("purge-expired",): (seed_expired, check_purge_expired),
    ("archive",): (seed_dated, check_archive),
    ("export",): (None, check_export),
    ("import",): (None, check_import),
    ("import-chroma",): (seed_chroma, check_import_chroma),
}


def test_every_line_is_run_or_listed_with_a_reason() -> None:
    lines = readme_lines()
    assert len(lines) >= 10
    joined = [shlex.join(words) for words in lines]
    for words, line in zip(lines, joined, strict=True):
        assert words[0] == "memorix-pg", line
        assert line in NOT_RUN or command_path(words) in CHECKS, (
            f"README line neither run nor in NOT_RUN: {line}"
        )
    assert set(NOT_RUN) <= set(joined), (
        f"NOT_RUN lists lines the README no longer has: {set(NOT_RUN) - set(joined)}"
    )


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """An empty MEMORIX_DATA_DIR for `server start`; the server is stopped afterwards."""
    with private_data_dir("mx-readme-") as path:
        yield path


def test_the_command_line_block_runs(
    database_url: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    session = Session(url=database_url, workdir=tmp_path, data_dir=data_dir)
    env = {"MEMORIX_DATABASE_URL": database_url, "MEMORIX_DATA_DIR": str(data_dir)}
    defaults = hash_embedder_defaults(main)
    runner = CliRunner()
    ran = 0
    for words in readme_lines():
        line = shlex.join(words)
        if line in NOT_RUN:
            continue
        before, check = CHECKS[command_path(words)]
        if before is not None:
            before(session, words)
        result = runner.invoke(main, words[1:], env=env, default_map=defaults)
        assert result.exit_code == 0, f"{line}\n{result.output}{result.exception!r}"
        session.stderr = result.stderr
        check(session, words, result.stdout)
        ran += 1
    assert ran == len(readme_lines()) - len(NOT_RUN)
