"""The README stays true: its two commands, its Python quick start and CI's test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_python_quick_start_runs(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```python block of the README runs as written (hash embedder for speed)."""
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
    namespace: dict[str, object] = {}
    for block in _blocks("python"):
        exec(compile(block, "README.md", "exec"), namespace)
    memory: memorix_pg.MemoryAPI = namespace["memory"]  # type: ignore[assignment]
    # $ne also matched the two facts that have no user_id (MongoDB semantics).
    assert memory.count({"type": "fact"}) == 0
    kept = memory.get(namespace["id"])  # type: ignore[arg-type]
    assert kept is not None and kept.metadata == {"type": "preference", "user_id": "u1", "confirmed": True}
    assert memory.count() == 2  # the preference and the one-time code (its TTL has not run out)


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
