"""Tenants: the library scopes every call, and row-level security holds against raw SQL.

The RLS tests connect as a non-superuser application role created here (the embedded server
trusts local connections, so only the user name in the URL changes).
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from memorix_pg import MemoryAPI, PermissionDenied
from memorix_pg.database import dispose_engine

APP_ROLE = "memorix_app_test"


def _as_role(url: str, role: str) -> str:
    return url.replace("postgresql://postgres:@", f"postgresql://{role}:@", 1)


@pytest.fixture
def owner(make_api):  # type: ignore[no-untyped-def]
    """Migrates the database and creates the shared collection as the schema owner."""
    api = make_api("shared", tenant=None)
    api.store("owner's untenanted note", {"who": "nobody"})
    return api


@pytest.fixture
def app_url(owner: MemoryAPI):  # type: ignore[no-untyped-def]
    """An application role: may read and write memories, may not bypass RLS or change the schema."""
    url = owner.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone()
        if exists is None:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(APP_ROLE))
            )
        role = sql.Identifier(APP_ROLE)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA memorix TO {}").format(role))
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON memorix.memories TO {}").format(role))
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON memorix.collections TO {}").format(role))
        conn.execute(sql.SQL("GRANT SELECT ON memorix.alembic_version TO {}").format(role))
        conn.execute(
            sql.SQL("GRANT SELECT ON memorix.collection_stats, memorix.daily_counts TO {}").format(role)
        )
    app = _as_role(url, APP_ROLE)
    yield app
    dispose_engine(app)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(APP_ROLE)))


def test_each_tenant_sees_only_its_own_memories(make_api, owner: MemoryAPI) -> None:  # type: ignore[no-untyped-def]
    alice = make_api("shared", tenant="alice")
    bob = make_api("shared", tenant="bob")
    a_id = alice.store("alice likes tea", {"type": "pref"})
    bob.store_batch([f"bob note {i}" for i in range(300)], [{"type": "pref"}] * 300)  # the COPY path

    assert alice.count() == 1 and bob.count() == 300 and owner.count() == 1
    assert [m.text for m in alice.retrieve("tea", top_k=10)] == ["alice likes tea"]
    assert all(m.text.startswith("bob") for m in bob.retrieve("alice likes tea", top_k=10))
    assert bob.get(a_id) is None
    assert bob.delete(a_id) is False
    assert bob.delete_by_filter({"type": "pref"}) == 300
    assert alice.count() == 1
    assert alice.stats("type") == {"total": 1, "groups": {"pref": 1}}


def test_an_id_of_another_tenant_is_another_memory(make_api, owner: MemoryAPI) -> None:  # type: ignore[no-untyped-def]
    alice = make_api("shared", tenant="alice")
    bob = make_api("shared", tenant="bob")
    a_id = alice.store("alice's secret")
    assert bob.store("bob's own", id=a_id) == a_id
    assert alice.get(a_id).text == "alice's secret"  # type: ignore[union-attr]
    assert bob.get(a_id).text == "bob's own"  # type: ignore[union-attr]


@pytest.mark.embedded_server("the application role logs in without a password")
def test_raw_sql_as_the_app_role_cannot_cross_tenants(make_api, owner: MemoryAPI, app_url: str) -> None:  # type: ignore[no-untyped-def]
    alice = make_api("shared", tenant="alice")
    bob = make_api("shared", tenant="bob")
    alice.store("alice's diary")
    b_id = bob.store("bob's diary")

    with psycopg.connect(app_url) as conn:
        # No tenant set: only memories without a tenant are visible.
        texts = [r[0] for r in conn.execute("SELECT text FROM memorix.memories")]
        assert texts == ["owner's untenanted note"]

        conn.execute("SELECT set_config('memorix.tenant', 'alice', false)")
        assert [r[0] for r in conn.execute("SELECT text FROM memorix.memories")] == ["alice's diary"]
        # Bob's row cannot be changed or deleted: it is invisible.
        assert conn.execute("UPDATE memorix.memories SET text = 'pwned' WHERE id = %s", (b_id,)).rowcount == 0
        assert conn.execute("DELETE FROM memorix.memories WHERE id = %s", (b_id,)).rowcount == 0
        # Nor can a row be written into Bob's tenant.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(
                "INSERT INTO memorix.memories (id, collection_id, text, embedding, content_hash, tenant) "
                "SELECT gen_random_uuid(), collection_id, 'forged', embedding, content_hash, 'bob' "
                "FROM memorix.memories LIMIT 1"
            )
        conn.rollback()
        # The analytics views apply the policy too.
        conn.execute("SELECT set_config('memorix.tenant', 'alice', false)")
        assert conn.execute(
            "SELECT memories FROM memorix.collection_stats WHERE collection = 'shared'"
        ).fetchone() == (1,)
        # And the role cannot switch the policy off.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE memorix.memories DISABLE ROW LEVEL SECURITY")

    assert bob.get(b_id).text == "bob's diary"  # type: ignore[union-attr]


@pytest.mark.embedded_server("the application role logs in without a password")
def test_the_library_works_as_the_app_role(owner: MemoryAPI, app_url: str) -> None:
    alice = MemoryAPI(
        embedder="hash", collection_name="shared", database_url=app_url, tenant="alice", auto_migrate=False
    )
    ids = alice.store_batch(["one", "two", "three"], [{"n": 1}, {"n": 2}, {"n": 3}])
    assert alice.count() == 3
    assert alice.retrieve("two", top_k=1)[0].text == "two"
    assert alice.update(ids[0], metadata={"n": 10}).metadata == {"n": 10}
    assert alice.delete_by_filter({"n": {"$gte": 3}}) == 2  # "three" and "one" (now 10)
    assert [m.text for m in alice.retrieve("", top_k=5)] == ["two"]
    # A new collection can be created by the app role; its index waits for the owner's migrate.
    notes = MemoryAPI(
        embedder="hash", collection_name="app_made", database_url=app_url, tenant="alice", auto_migrate=False
    )
    notes.store("works without its index")
    assert notes.retrieve("works", top_k=1)[0].text == "works without its index"
    # Operations that need ownership fail with a clear error of the library's own.
    with pytest.raises(PermissionDenied, match="refused"):
        alice.create_index("n", type="number")
    # The owner sees every tenant's rows (owners bypass RLS), the untenanted API only its own.
    assert owner.count() == 1


@pytest.mark.embedded_server("the application role logs in without a password")
def test_as_the_app_role_an_id_of_another_tenant_is_another_memory_and_stays_hidden(
    owner: MemoryAPI, app_url: str
) -> None:
    """Row-level security hides Bob's row from Alice; her upsert of its id writes her own
    memory (the key holds the tenant) and never changes his."""

    def app(collection: str, tenant: str) -> MemoryAPI:
        return MemoryAPI(
            embedder="hash",
            collection_name=collection,
            database_url=app_url,
            tenant=tenant,
            auto_migrate=False,
        )

    bob, alice = app("shared", "bob"), app("shared", "alice")
    bob.store("bob's diary", id="diary")
    for size in (1, 300):  # INSERT, and COPY through the staging table
        ids = [f"alice {i}" for i in range(size - 1)] + ["diary"]
        alice.store_batch([f"alice writes {i}" for i in range(size)], ids=ids)
    assert alice.count() == 300 and alice.get("diary").text == "alice writes 299"  # type: ignore[union-attr]
    assert bob.get("diary").text == "bob's diary"  # type: ignore[union-attr]
    assert bob.count() == 1
