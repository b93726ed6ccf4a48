"""Helpers shared by the foundation test modules (API, server, migrations, embedders, seed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]


class CountingEmbedder:
    """A custom embedder object (not a string): hash features in ``dim`` buckets, counting calls."""

    def __init__(self, dim: int = 32, name: str | None = None) -> None:
        from memorix_pg import HashEmbedder

        self._inner = HashEmbedder(dim)
        self.name = name or f"counting-{dim}"
        self.dim = dim
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self._inner.embed(texts)

    @property
    def embedded(self) -> int:
        """How many texts were embedded in all."""
        return sum(len(c) for c in self.calls)


def unit_vectors(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    """``n`` random unit vectors (float32), reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def sql_rows(url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one query on ``url`` with a plain psycopg connection (not the library's engine)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def sql_value(url: str, query: str, params: Sequence[Any] = ()) -> Any:
    rows = sql_rows(url, query, params)
    return rows[0][0] if rows else None


def python_env(**overrides: str | None) -> dict[str, str]:
    """``os.environ`` with ``overrides`` applied (None removes a variable)."""
    env = dict(os.environ)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_python(
    code: str, env: Mapping[str, str] | None = None, timeout: float = 120, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; fail with its stderr when it exits non-zero."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=dict(env) if env is not None else None,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"subprocess failed ({result.returncode}):\n{result.stderr}"
    return result


def spawn_python(code: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``code`` (``sys.argv[1:]`` = ``args``) in a fresh interpreter, stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-u", "-c", textwrap.dedent(code), *args],
        env=dict(env) if env is not None else None,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 15, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """A running process; a zombie (dead, never reaped) does not count."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """Live postgres processes (postmaster or backends) serving ``pgdata``."""
    found = []
    for proc in psutil.process_iter(attrs=("name", "cmdline")):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and any(str(pgdata) in part for part in cmdline):
            if pid_alive(proc.pid):
                found.append(proc)
    return found
