"""Shared helpers for the benchmarks: synthetic memories, a memorix database, a Chroma client,
timing, and writing result tables (markdown + JSON) to ``benchmarks/results``.

No model is needed: memories come with precomputed, clustered unit vectors.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"

TYPES = ("conversation", "knowledge", "episode")
CATEGORIES = tuple(f"category-{i}" for i in range(10))
DIM = 384
DAYS = 90


@dataclass
class Dataset:
    """``n`` synthetic memories: texts, metadata and float32 unit vectors (row i belongs together)."""

    texts: list[str]
    metadatas: list[dict[str, Any]]
    vectors: np.ndarray
    ts: np.ndarray  # epoch seconds, also in each metadata["ts"]
    now: datetime

    def __len__(self) -> int:
        return len(self.texts)


def synthetic_memories(n: int, dim: int = DIM, clusters: int = 64, seed: int = 0) -> Dataset:
    """Clustered random unit vectors and seed-style metadata (type, session_id, ISO timestamp,
    category) spread over the last 90 days, plus a numeric epoch ``ts`` (Chroma's ``where``
    compares numbers only)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    assign = rng.integers(0, clusters, n)
    vectors = centres[assign] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=DAYS)
    ts = (start.timestamp() + rng.uniform(0, DAYS * 86400, n)).astype(np.int64)
    types = rng.integers(0, len(TYPES), n)
    cats = rng.integers(0, len(CATEGORIES), n)
    sessions = rng.integers(0, max(1, n // 40), n)
    texts, metas = [], []
    for i in range(n):
        when = datetime.fromtimestamp(int(ts[i]), UTC)
        metas.append(
            {
                "type": TYPES[types[i]],
                "session_id": f"session-{sessions[i]}",
                "timestamp": when.isoformat(),
                "ts": int(ts[i]),
                "category": CATEGORIES[cats[i]],
            }
        )
        texts.append(f"memory {i}: a {TYPES[types[i]]} about {CATEGORIES[cats[i]]} in session {sessions[i]}")
    return Dataset(texts, metas, vectors, ts, now)


@contextmanager
def memorix_database() -> Iterator[tuple[str | None, Path | None]]:
    """``MEMORIX_DATABASE_URL`` when set; else an embedded server in a temporary MEMORIX_DATA_DIR,
    stopped and removed afterwards. Yields (url or None, temp data dir or None)."""
    url = os.environ.get("MEMORIX_DATABASE_URL")
    if url:
        yield url, None
        return
    data_dir = Path(tempfile.mkdtemp(prefix="memorix-bench-"))
    previous = os.environ.get("MEMORIX_DATA_DIR")
    os.environ["MEMORIX_DATA_DIR"] = str(data_dir)
    try:
        yield None, data_dir
    finally:
        from memorix_pg.server import stop_embedded_server

        try:
            stop_embedded_server(data_dir)
        finally:
            if previous is None:
                os.environ.pop("MEMORIX_DATA_DIR", None)
            else:
                os.environ["MEMORIX_DATA_DIR"] = previous
            shutil.rmtree(data_dir, ignore_errors=True)


HISTORY_TRIGGERS = ("memories_history_insert", "memories_history_update", "memories_history_delete")


def set_history(url: str, on: bool) -> None:
    """Turn the history triggers of migration 0007 on or off (a benchmark's sides with and
    without them, or a load whose events nobody measures)."""
    import psycopg
    from psycopg import sql

    how = sql.SQL("ENABLE" if on else "DISABLE")
    with psycopg.connect(url, autocommit=True) as conn:
        for name in HISTORY_TRIGGERS:
            conn.execute(
                sql.SQL("ALTER TABLE memorix.memories {} TRIGGER {}").format(how, sql.Identifier(name))
            )


def drop_memorix_collections(url: str, names: list[str]) -> None:
    """Remove benchmark collections (and their partial HNSW indexes) from a shared database."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT id FROM memorix.collections WHERE name = ANY(%s)", (names,)).fetchall()
        for (cid,) in rows:
            conn.execute(
                sql.SQL("DROP INDEX IF EXISTS {}").format(
                    sql.Identifier("memorix", f"memories_embedding_hnsw_{cid}")
                )
            )
        conn.execute("DELETE FROM memorix.collections WHERE name = ANY(%s)", (names,))


@contextmanager
def chroma_client() -> Iterator[Any]:
    """A ``chromadb.PersistentClient`` in a temporary directory (removed afterwards)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import chromadb
        from chromadb.config import Settings

    path = Path(tempfile.mkdtemp(prefix="chroma-bench-"))
    try:
        yield chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def timer(into: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = time.perf_counter() - start


@dataclass
class ResultTable:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def _cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if value < 100 else f"{value:.1f}"
        return str(value)

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        lines += [f"- {k}: {v}" for k, v in self.meta.items()]
        lines += [
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(self._cell(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        cells = [self.columns, *[[self._cell(c) for c in row] for row in self.rows]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        out = [self.title, ""]
        for j, row in enumerate(cells):
            out.append(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
            if j == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)

    def write(self, stem: str) -> tuple[Path, Path]:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        md, js = RESULTS_DIR / f"{stem}.md", RESULTS_DIR / f"{stem}.json"
        md.write_text(self.markdown())
        payload = {
            "title": self.title,
            "meta": self.meta,
            "columns": self.columns,
            "rows": [dict(zip(self.columns, row, strict=True)) for row in self.rows],
            "notes": self.notes,
        }
        js.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        return md, js


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "-"

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memorix-pg": version("memorix-pg"),
        "chromadb": version("chromadb"),
        "pgvector (python)": version("pgvector"),
    }
