"""Forgetting a person: no text or metadata value of theirs left anywhere in the schema."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

import memorix_pg
from memorix_pg import FilterError, MemoryAPI
from memorix_pg.cli import main
from memorix_pg.transfer import export_jsonl

SUBJECT = "subject-77"
SECRET = "Zanzibar"
START = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


def _traces(database_url: str, needles: list[str]) -> list[tuple[str, str, str]]:
    """(table, column, needle) for every text or jsonb column of every memorix table holding a needle."""
    found = []
    with psycopg.connect(database_url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'memorix' "
            "AND data_type IN ('text', 'jsonb', 'character varying') ORDER BY 1, 2"
        ).fetchall()
        assert ("memories", "text") in columns and ("memories", "metadata") in columns
        for table, column in columns:
            for needle in needles:
                hit = conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE strpos({}::text, %s) > 0").format(
                        sql.Identifier("memorix", table), sql.Identifier(column)
                    ),
                    (needle,),
                ).fetchone()
                assert hit is not None
                if hit[0]:
                    found.append((table, column, needle))
    return found


def _exports(database_url: str) -> str:
    out = io.StringIO()
    for c in memorix_pg.list_collections(database_url):
        export_jsonl(MemoryAPI(embedder="hash", collection_name=c.name, database_url=database_url), out)
    return out.getvalue()


def _fill(make_api) -> tuple[object, list[str]]:  # type: ignore[no-untyped-def]
    chat = make_api("chat")
    times = [START + timedelta(minutes=i) for i in range(3)]
    subject_ids = chat.store_batch(
        [f"{SECRET} trip, day {i}" for i in range(3)],
        [{"user_id": SUBJECT, "session_id": "s1"} for _ in range(3)],
        created_at=times,
    )
    subject_ids += chat.store_batch(
        [f"{SECRET} passport number", f"{SECRET} hotel"],
        [{"user_id": SUBJECT, "type": "fact"}, {"user_id": SUBJECT, "type": "old"}],
    )
    chat.store_batch(
        ["other user's note", "another note"], [{"user_id": "u2"}, {"user_id": "u2", "session_id": "s1"}]
    )
    chat.compress(
        {"session_id": "s1", "user_id": SUBJECT}, window=timedelta(hours=1)
    )  # a summary of the subject
    chat.archive({"type": "old"}, to="chat_archive")
    notes = make_api("notes")
    linked = notes.store(f"{SECRET} booking", {"user_id": SUBJECT})
    subject_ids.append(linked)
    # A summary written by the application: it names its source in source_ids, not the subject.
    notes.store("summary of the bookings", {"compressed": True, "source_ids": [linked]})
    notes.store("unrelated", {"user_id": "u3"})
    return chat, subject_ids


def test_forget_leaves_no_trace_in_any_table_or_export(make_api, database_url: str) -> None:
    chat, subject_ids = _fill(make_api)
    before = _traces(database_url, [SUBJECT, SECRET])
    assert {t for t, _, _ in before} == {"memories", "history"}  # history: the events of their writes
    dry = chat.forget({"user_id": SUBJECT}, dry_run=True)
    assert dry.dry_run and dry.total == 5
    assert _traces(database_url, [SUBJECT, SECRET]) == before  # nothing deleted by a dry run
    receipt = chat.forget({"user_id": SUBJECT})
    assert receipt.memories == {"chat": 2, "chat_archive": 1, "notes": 2}
    assert receipt.summaries == {"chat": 1, "notes": 1} and receipt.total == 5
    assert receipt.history == dry.history > 0
    assert _traces(database_url, [SUBJECT, SECRET, *subject_ids]) == []
    exported = _exports(database_url)
    assert SUBJECT not in exported and SECRET not in exported
    assert {json.loads(line)["text"] for line in exported.splitlines()} == {
        "other user's note",
        "another note",
        "unrelated",
    }
    assert chat.forget({"user_id": SUBJECT}).total == 0


def test_forget_in_one_collection_only(make_api) -> None:
    chat, _ = _fill(make_api)
    receipt = chat.forget({"user_id": SUBJECT}, all_collections=False)
    assert receipt.memories == {"chat": 2} and receipt.summaries == {"chat": 1}
    assert make_api("notes").count({"user_id": SUBJECT}) == 1


def test_forget_keeps_to_its_tenant(make_api, database_url: str) -> None:
    acme = make_api("shared", tenant="acme")
    globex = make_api("shared", tenant="globex")
    acme.store("acme's subject", {"user_id": SUBJECT})
    globex.store("globex's subject", {"user_id": SUBJECT})
    assert acme.forget({"user_id": SUBJECT}).memories == {"shared": 1}
    assert globex.count({"user_id": SUBJECT}) == 1
    assert memorix_pg.forget({"user_id": SUBJECT}, database_url, tenant="acme").total == 0
    assert memorix_pg.forget({"user_id": SUBJECT}, database_url).memories == {"shared": 1}  # every tenant
    assert globex.count() == 0


def test_forget_needs_a_subject(make_api, database_url: str) -> None:
    api = make_api("chat")
    api.store("keep")
    for bad in ({}, None):
        with pytest.raises(FilterError, match="non-empty filter"):
            api.forget(bad)
        with pytest.raises(FilterError, match="non-empty filter"):
            memorix_pg.forget(bad, database_url)  # type: ignore[arg-type]
    with pytest.raises(FilterError):
        api.forget({"user_id": {"$bogus": 1}})
    assert api.count() == 1


def test_the_cli_forgets(make_api, database_url: str) -> None:
    _fill(make_api)
    runner = CliRunner()
    env = {"MEMORIX_DATABASE_URL": database_url}
    dry = runner.invoke(main, ["forget", "--where", '{"user_id": "u1"}', "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["total"] == 0
    result = runner.invoke(main, ["forget", "--where", json.dumps({"user_id": SUBJECT})], env=env)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed.pop("history") > 0
    assert printed == {
        "dry_run": False,
        "memories": {"chat": 2, "chat_archive": 1, "notes": 2},
        "summaries": {"chat": 1, "notes": 1},
        "total": 5,
    }
    bad = runner.invoke(main, ["forget", "--where", "{}"], env=env)
    assert bad.exit_code == 1 and "non-empty filter" in bad.output and "Traceback" not in bad.output
