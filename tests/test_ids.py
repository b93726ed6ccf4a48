"""Ids: any string, kept exactly, unique within its collection (the same id may live in two)."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest

from memorix_pg import DecryptionError, InvalidInput, MemoryAPI
from memorix_pg.crypto import generate_key
from memorix_pg.transfer import export_jsonl, import_chroma, import_jsonl
from tests.support.helpers import sql_rows, sql_value, unit_vectors

ODD_IDS = [
    "user:42/note#1",
    "ÄÖÜ \U0001f600",
    " padded ",
    "ABCDEF12-3456-7890-ABCD-EF1234567890",  # a UUID's spelling, but not its canonical string
    "abcdef12-3456-7890-abcd-ef1234567890",  # ... which this one is: another id
    "x" * 512,
    "1",
    "%(id)s'; DROP TABLE memorix.memories; --",
]


def test_any_string_is_an_id_and_comes_back_exactly(make_api) -> None:  # type: ignore[no-untyped-def]
    api = make_api("odd_ids")
    texts = [f"memory {i}" for i in range(len(ODD_IDS))]
    assert api.store_batch(texts, [{"i": i} for i in range(len(ODD_IDS))], ids=ODD_IDS) == ODD_IDS
    assert api.count() == len(ODD_IDS)
    for i, memory_id in enumerate(ODD_IDS):
        memory = api.get(memory_id)
        assert memory is not None and (memory.id, memory.text) == (memory_id, texts[i])
    assert sorted(m.id for m in api.retrieve(None, top_k=20)) == sorted(ODD_IDS)
    assert [m.id for m in api.retrieve("memory 1", top_k=1)] == [ODD_IDS[1]]
    assert {m.id for m in api.list(limit=20)} == set(ODD_IDS)
    assert api.update(ODD_IDS[2], metadata={"updated": True}).id == ODD_IDS[2]
    assert api.delete(ODD_IDS[3]) is True and api.get(ODD_IDS[4]) is not None
    assert api.get(ODD_IDS[3]) is None and api.get(" padded") is None


def test_a_uuid_object_is_its_canonical_string_and_generated_ids_are_uuid4(make_api) -> None:  # type: ignore[no-untyped-def]
    api = make_api("uuid_ids")
    given = uuid.uuid4()
    assert api.store("from a UUID", id=given) == str(given)
    assert api.get(str(given)).text == "from a UUID"  # type: ignore[union-attr]
    assert api.get(given).id == str(given)  # type: ignore[union-attr]
    generated = api.store_batch(["a", "b"])
    assert [uuid.UUID(g).version for g in generated] == [4, 4]
    assert all(str(uuid.UUID(g)) == g for g in generated)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("", "empty"),
        ("x" * 513, "513 characters; the limit is 512"),
        ("a\x00b", "NUL"),
        ("\udc80", "surrogate"),
        (17, "must be a str"),
        (None, "must be a str"),
        (b"bytes", "must be a str"),
    ],
    ids=["empty", "513-chars", "NUL", "surrogate", "int", "None", "bytes"],
)
def test_a_bad_id_is_named_and_nothing_is_written(make_api, bad: object, fragment: str) -> None:  # type: ignore[no-untyped-def]
    api = make_api("bad_ids")
    api.store("already here")
    with pytest.raises(InvalidInput, match=r"ids\[3\]") as caught:
        api.store_batch(["a", "b", "c", "d"], ids=["a", "b", "c", bad])
    assert fragment in str(caught.value)
    assert api.count() == 1
    with pytest.raises(InvalidInput, match=r"ids\[1\] repeats ids\[0\]"):
        api.store_batch(["a", "b"], ids=["same", "same"])
    with pytest.raises(InvalidInput, match="cursor"):
        api.list(cursor="")


def test_the_same_id_in_two_collections_names_two_memories(make_api) -> None:  # type: ignore[no-untyped-def]
    a, b = make_api("ids_a", embedder="hash-16"), make_api("ids_b", embedder="hash-16")
    vectors = unit_vectors(3, dim=16, seed=4)
    ids = ["one", "two", "three"]
    a.store_batch(["a one", "a two", "a three"], [{"in": "a"}] * 3, ids=ids, embeddings=vectors)
    b.store_batch(["b one", "b two", "b three"], [{"in": "b"}] * 3, ids=ids, embeddings=vectors)
    assert (a.count(), b.count()) == (3, 3)
    assert a.get("two").text == "a two" and b.get("two").text == "b two"  # type: ignore[union-attr]
    # Searches rank ids, then read their rows: by collection and id, never another collection's.
    for exact in (True, False):
        hits = a.retrieve(None, top_k=3, embedding=vectors[1], exact=exact)
        assert (hits[0].id, hits[0].text, hits[0].metadata) == ("two", "a two", {"in": "a"})
        assert {m.text for m in hits} == {"a one", "a two", "a three"}
    a.update("two", text="a two, changed", metadata={"changed": True})
    assert b.get("two").text == "b two" and b.get("two").metadata == {"in": "b"}  # type: ignore[union-attr]
    assert a.delete("three") is True
    assert b.get("three") is not None and b.count() == 3
    # Storing again upserts within the collection only.
    a.store("a one again", id="one")
    assert a.get("one").text == "a one again" and b.get("one").text == "b one"  # type: ignore[union-attr]
    assert a.delete_by_filter({}) == 2 and b.count() == 3


def test_compress_and_rotate_key_touch_only_their_collection(make_api) -> None:  # type: ignore[no-untyped-def]
    key = generate_key()
    a = make_api("rotating", encryption_key=key)
    b = make_api("untouched", encryption_key=key)
    ids = [f"m{i}" for i in range(4)]
    start = datetime(2025, 1, 1, tzinfo=UTC)
    times = [start + timedelta(minutes=i) for i in range(4)]
    meta = [{"session_id": "s"}] * 4
    a.store_batch([f"a says {i}" for i in range(4)], meta, ids=ids, created_at=times)
    b.store_batch([f"b says {i}" for i in range(4)], meta, ids=ids, created_at=times)
    b_rows = sql_rows(
        b.database_url, "SELECT id, text FROM memorix.memories WHERE collection_id = %s", (b.collection_id,)
    )

    assert a.rotate_key(generate_key()) == 4
    report = a.compress(window=timedelta(hours=1))
    assert report.compressed == 4 and a.count() == 1
    after = sql_rows(
        b.database_url, "SELECT id, text FROM memorix.memories WHERE collection_id = %s", (b.collection_id,)
    )
    assert sorted(after) == sorted(b_rows)
    assert sorted(m.text for m in b.list()) == [f"b says {i}" for i in range(4)]


def test_a_ciphertext_moved_to_another_string_id_does_not_decrypt(make_api) -> None:  # type: ignore[no-untyped-def]
    vault = make_api("string_vault", encryption_key=generate_key(), encrypted_metadata=["secret"])
    canonical = str(uuid.uuid4())
    vault.store_batch(
        ["first secret", "second secret", "third secret"],
        [{"secret": 1}, {"secret": 2}, {"secret": 3}],
        ids=["note-1", "note-2", canonical],
    )
    assert vault.get("note-1").metadata == {"secret": 1}  # type: ignore[union-attr]
    assert vault.get(canonical).text == "third secret"  # type: ignore[union-attr]
    with psycopg.connect(vault.database_url, autocommit=True) as conn:
        for source, target in (("note-1", "note-2"), ("note-2", canonical)):
            conn.execute(
                "UPDATE memorix.memories AS t SET text = s.text FROM memorix.memories AS s "
                "WHERE s.id = %s AND t.id = %s",
                (source, target),
            )
    for moved in ("note-2", canonical):
        with pytest.raises(DecryptionError, match=repr(moved)[1:-1]):
            vault.get(moved)


def test_the_same_id_under_two_tenants_is_two_memories(make_api) -> None:  # type: ignore[no-untyped-def]
    """Ids are unique per tenant and collection (the key leads with the tenant, as a Citus
    distribution column must): another tenant's id is neither refused nor reached."""
    alice = make_api("tenants_shared", tenant="alice")
    bob = make_api("tenants_shared", tenant="bob")
    nobody = make_api("tenants_shared")
    alice.store("alice's note", id="note")
    for size in (1, 300):  # INSERT, and COPY through the staging table
        ids = [f"bob {i}" for i in range(size - 1)] + ["note"]
        assert bob.store_batch([f"bob writes {i}" for i in range(size)], ids=ids)[-1] == "note"
    assert nobody.store("nobody's note", id="note") == "note"
    assert bob.get("note").text == "bob writes 299"  # type: ignore[union-attr]
    assert alice.get("note").text == "alice's note"  # type: ignore[union-attr]
    assert nobody.get("note").text == "nobody's note"  # type: ignore[union-attr]
    assert (alice.count(), bob.count(), nobody.count()) == (1, 300, 1)
    alice.store("alice's note, changed", id="note")  # an upsert reaches her own row only
    assert bob.delete("note") is True
    assert alice.get("note").text == "alice's note, changed"  # type: ignore[union-attr]
    assert nobody.get("note").text == "nobody's note" and bob.get("note") is None  # type: ignore[union-attr]


