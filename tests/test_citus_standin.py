"""The Citus-ready schema on its local stand-in: memories and history hash-partitioned by tenant.

Citus cannot be installed here. A table ``PARTITION BY HASH (tenant)`` has the constraints of a
Citus table distributed by tenant (the tenant in every unique key, never NULL) and, like Citus,
reads one partition only for a statement with an explicit ``tenant = $1``. Migration 0010 makes
one for a new database when ``MEMORIX_TENANT_PARTITIONS`` is set. Every API call runs here for
two tenants and for no tenant, and its results are checked against brute force over the rows
the test stored (the tenants share ids, so a leak between them would show).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from memorix_pg import MemorixError
from memorix_pg.crypto import generate_key
from memorix_pg.database import dispose_engine, get_engine
from memorix_pg.migrate import current_revision, downgrade, head_revision, upgrade
from tests.support.helpers import app_role_url, sql_rows, sql_value, unit_vectors

PARTITIONS = 4
TENANTS = ("alice", "bob", None)
N = 300  # at least COPY_MIN_ROWS: the batch goes through COPY and the upsert's staging table
DIM = 16
APP_ROLE = "memorix_standin_app"


@pytest.fixture
def partitioned(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new database migrated with MEMORIX_TENANT_PARTITIONS=4."""
    monkeypatch.setenv("MEMORIX_TENANT_PARTITIONS", str(PARTITIONS))
    upgrade(database_url)
    monkeypatch.delenv("MEMORIX_TENANT_PARTITIONS")
    return database_url


def _partitions(url: str, table: str) -> list[str]:
    rows = sql_rows(
        url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1",
        (f"memorix.{table}",),
    )
    return [str(r[0]) for r in rows]


def _index_parts(url: str, index: str) -> list[tuple[str, bool]]:
    """(partition, valid) of each partition's index attached to ``index``."""
    rows = sql_rows(
        url,
        "SELECT t.relname, x.indisvalid FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid "
        "JOIN pg_class t ON t.oid = x.indrelid WHERE i.inhparent = %s::regclass ORDER BY 1",
        (f"memorix.{index}",),
    )
    return [(str(r[0]), bool(r[1])) for r in rows]


def _valid(url: str, index: str) -> bool:
    return bool(
        sql_value(
            url, "SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", (f"memorix.{index}",)
        )
    )


def _nearest(vectors: np.ndarray, ids: list[str], query: np.ndarray, k: int, keep: Any = None) -> list[str]:
    """Brute force: the ``k`` ids nearest ``query`` by cosine (unit vectors), among ``keep``."""
    order = np.argsort(-(vectors @ query), kind="stable")
    return [ids[i] for i in order if keep is None or keep(i)][:k]


def test_the_migration_partitions_a_new_database_by_tenant(partitioned: str) -> None:
    url = partitioned
    for table in ("memories", "history"):
        assert (
            sql_value(url, "SELECT relkind FROM pg_class WHERE oid = %s::regclass", (f"memorix.{table}",))
            == "p"
        )
        assert _partitions(url, table) == [f"{table}_p{i}" for i in range(PARTITIONS)]
        assert (
            sql_value(url, "SELECT pg_get_partkeydef(%s::regclass)", (f"memorix.{table}",)) == "HASH (tenant)"
        )
    keys = dict(
        sql_rows(
            url,
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid IN ('memorix.memories'::regclass, 'memorix.history'::regclass) "
            "AND contype IN ('p', 'f')",
        )
    )
    assert keys["memories_pkey"] == "PRIMARY KEY (tenant, collection_id, id)"
    assert keys["history_pkey"] == "PRIMARY KEY (tenant, event_id)"
    assert "ON DELETE CASCADE" in keys["memories_collection_id_fkey"]
    # The older schema cannot be partitioned: the downgrade says so and changes nothing.
    with pytest.raises(MemorixError, match="partitioned by tenant"):
        downgrade(url, "0008")
    assert current_revision(get_engine(url)) == head_revision()
    # Every partition enforces the tenant policy itself (a direct read skips the parent's).
    assert (
        sql_value(
            url,
            "SELECT count(*) FROM pg_class WHERE relname ~ '^(memories|history)_p[0-9]+$' AND relrowsecurity",
        )
        == 2 * PARTITIONS
    )


