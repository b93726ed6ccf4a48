"""Compression: each time window's matching memories replaced by one summary memory."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from psycopg import sql

from ..crypto import Sealer
from ..embedding import Embedding
from ..ingest import MemoryRows, write_memories
from ..models import SCHEMA, memories
from ..planner import Planner
from ..scope import Scope
from ..statements import Filter, adhoc, cached
from ..steps import Operation, Query, execute, fetch_all, offload
from ..validation import check_text, clean_metadata, new_id
from ..vector_index import read_vector, stored_vectors
from .summary import CompressionReport, Summarizer, extractive_summary, shared_metadata, window_query

__all__ = ["compress"]

# Ids are unique per tenant and collection only: both are part of the key.
_DELETE_IDS = sql.SQL(
    "DELETE FROM {} WHERE tenant = %(tenant)s AND collection_id = %(cid)s AND id = ANY(%(ids)s::text[])"
).format(sql.Identifier(SCHEMA, "memories"))
_NOT_SUMMARY = sa.not_(
    memories.c.metadata.op("@>", is_comparison=True)(sa.literal_column("""'{"compressed": true}'::jsonb"""))
)


def _window_rows(scope: Scope, f: Filter, ids: list[Any]) -> Query:
    info = scope.info
    return cached(
        ("compress rows", scope.key),
        lambda _: (
            sa.select(
                memories.c.id,
                memories.c.text,
                memories.c.metadata,
                stored_vectors(info).label("embedding"),
                memories.c.expires_at,
            )
            .where(
                scope.live(f),
                _NOT_SUMMARY,
                memories.c.id == sa.any_(sa.bindparam("ids", type_=sa.ARRAY(sa.Text()))),
            )
            .order_by(memories.c.created_at, memories.c.id)
            .with_for_update()
        ),
        f,
        {**scope.params, "ids": ids},
    )


def _summarize(
    texts: list[str], rows: list[tuple[Any, ...]], summarizer: Summarizer | None, max_chars: int
) -> str:
    if summarizer is None:
        vectors = np.stack([read_vector(r[3]) for r in rows])
        return extractive_summary(texts, vectors, max_chars)
    return summarizer(texts)


def compress(
    scope: Scope,
    planner: Planner,
    f: Filter,
    sealer: Sealer,
    embedding: Embedding,
    *,
    window: timedelta,
    summarizer: Summarizer | None,
    min_group: int,
    max_chars: int,
    group_by: Sequence[str],
) -> Operation[CompressionReport]:
    """Windows are ``date_bin(window, created_at)`` groups of at least ``min_group`` memories;
    memories with different ``group_by`` values never share one. Each window is stored and its
    originals deleted in one transaction."""
    where = sa.and_(scope.live(f), _NOT_SUMMARY)
    windows = yield from fetch_all(
        adhoc(window_query(where, window, min_group, group_by), scope.params), final=True
    )
    summary_ids: list[str] = []
    compressed = 0
    for window_start, ids in windows:
        rows = yield from fetch_all(_window_rows(scope, f, list(ids)))
        if len(rows) < min_group:
            yield from execute(final=True)
            continue  # changed since we looked
        opened = [(sealer.open_text(r[0], r[1]), sealer.open_metadata(r[0], dict(r[2]))) for r in rows]
        texts = [text for text, _ in opened]
        summary = check_text(_summarize(texts, rows, summarizer, max_chars), "summarizer result")
        meta = {
            **shared_metadata([m for _, m in opened]),
            "compressed": True,
            "original_count": len(rows),
            "window_start": window_start.isoformat(),
            "window_end": (window_start + window).isoformat(),
            "source_ids": [r[0] for r in rows],
        }
        summary_id = new_id()
        vector = yield from offload(embedding.embed, [summary])
        new = MemoryRows(
            ids=[summary_id],
            texts=[sealer.seal_text(summary_id, summary)],
            vectors=vector,
            metadatas=[sealer.seal_metadata(summary_id, clean_metadata(meta))],
            hashes=[sealer.content_hash(summary)],
        )
        # A summary of memories that all expire lives as long as the last of them.
        expires = None if any(r[4] is None for r in rows) else max(r[4] for r in rows)
        yield from write_memories(scope.info, new, expires_at=expires, upsert=False, tenant=scope.tenant)
        delete = Query(_DELETE_IDS, {**scope.params, "cid": scope.info.id, "ids": [r[0] for r in rows]})
        yield from execute(delete, final=True)
        summary_ids.append(summary_id)
        compressed += len(rows)
    planner.changed_rows(compressed)
    return CompressionReport(windows=len(summary_ids), compressed=compressed, summary_ids=summary_ids)
