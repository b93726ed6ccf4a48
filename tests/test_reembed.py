"""``reembed``: re-embedding a collection in place, online, resumable, switched atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest

from memorix_pg import (
    ConfigurationError,
    DecryptionError,
    EmbedderMismatch,
    HashEmbedder,
    InvalidInput,
    PermissionDenied,
    list_collections,
)
from memorix_pg.crypto import generate_key
from tests.support.helpers import CountingEmbedder, db_fingerprint, sql_exec, sql_rows, sql_value

TEXTS = [f"note {i} about topic {i % 17} and colour {i % 5}" for i in range(240)]


def _vector_columns(url: str, name: str) -> tuple[int, int, int, int]:
    """How many memories of the collection fill each vector column."""
    row = sql_rows(
        url,
        "SELECT count(embedding), count(embedding_half), count(embedding_alt), count(embedding_half_alt) "
        "FROM memorix.memories m JOIN memorix.collections c ON c.id = m.collection_id WHERE c.name = %s",
        (name,),
    )[0]
    return tuple(int(v) for v in row)  # type: ignore[return-value]


def _hnsw_indexes(url: str) -> list[str]:
    return [
        r[0]
        for r in sql_rows(
            url, "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'memories_embedding%%' ORDER BY 1"
        )
    ]


def _assert_vectors_are(api, embedder: HashEmbedder) -> None:  # type: ignore[no-untyped-def]
    """Every memory's stored vector is ``embedder``'s vector of its current text."""
    memories = api.list(limit=10_000, include_embeddings=True)
    assert memories
    expected = embedder.embed([m.text for m in memories])
    np.testing.assert_allclose(np.stack([m.embedding for m in memories]), expected, rtol=1e-6, atol=1e-7)


def test_a_collection_switches_to_a_new_embedder_of_another_dimension(make_api, database_url: str) -> None:
    api = make_api("docs", embedder="hash-16")
    ids = api.store_batch(TEXTS, [{"i": i} for i in range(len(TEXTS))])
    assert _hnsw_indexes(database_url) == ["memories_embedding_hnsw_1"]

    report = api.reembed("hash-32", batch=50)

    assert (report.embedder, report.dimensions, report.embedded) == ("hash-32", 32, len(TEXTS))
    assert report.switched and not report.resumed
    summary = {c.name: c for c in list_collections(database_url)}["docs"]
    assert (summary.embedder, summary.dimensions, summary.count) == ("hash-32", 32, len(TEXTS))
    # The new slot's index replaced the old one; the old vectors are gone.
    assert _hnsw_indexes(database_url) == ["memories_embedding_alt_hnsw_1"]
    assert _vector_columns(database_url, "docs") == (0, 0, len(TEXTS), 0)
    assert sql_value(database_url, "SELECT count(*) FROM memorix.reembed_runs") == 0
    # This object now embeds with the new embedder: searches, stores and updates use it.
    _assert_vectors_are(api, HashEmbedder(32))
    assert api.retrieve(TEXTS[7], top_k=1)[0].id == ids[7]
    new_id = api.store("a note stored after the switch")
    api.update(ids[3], text="note 3 rewritten after the switch")
    _assert_vectors_are(api, HashEmbedder(32))
    assert api.retrieve("a note stored after the switch", top_k=1)[0].id == new_id
    # One ``reembed`` event per memory, none for clearing the old vectors.
    events = dict(
        sql_rows(database_url, "SELECT operation, count(*) FROM memorix.history GROUP BY 1 ORDER BY 1")
    )
    assert events == {"reembed": len(TEXTS), "store": len(TEXTS) + 1, "update": 1}
    assert [e.operation for e in api.history(ids[0])] == ["store", "reembed"]
    # Others must use the new embedder now.
    with pytest.raises(EmbedderMismatch):
        make_api("docs", embedder="hash-16").count()
    assert make_api("docs", embedder="hash-32").count() == len(TEXTS) + 1


def _alt_vector(url: str, row_id: str) -> np.ndarray | None:
    value = sql_value(url, "SELECT embedding_alt::text FROM memorix.memories WHERE id = %s", (row_id,))
    return None if value is None else np.array(json.loads(value), dtype=np.float32)


def test_reads_and_writes_go_on_during_a_run_and_end_with_both_vectors(make_api, database_url: str) -> None:
    api = make_api("online", embedder="hash-16")
    ids = api.store_batch(TEXTS[:200], [{"i": i} for i in range(200)])
    first = sorted(ids)
    opened_before = make_api("online", embedder="hash-16")

    part = api.reembed("hash-24", batch=32, limit=96)  # stops part way, committed
    assert (part.embedded, part.switched, part.resumed) == (96, False, False)
    assert sql_value(database_url, "SELECT filled FROM memorix.reembed_runs") == 96
    assert _vector_columns(database_url, "online") == (200, 0, 96, 0)
    assert _hnsw_indexes(database_url) == ["memories_embedding_hnsw_1"]

    # Meanwhile the collection serves with the old embedder, from other objects too.
    other = make_api("online", embedder="hash-16")
    assert other.retrieve(TEXTS[5], top_k=1)[0].id == ids[5]
    assert other.retrieve(TEXTS[5], top_k=3, exact=True)[0].id == ids[5]
    # An object opened during the run writes both vectors.
    added = other.store_batch(["written during the run", "also written during the run"])
    rewritten = "rewritten during the run: its new vector follows"
    other.update(first[0], text=rewritten)  # filled already: its new vector is replaced
    new = HashEmbedder(24)
    for row_id, text in ((added[0], "written during the run"), (first[0], rewritten)):
        np.testing.assert_allclose(_alt_vector(database_url, row_id), new.embed([text])[0], rtol=1e-6)
    other.update(first[1], metadata={"touched": True})  # metadata only: its new vector stays
    # One opened before it writes the old vector only; a text it changes loses its stale new one.
    late = opened_before.store("written by an object opened before the run")
    opened_before.update(first[3], text="rewritten by an object opened before the run")
    assert _alt_vector(database_url, late) is None and _alt_vector(database_url, first[3]) is None
    assert other.delete(first[2])
    assert _vector_columns(database_url, "online") == (202, 0, 96, 0)
    assert other.count() == 202
    _assert_vectors_are(other, HashEmbedder(16))

    rest = api.reembed("hash-24", batch=32)
    assert rest.resumed and rest.switched
    assert rest.embedded == 202 - 96  # the rest, and what the object opened before wrote
    fresh = make_api("online", embedder="hash-24")
    _assert_vectors_are(fresh, new)
    assert fresh.retrieve("written during the run", top_k=1)[0].id == added[0]
    assert fresh.retrieve("written by an object opened before the run", top_k=1)[0].id == late
    assert fresh.get(first[1]).metadata == {"i": ids.index(first[1]), "touched": True}
    assert fresh.count() == 202
    reembed_events = sql_value(
        database_url, "SELECT count(*) FROM memorix.history WHERE operation = 'reembed'"
    )
    assert reembed_events == 96 + 3 + 106  # first part, the writes that followed the run, the rest


def test_recall_after_the_switch_equals_a_fresh_collections(make_api, database_url: str) -> None:
    """The re-embedded collection and one built with the new embedder from the start answer
    every query with the exact top 10 (numpy brute force), on the HNSW walk and the exact scan."""
    texts = [f"memo {i}: {' '.join(f'w{(i * 7 + j * 13) % 211}' for j in range(6))}" for i in range(1200)]
    old = make_api("rebuilt", embedder="hash-16")
    old.store_batch(texts, ids=[f"m{i:04d}" for i in range(len(texts))])
    assert old.reembed("hash-48", batch=400).switched
    reembedded = make_api("rebuilt", embedder="hash-48")
    fresh = make_api("fresh", embedder="hash-48")
    fresh.store_batch(texts, ids=[f"m{i:04d}" for i in range(len(texts))])

    new = HashEmbedder(48)
    matrix = new.embed(texts)
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    queries = [f"w{(q * 31) % 211} w{(q * 17 + 3) % 211} w{(q * 5 + 1) % 211}" for q in range(40)]
    for query in queries:
        q = new.embed([query])[0]
        similarity = matrix @ (q / np.linalg.norm(q))
        truth = [f"m{i:04d}" for i in np.argsort(-similarity, kind="stable")[:10]]
        top = np.sort(similarity)[::-1][:10]
        cut = top[-1]
        for api in (reembedded, fresh):
            plan = api.explain_retrieve(query, top_k=10, exact=False, ef_search=400)
            assert plan.path == "hnsw"
            for options in ({"exact": False, "ef_search": 400}, {"exact": True}):
                got = api.retrieve(query, top_k=10, **options)
                # Ties (equal scores) come in either order, or either side of the 10th place.
                assert {m.id for m in got if m.score > cut + 1e-6} == {
                    t for t in truth if similarity[int(t[1:])] > cut + 1e-6
                }
                np.testing.assert_allclose([m.score for m in got], top, atol=1e-5)
                assert all(abs(m.score - similarity[int(m.id[1:])]) < 1e-5 for m in got)


def test_an_encrypted_collection_needs_its_key(make_api, database_url: str) -> None:
    key = generate_key()
    api = make_api("secret", embedder="hash-16", encryption_key=key)
    ids = api.store_batch(TEXTS[:30])
    before = db_fingerprint(database_url)

    with pytest.raises(ConfigurationError, match="encryption_key"):
        make_api("secret", embedder="hash-16").reembed("hash-32")
    with pytest.raises(DecryptionError):
        make_api("secret", embedder="hash-16", encryption_key=generate_key()).reembed("hash-32")
    assert db_fingerprint(database_url) == before
    assert sql_value(database_url, "SELECT count(*) FROM memorix.reembed_runs") == 0
    assert _vector_columns(database_url, "secret") == (30, 0, 0, 0)

    assert api.reembed("hash-32").switched
    # The new vectors are of the plaintext; the texts stay encrypted.
    _assert_vectors_are(api, HashEmbedder(32))
    assert api.retrieve(TEXTS[4], top_k=1)[0].id == ids[4]
    assert sql_value(database_url, "SELECT count(*) FROM memorix.memories WHERE text LIKE 'mxenc1:%%'") == 30


def test_every_tenants_memories_are_reembedded(make_api, database_url: str) -> None:
    alice = make_api("shared", embedder="hash-16", tenant="alice")
    bob = make_api("shared", embedder="hash-16", tenant="bob")
    alice_ids = alice.store_batch(TEXTS[:20])
    bob_ids = bob.store_batch(TEXTS[20:50])
    with pytest.raises(PermissionDenied, match="without tenant"):
        alice.reembed("hash-32")

    report = make_api("shared", embedder="hash-16").reembed("hash-32")
    assert report.embedded == 50 and report.switched

    alice = make_api("shared", embedder="hash-32", tenant="alice")
    bob = make_api("shared", embedder="hash-32", tenant="bob")
    assert {m.id for m in alice.list(limit=100)} == set(alice_ids)
    assert alice.retrieve(TEXTS[3], top_k=1)[0].id == alice_ids[3]
    assert bob.retrieve(TEXTS[3], top_k=5)[0].id not in alice_ids  # bob never sees alice's
    assert bob.retrieve(TEXTS[25], top_k=1)[0].id == bob_ids[5]
    _assert_vectors_are(alice, HashEmbedder(32))
    _assert_vectors_are(bob, HashEmbedder(32))
    tenants = dict(
        sql_rows(
            database_url,
            "SELECT tenant, count(*) FROM memorix.history WHERE operation = 'reembed' GROUP BY 1",
        )
    )
    assert tenants == {"alice": 20, "bob": 30}


def test_bad_input_is_a_clear_error_and_writes_nothing(make_api, database_url: str) -> None:
    api = make_api("strict", embedder="hash-16")
    api.store_batch(TEXTS[:10])
    before = db_fingerprint(database_url)
    with pytest.raises(ConfigurationError, match="unknown embedder 'no-such-model'"):
        api.reembed("no-such-model")
    with pytest.raises(InvalidInput, match="batch"):
        api.reembed("hash-32", batch=0)
    with pytest.raises(InvalidInput, match="limit"):
        api.reembed("hash-32", limit=0)
    with pytest.raises(InvalidInput, match="progress"):
        api.reembed("hash-32", progress="yes")
    assert db_fingerprint(database_url) == before
    assert sql_value(database_url, "SELECT count(*) FROM memorix.reembed_runs") == 0
    assert _hnsw_indexes(database_url) == ["memories_embedding_hnsw_1"]

    # A run in progress is finished with its own embedder before another may start.
    assert not api.reembed("hash-32", batch=4, limit=4).switched
    with pytest.raises(ConfigurationError, match="finish that run first"):
        api.reembed("hash-24")
    assert api.reembed("hash-32").switched


def test_archive_moves_vectors_between_collections_of_different_slots(make_api, database_url: str) -> None:
    source = make_api("recent", embedder="hash-16")
    ids = source.store_batch(TEXTS[:12], [{"old": i < 4} for i in range(12)])
    make_api("vault", embedder="hash-16").store("already archived")
    assert source.reembed("hash-16").switched  # same embedder, recomputed: now in the other slot
    assert source.archive({"old": True}, to="vault") == 4
    vault = make_api("vault", embedder="hash-16")
    assert vault.count() == 5
    _assert_vectors_are(vault, HashEmbedder(16))
    assert vault.retrieve(TEXTS[2], top_k=1)[0].id == ids[2]
    assert _vector_columns(database_url, "vault") == (5, 0, 0, 0)


def test_a_half_precision_collection_is_reembedded_in_half_precision(make_api, database_url: str) -> None:
    api = make_api("halves", embedder="hash-16", precision="half")
    ids = api.store_batch(TEXTS[:40])
    assert api.reembed("hash-40", batch=16).switched
    assert _vector_columns(database_url, "halves") == (0, 0, 0, 40)
    assert _hnsw_indexes(database_url) == ["memories_embedding_alt_hnsw_1"]
    memories = api.list(limit=100, include_embeddings=True)
    expected = HashEmbedder(40).embed([m.text for m in memories])
    np.testing.assert_allclose(np.stack([m.embedding for m in memories]), expected, atol=2e-3)
    assert api.retrieve(TEXTS[9], top_k=1)[0].id == ids[9]
    # Re-embedding again moves it back to the first slot.
    assert make_api("halves", embedder="hash-40").reembed("hash-16").switched
    assert _vector_columns(database_url, "halves") == (0, 40, 0, 0)
    assert _hnsw_indexes(database_url) == ["memories_embedding_hnsw_1"]


def test_the_command_resumes_and_switches(database_url: str) -> None:
    from click.testing import CliRunner

    from memorix_pg import MemoryAPI
    from memorix_pg.cli import main

    api = MemoryAPI(embedder="hash-16", collection_name="notes", database_url=database_url)
    api.store_batch(TEXTS[:30])
    assert not api.reembed("hash-32", batch=8, limit=8).switched
    env = {"MEMORIX_DATABASE_URL": database_url}
    result = CliRunner().invoke(
        main, ["reembed", "--collection", "notes", "--embedder", "hash-32", "--batch", "5"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "re-embedded 'notes' with 'hash-32' (32 dims): 22 memories embedded (resumed)" in result.output
    assert {c.name: c.dimensions for c in list_collections(database_url)} == {"notes": 32}
    for args, message in (
        (["--collection", "missing", "--embedder", "hash"], "no collection 'missing'"),
        (["--collection", "notes", "--embedder", "nope"], "ConfigurationError: unknown embedder 'nope'"),
    ):
        result = CliRunner().invoke(main, ["reembed", *args], env=env)
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output


def test_an_empty_collection_and_one_dropped_mid_run(make_api, database_url: str) -> None:
    empty = make_api("empty", embedder="hash-16")
    report = empty.reembed("hash-32")
    assert (report.embedded, report.switched) == (0, True)
    assert empty.store("first memory, after the switch") and len(empty.retrieve("first memory")) == 1
    assert _vector_columns(database_url, "empty") == (0, 0, 1, 0)

    doomed = make_api("doomed", embedder="hash-16")
    doomed.store_batch(TEXTS[:20])
    assert not doomed.reembed("hash-32", batch=5, limit=5).switched
    assert doomed.drop()
    assert sql_value(database_url, "SELECT count(*) FROM memorix.reembed_runs") == 0
    again = make_api("doomed", embedder="hash-16")
    again.store_batch(TEXTS[:3])
    assert again.reembed("hash-24").embedded == 3


def _filled_rows(url: str, name: str) -> list[tuple[str, str]]:
    """(tenant, id) of the collection's memories that have their new-slot (slot 1) vector."""
    return [
        (str(r[0]), str(r[1]))
        for r in sql_rows(
            url,
            "SELECT m.tenant, m.id FROM memorix.memories m JOIN memorix.collections c "
            "ON c.id = m.collection_id WHERE c.name = %s AND m.embedding_alt IS NOT NULL ORDER BY 1, 2",
            (name,),
        )
    ]