def test_partitions_are_for_new_databases_only(make_api, database_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    upgrade(database_url, "0008")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO memorix.collections (name, embedder, dimension) VALUES ('old', 'hash-16', 16)"
        )
        conn.execute(
            "INSERT INTO memorix.memories (id, collection_id, text, embedding, content_hash) "
            "SELECT 'x', id, 'kept', array_fill(0.25, ARRAY[16])::vector, '\\x00' FROM memorix.collections"
        )
    monkeypatch.setenv("MEMORIX_TENANT_PARTITIONS", str(PARTITIONS))
    with pytest.raises(MemorixError, match=r"new databases only: memorix\.memories holds rows"):
        upgrade(database_url)
    monkeypatch.setenv("MEMORIX_TENANT_PARTITIONS", "one")
    with pytest.raises(MemorixError, match="MEMORIX_TENANT_PARTITIONS must be a whole number"):
        upgrade(database_url)
    monkeypatch.delenv("MEMORIX_TENANT_PARTITIONS")
    upgrade(database_url)  # without it, the same database upgrades in place
    assert (
        sql_value(database_url, "SELECT relkind FROM pg_class WHERE oid = 'memorix.memories'::regclass")
        == "r"
    )
    assert make_api("old", embedder="hash-16").get("x").text == "kept"


