"""Read replicas on a real primary and hot standby (tests/support/replication.py): reads go to the
standby and writes to the primary, read-your-writes waits for replay, a standby that goes down
is worked around, and a multi-host URL follows a promotion."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from memorix_pg import AsyncMemoryAPI, ConfigurationError, FilterError, MemoryAPI
from memorix_pg.api import forget_database
from memorix_pg.connections import close_pools
from memorix_pg.database import dispose_engine
from memorix_pg.replicas import STANDBY_REST_SECONDS, ReadReplicas, split_hosts
from tests.support.async_api import AwaitedAPI, EventLoopThread
from tests.support.helpers import CapturedSQL, sql_value, wait_for
from tests.support.replication import ReplicaPair, replica_pair, start_pair

TIMEOUT = 0.3  # read_your_writes_timeout of these tests


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicaPair]:
    """One primary + standby for the module (~2 s to build); tests that stop the standby start it again."""
    with replica_pair() as built:
        yield built


def _forget(*urls: str) -> None:
    for url in urls:
        dispose_engine(url)
        close_pools(url)
        forget_database(url)


@pytest.fixture
def urls(pair: ReplicaPair) -> Iterator[tuple[str, str]]:
    """A fresh database on the pair: its URL on the primary and on the standby."""
    name = pair.create_database()
    primary, standby = pair.primary.url(name), pair.standby.url(name)
    yield primary, standby
    _forget(primary, standby)
    pair.drop_database(name)


def _builder(api_kind: str, loop: EventLoopThread, **defaults: Any) -> Any:
    def make(**kwargs: Any) -> Any:
        options = {"embedder": "hash", "collection_name": "replicated", **defaults, **kwargs}
        if api_kind == "async":
            return AwaitedAPI(loop, AsyncMemoryAPI(**options))
        return MemoryAPI(**options)

    return make


@pytest.fixture
def make(urls: tuple[str, str], api_kind: str, event_loop_thread: EventLoopThread) -> Any:
    """MemoryAPI (or AsyncMemoryAPI) objects writing to the primary and reading from the standby."""
    primary, standby = urls
    return _builder(api_kind, event_loop_thread, database_url=primary, read_url=standby)


@contextlib.contextmanager
def replay_paused(pair: ReplicaPair) -> Iterator[None]:
    """The standby receives WAL but applies none of it until the block ends."""
    pair.standby.value("SELECT pg_wal_replay_pause()")
    assert wait_for(
        lambda: pair.standby.value("SELECT pg_get_wal_replay_pause_state()") == "paused", 10, 0.01
    )
    try:
        yield
    finally:
        pair.standby.value("SELECT pg_wal_replay_resume()")


def test_reads_go_to_the_standby_and_writes_to_the_primary(pair: ReplicaPair, urls, make) -> None:
    primary, standby = urls
    memory = make()
    kept = memory.store("on both servers", {"n": 1})
    pair.wait_for_replay()
    with replay_paused(pair):
        new = memory.store("only on the primary so far", {"n": 2})
        assert sql_value(primary, "SELECT count(*) FROM memorix.memories") == 2
        # Every read below is answered by the standby, which has not applied the second store.
        assert memory.count() == 1
        assert memory.get(new) is None
        assert [m.id for m in memory.get(ids=[kept, new])] == [kept]
        assert [m.id for m in memory.list()] == [kept]
        assert [m.id for m in memory.retrieve("only on the primary so far", top_k=5)] == [kept]
        assert [m.id for m in memory.retrieve("primary", mode="text")] == []
        assert [m.id for m in memory.retrieve("on both servers", exact=False)] == [kept]  # HNSW walk
        assert memory.explain_retrieve("on both servers", exact=False).path == "hnsw"
        assert memory.stats("n") == {"total": 1, "groups": {1: 1}}
        assert [e.memory_id for e in memory.history()] == [kept]
    pair.wait_for_replay()
    assert memory.count() == 2
    assert memory.get(new).text == "only on the primary so far"
    with CapturedSQL(primary) as on_primary, CapturedSQL(standby) as on_standby:
        memory.count()
        memory.update(kept, metadata={"n": 3})
        memory.create_index("n", "number")  # DDL goes to the primary
    assert on_standby.containing("count(") and not on_standby.containing("UPDATE")
    assert on_primary.containing("UPDATE") and on_primary.containing("CREATE INDEX")
    assert not on_primary.containing("count(")


def test_the_collection_opens_on_the_primary_and_reads_wait_for_it(pair: ReplicaPair, urls, make) -> None:
    """A new object creates its collection (and the schema, on a new database) on the primary; its
    reads wait for the standby to have them, then run there."""
    primary, standby = urls
    with CapturedSQL(standby) as on_standby:
        memory = make(collection_name="fresh")
        assert memory.count() == 0
    assert on_standby.containing("count(")
    assert sql_value(primary, "SELECT count(*) FROM memorix.collections WHERE name = 'fresh'") == 1
    with replay_paused(pair):
        late = make(collection_name="created_while_paused")
        started = time.perf_counter()
        assert late.count() == 0  # from the primary, after waiting for the standby
        assert time.perf_counter() - started >= 1.0  # the default read_your_writes_timeout
        started = time.perf_counter()
        with CapturedSQL(primary) as on_primary:
            assert late.retrieve("anything") == []
        assert time.perf_counter() - started < 0.5  # waited for once, not again for each read
        assert on_primary.containing("memories")


def test_read_your_writes_waits_for_the_standby_to_replay(pair: ReplicaPair, urls, make) -> None:
    primary, standby = urls
    memory = make(read_your_writes=True, read_your_writes_timeout=TIMEOUT)
    other = make()  # the same collection, without read_your_writes
    with CapturedSQL(standby) as on_standby, CapturedSQL(primary) as on_primary:
        for i in range(20):
            written = memory.store(f"note {i}", {"i": i})
            assert memory.get(written).metadata == {"i": i}
            assert memory.count() == i + 1
    # Every read ran on the standby, the first after each write checking its replay in the same pipeline.
    assert len(on_standby.containing("pg_last_wal_replay_lsn")) >= 20
    assert len(on_standby.containing("count(")) == 20
    assert not on_primary.containing("count(")
    assert len(on_primary.containing("pg_current_wal_lsn")) == 20
    with replay_paused(pair):
        written = memory.store("while replay is paused")
        assert other.get(written) is None  # the standby has not got it
        started = time.perf_counter()
        with CapturedSQL(primary) as on_primary:
            assert memory.get(written).text == "while replay is paused"  # from the primary
        assert TIMEOUT <= time.perf_counter() - started < TIMEOUT + 2
        assert not on_primary.containing("collections")  # the collection was not opened again
    with CapturedSQL(standby) as on_standby:
        assert memory.get(written) is not None
        assert memory.count() == 21
    assert on_standby.containing("count(")  # caught up: back on the standby
    memory.store("one more")
    with pytest.raises(
        FilterError, match="invalid"
    ):  # failed with the replay check: still the caller's error
        memory.count({"text": {"$regex": "("}})


def test_a_standby_that_goes_down_leaves_reads_to_the_primary(pair: ReplicaPair, urls, make) -> None:
    primary, standby = urls
    memory = make()
    waiting = make(read_your_writes=True)
    kept = memory.store("still readable")
    pair.wait_for_replay()
    assert memory.count() == 1  # the standby's connection is in the pool now
    pair.standby.stop()
    try:
        with CapturedSQL(primary) as on_primary:
            assert memory.get(kept).text == "still readable"
            assert memory.count() == 1
            added = memory.store("written while the standby is down")
            assert [m.id for m in memory.list(order="oldest")] == [kept, added]
            started = time.perf_counter()
            also = waiting.store("read back while the standby is down")
            assert waiting.get(also) is not None  # no waiting for a standby that is not there
            assert time.perf_counter() - started < 1.0
        assert on_primary.containing("count(")
    finally:
        pair.standby.start()
    pair.wait_for_replay()

    def back_on_the_standby() -> bool:
        with CapturedSQL(standby) as on_standby:
            assert memory.count() == 3
        return bool(on_standby.containing("count("))

    assert wait_for(back_on_the_standby, timeout=STANDBY_REST_SECONDS + 10, interval=0.5)


def test_tenants_stay_apart_on_the_standby_under_row_level_security(
    pair: ReplicaPair, urls, make, api_kind: str
) -> None:
    """An application role (no BYPASSRLS) reads its tenant's rows on the standby: the tenant
    setting reaches the standby's transactions, and the policy holds there."""
    primary, standby = urls
    make(collection_name="shared").count()  # migrates as the owner
    role = f"memorix_app_{api_kind}"
    with psycopg.connect(primary, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role)))
        grants = (
            "GRANT USAGE ON SCHEMA memorix TO {}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON memorix.memories TO {}",
            "GRANT SELECT, INSERT ON memorix.collections TO {}",
            "GRANT SELECT ON memorix.alembic_version TO {}",
        )
        for grant in grants:
            conn.execute(sql.SQL(grant).format(sql.Identifier(role)))
    as_app = primary.replace("postgres@", f"{role}@", 1), standby.replace("postgres@", f"{role}@", 1)
    try:
        alice = make(collection_name="shared", database_url=as_app[0], read_url=as_app[1], tenant="alice")
        bob = make(collection_name="shared", database_url=as_app[0], read_url=as_app[1], tenant="bob")
        alice.store_batch(["one", "two", "three"])
        bob.store("bob's")
        pair.wait_for_replay()
        with CapturedSQL(as_app[1]) as on_standby, CapturedSQL(as_app[0]) as on_primary:
            assert alice.count() == 3
            assert [m.text for m in bob.list()] == ["bob's"]
            assert [m.text for m in alice.retrieve("two", top_k=1)] == ["two"]
        assert on_standby.containing("count(") and on_primary.statements == []
        with psycopg.connect(as_app[1]) as conn:  # raw SQL on the standby as bob
            conn.execute("SELECT set_config('memorix.tenant', 'bob', true)")
            assert conn.execute("SELECT count(*) FROM memorix.memories").fetchone() == (1,)
    finally:
        _forget(*as_app)
        with psycopg.connect(primary, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))