def test_tenants_holding_the_same_ids_are_filled_in_tenant_id_order(make_api, database_url: str) -> None:
    ids = ["m1", "m2", "m3"]
    rows = [(tenant, i) for tenant in ("", "alice", "bob") for i in ids]  # '' is no tenant
    for tenant in ("", "alice", "bob"):
        make_api("twins", embedder="hash-16", tenant=tenant or None).store_batch(
            [f"{tenant or 'nobody'} wrote {i}" for i in ids], ids=ids
        )
    counter = CountingEmbedder(24)
    api = make_api("twins", embedder="hash-16")

    # Pages of 2 end between tenants holding the same id: ('', m3) | ('alice', m1) | ('bob', m1).
    first = api.reembed(counter, batch=2, limit=4)
    assert (first.embedded, first.switched) == (4, False)
    assert _filled_rows(database_url, "twins") == rows[:4]
    assert sql_value(database_url, "SELECT after_id FROM memorix.reembed_runs") == '["alice", "m1"]'
    second = api.reembed(counter, batch=2, limit=4)
    assert (second.embedded, second.switched, second.resumed) == (4, False, True)
    assert _filled_rows(database_url, "twins") == rows[:8]  # before the switch: alice's and bob's m1

    last = api.reembed(counter, batch=2)
    assert (last.embedded, last.switched) == (1, True)
    # Each memory embedded once, a page at a time, in order; none left for the switch to embed.
    texts = [f"{t or 'nobody'} wrote {i}" for t, i in rows]
    assert counter.calls == [texts[0:2], texts[2:4], texts[4:6], texts[6:8], texts[8:9]]
    for tenant in ("", "alice", "bob"):
        _assert_vectors_are(
            make_api("twins", embedder=CountingEmbedder(24), tenant=tenant or None), HashEmbedder(24)
        )
    events = sql_rows(
        database_url,
        "SELECT tenant, count(*) FROM memorix.history WHERE operation = 'reembed' GROUP BY 1 ORDER BY 1",
    )
    assert events == [("", 3), ("alice", 3), ("bob", 3)]


