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

    def invoke(*args: str, ok: bool = True, status: int | None = None) -> str:
        result = runner.invoke(main, list(args), env={"MEMORIX_DATABASE_URL": database_url})
        if ok:
            assert result.exit_code == 0, result.output + repr(result.exception)
        else:
            assert result.exit_code != 0, result.output
            assert "Traceback" not in result.output
            assert status is None or result.exit_code == status, (result.exit_code, result.output)
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


ORDERS = (
    "order 48213 shipped",
    "status of my order: order 48213 delayed, order late",
    "the status of the shipment is pending",
    "status status status report",
    "order order order of business",
    "what is the status of the parcel 48213",
)


def _rows(out: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.splitlines()]


def test_search_hybrid_weights_rrf_k_and_text_cutoff(run) -> None:  # type: ignore[no-untyped-def]
    common = ("--collection", "knobs", "--embedder", "hash")
    for text in ORDERS:
        run("store", text, *common)

    def hybrid(*extra: str) -> list[dict]:  # type: ignore[type-arg]
        query = ("search", "status of order 48213", "--mode", "hybrid", "-k", "6", "--json", "--show-ranks")
        return _rows(run(*query, "--text-cutoff", "0.5", *extra, *common))  # a later --text-cutoff wins

    def fused(row: dict, k: float, w_vector: float, w_text: float) -> float:  # type: ignore[type-arg]
        ranks = row["ranks"]
        v, t = ranks["vector_rank"], ranks["text_rank"]
        return (w_vector / (k + v) if v else 0.0) + (w_text / (k + t) if t else 0.0)

    plain = hybrid()
    for row in plain:
        assert row["score"] == pytest.approx(fused(row, 60, 1, 1))
    heavier_text = hybrid("--text-weight", "3")
    for row in heavier_text:
        assert row["score"] == pytest.approx(fused(row, 60, 1, 3))
    assert [r["text"] for r in plain][:2] == [ORDERS[1], ORDERS[4]]
    assert [r["text"] for r in heavier_text][:2] == [ORDERS[1], ORDERS[5]]
    for row in hybrid("--rrf-k", "10", "--vector-weight", "2", "--text-weight", "0.5"):
        assert row["score"] == pytest.approx(fused(row, 10, 2, 0.5))
    text_leads = hybrid("--rrf-k", "1", "--text-weight", "3")  # the README's "exact words lead"
    for row in text_leads:
        assert row["score"] == pytest.approx(fused(row, 1, 1, 3))
    assert text_leads[0]["ranks"]["text_rank"] == 1

    # Without the vector arm, and every text match ranked, the fused order is the text ranking's.
    text_only = [
        r["text"]
        for r in _rows(run("search", "status of order 48213", "--mode", "text", "-k", "6", "--json", *common))
    ]
    assert [r["text"] for r in hybrid("--vector-weight", "0", "--text-cutoff", "0")] == text_only

    def text_ranked(rows: list[dict]) -> int:  # type: ignore[type-arg]
        return sum(r["ranks"]["text_rank"] is not None for r in rows)

    assert (
        text_ranked(hybrid("--text-cutoff", "1")),
        text_ranked(plain),
        text_ranked(hybrid("--text-cutoff", "0")),
    ) == (1, 4, 6)
    assert "ranks" not in _rows(run("search", "status", "--mode", "hybrid", "--json", *common))[0]


