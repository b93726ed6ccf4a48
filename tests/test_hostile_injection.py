"""SQL injection against MemoryAPI on a real PostgreSQL: hostile metadata keys and values,
collection names, tenants and index keys are data, never SQL text.

What these tests hold the library to, and the shared fixtures, are in tests/support/hostile.py.
Everything runs against one database for the module (``module_database_url``); each test uses
its own collections, so the tests do not depend on their order.
"""

from __future__ import annotations

import re

import psycopg

from memorix_pg import FilterError, MemoryAPI
from tests.support.helpers import CapturedSQL, db_fingerprint, sql_rows, sql_value
from tests.support.hostile import (
    HOSTILE,
    INJECTIONS,
    MARKERS,
    expect_rejection,
    filter_safe,
    open_api,
    sql_literal,
)

# =============================================================================================
# SQL injection: hostile keys, values, names and index keys are data, never SQL
# =============================================================================================


def assert_never_in_sql(captured: CapturedSQL, values: list[str], benign: str = "") -> None:
    """No captured statement contains one of ``values``, raw or as a SQL literal.

    Strings the library's own SQL contains anyway (``benign``: the statements of the same calls
    with harmless values; and one-character strings) cannot be told apart and are skipped.
    """
    text = "\n".join(captured.statements)
    leaked = []
    for value in values:
        if len(value) >= 2 and value not in benign and value in text:
            leaked.append(value)
        elif sql_literal(value) not in benign and sql_literal(value) in text:
            leaked.append(sql_literal(value))
    assert not leaked, f"caller values in SQL text: {leaked!r}"
    for marker in MARKERS:
        assert marker not in text, marker


def assert_schema_intact(url: str) -> None:
    assert sql_value(url, "SELECT to_regclass('memorix.memories') IS NOT NULL") is True
    assert sql_value(url, "SELECT to_regclass('memorix.collections') IS NOT NULL") is True