def test_archive_keeps_ids_and_replaces_the_targets_memory_of_the_same_id(make_api) -> None:  # type: ignore[no-untyped-def]
    inbox = make_api("inbox")
    archive = make_api("inbox_archive")
    archive.store("an older archived version", {"v": 1}, id="doc")
    inbox.store_batch(["the newer version", "another"], [{"v": 2}, {"v": 2}], ids=["doc", "other"])
    assert inbox.archive({}, to="inbox_archive") == 2
    assert archive.count() == 2 and inbox.count() == 0
    moved = archive.get("doc")
    assert moved is not None and moved.text == "the newer version" and moved.metadata["archived"] is True


def test_archive_leaves_another_tenants_memory_of_the_same_id_alone(make_api) -> None:  # type: ignore[no-untyped-def]
    make_api("vault_archive", tenant="mallory").store("mallory's", id="doc")
    alice = make_api("vault_inbox", tenant="alice")
    alice.store_batch(["alice's doc", "alice's other"], ids=["doc", "other"])
    assert alice.archive({}, to="vault_archive") == 2
    assert alice.count() == 0
    assert make_api("vault_archive", tenant="mallory").get("doc").text == "mallory's"  # type: ignore[union-attr]
    assert make_api("vault_archive", tenant="alice").get("doc").text == "alice's doc"  # type: ignore[union-attr]