@pytest.mark.parametrize("marker", ["m2", '["m2"]', "[1, 2]", "{nope"])
def test_a_marker_without_a_tenant_resumes_from_the_first_row(
    make_api, database_url: str, marker: str
) -> None:
    """A bare id (as an older version wrote it) or anything else unreadable: the pass starts again
    from the first row, which embeds only what is missing."""
    ids = ["m1", "m2", "m3"]
    for tenant in ("alice", "bob"):
        make_api("legacy", embedder="hash-16", tenant=tenant).store_batch(
            [f"{tenant} {i}" for i in ids], ids=ids
        )
    counter = CountingEmbedder(24)
    api = make_api("legacy", embedder="hash-16")
    assert not api.reembed(counter, batch=2, limit=2).switched
    sql_exec(database_url, "UPDATE memorix.reembed_runs SET after_id = %s", (marker,))

    report = api.reembed(counter, batch=2)
    assert (report.embedded, report.switched) == (4, True)
    assert counter.calls == [["alice m1", "alice m2"], ["alice m3", "bob m1"], ["bob m2", "bob m3"]]


def test_a_write_during_the_run_gives_only_its_own_tenants_memory_the_new_vector(
    make_api, database_url: str
) -> None:
    """The same id and text in two tenants: alice's write follows the run for alice's row only;
    bob's row waits for the run's own page."""
    make_api("echo", embedder="hash-16", tenant="bob").store_batch(
        ["same words", "bob's other"], ids=["x", "y"]
    )
    api = make_api("echo", embedder="hash-16")
    api.store("nobody's", id="a")
    assert not api.reembed("hash-24", batch=1, limit=1).switched  # ('', 'a') only
    make_api("echo", embedder="hash-16", tenant="alice").store("same words", id="x")  # follows the run
    assert _filled_rows(database_url, "echo") == [("", "a"), ("alice", "x")]

    report = api.reembed("hash-24", batch=1)
    assert (report.embedded, report.switched) == (2, True)
    for tenant in ("alice", "bob"):
        _assert_vectors_are(make_api("echo", embedder="hash-24", tenant=tenant), HashEmbedder(24))
