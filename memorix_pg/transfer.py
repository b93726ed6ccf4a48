"""Moving memories in and out: JSONL export/import and copying a Chroma persistent store.

JSONL lines are ``{"id", "text", "metadata", "embedding", "created_at", "expires_at"}``;
on import only ``text`` is required. Embeddings are written as exact decimal floats, so an
export → import round trip restores every vector bit for bit. Imports write in chunks, each
one transaction, and upsert by id: re-running an interrupted import loses and duplicates nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigurationError, InvalidInput
from .schemas import MetadataSchema
from .validation import check_embedding, check_id, check_text, check_timestamp, clean_metadata, new_id

if TYPE_CHECKING:
    from .api import MemoryAPI

__all__ = ["ImportedCollection", "export_jsonl", "import_chroma", "import_jsonl"]

CHUNK = 2000


def export_jsonl(
    api: MemoryAPI, out: IO[str], filter: dict[str, Any] | None = None, progress: bool = False
) -> int:
    """Write the collection's live memories (matching ``filter``), oldest first, one JSON object a line."""
    bar = _progress(progress, "exporting", api.count(filter))
    written = 0
    cursor: str | None = None
    while True:
        page = api.list(filter, CHUNK, cursor=cursor, order="oldest", include_embeddings=True)
        for memory in page:
            # Exported in plaintext (decrypted when the collection is encrypted): import
            # encrypts again under whatever key the importing MemoryAPI holds.
            assert memory.embedding is not None and memory.created_at is not None
            record = {
                "id": memory.id,
                "text": memory.text,
                "metadata": memory.metadata,
                "embedding": [float(x) for x in memory.embedding],
                "created_at": memory.created_at.isoformat(),
                "expires_at": memory.expires_at.isoformat() if memory.expires_at else None,
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        written += len(page)
        if bar is not None:
            bar.update(len(page))
        if len(page) < CHUNK:
            break
        cursor = page[-1].id
    if bar is not None:
        bar.close()
    return written


@dataclass(frozen=True)
class _Line:
    number: int
    text: str
    metadata: dict[str, Any] | None
    id: str | None
    embedding: list[float] | None
    created_at: str | None


def _parse_lines(path: Path) -> list[_Line]:
    """Read and check every line first, so a bad line fails the import before anything is written."""
    lines: list[_Line] = []
    try:
        raw_lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        except ValueError as exc:  # e.g. an integer longer than Python parses
            raise InvalidInput(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InvalidInput(f"{path}:{number}: each line must be an object with a 'text' string")
        unknown = set(record) - {"id", "text", "metadata", "embedding", "created_at", "expires_at"}
        if unknown:
            raise InvalidInput(f"{path}:{number}: unknown field(s) {sorted(unknown)}")
        lines.append(
            _Line(
                number=number,
                text=record["text"],
                metadata=record.get("metadata"),
                id=record.get("id"),
                embedding=record.get("embedding"),
                created_at=record.get("created_at"),
            )
        )
    return lines


def _chunks(items: list[_Line], size: int) -> Iterator[list[_Line]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def import_jsonl(api: MemoryAPI, path: str | Path, progress: bool = False) -> int:
    """Store every line of a JSONL file; lines with ids are upserted. Returns the lines stored."""
    source = Path(path)
    if not source.is_file():
        raise InvalidInput(f"no such file: {source}")
    lines = _parse_lines(source)
    _check_lines(api, source, lines)
    bar = _progress(progress, "importing", len(lines))
    stored = 0
    for chunk in _chunks(lines, CHUNK):
        # One store_batch takes embeddings (and created_at) for all items or none: split the chunk.
        groups: dict[tuple[bool, bool], list[_Line]] = {}
        for line in chunk:
            groups.setdefault((line.embedding is not None, line.created_at is not None), []).append(line)
        parts = list(groups.values())
        for part in parts:
            if part:
                stored += _store_lines(api, part)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return stored


def _check_lines(api: MemoryAPI, path: Path, lines: list[_Line]) -> None:
    """Every check store_batch makes, on every line, before the first chunk is written."""
    seen: dict[str, int] = {}
    stored_schema = api.get_schema()
    schema = MetadataSchema(stored_schema) if stored_schema is not None else None
    for line in lines:
        where = f"{path}:{line.number}:"
        check_text(line.text, f"{where} text")
        metadata = clean_metadata(line.metadata, f"{where} metadata")
        if schema is not None:  # checked here too: a later chunk's violation must not follow written ones
            schema.check(metadata, line.number - 1, f"{where} metadata")
        if line.id is not None:
            row_id = check_id(line.id, f"{where} id")
            if (first := seen.setdefault(row_id, line.number)) != line.number:
                raise InvalidInput(f"{where} id {row_id!r:.80} is also on line {first}")
        if line.embedding is not None:
            check_embedding(line.embedding, api.embedder.dim, f"{where} embedding")
        if line.created_at is not None:
            check_timestamp(line.created_at, f"{where} created_at")


def _store_lines(api: MemoryAPI, part: list[_Line]) -> int:
    ids: list[Any] | None = [ln.id for ln in part]
    if all(i is None for i in ids or ()):
        ids = None
    else:  # lines without an id get a new one; the others keep theirs
        ids = [i if i is not None else new_id() for i in ids or ()]
    vectors: list[Any] = [ln.embedding for ln in part]
    stamps: list[Any] = [ln.created_at for ln in part]
    api.store_batch(
        [ln.text for ln in part],
        [ln.metadata for ln in part],
        ids=ids,
        embeddings=vectors if part[0].embedding is not None else None,
        created_at=stamps if part[0].created_at is not None else None,
    )
    return len(part)


@dataclass(frozen=True)
class ImportedCollection:
    source: str
    target: str
    imported: int
    skipped_without_document: int


def import_chroma(
    path: str | Path,
    collection: str | None = None,
    to: str | None = None,
    *,
    database_url: str | None = None,
    embedder: str = "sentence-transformers",
    progress: bool = False,
) -> list[ImportedCollection]:
    """Copy a Chroma persistent store (ids, documents, metadatas, embeddings; no re-embedding).

    ``collection`` picks one Chroma collection (default: all); ``to`` names the target
    (default: the same name). Chroma's ids are kept exactly as they are (ids are opaque strings
    in both), so a re-run upserts instead of duplicating.
    """
    try:
        import chromadb
    except ImportError:
        raise ConfigurationError("import-chroma needs chromadb: pip install 'memorix-pg[chroma]'") from None
    from .api import MemoryAPI

    store = Path(path)
    if not store.is_dir():
        raise InvalidInput(f"no Chroma store at {store}")
    client = chromadb.PersistentClient(path=str(store))
    names = [c if isinstance(c, str) else c.name for c in client.list_collections()]
    if collection is not None:
        if collection not in names:
            raise InvalidInput(f"Chroma store {store} has no collection {collection!r} (it has {names})")
        names = [collection]
    if to is not None and len(names) != 1:
        raise InvalidInput("--to needs a single source collection (name it with --collection)")
    results = []
    for name in names:
        source = client.get_collection(name)
        target = MemoryAPI(embedder=embedder, collection_name=to or name, database_url=database_url)
        total = source.count()
        bar = _progress(progress, f"importing {name}", total)
        imported = skipped = 0
        for offset in range(0, total, CHUNK):
            page: Any = source.get(
                include=["documents", "metadatas", "embeddings"], limit=CHUNK, offset=offset
            )
            keep = [
                i for i, doc in enumerate(page["documents"] or []) if isinstance(doc, str) and doc.strip()
            ]
            skipped += len(page["ids"]) - len(keep)
            if keep:
                target.store_batch(
                    [page["documents"][i] for i in keep],
                    [page["metadatas"][i] for i in keep],
                    ids=[page["ids"][i] for i in keep],
                    embeddings=np.asarray(page["embeddings"], dtype=np.float32)[keep],
                )
                imported += len(keep)
            if bar is not None:
                bar.update(len(page["ids"]))
        if bar is not None:
            bar.close()
        results.append(ImportedCollection(name, to or name, imported, skipped))
    return results


def _progress(enabled: bool, desc: str, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="memory")