def test_keyset_paging_orders_ties_by_id_byte_by_byte(make_api) -> None:  # type: ignore[no-untyped-def]
    api = make_api("ties")
    same_time = [datetime(2025, 6, 1, tzinfo=UTC)] * 6
    ids = ["b", "B", "a", "Z", "é", "aa"]
    api.store_batch([f"t {i}" for i in ids], ids=ids, created_at=same_time)
    expected = sorted(ids, key=lambda i: i.encode())  # B Z a aa b é
    seen, cursor = [], None
    while page := api.list(limit=4, cursor=cursor, order="oldest"):
        seen += [m.id for m in page]
        cursor = page[-1].id
        if len(page) < 4:
            break
    assert seen == expected
    assert [m.id for m in api.list(limit=2, cursor="a", order="newest")] == ["Z", "B"]


def test_export_and_import_round_trip_string_ids(database_url: str, tmp_path: Path) -> None:
    source = MemoryAPI(embedder="hash-16", collection_name="export_src", database_url=database_url)
    source.store_batch(["one", "two"], [{"n": 1}, {"n": 2}], ids=["doc/1", "ÄÖÜ 2"])
    out = io.StringIO()
    assert export_jsonl(source, out) == 2
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["doc/1", "ÄÖÜ 2"]
    path = tmp_path / "export.jsonl"
    path.write_text(out.getvalue(), encoding="utf-8")
    target = MemoryAPI(embedder="hash-16", collection_name="export_dst", database_url=database_url)
    assert import_jsonl(target, path) == 2
    assert import_jsonl(target, path) == 2  # upserts: nothing doubled
    assert target.count() == 2
    assert target.get("ÄÖÜ 2").metadata == {"n": 2}  # type: ignore[union-attr]


def test_import_chroma_keeps_chromas_ids(database_url: str, tmp_path: Path) -> None:
    import chromadb

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    source = client.get_or_create_collection("knowledge", embedding_function=None)
    ids = ["doc-1", "Doc 2/é", "3", "8c9a1b4e-0000-4000-8000-00000000000A"]
    vectors = unit_vectors(4, dim=16, seed=3)
    source.add(
        ids=ids,
        documents=["first", "second", "third", "fourth"],
        embeddings=vectors.tolist(),
        metadatas=[{"k": 1}, None, {"k": 3}, {"k": 4}],
    )
    del client
    for _ in range(2):  # a re-run upserts by the same ids
        [result] = import_chroma(tmp_path / "chroma", database_url=database_url, embedder="hash-16")
        assert (result.target, result.imported) == ("knowledge", 4)
    api = MemoryAPI(embedder="hash-16", collection_name="knowledge", database_url=database_url)
    assert api.count() == 4
    assert sorted(m.id for m in api.list()) == sorted(ids)
    second = api.get("Doc 2/é")
    assert second is not None and second.text == "second" and second.metadata == {}
    assert api.get(ids[3]).metadata == {"k": 4}  # type: ignore[union-attr]
    assert not sql_value(database_url, "SELECT count(*) FROM memorix.memories WHERE metadata ? 'chroma_id'")
    np.testing.assert_allclose(
        api.list(filter={"k": 1}, include_embeddings=True)[0].embedding, vectors[0], rtol=1e-6
    )
