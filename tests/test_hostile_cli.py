"""Hostile input to the CLI, on a real PostgreSQL: exit status 1 and a message, no traceback,
nothing written.

What these tests hold the library to, and the shared fixtures, are in tests/support/hostile.py.
Everything runs against one database for the module (``module_database_url``); each test uses
its own collections, so the tests do not depend on their order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from memorix_pg import MemoryAPI
from memorix_pg.cli import main as cli_main
from tests.support.helpers import db_fingerprint, nested
from tests.support.hostile import NAN

# =============================================================================================
# CLI
# =============================================================================================


def _cli(url: str, *args: str) -> Any:
    return CliRunner().invoke(cli_main, list(args), env={"MEMORIX_DATABASE_URL": url})


def _common(collection: str = "hostile") -> list[str]:
    return ["--collection", collection, "--embedder", "hash"]


CLI_CASES = [
    pytest.param(["store", "bad\x00text", *_common()], ["InvalidInput", "NUL"], id="store-NUL"),
    pytest.param(["store", "", *_common()], ["InvalidInput", "empty"], id="store-empty"),
    pytest.param(["store", "  ", *_common()], ["empty"], id="store-blank"),
    pytest.param(["store", "ok", "-m", '{"score": NaN}', *_common()], ["NaN"], id="store-meta-NaN"),
    pytest.param(["store", "ok", "-m", '{"a": [Infinity]}', *_common()], ["inf"], id="store-meta-inf"),
    pytest.param(["store", "ok", "-m", "[1, 2]", *_common()], ["dict"], id="store-meta-list"),
    pytest.param(["store", "ok", "-m", '"text"', *_common()], ["dict"], id="store-meta-str"),
    pytest.param(
        ["store", "ok", "-m", json.dumps(nested(100)), *_common()], ["deeper than 32"], id="store-meta-deep"
    ),
    pytest.param(["store", "ok", "-m", '{"a": "\\u0000"}', *_common()], ["NUL"], id="store-meta-NUL"),
    pytest.param(
        ["store", "ok", "-m", '{"a": "\\ud800"}', *_common()], ["surrogate"], id="store-meta-surrogate"
    ),
    pytest.param(["store", "ok", "--id", "", *_common()], ["id", "empty"], id="store-empty-id"),
    pytest.param(["store", "ok", "--id", "x" * 513, *_common()], ["513", "512"], id="store-long-id"),
    pytest.param(["store", "ok", *_common("x" * 10_000)], ["10000", "512"], id="store-10k-collection"),
    pytest.param(["store", "ok", *_common("a\x00b")], ["NUL"], id="store-NUL-collection"),
    pytest.param(["search", "q", "--top-k", "0", *_common()], ["top_k"], id="search-top-k-0"),
    pytest.param(["search", "q", "--top-k", str(10**30), *_common()], ["top_k"], id="search-top-k-huge"),
    pytest.param(["search", "q", "-f", '{"$where": "1"}', *_common()], ["unknown operator"], id="search-op"),
    pytest.param(["search", "q", "-f", '{"k": {"$regex": "("}}', *_common()], ["regular"], id="search-regex"),
    pytest.param(
        ["search", "q", "-f", '{"k": {"$regex": "\\\\q"}}', *_common()], ["$regex"], id="search-pg-regex"
    ),
    pytest.param(["search", "q", "-f", "[1]", *_common()], ["dict"], id="search-filter-list"),
    pytest.param(["search", "q", "-f", '{"k": NaN}', *_common()], ["nan"], id="search-filter-nan"),
    pytest.param(
        ["cleanup", "--older-than", "1d", "-f", '{"k": {"$gt": {}}}', *_common()],
        ["$gt"],
        id="cleanup-filter",
    ),
    pytest.param(
        ["archive", "-f", "{}", "--to", "hostile", *_common()], ["itself"], id="archive-into-itself"
    ),
    pytest.param(
        ["archive", "-f", '{"$bogus": 1}', "--to", "elsewhere", *_common()], ["$bogus"], id="archive-op"
    ),
    pytest.param(
        ["archive", "-f", "{}", "--to", "x" * 10_000, *_common()], ["512"], id="archive-long-target"
    ),
    pytest.param(["stats", "--group-by", "a\x00", *_common()], ["group_by"], id="stats-NUL-key"),
    pytest.param(["stats", "--group-by", "\ud800", *_common()], ["group_by"], id="stats-surrogate-key"),
]


@pytest.mark.parametrize(("args", "fragments"), CLI_CASES)
def test_cli_reports_bad_input_with_exit_1_and_no_traceback(
    url: str, api: MemoryAPI, args: list[str], fragments: list[str]
) -> None:
    before = db_fingerprint(url)
    result = _cli(url, *args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__} (a traceback for the user): {result.exception!r:.400}"
    )
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert db_fingerprint(url) == before


def test_cli_malformed_json_is_a_usage_error(url: str, api: MemoryAPI) -> None:
    """Not valid JSON at all is click's usage error (exit 2), still without a traceback."""
    before = db_fingerprint(url)
    for args in (
        ["store", "ok", "-m", "{not json"],
        ["search", "q", "-f", "{'k': 1}"],
        # more digits than Python's int parser takes (sys.get_int_max_str_digits): json raises ValueError
        ["store", "ok", "-m", '{"n": ' + "9" * 5000 + "}"],
        ["search", "q", "-f", '{"k": ' + "9" * 5000 + "}"],
    ):
        result = _cli(url, *args, *_common())
        assert result.exit_code == 2, result.output
        assert isinstance(result.exception, SystemExit)
        assert "not valid JSON" in result.output and "Traceback" not in result.output, repr(result.exception)
    assert db_fingerprint(url) == before


def test_cli_import_with_a_bad_line_anywhere_stores_nothing(url: str, api: MemoryAPI, tmp_path: Path) -> None:
    """import checks every line before writing: a bad line after the first chunk (2,000 lines) too."""
    lines = [{"text": f"imported {i}", "metadata": {"i": i}} for i in range(2100)]
    bad_lines = (
        {"text": "imported", "metadata": {"x": NAN}},
        {"text": ""},
        {"text": "ok", "id": ""},
        {"text": "ok", "id": 7},
    )
    for bad in bad_lines:
        before = db_fingerprint(url)
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join(json.dumps(line) for line in [*lines[:2050], bad, *lines[2050:]]) + "\n")
        result = _cli(url, "import", str(path), "--no-progress", *_common())
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        assert db_fingerprint(url) == before, f"{bad}: lines before the bad one were stored"