def test_a_multi_host_url_routes_by_role_and_follows_a_promotion(
    api_kind: str, event_loop_thread: EventLoopThread
) -> None:
    """Both servers in one URL with target_session_attrs: reads on the standby, writes on the
    primary; after the primary stops and the standby is promoted, writes go to the new primary."""
    pair = start_pair()  # its own pair: promotion ends it
    url = ""
    try:
        name = pair.create_database()
        url = (
            f"postgresql://postgres@/{name}?host={pair.root},{pair.root}"
            f"&port={pair.primary.port},{pair.standby.port}&target_session_attrs=read-write"
        )
        memory = _builder(api_kind, event_loop_thread, database_url=url)()
        before = memory.store("before the promotion")
        pair.wait_for_replay()
        with replay_paused(pair):
            during = memory.store("not replayed yet")
            assert memory.count() == 1  # read on the standby
        pair.wait_for_replay()
        pair.primary.stop()
        pair.standby.promote()
        after = memory.store("after the promotion")
        assert sql_value(pair.standby.url(name), "SELECT count(*) FROM memorix.memories") == 3
        assert [m.id for m in memory.list(order="oldest")] == [before, during, after]
        memory.update(after, metadata={"promoted": True})
        assert memory.get(after).metadata == {"promoted": True}
    finally:
        if url:
            derived = ReadReplicas(url, None, False, 1.0)
            _forget(*(u for u in (derived.database_url, derived.read_url) if u is not None))
        pair.close()


