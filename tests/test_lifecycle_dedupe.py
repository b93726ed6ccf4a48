"""Memory lifecycle on a real PostgreSQL: dedupe, near-duplicates and the embedding cache.

Times are controlled by writing ``created_at`` / ``expires_at`` with SQL (it is a real
database); nothing here mocks the database. The helpers are in tests/support/lifecycle.py.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import numpy as np
import psycopg
import pytest

from memorix_pg import DatabaseUnavailable, InvalidInput
from memorix_pg.cache import EmbeddingCache
from memorix_pg.database import get_engine
from tests.support.helpers import CountingEmbedder, unit_vectors
from tests.support.lifecycle import expire, sql, with_similarity

# SQLAlchemy deprecations become errors in its next major release: fail on them now.
pytestmark = pytest.mark.filterwarnings("error::sqlalchemy.exc.SADeprecationWarning")

# -- dedupe ----------------------------------------------------------------------------------------


def test_dedupe_returns_the_existing_id(make_api):
    emb = CountingEmbedder()
    api = make_api("dedupe", embedder=emb, dedupe=True)
    a = api.store("the same text", {"n": 1})
    assert api.store("the same text", {"n": 2}) == a
    assert api.count() == 1 and api.get(a).metadata == {"n": 1}
    assert api.store("another text") != a
    assert api.store("the same text", dedupe=False) != a  # per-call override
    assert api.count() == 3

    plain = make_api("dedupe_plain")
    p = plain.store("hello")
    assert plain.store("hello") != p  # off by default
    assert plain.store("hello", dedupe=True) == p  # the oldest copy
    assert plain.count() == 2
    # Per collection: the same text elsewhere is stored.
    assert make_api("dedupe_elsewhere", dedupe=True).store("the same text") != a


@pytest.mark.parametrize("n", [5, 400])  # INSERT and COPY paths
def test_dedupe_within_a_batch(make_api, n):
    emb = CountingEmbedder()
    api = make_api(f"dedupe_batch_{n}", embedder=emb)
    api.store("t0")
    texts = [f"t{i % (n // 2)}" for i in range(n)]
    ids = api.store_batch(texts, dedupe=True)
    assert len(ids) == n
    assert api.count() == n // 2
    by_text: dict[str, str] = {}
    for text, i in zip(texts, ids, strict=True):
        assert by_text.setdefault(text, i) == i
    assert sorted(t for c in emb.calls for t in c) == sorted({f"t{i}" for i in range(n // 2)})  # each once
    assert api.get(ids[0]).text == "t0"


def test_concurrent_dedupe_stores_store_once(make_api, database_url):
    apis = [make_api("dedupe_race", dedupe=True) for _ in range(2)]
    rounds = 15
    results: list[list[str]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(k: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait(timeout=30)
                results[k].append(apis[k].store(f"raced text {r}", {"by": k}))
                results[k].append(apis[k].store_batch([f"raced batch {r}", f"raced text {r}"])[0])
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results[0] == results[1]
    assert apis[0].count() == 2 * rounds
    dupes = sql(
        database_url,
        "SELECT text, count(*) FROM memorix.memories WHERE collection_id = %s "
        "GROUP BY text HAVING count(*) > 1",
        (apis[0].collection_id,),
    )
    assert dupes == []


def test_dedupe_of_a_large_batch(make_api):
    """Dedupe must not take one lock per text: 20,000 advisory locks overflow PostgreSQL's shared
    lock table (max_locks_per_transaction x max_connections = 6,400 by default)."""
    api = make_api("dedupe_large", embedder="hash-8")
    n = 20_000
    texts = [f"bulk text {i % (n - 10)}" for i in range(n)]  # the last 10 repeat the first 10
    ids = api.store_batch(texts, embeddings=unit_vectors(n, dim=8, seed=4), dedupe=True)
    assert ids[-10:] == ids[:10]
    assert api.count() == n - 10


def test_a_failing_query_is_not_reported_as_an_unreachable_server(make_api, database_url):
    """A lock or statement timeout is not 'cannot connect to PostgreSQL ... check the server is running'."""
    api = make_api("timeouts")
    api.store("x")
    dbname = urlsplit(database_url).path.lstrip("/")
    sql(database_url, f"ALTER DATABASE {dbname} SET lock_timeout = '300ms'")
    get_engine(api.database_url).dispose()  # new sessions pick the setting up
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE memorix.memories IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(Exception, match="lock timeout") as info:
            api.count()
        holder.rollback()
    assert not isinstance(info.value, DatabaseUnavailable), info.value
    sql(database_url, f"ALTER DATABASE {dbname} RESET lock_timeout")
    get_engine(api.database_url).dispose()
    assert api.count() == 1


def test_find_duplicates_by_cosine_similarity(make_api):
    api = make_api("near_dupes")
    base = unit_vectors(30, seed=3)
    partners = [
        with_similarity(base[0], 0.99, 1),
        with_similarity(base[1], 0.97, 2),
        with_similarity(base[2], 0.90, 3),
    ]
    vectors = np.vstack([base, partners])
    texts = [f"memory {i}" for i in range(30)] + ["partner of 0", "partner of 1", "partner of 2"]
    ids = api.store_batch(texts, embeddings=vectors)
    pair = {0: frozenset((ids[0], ids[30])), 1: frozenset((ids[1], ids[31])), 2: frozenset((ids[2], ids[32]))}

    found = api.find_duplicates(threshold=0.95)
    assert [frozenset((d.id_a, d.id_b)) for d in found] == [pair[0], pair[1]]
    assert found[0].similarity == pytest.approx(0.99, abs=1e-4)
    assert found[1].similarity == pytest.approx(0.97, abs=1e-4)
    assert {found[0].text_a, found[0].text_b} == {"memory 0", "partner of 0"}
    assert [frozenset((d.id_a, d.id_b)) for d in api.find_duplicates(threshold=0.95, limit=1)] == [pair[0]]
    assert {frozenset((d.id_a, d.id_b)) for d in api.find_duplicates(threshold=0.85)} == set(pair.values())
    assert api.find_duplicates(threshold=0.995) == []
    # An expired partner is no longer a duplicate.
    expire(api.database_url, [ids[30]])
    assert [frozenset((d.id_a, d.id_b)) for d in api.find_duplicates(threshold=0.95)] == [pair[1]]
    for bad in (1.5, -2, "high"):
        with pytest.raises(InvalidInput):
            api.find_duplicates(threshold=bad)  # type: ignore[arg-type]


# -- embedding cache -------------------------------------------------------------------------------


def test_embedding_cache_avoids_re_embedding(make_api):
    emb = CountingEmbedder()
    api = make_api("cache", embedder=emb)
    assert api.cache_info() == (0, 0, 1024, 0)
    api.store("a cached memory")
    for _ in range(3):
        api.retrieve("a cached memory", top_k=1)
        api.retrieve("some question", top_k=1)
    assert emb.embedded == 2
    info = api.cache_info()
    assert (info.hits, info.misses, info.currsize) == (5, 2, 2)
    api.store_batch(["a cached memory", "new text", "new text"])  # one cached, one new (embedded once)
    assert emb.embedded == 3
    # hits: the cached text, and the batch's repeat of "new text"
    assert api.cache_info().hits == 7 and api.cache_info().misses == 3


def test_cache_is_lru_and_size_zero_disables_it(make_api):
    emb = CountingEmbedder()
    api = make_api("cache_lru", embedder=emb, cache_size=2)
    for q in ("a", "b", "c"):
        api.retrieve(q, top_k=1)
    api.retrieve("c", top_k=1)  # hit
    api.retrieve("a", top_k=1)  # evicted: embedded again
    assert [c for call in emb.calls for c in call] == ["a", "b", "c", "a"]
    assert api.cache_info() == (1, 4, 2, 2)

    off = CountingEmbedder()
    api0 = make_api("cache_off", embedder=off, cache_size=0)
    for _ in range(3):
        api0.retrieve("same question", top_k=1)
    assert off.embedded == 3
    assert api0.cache_info() == (0, 3, 0, 0)

    with pytest.raises(Exception, match="cache_size"):
        make_api("cache_bad", cache_size=-1)


def test_cache_is_keyed_by_model():
    cache = EmbeddingCache(10)
    seen: list[str] = []

    def embed(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return np.ones((len(texts), 4), dtype=np.float32)

    cache.embed("model-a", ["x"], embed)
    cache.embed("model-b", ["x"], embed)
    cache.embed("model-a", ["x"], embed)
    assert seen == ["x", "x"]
    assert cache.info() == (1, 2, 10, 2)


@pytest.mark.parametrize("distance", ["l2", "ip"])
def test_find_duplicates_follows_the_collections_distance(make_api, distance):
    """l2 and ip collections find their near-duplicates through their own operator (and so their
    own index), with the score retrieve reports: minus the L2 distance, or the inner product."""
    api = make_api(f"near_{distance}", distance=distance)
    base = unit_vectors(30, seed=5)
    vectors = np.vstack([base, with_similarity(base[4], 0.99, 6)])
    ids = api.store_batch([f"memory {i}" for i in range(31)], embeddings=vectors)
    expected = (
        float(vectors[4] @ vectors[30])
        if distance == "ip"
        else -float(np.linalg.norm(vectors[4] - vectors[30]))
    )
    threshold = 0.98 if distance == "ip" else -0.2
    found = api.find_duplicates(threshold=threshold)
    assert [frozenset((d.id_a, d.id_b)) for d in found] == [frozenset((ids[4], ids[30]))]
    assert found[0].similarity == pytest.approx(expected, abs=1e-4)
    top = api.retrieve(None, top_k=2, embedding=vectors[4])
    assert top[1].id == ids[30] and top[1].score == pytest.approx(expected, abs=1e-4)
