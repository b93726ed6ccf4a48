"""A re-embedding killed by SIGKILL (the whole embedded server, as tests/test_faults.py does)
resumes where its last committed batch left it, and ends complete and correct."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from memorix_pg import DatabaseUnavailable, EmbedderMismatch, HashEmbedder, MemoryAPI
from tests.support.fault_lab import FAST_CRASH_RECOVERY, Activity, OpThread, kill_embedded_server
from tests.support.helpers import private_data_dir, sql_exec, sql_value, wait_for

pytestmark = pytest.mark.embedded_server("kills the embedded server")

N = 4_000


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with private_data_dir("mx-reembed-fault-") as path:
        yield path


def _filled(url: str) -> int:
    return int(sql_value(url, "SELECT coalesce(max(filled), 0) FROM memorix.reembed_runs") or 0)


def _phase(url: str) -> str | None:
    return sql_value(url, "SELECT phase FROM memorix.reembed_runs")  # type: ignore[no-any-return]


@pytest.mark.parametrize("phase", ["filling", "index build", "clearing"])
def test_a_run_killed_mid_way_resumes_and_completes(data_dir: Path, phase: str) -> None:
    api = MemoryAPI(embedder=HashEmbedder(8), collection_name="crash")
    url = api.database_url
    sql_exec(url, FAST_CRASH_RECOVERY)
    texts = [f"memory {i} on subject {i % 37}" for i in range(N)]
    ids = api.store_batch(texts, [{"i": i} for i in range(N)])
    watch = Activity(url)
    op = OpThread(lambda: api.reembed(HashEmbedder(16), batch=25))
    op.start()
    reached = {
        "filling": lambda: _filled(url) >= N // 4,
        "index build": lambda: watch.running("CREATE INDEX CONCURRENTLY") is not None,
        "clearing": lambda: _phase(url) == "clearing",
    }[phase]
    try:
        assert wait_for(lambda: not op.is_alive() or reached(), timeout=60, interval=0.003)
        assert op.is_alive(), f"the run ended before the kill ({phase})"
        kill_embedded_server(data_dir, first=watch.backends)
    finally:
        watch.close()
    op.join(60)
    assert isinstance(op.error, DatabaseUnavailable), repr(op.error)

    # A new process (a new MemoryAPI) starts the server and resumes: with the old embedder
    # before the switch, with the new one after it.
    if phase == "clearing":
        with pytest.raises(EmbedderMismatch):
            MemoryAPI(embedder=HashEmbedder(8), collection_name="crash")
        resumed_api = MemoryAPI(embedder=HashEmbedder(16), collection_name="crash")
    else:
        resumed_api = MemoryAPI(embedder=HashEmbedder(8), collection_name="crash")
        assert sql_value(url, "SELECT embedder FROM memorix.collections") == "hash-8"  # not switched
    committed = _filled(url)
    assert (0 < committed < N) if phase == "filling" else committed == N
    report = resumed_api.reembed(HashEmbedder(16), batch=25)
    assert report.resumed and report.switched
    assert report.embedded == N - committed  # nothing embedded twice, nothing skipped

    after = MemoryAPI(embedder=HashEmbedder(16), collection_name="crash")
    memories = after.list(limit=N + 1, include_embeddings=True)
    assert sorted(m.id for m in memories) == sorted(ids)
    expected = HashEmbedder(16).embed([m.text for m in memories])
    np.testing.assert_allclose(np.stack([m.embedding for m in memories]), expected, rtol=1e-6, atol=1e-7)
    assert after.retrieve(texts[123], top_k=1)[0].id == ids[123]
    # One reembed event per memory: the batch the kill rolled back left none.
    assert sql_value(url, "SELECT count(*) FROM memorix.history WHERE operation = 'reembed'") == N
    assert (
        sql_value(url, "SELECT count(DISTINCT memory_id) FROM memorix.history WHERE operation = 'reembed'")
        == N
    )
    assert sql_value(url, "SELECT count(*) FROM memorix.reembed_runs") == 0
    assert sql_value(url, "SELECT count(*) FROM memorix.memories WHERE embedding IS NOT NULL") == 0
    assert (
        sql_value(
            url,
            "SELECT string_agg(indexname || ':' || (i.indisvalid)::text, ',') FROM pg_indexes p "
            "JOIN pg_class c ON c.relname = p.indexname JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE indexname LIKE 'memories_embedding%%'",
        )
        == "memories_embedding_alt_hnsw_1:true"
    )
