"""Concurrent load on one embedded server: writer processes storing while others retrieve,
count, delete_by_filter and archive. Counts must come out exact, with no deadlock, no
duplicate and no exception.

A scaled-down run of benchmarks/load.py (4 x 2,500 stores): 4 writer processes x 150 single
``store`` calls, one reader (retrieve, filtered retrieve, count, filtered count), one deleter
(stores batches of its own marked memories and delete_by_filter's them, keeping every third
batch) and one archiver (the same with archive). The workers live in
tests/support/load_worker.py, the driver in tests/support/load.py (run_load, verify_load).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from memorix_pg import MemoryAPI
from tests.support.helpers import private_data_dir, python_env, sql_rows
from tests.support.load import load_inconsistencies, run_load, verify_load

WRITERS = 4
STORES = 150


@pytest.fixture(scope="module")
def load_dir() -> Iterator[Path]:
    """A private embedded server (MEMORIX_DATA_DIR) for the load, stopped afterwards."""
    with private_data_dir("mx-load-") as path:
        yield path


@pytest.fixture(scope="module")
def load_run(load_dir: Path) -> dict:
    # This process starts the server and creates both collections first, so the workers only
    # attach; its handle keeps the server up when they exit.
    source = MemoryAPI(embedder="hash", collection_name="load")
    MemoryAPI(embedder="hash", collection_name="load_archive")
    env = python_env(MEMORIX_DATA_DIR=str(load_dir), MEMORIX_DATABASE_URL=None)
    run = run_load(env, writers=WRITERS, stores=STORES, batch=10, min_rounds=3, timeout=240)
    run["url"] = source.database_url
    run["figures"] = verify_load(run, source.database_url, load_dir / "pgdata" / "log")
    return run


def test_every_worker_finished_without_an_exception(load_run: dict) -> None:
    reports = load_run["reports"]
    assert (
        sorted(r["role"] for r in reports.values())
        == ["archiver", "deleter", "reader"] + ["writer"] * WRITERS
    )
    for tag, report in reports.items():
        assert report["errors"] == [], f"{tag}: {report['errors']}"
        assert report["problems"] == [], f"{tag}: {report['problems']}"
    # The others really ran next to the writers, several rounds each.
    for tag in ("r1", "d1", "a1"):
        assert reports[tag]["rounds"] >= 3


def test_counts_are_exact_after_the_load(load_run: dict) -> None:
    figures = load_run["figures"]
    print("\n" + "\n".join(f"{k}: {v}" for k, v in figures.items()))
    assert load_inconsistencies(figures) == []
    assert figures["stored (ids returned)"] >= WRITERS * STORES + 3 * 10 * 2
    assert figures["deadlocks in the server log"] == 0
    assert figures["found in source"] >= WRITERS * STORES


def test_every_stored_id_is_in_exactly_one_place(load_run: dict) -> None:
    """The same accounting, spelled out from the workers' own reports."""
    reports = load_run["reports"]
    writers = [i for r in reports.values() if r["role"] == "writer" for i in r["ids"]]
    assert len(writers) == len(set(writers)) == WRITERS * STORES
    deleted = set(reports["d1"]["removed"])
    archived = set(reports["a1"]["removed"])
    expected = {
        **dict.fromkeys(writers, "load"),
        **dict.fromkeys(reports["d1"]["kept"] + reports["a1"]["kept"], "load"),
        **dict.fromkeys(archived, "load_archive"),
    }
    rows = sql_rows(
        load_run["url"],
        "SELECT m.id::text, c.name FROM memorix.memories m JOIN memorix.collections c "
        "ON c.id = m.collection_id WHERE c.name IN ('load', 'load_archive')",
    )
    found = dict(rows)
    assert len(rows) == len(found)  # no id twice
    assert found == expected
    assert not deleted & set(found)


def test_the_archive_holds_only_archived_memories_with_their_flag(load_run: dict) -> None:
    archive = MemoryAPI(embedder="hash", collection_name="load_archive")
    assert archive.count() == len(load_run["reports"]["a1"]["removed"])
    assert archive.count({"archived": True, "role": "archiver"}) == archive.count()
    source = MemoryAPI(embedder="hash", collection_name="load")
    assert source.count({"role": "deleter"}) == len(load_run["reports"]["d1"]["kept"])
    assert source.count({"role": "archiver"}) == len(load_run["reports"]["a1"]["kept"])
    for w in range(1, WRITERS + 1):
        assert source.count({"writer": f"w{w}"}) == STORES