def test_search_min_score_mmr_and_fetch_k(run) -> None:  # type: ignore[no-untyped-def]
    common = ("--collection", "knobs", "--embedder", "hash")
    for text in ORDERS:
        run("store", text, *common)
    query = ("search", "status of order 48213", "-k", "6", "--json", *common)
    every = _rows(run(*query))
    kept = _rows(run(*query, "--min-score", "0.5"))
    assert len(every) == 6
    assert kept == [r for r in every if r["score"] >= 0.5]
    assert 0 < len(kept) < len(every)

    run("store", ORDERS[1], "--id", "twin", *common)  # the best match twice
    top2 = ("search", "status of order 48213", "-k", "2", "--json", *common)
    assert [r["text"] for r in _rows(run(*top2))] == [ORDERS[1], ORDERS[1]]
    diverse = [r["text"] for r in _rows(run(*top2, "--mmr", "--lambda-mult", "0.3"))]
    assert diverse[0] == ORDERS[1] and diverse[1] != ORDERS[1]
    # Pure similarity, or only the two nearest as candidates: the twins again.
    assert [r["text"] for r in _rows(run(*top2, "--mmr", "--lambda-mult", "1"))] == [ORDERS[1], ORDERS[1]]
    assert [r["text"] for r in _rows(run(*top2, "--mmr", "--lambda-mult", "0.3", "--fetch-k", "2"))] == [
        ORDERS[1],
        ORDERS[1],
    ]


def test_search_recency_with_half_life_and_importance(run, database_url: str) -> None:  # type: ignore[no-untyped-def]
    common = ("--collection", "recent", "--embedder", "hash")
    run("store", "User prefers dark mode", "--id", "old", *common)
    run("store", "User lives in Lisbon", "--id", "new", "-m", '{"importance": 10}', *common)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE memorix.memories SET created_at = now() - interval '10 days' WHERE id = 'old'")
    query = ("search", "dark mode preference", "--json", "--show-ranks", *common)
    assert [r["id"] for r in _rows(run(*query))] == ["old", "new"]
    # A day's half-life: ten days old counts ~0.001 of the recency the new memory gets.
    recent = _rows(run(*query, "--recency-weight", "1", "--half-life", "1d"))
    assert [r["id"] for r in recent] == ["new", "old"]
    assert recent[1]["ranks"]["recency"] == pytest.approx(0.5**10, rel=1e-3)
    assert [r["id"] for r in _rows(run(*query, "--recency-weight", "1", "--half-life", "8640000"))] == [
        "old",
        "new",
    ]
    assert [r["id"] for r in _rows(run(*query, "--recency-weight", "1", "--half-life", "2400h"))] == [
        "old",
        "new",
    ]
    important = _rows(run(*query, "--importance-key", "importance", "--importance-weight", "1"))
    assert [r["id"] for r in important] == ["new", "old"]
    assert important[0]["ranks"]["importance"] == 1.0


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        (["--rrf-k", "-1", "--mode", "hybrid"], 1, "InvalidInput: rrf_k must be >= 0"),
        (["--vector-weight", "nan", "--mode", "hybrid"], 1, "vector_weight must be a finite number"),
        (["--text-cutoff", "2", "--mode", "hybrid"], 1, "text_cutoff must be from 0 to 1"),
        (["--recency-weight", "1", "--half-life", "0"], 1, "half_life must be a positive timedelta"),
        (["--recency-weight", "1", "--mode", "hybrid"], 1, "combine with the similarity of mode='vector'"),
        (
            ["--importance-key", "a..b", "--importance-weight", "1"],
            1,
            "importance_key must be a metadata key",
        ),
        (["--min-score", "inf"], 1, "min_score must be a finite number"),
        (["--mmr", "--fetch-k", "0"], 1, "fetch_k must be an int from 1"),
        (["--mmr", "--lambda-mult", "2"], 1, "lambda_mult must be in [0, 1]"),
        (
            ["--half-life", "3w"],
            2,
            "Invalid value for '--half-life': '3w' is not seconds or a number followed by",
        ),
        (["--half-life", "-5s"], 2, "Invalid value for '--half-life'"),
        (["--rrf-k", "many"], 2, "Invalid value for '--rrf-k'"),
    ],
)
def test_search_bad_ranking_option_is_a_one_line_error(run, extra, status, message) -> None:  # type: ignore[no-untyped-def]
    common = ("--collection", "knobs", "--embedder", "hash")
    run("store", "status of order 48213", *common)
    out = run("search", "status of order 48213", *extra, *common, ok=False, status=status)
    assert message in out
    if status == 1:  # the library's own check, as the CLI's one-line error
        assert out.count("\n") == 1 and out.startswith("Error: InvalidInput: ")


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