def test_read_url_may_name_the_primary_itself(make_api, database_url: str) -> None:
    """What the README's example does: a "standby" that is not in recovery has every write."""
    memory = make_api("self", read_url=database_url, read_your_writes=True)
    written = memory.store("read back at once")
    assert memory.get(written).text == "read back at once"
    assert memory.count() == 1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"read_url": "mysql://db/x"}, "needs a PostgreSQL URL"),
        ({"read_url": ""}, "read_url must be a PostgreSQL URL"),
        ({"read_url": 5}, "read_url must be a PostgreSQL URL"),
        ({"read_your_writes": "yes"}, "read_your_writes must be True or False"),
        ({"read_your_writes_timeout": 0}, "read_your_writes_timeout must be"),
        ({"read_your_writes_timeout": True}, "read_your_writes_timeout must be"),
    ],
)
def test_bad_replica_options_are_configuration_errors(
    make_api, database_url: str, kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        make_api("never", **kwargs)
    assert sql_value(database_url, "SELECT to_regclass('memorix.collections')") is None  # nothing written


def test_several_hosts_become_a_read_write_and_a_prefer_standby_url() -> None:
    given = "postgresql://app:secret@db1:5432,db2:5433/mem?sslmode=prefer&target_session_attrs=any"
    replicas = ReadReplicas(given, None, False, 1.0)
    assert replicas.database_url == (
        "postgresql://app:secret@/mem?sslmode=prefer&host=db1,db2&port=5432,5433&target_session_attrs=read-write"
    )
    assert replicas.read_url is not None and replicas.read_url.startswith("postgresql://app:secret@/mem?")
    assert "target_session_attrs=prefer-standby" in replicas.read_url
    assert split_hosts("postgresql://u@[::1]:5432,h2/db") == "postgresql://u@/db?host=::1,h2&port=5432,"
    assert split_hosts("postgresql://u@h1:5432/db") == "postgresql://u@h1:5432/db"  # one host: as given
    one_host = ReadReplicas("postgresql://u@h1/db?target_session_attrs=read-write", None, False, 1.0)
    assert one_host.read_url is None  # nothing to split reads off to
    explicit = ReadReplicas("postgresql://u@h1/db", "postgres://u@h2/db", True, 2)
    assert (explicit.database_url, explicit.read_url) == ("postgresql://u@h1/db", "postgresql://u@h2/db")
    both = ReadReplicas("postgresql://u@h1,h2/db?target_session_attrs=any", "postgresql://u@h3/db", True, 2)
    assert both.database_url == "postgresql://u@/db?target_session_attrs=any&host=h1,h2"  # as given
    assert both.read_url == "postgresql://u@h3/db"
    with pytest.raises(ConfigurationError, match="both before the path and in its query"):
        ReadReplicas("postgresql://u@h1,h2/db?host=h3&target_session_attrs=any", None, False, 1.0)
