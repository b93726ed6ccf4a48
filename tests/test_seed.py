"""The seed document's code runs on memorix-pg with exactly two edits, and gives correct results.

Every ```python block of tests/seed/memory-management.md is executed in one namespace after
replacing the import and ``vector_store="chroma"``. It uses the embedded server (in a temp
data dir) and the real default sentence-transformers model, as a user of the seed would.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from memorix_pg import FilterError, MemorixError, Memory, MemoryAPI, SentenceTransformerEmbedder
from memorix_pg.server import stop_embedded_server
from tests.support.helpers import REPO_ROOT

SEED = REPO_ROOT / "tests" / "seed" / "memory-management.md"
SHARED_SEED = REPO_ROOT.parent / "shared" / "seed" / "memory-management.md"
EDITS = (
    ("from memorix import MemoryAPI", "from memorix_pg import MemoryAPI"),
    ('vector_store="chroma"', 'vector_store="pgvector"'),
)
SEED_NAMES = (
    "ConversationMemory",
    "KnowledgeBase",
    "EpisodicMemory",
    "MemoryManager",
    "MemoryCompressor",
    "batch_store_memories",
    "create_memory_indexes",
    "CachedMemoryAPI",
    "MemoryAnalytics",
)


def seed_code() -> str:
    """All python blocks of the seed, joined, with exactly the two allowed edits applied."""
    blocks = re.findall(r"^```python\n(.*?)^```", SEED.read_text(), flags=re.S | re.M)
    assert len(blocks) == len(SEED_NAMES)
    code = "\n\n".join(blocks)
    for old, new in EDITS:
        assert code.count(old) >= 1, f"the seed no longer contains {old!r}"
        code = code.replace(old, new)
    assert 'chroma"' not in code and "from memorix " not in code
    return code


@pytest.fixture(scope="module")
def seed() -> Iterator[dict[str, Any]]:
    """The seed's namespace, with MEMORIX_DATA_DIR on a temp dir and no MEMORIX_DATABASE_URL."""
    data_dir = Path(tempfile.mkdtemp(prefix="mx-seed-"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMORIX_DATA_DIR", str(data_dir))
        mp.delenv("MEMORIX_DATABASE_URL", raising=False)
        namespace: dict[str, Any] = {"__name__": "memory_management_seed"}
        exec(compile(seed_code(), str(SEED), "exec"), namespace)
        try:
            yield namespace
        finally:
            stop_embedded_server(data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)


def seed_api(collection_name: str) -> MemoryAPI:
    """A MemoryAPI built the way the seed builds them (after the edit)."""
    return MemoryAPI(
        vector_store="pgvector", embedder="sentence-transformers", collection_name=collection_name
    )


def texts(memories: list[Memory]) -> list[str]:
    return [m.text for m in memories]


def ago(**delta: float) -> str:
    return (datetime.now() - timedelta(**delta)).isoformat()


def assert_ranked(memories: list[Memory]) -> None:
    scores = [m.score for m in memories]
    assert None not in scores and scores == sorted(scores, reverse=True)  # type: ignore[type-var]


def test_the_vendored_seed_matches_the_shared_one() -> None:
    if not SHARED_SEED.exists():
        pytest.skip(f"no shared seed at {SHARED_SEED}")
    assert SEED.read_text() == SHARED_SEED.read_text()


def test_the_seed_defines_everything(seed: dict[str, Any]) -> None:
    for name in SEED_NAMES:
        assert callable(seed[name]), name
    assert seed["MemoryAPI"] is MemoryAPI


def test_conversation_memory(seed: dict[str, Any]) -> None:
    conv = seed["ConversationMemory"]("alice")
    assert conv.memory.collection_name == "conversation_alice"
    assert conv.memory.embedded and isinstance(conv.memory.embedder, SentenceTransformerEmbedder)
    s1 = [
        ("I would like to order a large pepperoni pizza tonight", "user"),
        ("Sure, what time should the delivery arrive?", "assistant"),
        ("My favourite hiking trail is up in the mountains", "user"),
    ]
    s2 = [
        ("The quarterly budget review is scheduled for Monday", "user"),
        ("Let's get pizza and pasta for the team lunch", "assistant"),
    ]
    for session, messages in (("s1", s1), ("s2", s2)):
        for message, role in messages:
            conv.add_message(message, role=role, session_id=session)
    conv.memory.store("Pizza dough should rest for a day", metadata={"type": "note", "session_id": "s1"})

    in_s1 = conv.get_context("pizza", session_id="s1")
    assert texts(in_s1)[0] == s1[0][0]
    assert sorted(texts(in_s1)) == sorted(m for m, _ in s1)
    assert all(m.metadata["session_id"] == "s1" and m.metadata["type"] == "conversation" for m in in_s1)
    assert_ranked(in_s1)
    roles = {m.text: m.metadata["role"] for m in in_s1}
    assert roles == {m: r for m, r in s1}

    everywhere = conv.get_context("pizza")
    assert len(everywhere) == 5 and "Pizza dough should rest for a day" not in texts(everywhere)
    assert set(texts(everywhere)[:2]) == {s1[0][0], s2[1][0]}
    assert_ranked(everywhere)
    assert texts(conv.get_context("pizza", top_k=1, session_id="s2")) == [s2[1][0]]

    old = "We talked about the weather two days ago"
    conv.memory.store(
        old, metadata={"role": "user", "session_id": "s1", "type": "conversation", "timestamp": ago(hours=48)}
    )
    recent = conv.get_recent_context(hours=24)
    assert sorted(texts(recent)) == sorted(m for m, _ in s1 + s2)
    assert old in texts(conv.get_recent_context(hours=72))
    assert len(conv.get_recent_context(hours=24, top_k=2)) == 2


def test_knowledge_base(seed: dict[str, Any]) -> None:
    kb = seed["KnowledgeBase"]("science")
    assert kb.memory.collection_name == "knowledge_science"
    ids = {
        "gravity": kb.add_knowledge(
            "Gravity makes falling objects accelerate at 9.8 metres per second squared",
            "physics",
            source="textbook",
            tags=["mechanics", "earth"],
        ),
        "light": kb.add_knowledge(
            "Light travels at about 300,000 kilometres per second", "physics", tags=["optics"]
        ),
        "water": kb.add_knowledge(
            "A water molecule has two hydrogen atoms and one oxygen atom",
            "chemistry",
            tags=["molecules", "earth"],
        ),
        "lists": kb.add_knowledge("Python lists are dynamic arrays", "programming", tags=["python"]),
    }
    by_id = {v: k for k, v in ids.items()}

    physics = kb.search_knowledge("how fast do dropped things fall", category="physics")
    assert [by_id[m.id] for m in physics] == ["gravity", "light"]
    earth = kb.search_knowledge("our planet", tags=["earth"])
    assert {by_id[m.id] for m in earth} == {"gravity", "water"}
    optics = kb.search_knowledge("speed", category="physics", tags=["optics"])
    assert [by_id[m.id] for m in optics] == ["light"]
    assert kb.search_knowledge("anything", tags=["astronomy"]) == []

    before = kb.memory.get(ids["lists"])
    updated = kb.update_knowledge(
        ids["lists"], "Rust vectors are growable arrays on the heap", category="rust", tags=["rust", "memory"]
    )
    assert updated.text == "Rust vectors are growable arrays on the heap"
    assert updated.metadata == {**before.metadata, "category": "rust", "tags": ["rust", "memory"]}
    assert updated.metadata["source"] is None and updated.metadata["type"] == "knowledge"
    found = kb.search_knowledge("growable heap arrays in Rust", top_k=1)
    assert [m.id for m in found] == [ids["lists"]] and found[0].score > 0.8
    assert kb.search_knowledge("lists", tags=["python"]) == []
    assert [m.id for m in kb.search_knowledge("arrays", category="rust")] == [ids["lists"]]


def test_episodic_memory(seed: dict[str, Any]) -> None:
    episodes = seed["EpisodicMemory"]()
    assert episodes.memory.collection_name == "episodic_memory"
    dinner = episodes.store_episode(
        "Had dinner with Bob and Alice at a little bistro", "Paris", ["Bob", "Alice"], ["happy"]
    )
    hike = episodes.store_episode("Went hiking with Carol in the mountains", "Alps", ["Carol"])
    talk = episodes.store_episode("Presented the quarterly results to Bob", "Office", participants=["Bob"])

    with_bob = episodes.recall_episodes("a nice dinner at a restaurant", participants=["Bob"])
    assert [m.id for m in with_bob] == [dinner, talk]
    assert [m.id for m in episodes.recall_episodes("anything", location="Paris")] == [dinner]
    assert [m.id for m in episodes.recall_episodes("walk", participants=["Carol", "Dave"])] == [hike]
    assert episodes.recall_episodes("anything", location="Paris", participants=["Carol"]) == []
    assert episodes.memory.get(dinner).metadata["emotions"] == ["happy"]


def test_memory_manager_cleanup_stats_and_archive(
    seed: dict[str, Any], capsys: pytest.CaptureFixture
) -> None:
    manager = seed["MemoryManager"]("lifecycle")
    old, now = ago(days=45), ago(seconds=0)
    docs = {
        "an old conversation": {"type": "conversation", "timestamp": old},
        "an old fact": {"type": "knowledge", "timestamp": old},
        "a recent conversation": {"type": "conversation", "timestamp": now},
        "a recent fact": {"type": "knowledge", "timestamp": now},
        "a trip to Rome": {"type": "episode", "timestamp": now, "place": "Rome"},
        "lunch with Dana": {"type": "episode", "timestamp": now},
        "a note without a type": {"timestamp": now},
    }
    manager.memory.store_batch(list(docs), list(docs.values()))
    stats = manager.get_memory_stats()
    assert stats == {"total": 7, "conversations": 2, "knowledge": 2, "episodes": 2}

    assert manager.cleanup_old_memories(days_old=30) == 2
    assert "Cleaned up 2 old memories" in capsys.readouterr().out
    assert sorted(texts(manager.memory.retrieve("", top_k=100))) == sorted(list(docs)[2:])
    assert manager.get_memory_stats() == {"total": 5, "conversations": 1, "knowledge": 1, "episodes": 2}
    assert manager.cleanup_old_memories(days_old=30) == 0

    assert manager.archive_memories({"type": "episode"}, "lifecycle_archive") == 2
    archive = seed_api("lifecycle_archive")
    archived = archive.retrieve("", top_k=100)
    assert sorted(texts(archived)) == ["a trip to Rome", "lunch with Dana"]
    assert archive.count({"archived": True}) == 2
    rome = next(m for m in archived if m.text == "a trip to Rome")
    assert rome.metadata == {**docs["a trip to Rome"], "archived": True}
    assert archive.retrieve("Italy vacation", top_k=1)[0].text == "a trip to Rome"
    assert manager.get_memory_stats() == {"total": 3, "conversations": 1, "knowledge": 1, "episodes": 0}


class Uncapped:
    """A MemoryAPI whose retrieve ignores top_k, so the compressor can see more than max_memories."""

    def __init__(self, api: MemoryAPI) -> None:
        self.api = api

    def retrieve(self, query: str, top_k: int, filter: dict) -> list[Memory]:
        return self.api.retrieve(query, top_k=1000, filter=filter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)


def test_memory_compressor(seed: dict[str, Any]) -> None:
    api = seed_api("compressor")
    docs = {
        "s1 first message": {"type": "conversation", "session_id": "s1"},
        "s1 second message": {"type": "conversation", "session_id": "s1"},
        "s1 third message": {"type": "conversation", "session_id": "s1"},
        "s1 earlier summary": {"type": "conversation", "session_id": "s1", "compressed": True},
        "s2 message": {"type": "conversation", "session_id": "s2"},
    }
    api.store_batch(list(docs), list(docs.values()))
    compressor = seed["MemoryCompressor"](api)
    # retrieve() never returns more than top_k=max_memories, so the seed always returns early.
    assert compressor.compress_conversation("s1", max_memories=2) is None
    assert compressor.compress_conversation("s1") is None
    assert api.count() == 5

    # With more memories than max_memories (the seed's intent), it stores no summaries (its
    # summarising is left unimplemented) and deletes the session's uncompressed messages.
    assert seed["MemoryCompressor"](Uncapped(api)).compress_conversation("s1", max_memories=2) is None
    assert sorted(texts(api.retrieve("", top_k=10))) == ["s1 earlier summary", "s2 message"]


def test_batch_store_memories(seed: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    api = seed_api("batched")
    data = [
        {"text": f"Batch memory {i} about topic {i % 3}", "metadata": {"i": i, "topic": i % 3}}
        for i in range(7)
    ]
    seed["batch_store_memories"](api, data, batch_size=3)
    assert api.count() == 7
    assert api.count({"topic": 1}) == 2
    assert sorted(texts(api.retrieve(None, top_k=10))) == sorted(d["text"] for d in data)
    progress = capsys.readouterr().err
    assert "Storing memories" in progress and "3/3" in progress


def test_create_memory_indexes(seed: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    assert seed["create_memory_indexes"](seed_api("indexes")) is None
    assert (
        capsys.readouterr().out
        == "Memory indexes created for: ['type', 'category', 'user_id', 'session_id']\n"
    )


def test_cached_memory_api_gets_a_clear_filter_error(seed: dict[str, Any]) -> None:
    api = seed_api("cached")
    api.store("I would like a pizza", {"type": "conversation"})
    cached = seed["CachedMemoryAPI"](api, cache_size=10)
    assert cached.memory is api and cached.cache_size == 10
    # The seed passes an md5 of str(filter) as the filter: a string, which is not a filter.
    for call in (
        lambda: cached.retrieve("pizza", top_k=3, filter={"type": "conversation"}),
        lambda: cached.retrieve("pizza"),
    ):
        with pytest.raises(FilterError) as excinfo:
            call()
        assert isinstance(excinfo.value, MemorixError)
        assert "filter" in str(excinfo.value) and "str" in str(excinfo.value)
    assert api.count() == 1


def test_memory_analytics(seed: dict[str, Any]) -> None:
    api = seed_api("analytics")
    old, now = ago(days=60), ago(seconds=0)
    docs = {
        "chat one": {"type": "conversation", "timestamp": now},
        "chat two": {"type": "conversation", "timestamp": now},
        "newton's laws": {"type": "knowledge", "category": "physics", "timestamp": now},
        "optics basics": {"type": "knowledge", "category": "physics", "timestamp": now},
        "acids and bases": {"type": "knowledge", "category": "chemistry", "timestamp": now},
        "a loose note": {"category": "misc", "timestamp": now},
        "old physics": {"type": "knowledge", "category": "physics", "timestamp": old},
        "old chat": {"type": "conversation", "timestamp": old},
        "no timestamp": {"type": "conversation"},
    }
    api.store_batch(list(docs), list(docs.values()))
    stats = seed["MemoryAnalytics"](api).get_usage_stats(days=30)
    assert stats == {
        "total_memories": 6,
        "by_type": {"conversation": 2, "knowledge": 3, "unknown": 1},
        "by_category": {"unknown": 2, "physics": 2, "chemistry": 1, "misc": 1},
        "storage_growth": 0,
    }
    recent = {"timestamp": {"$gte": ago(days=30)}}
    assert api.count(recent) == stats["total_memories"]
    for field, counts in (("type", stats["by_type"]), ("category", stats["by_category"])):
        for value, n in counts.items():
            match = {"$exists": False} if value == "unknown" else value
            assert api.count({**recent, field: match}) == n, (field, value)
