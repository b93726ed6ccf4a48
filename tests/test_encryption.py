"""Client-side encryption: the server holds ciphertext, the API returns plaintext, search still works."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import timedelta

import psycopg
import pytest
from click.testing import CliRunner

from memorix_pg import DecryptionError, FilterError, InvalidInput
from memorix_pg.cli import main
from memorix_pg.crypto import PREFIX, generate_key
from memorix_pg.transfer import export_jsonl

KEY = generate_key()
TEXTS = ["the patient is allergic to penicillin", "meeting moved to friday", "the cat sleeps on the sofa"]


def _raw(url: str) -> list[tuple[str, dict, bytes]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT text, metadata, content_hash FROM memorix.memories ORDER BY created_at"
        ).fetchall()


@pytest.fixture
def vault(make_api):  # type: ignore[no-untyped-def]
    api = make_api("vault", encryption_key=KEY, encrypted_metadata=["diagnosis"])
    api.store_batch(
        TEXTS, [{"type": "medical", "diagnosis": {"code": "Z88.0"}}, {"type": "work"}, {"type": "home"}]
    )
    return api


def test_the_server_sees_only_ciphertext_and_the_api_plaintext(vault) -> None:  # type: ignore[no-untyped-def]
    rows = _raw(vault.database_url)
    assert all(text.startswith(PREFIX) for text, _, _ in rows)
    assert not any("penicillin" in text for text, _, _ in rows)
    medical = rows[0][1]
    assert medical["type"] == "medical"  # unlisted keys stay visible (and filterable)
    assert isinstance(medical["diagnosis"], str) and medical["diagnosis"].startswith(PREFIX)
    assert rows[0][2] != hashlib.sha256(TEXTS[0].encode()).digest()  # keyed hash, not a plain one

    [best] = vault.retrieve("which drug allergy does the patient have", top_k=1)
    assert best.text == TEXTS[0]
    assert best.metadata == {"type": "medical", "diagnosis": {"code": "Z88.0"}}
    assert [m.text for m in vault.retrieve("", top_k=5, filter={"type": "work"})] == [TEXTS[1]]


def test_encrypted_keys_cannot_be_filtered_or_grouped(vault) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FilterError, match="'diagnosis' is encrypted"):
        vault.count({"$or": [{"type": "x"}, {"diagnosis.code": "Z88.0"}]})
    with pytest.raises(InvalidInput, match="encrypted"):
        vault.stats("diagnosis")


def test_a_wrong_key_is_a_clear_error(vault, make_api) -> None:  # type: ignore[no-untyped-def]
    intruder = make_api("vault", encryption_key=generate_key())
    with pytest.raises(DecryptionError, match="key is wrong"):
        intruder.retrieve("allergy", top_k=1)
    with pytest.raises(DecryptionError) as caught:
        intruder.get(vault.retrieve("", top_k=1)[0].id)
    assert "penicillin" not in str(caught.value)


def test_a_ciphertext_moved_to_another_row_does_not_decrypt(vault) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(vault.database_url) as conn:
        work = conn.execute("SELECT text FROM memorix.memories WHERE metadata->>'type' = 'work'").fetchone()
        conn.execute("UPDATE memorix.memories SET text = %s WHERE metadata->>'type' = 'home'", work)
    with pytest.raises(DecryptionError):
        vault.retrieve("", top_k=5, filter={"type": "home"})


def test_update_dedupe_compress_and_export_keep_working(vault) -> None:  # type: ignore[no-untyped-def]
    memory = vault.retrieve("", top_k=1, filter={"type": "work"})[0]
    updated = vault.update(memory.id, text="meeting moved to monday", metadata={"diagnosis": "none"})
    assert updated.text == "meeting moved to monday" and updated.metadata["diagnosis"] == "none"
    assert vault.store("meeting moved to monday", dedupe=True) == memory.id

    session = [f"session line {i}" for i in range(3)]
    vault.store_batch(session, [{"session_id": "s1", "type": "chat"}] * 3)
    report = vault.compress({"session_id": "s1"}, window=timedelta(days=1))
    [summary] = vault.retrieve("", top_k=5, filter={"session_id": "s1"})
    assert report.compressed == 3 and summary.metadata["compressed"] is True
    assert summary.text.splitlines() == session

    out = io.StringIO()
    export_jsonl(vault, out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert TEXTS[0] in [line["text"] for line in lines]  # exported in plaintext
    assert not any(line["text"].startswith(PREFIX) for line in lines)


def test_rotate_key_rewrites_everything_under_the_new_key(vault, make_api) -> None:  # type: ignore[no-untyped-def]
    new_key = generate_key()
    before = _raw(vault.database_url)
    assert vault.rotate_key(new_key) == 3
    after = _raw(vault.database_url)
    assert all(a[0] != b[0] and a[0].startswith(PREFIX) for a, b in zip(after, before, strict=True))
    assert vault.retrieve("allergy", top_k=1)[0].text == TEXTS[0]  # the object now uses the new key
    with pytest.raises(DecryptionError):
        make_api("vault", encryption_key=KEY, encrypted_metadata=["diagnosis"]).retrieve("", top_k=3)
    fresh = make_api("vault", encryption_key=new_key, encrypted_metadata=["diagnosis"])
    assert sorted(m.text for m in fresh.retrieve("", top_k=5)) == sorted(TEXTS)


def test_cli_rotate_key_encrypts_plaintext_data_and_back(make_api, database_url: str) -> None:  # type: ignore[no-untyped-def]
    plain = make_api("diary")
    plain.store("dear diary, today I learned SQL", {"mood": "happy"})
    runner = CliRunner()
    new_key = runner.invoke(main, ["rotate-key", "--generate"]).output.strip()
    env = {"MEMORIX_DATABASE_URL": database_url, "MEMORIX_NEW_ENCRYPTION_KEY": new_key}
    common = ["--collection", "diary", "--embedder", "hash", "--encrypted-metadata", "mood"]
    result = runner.invoke(main, ["rotate-key", *common], env=env)
    assert result.exit_code == 0, result.output
    assert "rewrote 1 memories" in result.output
    [(text, metadata, _)] = _raw(database_url)
    assert text.startswith(PREFIX) and metadata["mood"].startswith(PREFIX)

    locked = make_api("diary", encryption_key=new_key, encrypted_metadata=["mood"])
    assert locked.retrieve("", top_k=1)[0].metadata == {"mood": "happy"}
    back = runner.invoke(
        main, ["rotate-key", "--decrypt", *common], env={**env, "MEMORIX_ENCRYPTION_KEY": new_key}
    )
    assert back.exit_code == 0, back.output
    assert _raw(database_url)[0][0] == "dear diary, today I learned SQL"
    missing = runner.invoke(main, ["rotate-key", *common], env={"MEMORIX_DATABASE_URL": database_url})
    assert missing.exit_code != 0 and "new key" in missing.output
