"""The ``memorix-pg`` command line, against the real server (click's CliRunner, same process)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from memorix_pg.cli import main


@pytest.fixture
def run(database_url: str):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True) -> str:
        result = runner.invoke(main, list(args), env={"MEMORIX_DATABASE_URL": database_url})
        if ok:
            assert result.exit_code == 0, result.output + repr(result.exception)
        else:
            assert result.exit_code != 0, result.output
            assert "Traceback" not in result.output
        return result.output

    return invoke


def _commands(group, prefix=()):  # type: ignore[no-untyped-def]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_has_help_with_an_example_and_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    runner = CliRunner()
    for path, _command in _commands(main):
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Example" in result.output, f"{' '.join(path)} --help has no example"
        assert f"memorix-pg {' '.join(path)}" in readme, f"memorix-pg {' '.join(path)} is not in the README"


def test_store_search_stats(run) -> None:  # type: ignore[no-untyped-def]
    common = ("--collection", "cli", "--embedder", "hash")
    first = run("store", "User prefers dark mode", "-m", '{"type": "preference"}', *common).strip()
    run("store", "User lives in Lisbon", "-m", '{"type": "fact"}', *common)
    assert len(first) == 36

    out = run("search", "dark mode", "--filter", '{"type": "preference"}', "--top-k", "5", "--json", *common)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["User prefers dark mode"]
    assert rows[0]["id"] == first

    out = run("search", "Lisbon", "--mode", "text", "--json", *common)
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["User lives in Lisbon"]
    out = run("search", "where does the user live? Lisbon", "--mode", "hybrid", "--json", *common)
    assert json.loads(out.splitlines()[0])["text"] == "User lives in Lisbon"
    assert "Invalid value for '--mode'" in run("search", "x", "--mode", "bm25", *common, ok=False)

    out = run("stats", "--group-by", "type", *common)
    assert "2 memories" in out
    assert "preference" in out and "fact" in out


def test_bad_input_is_a_clean_error(run) -> None:  # type: ignore[no-untyped-def]
    common = ("--collection", "cli", "--embedder", "hash")
    assert "not valid JSON" in run("search", "x", "--filter", "{nope", *common, ok=False)
    assert "unknown operator" in run("search", "x", "--filter", '{"a": {"$nope": 1}}', *common, ok=False)
    assert "FilterError" in run("search", "x", "--filter", '{"a": {"$nope": 1}}', *common, ok=False)
    assert "InvalidInput" in run("store", "", *common, ok=False)


def test_cleanup_archive_purge(run, database_url: str) -> None:  # type: ignore[no-untyped-def]
    common = ("--collection", "life", "--embedder", "hash")
    for i in range(4):
        run("store", f"note {i}", "-m", json.dumps({"n": i}), *common)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE memorix.memories SET created_at = now() - interval '40 days' "
            "WHERE metadata @> '{\"n\": 0}' OR metadata @> '{\"n\": 1}'"
        )
    assert "would delete 2" in run("cleanup", "--older-than", "30d", "--dry-run", *common)
    assert "deleted 1" in run("cleanup", "--older-than", "30d", "--filter", '{"n": 0}', *common)
    assert "moved 1" in run("archive", "--filter", '{"n": 3}', "--to", "life_archive", *common)
    assert "2 memories" in run("stats", *common)
    assert "deleted 0 expired" in run("purge-expired", *common)
    assert "not a positive number" in run("cleanup", "--older-than", "soon", *common, ok=False)


def test_export_import_round_trip(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = ("--collection", "src", "--embedder", "hash")
    for i in range(3):
        run("store", f"memory {i}", "-m", json.dumps({"i": i}), *source)
    dump = tmp_path / "dump.jsonl"
    run("export", "-o", str(dump), *source)
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert [line["text"] for line in lines] == ["memory 0", "memory 1", "memory 2"]
    assert all(len(line["embedding"]) == 384 for line in lines)

    # Same ids in the same collection: importing again changes nothing.
    assert "imported 3" in run("import", str(dump), "--no-progress", *source)
    again = tmp_path / "again.jsonl"
    run("export", "-o", str(again), *source)
    assert [json.loads(x) for x in again.read_text().splitlines()] == lines


def test_migrate_reports_the_revision(run) -> None:  # type: ignore[no-untyped-def]
    from memorix_pg.migrate import head_revision

    assert f"is at revision {head_revision()}" in run("migrate")