def test_every_call_works_for_each_tenant_on_tenant_partitions(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    url = partitioned
    ids = [f"m{i}" for i in range(N)]  # the same ids under every tenant
    apis: dict[str | None, Any] = {}
    vectors: dict[str | None, np.ndarray] = {}
    for k, tenant in enumerate(TENANTS):
        api = apis[tenant] = make_api("standin", embedder=f"hash-{DIM}", tenant=tenant)
        vectors[tenant] = unit_vectors(N, dim=DIM, seed=100 + k)
        metadatas = [{"i": i, "even": i % 2 == 0, "session_id": f"s{i % 3}"} for i in range(N)]
        texts = [f"{tenant} memory {i}" for i in range(N)]
        assert api.store_batch(texts, metadatas, ids=ids, embeddings=vectors[tenant]) == ids
        assert api.store(f"{tenant} single", {"i": -1}, id="single") == "single"  # the INSERT path

    # Each tenant's rows live in exactly one partition, the one its hash picks.
    placed = sql_rows(
        url, "SELECT tableoid::regclass::text, tenant, count(*) FROM memorix.memories GROUP BY 1, 2"
    )
    assert sorted((t, n) for _, t, n in placed) == [("", N + 1), ("alice", N + 1), ("bob", N + 1)]
    assert len({t for _, t, _ in placed}) == len(placed)

    for tenant, api in apis.items():
        single = api.get("single", include_embeddings=True).embedding
        mine = np.vstack([vectors[tenant], single[None, :]])
        everything = [*ids, "single"]
        name = f"{tenant} memory"
        assert api.count() == N + 1 and api.count({"even": True}) == N // 2
        assert api.get("m5").text == f"{name} 5"
        assert [m.text for m in api.get(ids=["m9", "nope", "m2"])] == [f"{name} 9", f"{name} 2"]
        assert [m.id for m in api.list(limit=5, order="oldest")] == ids[:5]

        # retrieve: exact, planned (exact at this size), walked, filtered, hybrid.
        query = mine[7] + 0.05 * unit_vectors(1, dim=DIM, seed=7)[0]
        query = query / np.linalg.norm(query)
        expected = _nearest(mine, everything, query, 10)
        for exact in (True, None, False):
            found = api.retrieve(None, top_k=10, embedding=query, exact=exact, ef_search=400)
            assert [m.id for m in found] == expected, exact
            assert all(m.text.startswith(f"{tenant} ") for m in found)
        assert api.explain_retrieve(None, top_k=10, embedding=query, exact=False).path == "hnsw"
        even = _nearest(mine, everything, query, 10, keep=lambda i: i < N and i % 2 == 0)
        assert [m.id for m in api.retrieve(None, top_k=10, filter={"even": True}, embedding=query)] == even
        assert [
            m.id for m in api.retrieve(None, 10, {"even": True}, query, exact=False, ef_search=400)
        ] == even
        hybrid = api.retrieve(f"{name} 7", top_k=5, embedding=mine[7], mode="hybrid")
        assert hybrid[0].id == "m7" and all(m.text.startswith(f"{name} ") for m in hybrid)
        text = api.retrieve("memory 11", top_k=3, mode="text")
        assert text[0].id == "m11" and text[0].text == f"{name} 11"

        # Writes reach this tenant's row of the shared id only.
        assert api.update("m3", metadata={"changed": True}).metadata["changed"] is True
        assert api.delete("m4") is True and api.get("m4") is None
        assert api.delete_by_filter({"i": {"$gte": N - 10}}) == 10
        assert api.set_ttl(["m1", "m2"], timedelta(microseconds=1)) == 2
        time.sleep(0.01)
        assert api.count() == N + 1 - 1 - 10 - 2
        assert api.purge_expired() == 2
        old = datetime(2020, 1, 1, tzinfo=UTC)
        api.store_batch(["old a", "old b", "old c"], ids=["o1", "o2", "o3"], created_at=[old] * 3)
        assert api.count_older_than(timedelta(days=1)) == 3
        assert api.cleanup(timedelta(days=1)) == 3
        assert api.count() == N + 1 - 13
        live = [i for i in range(N - 10) if i not in (1, 2, 4)]
        assert api.stats("session_id", {"i": {"$gte": 0}}) == {
            "total": len(live),
            "groups": {f"s{r}": sum(1 for i in live if i % 3 == r) for r in range(3)},
        }

        # Lifecycle: archive, compress, duplicates, forget, history.
        assert api.archive({"i": {"$gte": 0, "$lt": 10}}, to="standin_archive") == 7  # m0..m9 less m1, m2, m4
        archived = make_api("standin_archive", embedder=f"hash-{DIM}", tenant=tenant)
        assert archived.count() == 7 and archived.get("m0").text == f"{name} 0"
        report = api.compress({"i": {"$gte": 200, "$lt": 212}}, window=timedelta(days=1))
        assert (report.windows, report.compressed) == (3, 12)
        assert api.count({"compressed": True}) == 3
        api.store_batch(["a twin"], ids=["twin"], embeddings=mine[20:21])
        pairs = api.find_duplicates(threshold=0.9999, limit=10)
        assert [(p.id_a, p.id_b) for p in pairs] == [("m20", "twin")]
        receipt = api.forget({"i": 100})
        assert receipt.memories == {"standin": 1}
        assert api.get("m100") is None
        assert [e.operation for e in api.history("m3")] == ["store", "update", "archive"]
        assert {e.tenant for e in api.history("m3")} == {tenant}

    # Nothing leaked: every tenant still has the same counts, and its own texts.
    for tenant, api in apis.items():
        assert api.count() == N + 1 - 13 - 7 - 12 + 3 + 1 - 1
        assert api.get("m50").text == f"{tenant} memory 50"
    assert sql_value(url, "SELECT count(DISTINCT tenant) FROM memorix.history") == 3


def test_rotate_key_and_check_recall_keep_to_the_tenant(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    """rotate_key rewrites rows by id: only this tenant's, though the other holds the same ids."""
    alice = make_api("vault", embedder=f"hash-{DIM}", tenant="alice")
    bob = make_api("vault", embedder=f"hash-{DIM}", tenant="bob")
    ids = ["a", "b", "c"]
    alice.store_batch(["alice a", "alice b", "alice c"], ids=ids)
    bob.store_batch(["bob a", "bob b", "bob c"], ids=ids)
    assert alice.rotate_key(generate_key()) == 3
    rows = sql_rows(
        partitioned, "SELECT tenant, starts_with(text, 'mxenc1:') FROM memorix.memories ORDER BY 1, id"
    )
    assert rows == [("alice", True)] * 3 + [("bob", False)] * 3
    assert [m.text for m in alice.get(ids=ids)] == ["alice a", "alice b", "alice c"]
    assert [m.text for m in bob.get(ids=ids)] == ["bob a", "bob b", "bob c"]
    report = bob.check_recall(queries=3, top_k=2)
    assert report.queries == 3 and report.recall == 1.0


def test_index_builds_are_partition_aware(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    """CREATE INDEX CONCURRENTLY is refused on a partitioned table: the index is created ON ONLY
    the parent, built on each partition concurrently, and attached."""
    url = partitioned
    api = make_api("bulk", embedder=f"hash-{DIM}", tenant="alice")
    index = f"memories_embedding_hnsw_{api.collection_id}"
    assert _valid(url, index)
    # A load that dwarfs the collection drops its index and builds it again, concurrently.
    vectors = unit_vectors(1200, dim=DIM, seed=5)
    ids = api.store_batch([f"bulk {i}" for i in range(1200)], embeddings=vectors)
    assert _valid(url, index)
    assert _index_parts(url, index) == [(f"memories_p{i}", True) for i in range(PARTITIONS)]
    found = api.retrieve(None, top_k=10, embedding=vectors[3], exact=False, ef_search=400)
    assert [m.id for m in found] == _nearest(vectors, ids, vectors[3], 10)
    assert api.explain_retrieve(None, top_k=10, embedding=vectors[3], exact=False).path == "hnsw"

    name = api.create_index("n", type="number")
    assert _valid(url, name) and len(_index_parts(url, name)) == PARTITIONS
    assert api.create_index("n", type="number") == name  # again: nothing to do

    # An interrupted build (an invalid parent, a partition not built) is finished on next use.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("memorix", index)))
        conn.execute(
            sql.SQL(
                "CREATE INDEX {} ON ONLY memorix.memories "
                "USING hnsw ((embedding::vector(16)) vector_cosine_ops) WHERE collection_id = {}"
            ).format(sql.Identifier(index), sql.Literal(api.collection_id))
        )
    assert not _valid(url, index)
    again = make_api("bulk", embedder=f"hash-{DIM}", tenant="alice")  # opening repairs the index
    assert _valid(url, index) and len(_index_parts(url, index)) == PARTITIONS
    assert again.drop() is True
    assert sql_value(url, "SELECT to_regclass(%s) IS NULL", (f"memorix.{index}",))


@pytest.mark.embedded_server("the application role logs in without a password")
def test_an_app_role_cannot_read_around_the_policy_through_a_partition(make_api, partitioned: str) -> None:  # type: ignore[no-untyped-def]
    url = partitioned
    make_api("guarded", embedder=f"hash-{DIM}", tenant="alice").store("alice's secret")
    make_api("guarded", embedder=f"hash-{DIM}", tenant="bob").store("bob's secret")
    role = sql.Identifier(APP_ROLE)
    app_url = app_role_url(url, APP_ROLE)
    partitions = _partitions(url, "memories")
    try:
        with psycopg.connect(app_url, autocommit=True) as conn:
            conn.execute("SELECT set_config('memorix.tenant', 'alice', false)")
            assert [r[0] for r in conn.execute("SELECT text FROM memorix.memories")] == ["alice's secret"]
            for partition in partitions:  # granted the table only: no partition may be read
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql.SQL("SELECT text FROM {}").format(sql.Identifier("memorix", partition)))
        with psycopg.connect(url, autocommit=True) as conn:  # the usual blanket grant reaches them ...
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA memorix TO {}").format(role))
        with psycopg.connect(app_url, autocommit=True) as conn:
            conn.execute("SELECT set_config('memorix.tenant', 'alice', false)")
            seen = []
            for partition in partitions:  # ... and each partition's own policy still holds
                query = sql.SQL("SELECT text FROM {}").format(sql.Identifier("memorix", partition))
                seen += [r[0] for r in conn.execute(query)]
            assert seen == ["alice's secret"]
    finally:
        dispose_engine(app_url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
