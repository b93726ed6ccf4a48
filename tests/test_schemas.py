"""Metadata schemas: stored with the collection, checked on every write, reported on old rows."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import psycopg
import pytest

from memorix_pg import ConfigurationError, FilterError, MemoryNotFound, SchemaViolation, UndeclaredFilterKey
from memorix_pg.transfer import import_jsonl

SCHEMA = {
    "type": "object",
    "properties": {
        "user_id": {"type": "string", "pattern": "^u[0-9]+$"},
        "importance": {"type": "integer", "minimum": 0, "maximum": 5},
        "profile": {"type": "object", "properties": {"lang": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["user_id"],
}


def _rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM memorix.memories").fetchone()
        assert row is not None
        return int(row[0])


def test_a_batch_with_one_bad_metadata_names_it_and_writes_nothing(make_api, database_url: str) -> None:
    api = make_api("schema_batch", schema=SCHEMA)
    api.store("fine", {"user_id": "u1", "importance": 3})
    with pytest.raises(SchemaViolation) as caught:
        api.store_batch(
            ["a", "b", "c"], [{"user_id": "u2"}, {"user_id": "u3", "importance": 9}, {"user_id": "u4"}]
        )
    error = caught.value
    assert (error.index, error.path, error.rule) == (1, "$.importance", "maximum")
    assert "metadatas[1]" in str(error) and "$.importance" in str(error) and "maximum" in str(error)
    with pytest.raises(SchemaViolation) as caught:
        api.store("no user", {"importance": 1})
    assert caught.value.rule == "required"
    with pytest.raises(SchemaViolation) as caught:
        api.store("bad lang", {"user_id": "u1", "profile": {"lang": 7}})
    assert caught.value.path == "$.profile.lang"
    assert _rows(database_url) == 1


def test_update_checks_the_merged_metadata(make_api) -> None:
    api = make_api("schema_update", schema=SCHEMA)
    row_id = api.store("hello", {"user_id": "u1", "importance": 2})
    with pytest.raises(SchemaViolation) as caught:
        api.update(row_id, metadata={"importance": "high"})
    assert (caught.value.path, caught.value.rule) == ("$.importance", "type")
    with pytest.raises(SchemaViolation):
        api.update(row_id, text="new text", metadata={"user_id": None})  # removing a required key
    memory = api.get(row_id)
    assert memory.text == "hello" and memory.metadata == {"user_id": "u1", "importance": 2}
    assert api.update(row_id, metadata={"importance": 4, "tags": ["x"]}).metadata["importance"] == 4
    with pytest.raises(MemoryNotFound):
        api.update("missing", metadata={"importance": 1})


def test_the_schema_is_stored_with_the_collection(make_api) -> None:
    make_api("schema_stored", schema=SCHEMA)
    later = make_api("schema_stored")  # no schema given: the stored one applies
    assert later.get_schema() == SCHEMA
    with pytest.raises(SchemaViolation):
        later.store("x", {"user_id": "nope"})
    later.set_schema(None)
    assert later.get_schema() is None
    later.store("x", {"user_id": "nope"})
    assert make_api("schema_stored").get_schema() is None


def test_validate_existing_reports_rows_stored_before_the_schema(make_api) -> None:
    api = make_api("schema_existing")
    good = api.store("good", {"user_id": "u1"})
    bad = api.store("bad", {"user_id": 5, "importance": -1})
    missing = api.store("missing", {})
    assert api.validate_existing() == []  # no schema yet
    api.set_schema(SCHEMA)
    problems = api.validate_existing()
    found = {(p.id, p.path) for p in problems}
    assert found == {(bad, "$.user_id"), (bad, "$.importance"), (missing, "$")}
    assert good not in {p.id for p in problems}
    assert all(p.message for p in problems)


def test_encrypted_metadata_is_checked_in_plaintext(make_api) -> None:
    api = make_api("schema_sealed", schema=SCHEMA, encryption_key=b"k" * 32, encrypted_metadata=["user_id"])
    row_id = api.store("secret", {"user_id": "u7"})
    with pytest.raises(SchemaViolation):
        api.store("secret", {"user_id": "x7"})
    api.update(row_id, metadata={"importance": 1})  # the stored, sealed user_id is opened first
    assert api.validate_existing() == []


def test_filters_on_undeclared_keys_warn_raise_or_pass(make_api) -> None:
    strict = make_api("schema_filters", schema=SCHEMA, strict_filters="error")
    strict.store("a", {"user_id": "u1", "tags": ["t"]})
    assert strict.count({"user_id": "u1", "profile.lang": "en", "tags": "t"}) == 0
    with pytest.raises(FilterError, match="'user'"):
        strict.retrieve("a", filter={"user": "u1"})
    with pytest.raises(FilterError, match=r"'profile\.langue'"):
        strict.count({"$or": [{"user_id": "u1"}, {"profile.langue": "en"}]})
    loose = make_api("schema_filters", strict_filters="warn")
    with pytest.warns(UndeclaredFilterKey, match="'usr_id'"):
        assert loose.count({"usr_id": "u1"}) == 0
    quiet = make_api("schema_filters", strict_filters="off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quiet.count({"usr_id": "u1"}) == 0


def test_bad_options_are_configuration_errors(make_api) -> None:
    with pytest.raises(ConfigurationError, match="strict_filters"):
        make_api("schema_bad", strict_filters="loud")
    with pytest.raises(ConfigurationError, match="not a valid JSON Schema"):
        make_api("schema_bad", schema={"type": "no-such-type"})


def test_import_checks_every_line_before_writing(database_url: str, tmp_path: Path) -> None:
    from memorix_pg import MemoryAPI

    api = MemoryAPI(
        embedder="hash", collection_name="schema_import", database_url=database_url, schema=SCHEMA
    )
    source = tmp_path / "in.jsonl"
    lines = [{"text": f"m{i}", "metadata": {"user_id": f"u{i}"}} for i in range(2500)]
    lines[2300]["metadata"] = {"user_id": "bad"}  # past the first chunk
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(SchemaViolation) as caught:
        import_jsonl(api, source)
    assert caught.value.index == 2300 and f"{source}:2301:" in str(caught.value)
    assert api.count() == 0
