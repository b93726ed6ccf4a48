"""The README stays true: its two commands, its Python quick start and CI's test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mem0_env import import_mem0_offline

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_first_two_commands_are_demo_and_test() -> None:
    first_block = _blocks("bash")[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["./dev demo", "./dev test"]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert steps[-1] == "./dev test"


def test_torch_is_pinned_through_constraints_not_metadata() -> None:
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    assert "-c constraints.txt" in (ROOT / "dev").read_text()
    assert "torch" not in (ROOT / "pyproject.toml").read_text()


def test_python_quick_start_runs(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every ```python block of the README runs as written (hash embedder for MemoryAPI, for speed;
    mem0 offline, with an LLM client that is never called)."""
    import memorix_pg

    monkeypatch.setenv("MEMORIX_DATABASE_URL", database_url)
    real = memorix_pg.MemoryAPI

    def hashed(*args: object, **kwargs: object) -> memorix_pg.MemoryAPI:
        kwargs["embedder"] = "hash"
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(memorix_pg, "MemoryAPI", hashed)
    real_async = memorix_pg.AsyncMemoryAPI

    def hashed_async(*args: object, **kwargs: object) -> memorix_pg.AsyncMemoryAPI:
        kwargs["embedder"] = "hash"
        return real_async(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(memorix_pg, "AsyncMemoryAPI", hashed_async)
    # MemorixEmbeddings() stays all-MiniLM-L6-v2, the model mem0 queries with; on torch, which mem0
    # loads anyway, so that no ONNX export is written to the user's data dir.
    monkeypatch.setenv("MEMORIX_EMBED_BACKEND", "torch")
    import_mem0_offline(tmp_path_factory)
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # a closed port, were it ever called
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    namespace: dict[str, object] = {}
    for block in _blocks("python"):
        exec(compile(block, "README.md", "exec"), namespace)
    memory: memorix_pg.MemoryAPI = namespace["memory"]  # type: ignore[assignment]
    # $ne also matched the two facts that have no user_id (MongoDB semantics).
    assert memory.count({"type": "fact"}) == 0
    kept = memory.get(namespace["id"])  # type: ignore[arg-type]
    assert kept is not None and kept.metadata == {"type": "preference", "user_id": "u1", "confirmed": True}
    assert memory.count() == 2  # the preference and the one-time code (its TTL has not run out)
    receipt = namespace["receipt"]  # the Governance section's erasure
    assert (receipt.memories, receipt.summaries, receipt.total) == ({"profiles": 1}, {}, 1)  # type: ignore[attr-defined]
    store = namespace["store"]
    assert store.get_by_ids(["pg-heap"]) == []  # deleted
    assert len(store.similarity_search("index", k=5, filter={"topic": "index"})) == 2
    hits = namespace["agent_memory"].search("dark mode", filters={"user_id": "alice"})["results"]  # type: ignore[attr-defined]
    assert [h["memory"] for h in hits] == ["I prefer dark mode"]


@pytest.mark.slow
def test_dev_demo_command_runs(tmp_path: Path) -> None:
    """`./dev demo` as a user runs it: sets up (reusing .venv) and runs the demo."""
    env = {**os.environ, "MEMORIX_DATA_DIR": str(tmp_path / "data"), "PYTHON": sys.executable}
    env.pop("MEMORIX_DATABASE_URL", None)
    result = subprocess.run(
        [str(ROOT / "dev"), "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1. conversation: stored 6 messages" in result.stdout
    assert "retention: deleted 2 memories" in result.stdout
    assert "'archive': 3" in result.stdout