def _like_literal(value: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", value)


def test_hostile_metadata_keys_are_stored_and_matched_literally(url: str) -> None:
    coll = open_api(url, "inject-keys")
    keys = list(HOSTILE)
    with CapturedSQL(url) as benign_log:  # the same calls with a harmless key, for the baseline
        mid = coll.store("benign", {"plain": "v"})
        coll.count({"plain": "v"})
        coll.retrieve(None, filter={"plain": "v"})
        coll.retrieve("benign", filter={"plain": {"$in": ["v"]}, "other": {"$exists": False}})
        coll.count({"plain": {"$gte": "v", "$lte": "v"}})
        coll.count({"plain": {"$like": "v"}})
        coll.stats("plain")
        coll.update(mid, metadata={"plain": None})
        coll.delete(mid)
    benign = "\n".join(benign_log.statements)
    ids: dict[str, str] = {}
    with CapturedSQL(url) as log:
        for i, key in enumerate(keys):
            value = HOSTILE[(i + 7) % len(HOSTILE)]
            ids[key] = coll.store(f"memory {i}", {key: value, "i": i})
        decoy = coll.store("decoy", {"plain": "v", "nested": {"x": 1}})
        total = len(keys) + 1
        assert coll.count() == total
        for i, key in enumerate(keys):
            value = HOSTILE[(i + 7) % len(HOSTILE)]
            memory = coll.get(ids[key])
            assert memory is not None and memory.metadata == {key: value, "i": i}, key
            if not filter_safe(key):
                # A filter key is a dotted path and '$' starts an operator: such a key is either
                # a FilterError or a path into nested keys, which no memory here has.
                try:
                    assert coll.count({key: value}) == 0, key
                except FilterError:
                    pass
                continue
            for flt in (
                {key: value},
                {key: {"$eq": value}},
                {key: {"$in": [value, "zq_other"]}},
                {key: {"$exists": True}},
                {key: {"$gte": value, "$lte": value}},
                {key: {"$like": _like_literal(value)}},
                {"$and": [{key: value}, {"i": i}]},
            ):
                assert coll.count(flt) == 1, (key, flt)
                assert [m.id for m in coll.retrieve(None, top_k=5, filter=flt)] == [ids[key]], (key, flt)
                assert [m.id for m in coll.retrieve("memory", top_k=5, filter=flt)] == [ids[key]], (key, flt)
            assert coll.count({key: {"$ne": value}}) == total - 1
            assert coll.stats(key)["groups"] == {value: 1, None: total - 1}
        # a dotted hostile key reaches nested keys, literally
        nested_id = coll.store("nested", {"a'); DROP TABLE memorix": {"memories; --": "deep"}})
        assert [m.id for m in coll.retrieve(None, filter={INJECTIONS[1]: "deep"})] == [nested_id]
        assert coll.delete(nested_id)
        k_a, k_b, k_c, k_d = INJECTIONS[2], '"quoted"', "x\\y", "%(v0)s"
        updated = coll.update(ids[k_a], metadata={k_b: k_c, k_a: None})
        assert updated.metadata == {k_b: k_c, "i": keys.index(k_a)}
        assert coll.count({k_b: k_c}) == 1
        assert coll.delete_by_filter({k_d: {"$exists": True}}) == 1
        assert coll.get(decoy) is not None
    assert_never_in_sql(log, [*keys, *HOSTILE], benign)
    assert_schema_intact(url)
    assert coll.count() == total - 1


def _match_each_value(coll: MemoryAPI, values: list[str]) -> None:
    """Store ``{"payload": v}`` for each value; every filter on a value finds exactly its memory."""
    ids = coll.store_batch([f"value {i}" for i in range(len(values))], [{"payload": v} for v in values])
    for memory_id, value in zip(ids, values, strict=True):
        for flt in (
            {"payload": value},
            {"payload": {"$in": [value]}},
            {"payload": {"$gte": value, "$lte": value}},
            {"payload": {"$like": _like_literal(value)}},
            {"payload": {"$regex": "^" + re.escape(value) + "$"}},
            {"payload": {"$all": [value]}},
            {"$or": [{"payload": value}, {"payload": "zq_none"}]},
        ):
            assert [m.id for m in coll.retrieve(None, top_k=5, filter=flt)] == [memory_id], (value, flt)
        assert coll.count({"payload": {"$nin": [value]}}) == len(values) - 1
    assert coll.stats("payload")["groups"] == dict.fromkeys(values, 1)


def test_hostile_values_under_one_key_match_exactly_their_memory(url: str) -> None:
    with CapturedSQL(url) as benign:
        _match_each_value(open_api(url, "plain-values"), ["plain one", "plain two"])
    values = [*HOSTILE, "", "zq_inj" * 200]  # the last one is longer than the text index prefix
    with CapturedSQL(url) as log:
        _match_each_value(open_api(url, "inject-values"), values)
    assert_never_in_sql(log, [v for v in values if v], "\n".join(benign.statements))
    assert_schema_intact(url)


HOSTILE_NAMES = [
    "it's",
    'say "hi"',
    "semi;colon",
    "a'); DROP TABLE memorix.collections; --",
    "'; DROP TABLE memorix.memories; --",
    "日本語のコレクション",
    "emoji 🔥",
    "back\\slash",
    "%s",
    "%(name)s",
    "{0}",
    "$1",
    "--",
    "/* c */",
    " ",
    "trailing ",
    "e\u0301",
    "é",
    "Default",
    "default",
    "memorix.memories",
    "\n",
    "x" * 512,
]


def test_hostile_collection_names_work_and_are_isolated(url: str) -> None:
    before = int(sql_value(url, "SELECT count(*) FROM memorix.collections"))
    with CapturedSQL(url) as benign_log:  # the same calls on a harmless name, for the baseline
        plain = open_api(url, "plain-name")
        plain.store("only in collection plain", {"i": -1})
        plain.count()
        plain.retrieve(None, top_k=10)
        plain.retrieve("only in collection plain", top_k=10)
        open_api(url, "plain-name-2")
        plain.archive({}, to="plain-name-2")
    before += 2
    with CapturedSQL(url) as log:
        apis = [open_api(url, name) for name in HOSTILE_NAMES]
        for i, coll in enumerate(apis):
            coll.store(f"only in collection {i}", {"i": i})
        for i, (name, coll) in enumerate(zip(HOSTILE_NAMES, apis, strict=True)):
            assert coll.collection_name == name
            assert coll.count() == 1
            assert [m.text for m in coll.retrieve(None, top_k=10)] == [f"only in collection {i}"]
            assert [m.metadata for m in coll.retrieve(f"only in collection {i}", top_k=10)] == [{"i": i}]
            assert open_api(url, name).collection_id == coll.collection_id
        # archive between two hostile names moves exactly one memory
        assert apis[0].archive({}, to=HOSTILE_NAMES[3]) == 1
        assert (apis[0].count(), apis[3].count()) == (0, 2)
    rows = sql_rows(url, "SELECT name FROM memorix.collections WHERE name = ANY(%s)", (HOSTILE_NAMES,))
    assert sorted(r[0] for r in rows) == sorted(HOSTILE_NAMES)  # distinct, stored literally
    assert int(sql_value(url, "SELECT count(*) FROM memorix.collections")) == before + len(HOSTILE_NAMES)
    assert_never_in_sql(log, HOSTILE_NAMES, "\n".join(benign_log.statements))
    assert_schema_intact(url)


def test_hostile_tenants_are_bound_values(url: str) -> None:
    """Statements bind the tenant. The one place it is a literal is the transaction's
    ``SET LOCAL memorix.tenant`` (SET takes no parameters, and Citus propagates only SET LOCAL):
    there it is psycopg's quoted literal, the whole value, and nothing else."""
    tenants = ["t'1", 't"2', "t;3", "'; DROP TABLE memorix.memories; --", "ключ", "%s"]
    with CapturedSQL(url) as log:
        for i, tenant in enumerate(tenants):
            open_api(url, "inject-tenants", tenant=tenant).store(f"tenant memory {i}")
        for i, tenant in enumerate(tenants):
            scoped = open_api(url, "inject-tenants", tenant=tenant)
            assert [m.text for m in scoped.retrieve(None, top_k=10)] == [f"tenant memory {i}"]
    settings = [s for s in log.statements if s.startswith('SET LOCAL "memorix"."tenant"')]
    with psycopg.connect(url) as conn:
        allowed = {
            psycopg.sql.SQL("SET LOCAL {} = {}")
            .format(psycopg.sql.Identifier("memorix", "tenant"), psycopg.sql.Literal(t))
            .as_string(conn)
            for t in tenants
        }
    assert settings and set(settings) == allowed
    others = CapturedSQL(url)
    others._sent = [(s, p) for s, p in zip(log.statements, log.parameters, strict=True) if s not in allowed]
    assert_never_in_sql(others, tenants)
    assert_schema_intact(url)


INDEX_KEYS = [
    "a'); DROP TABLE memorix_memories; --",
    "it's",
    '"quoted"',
    "x\\y",
    "@",
    "a b",
    "%s",
    "%(x)s",
    "50%",
    "'",
    "ключ",
    "\n",
    "zq_inj $$ x",
]


def test_create_index_with_a_hostile_key_creates_one_index_and_nothing_else(url: str) -> None:
    coll = open_api(url, "inject-index")
    for i, key in enumerate(INDEX_KEYS):
        coll.store(f"indexed {i}", {key: f"v{i:02d}", "n": i})
    tables = sql_rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'memorix' ORDER BY 1")
    for key in INDEX_KEYS:
        for kind in ("text", "number"):
            before = db_fingerprint(url)
            indexes = sql_rows(
                url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'memorix' ORDER BY 1"
            )
            with CapturedSQL(url) as log:
                name = coll.create_index(key, kind)
                assert coll.create_index(key, kind) == name  # idempotent
            after = sql_rows(url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'memorix' ORDER BY 1")
            assert set(after) == {*indexes, (name,)} and len(after) == len(indexes) + 1, key  # one new index
            assert sql_value(
                url,
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s",
                (name,),
            )
            indexdef = sql_value(url, "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (name,))
            assert f"{sql_literal(key)}::text" in indexdef, indexdef  # the key, as one quoted literal
            ddl = log.containing("CREATE INDEX")
            assert len(ddl) == 1, log.statements
            # DDL takes no parameters: the key is an escaped literal ('' for ', %% for %), and
            # once those literals are removed, nothing of the key is left in the statement
            escaped = sql_literal(key).replace("%", "%%")
            assert escaped in ddl[0], ddl[0]
            rest = ddl[0].replace(escaped, "")
            if len(key) > 1:
                assert key not in rest, ddl[0]
            assert "'" not in rest.replace("'number'", "").replace("'array'", "").replace("'NaN'", ""), rest
            assert db_fingerprint(url) == before
            assert (
                sql_rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'memorix' ORDER BY 1")
                == tables
            )
        # the index serves the range filter it was made for, with the right answer
        i = INDEX_KEYS.index(key)
        assert coll.count({key: {"$gte": f"v{i:02d}", "$lt": f"v{i:02d}~"}}) == 1
    for bad_key, bad_type in (
        ("a.b", "text"),
        ("$x", "text"),
        ("", "text"),
        ("k", "jsonb'); --"),
        (5, "text"),
    ):
        expect_rejection(url, lambda k=bad_key, t=bad_type: coll.create_index(k, t), [], error=FilterError)
    assert_schema_intact(url)
