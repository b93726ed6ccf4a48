"""Helpers shared by the test modules and the benchmarks: embedders and vectors, plain-psycopg SQL,
subprocesses, polling, private embedded servers, and what the hostile-input tests check with."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def sql_exec(url: str, statement: str, params: Sequence[Any] = ()) -> None:
    """Run one statement that returns no rows (ALTER SYSTEM, DDL) in autocommit mode."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)  # type: ignore[arg-type]


def app_role_url(url: str, role: str) -> str:
    """``url`` as an application role (LOGIN, no superuser, no BYPASSRLS; made if missing) that
    may use the schema and read and write ``memorix.memories`` only: the least privilege the
    README asks for. Drop what it owns with ``DROP OWNED BY`` when done."""
    from psycopg import sql

    name = sql.Identifier(role)
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(name))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA memorix TO {}").format(name))
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON memorix.memories TO {}").format(name))
    return url.replace("postgresql://postgres:@", f"postgresql://{role}:@", 1)


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


def spawn_module(module: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -m module`` (``sys.argv[1:]`` = ``args``) from the repository root, stdout and
    stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-u", "-m", module, *args],
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


@contextlib.contextmanager
def private_data_dir(prefix: str) -> Iterator[Path]:
    """An empty MEMORIX_DATA_DIR (and no MEMORIX_DATABASE_URL) for an embedded server of its own;
    the server is stopped afterwards and no postgres process may outlive it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMORIX_DATA_DIR", str(path))
        mp.delenv("MEMORIX_DATABASE_URL", raising=False)
        yield path
    from memorix_pg.server import stop_embedded_server

    stop_embedded_server(path)
    leftovers = postgres_processes(path / "pgdata")
    for proc in leftovers:
        proc.kill()
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"postgres outlived the test: {leftovers}"


def db_fingerprint(url: str) -> tuple[Any, ...]:
    """Everything stored, summed up with a plain psycopg connection: the row counts of
    memorix.memories and memorix.collections and a digest of every row (ids, texts, metadata,
    times), so "nothing was written" can be checked exactly."""
    return tuple(
        sql_rows(
            url,
            """
            SELECT (SELECT count(*) FROM memorix.memories),
                   (SELECT md5(coalesce(string_agg(
                        concat_ws('|', id, collection_id, md5(text), md5(metadata::text), created_at,
                                  updated_at, expires_at,
                   md5(coalesce(embedding::text, embedding_half::text))), ',' ORDER BY id), ''))
                    FROM memorix.memories),
                   (SELECT count(*) FROM memorix.collections),
                   (SELECT md5(coalesce(string_agg(concat_ws('|', id, name, embedder, dimension),
                                                   ',' ORDER BY id), ''))
                    FROM memorix.collections)
            """,
        )[0]
    )


class CapturedSQL:
    """The SQL text the library sends to ``url`` (``memorix_pg.runner.watch_statements``), with
    its parameters kept apart."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sent: list[tuple[str, Any]] = []
        self._watch: Any = None

    @property
    def statements(self) -> list[str]:
        return [s for s, _ in self._sent]

    @property
    def parameters(self) -> list[Any]:
        return [p for _, p in self._sent]

    def __enter__(self) -> CapturedSQL:
        from memorix_pg.runner import watch_statements

        self._watch = watch_statements(self.url)
        self._sent = self._watch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._watch.__exit__(*exc)

    def containing(self, text: str) -> list[str]:
        """The captured statements whose SQL text contains ``text``."""
        return [s for s in self.statements if text in s]


def nested(depth: int, leaf: Any = 1, key: str = "k") -> Any:
    """``{key: {key: ... leaf}}`` with ``depth`` levels of dicts."""
    value = leaf
    for _ in range(depth):
        value = {key: value}
    return value


@contextlib.contextmanager
def rejecting_text(url: str, text: str) -> Iterator[None]:
    """While the block runs, the database refuses any memory whose text is ``text`` (a CHECK
    constraint added as the owner): a row rejected by the database itself, mid-batch."""
    check = psycopg.sql.SQL(
        "ALTER TABLE memorix.memories ADD CONSTRAINT test_rejected_text CHECK (text <> {})"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(check.format(psycopg.sql.Literal(text)))  # DDL takes no parameters
    try:
        yield
    finally:
        sql_exec(url, "ALTER TABLE memorix.memories DROP CONSTRAINT test_rejected_text")
