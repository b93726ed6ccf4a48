"""``memorix-pg demo``: the library's main job, end to end, on the embedded server by default."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from .api import MemoryAPI

__all__ = ["run_demo"]

CONVERSATION = [
    ("s1", "user", "I'm planning a trip to Lisbon next month."),
    ("s1", "assistant", "Lisbon is lovely in spring; the Alfama district is worth a walk."),
    ("s1", "user", "I love seafood, especially grilled sardines."),
    ("s2", "user", "Can you help me debug a Python import error?"),
    ("s2", "assistant", "Sure: check that the package is installed in the active virtualenv."),
    ("s2", "user", "I prefer dark mode in every editor."),
]

KNOWLEDGE = [
    (
        "PostgreSQL supports JSONB with GIN indexes for fast containment queries.",
        "databases",
        ["postgres", "json"],
    ),
    (
        "pgvector adds vector similarity search with HNSW and IVFFlat indexes.",
        "databases",
        ["postgres", "vectors"],
    ),
    (
        "Sentence embeddings map text to vectors so similar meanings are close.",
        "ml",
        ["embeddings", "vectors"],
    ),
    ("Sardines are rich in omega-3 fatty acids.", "nutrition", ["food"]),
]

EPISODES = [
    ("Had dinner with Ana and Rui at a fado bar.", "Lisbon", ["Ana", "Rui"], ["joy"]),
    ("Missed the train to Sintra and waited an hour.", "Lisbon", ["Rui"], ["frustration"]),
    ("Gave a talk about vector databases.", "Berlin", ["Mia"], ["pride", "nerves"]),
]


def run_demo(
    embedder: str = "sentence-transformers",
    database_url: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, int]:
    """Store, search, clean up, archive and count memories; print each step. Returns the counts."""
    started = time.perf_counter()

    def api(name: str) -> MemoryAPI:
        memory = MemoryAPI(
            vector_store="pgvector", embedder=embedder, collection_name=name, database_url=database_url
        )
        memory.delete_by_filter({})  # the demo starts from empty collections each run
        return memory

    conversation = api("demo_conversation")
    echo(f"database: {conversation.database_url}")
    echo(f"embedder: {conversation.embedder.name} ({conversation.embedder.dim} dims)\n")

    now = datetime.now()
    ids = conversation.store_batch(
        [text for _, _, text in CONVERSATION],
        [
            {
                "role": role,
                "session_id": session,
                "type": "conversation",
                "timestamp": (now - timedelta(minutes=len(CONVERSATION) - i)).isoformat(),
            }
            for i, (session, role, _) in enumerate(CONVERSATION)
        ],
    )
    echo(f"1. conversation: stored {len(ids)} messages in 2 sessions")
    for memory in conversation.retrieve(
        "what food does the user like?", top_k=2, filter={"type": "conversation", "session_id": "s1"}
    ):
        echo(f"   session s1, 'what food does the user like?' -> {memory.score:.3f} {memory.text}")

    knowledge = api("demo_knowledge")
    knowledge.store_batch(
        [text for text, _, _ in KNOWLEDGE],
        [
            {"type": "knowledge", "category": category, "tags": tags, "timestamp": now.isoformat()}
            for _, category, tags in KNOWLEDGE
        ],
    )
    echo(f"\n2. knowledge: stored {len(KNOWLEDGE)} facts")
    for memory in knowledge.retrieve(
        "how do I search vectors in a database?", top_k=2, filter={"tags": {"$in": ["vectors"]}}
    ):
        echo(f"   tags $in ['vectors'] -> {memory.score:.3f} {memory.text}")

    episodes = api("demo_episodes")
    episodes.store_batch(
        [text for text, _, _, _ in EPISODES],
        [
            {
                "type": "episode",
                "location": loc,
                "participants": people,
                "emotions": feelings,
                "timestamp": now.isoformat(),
            }
            for _, loc, people, feelings in EPISODES
        ],
    )
    echo(f"\n3. episodic: stored {len(EPISODES)} episodes")
    for memory in episodes.retrieve(
        "an evening out with friends",
        top_k=1,
        filter={"participants": {"$in": ["Ana"]}, "location": "Lisbon"},
    ):
        echo(f"   with Ana in Lisbon -> {memory.score:.3f} {memory.text}")

    old = (now - timedelta(days=45)).isoformat()
    conversation.store_batch(
        ["Old chit-chat about the weather.", "An old question about printers."],
        [{"role": "user", "session_id": "s0", "type": "conversation", "timestamp": old}] * 2,
    )
    cutoff = (now - timedelta(days=30)).isoformat()
    deleted = conversation.delete_by_filter({"timestamp": {"$lt": cutoff}})
    echo(f"\n4. retention: deleted {deleted} memories older than 30 days (one DELETE)")

    archive = api("demo_archive")
    to_archive = conversation.retrieve("", top_k=1000, filter={"session_id": "s2"})
    archive.store_batch([m.text for m in to_archive], [{**m.metadata, "archived": True} for m in to_archive])
    moved = conversation.delete_by_filter({"session_id": "s2"})
    echo(f"\n5. archive: moved {moved} memories of session s2 to 'demo_archive'")

    stats = conversation.stats(group_by="role")
    echo(f"\n6. stats: demo_conversation holds {stats['total']} memories; by role: {stats['groups']}")
    counts = {
        "conversation": conversation.count(),
        "knowledge": knowledge.count(),
        "episodes": episodes.count(),
        "archive": archive.count({"archived": True}),
    }
    echo(f"   counts: {counts}")
    echo(f"\ndone in {time.perf_counter() - started:.1f} s")
    return counts
