"""Writing memories: store_batch, update, delete, delete_by_filter, set_ttl and rotate_key,
their arguments checked here and their statements in writes.py / ingest.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import numpy as np
import numpy.typing as npt

from .. import reembed as reembedding
from .. import writes
from ..crypto import Sealer, TextCipher
from ..errors import FilterError, InvalidInput, MemoryNotFound
from ..memory import Memory
from ..scope import Scope
from ..steps import Call, Operation, offload
from ..validation import (
    check_batch_lengths,
    check_embeddings,
    check_id,
    check_text,
    check_timestamp,
    clean_metadata,
    new_id,
)
from .arguments import check_int, expiry
from .base import CoreBase, done, nothing

__all__ = ["Writing"]


class Writing(CoreBase):
    """The calls that write memories."""

    # -- writing ------------------------------------------------------------------------

    def store_batch(
        self,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None,
        ids: Sequence[str | UUID] | None,
        embeddings: Sequence[Sequence[float]] | npt.NDArray[np.floating[Any]] | None,
        ttl: timedelta | None,
        dedupe: bool | None,
        progress: bool,
        created_at: Sequence[datetime] | None,
    ) -> Call[list[str]]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInput("texts must be a list of str")
        check_batch_lengths(texts, metadatas=metadatas, ids=ids, embeddings=embeddings, created_at=created_at)
        times = (
            [check_timestamp(t, f"created_at[{i}]") for i, t in enumerate(created_at)] if created_at else None
        )
        expires_at = expiry(ttl)
        if not texts:
            return Call(nothing)
        clean_texts = [check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
        clean_metas = [
            clean_metadata(m, f"metadatas[{i}]") for i, m in enumerate(metadatas or [None] * len(texts))
        ]
        row_ids = [check_id(v, f"ids[{i}]") for i, v in enumerate(ids)] if ids else [new_id() for _ in texts]
        first: dict[str, int] = {}
        for i, row_id in enumerate(row_ids):
            if (j := first.setdefault(row_id, i)) != i:
                raise InvalidInput(f"ids[{i}] repeats ids[{j}] ({row_id!r:.80}): the same id more than once")
        vectors = check_embeddings(embeddings, self.embedding.dim) if embeddings is not None else None
        new = writes.NewMemories(
            texts=clean_texts,
            metadatas=clean_metas,
            ids=row_ids,
            hashes=[self.sealer.content_hash(t) for t in clean_texts],
            vectors=vectors,
            created_at=times,
            expires_at=expires_at,
            upsert=ids is not None,
        )
        deduping = self.dedupe if dedupe is None else dedupe

        def body(scope: Scope) -> Operation[list[str]]:
            if self.schema is not None:
                for i, m in enumerate(clean_metas):
                    self.schema.check(m, i, f"metadatas[{i}]")
            stored = yield from writes.store(
                scope, self.planner, new, self.sealer, self.embedding, dedupe=deduping, progress=progress
            )
            if self.pending is not None:
                yield from reembedding.follow(self.pending, scope.tenant, stored, clean_texts, new.hashes)
            return stored

        return self.scoped(body)

    def update(self, id: str | UUID, text: str | None, metadata: Mapping[str, Any] | None) -> Call[Memory]:
        row_id = check_id(id)
        patch = clean_metadata(metadata)
        removed = [k for k, v in patch.items() if v is None]
        kept = self.sealer.seal_metadata(row_id, {k: v for k, v in patch.items() if v is not None})
        new_text = check_text(text) if text is not None else None

        def body(scope: Scope) -> Operation[Memory]:
            if self.schema is not None:
                current = yield from writes.locked_metadata(scope, row_id)
                if current is None:
                    raise MemoryNotFound(
                        f"no memory with id {row_id!r} in collection {self.collection_name!r}"
                    )
                merged = self.sealer.open_metadata(row_id, current)
                merged.update((k, v) for k, v in patch.items() if v is not None)
                for key in removed:
                    merged.pop(key, None)
                self.schema.check(merged, 0, "metadata")
            replacement = None
            if new_text is not None:
                vector = (yield from offload(self.embedding.embed, [new_text]))[0]
                replacement = (
                    self.sealer.seal_text(row_id, new_text),
                    vector,
                    self.sealer.content_hash(new_text),
                )
            row = yield from writes.update(scope, row_id, kept, removed, replacement)
            if row is None:
                raise MemoryNotFound(f"no memory with id {row_id!r} in collection {self.collection_name!r}")
            if self.pending is not None and replacement is not None:
                yield from reembedding.follow(
                    self.pending, scope.tenant, [row_id], [new_text or ""], [replacement[2]]
                )
            return self.memory(row)

        return self.scoped(body)

    def delete(self, id: str | UUID) -> Call[bool]:
        row_id = check_id(id)
        return self.scoped(lambda scope: writes.delete(scope, self.planner, row_id))

    def delete_by_filter(self, filter: Mapping[str, Any]) -> Call[int]:
        if filter is None:
            raise FilterError(
                "delete_by_filter needs a filter; pass {} to delete every memory in the collection"
            )
        f = self.compiled_filter(filter)
        return self.scoped(
            lambda scope: writes.delete_where(scope, self.planner, scope.live(f), f, "filter", {})
        )

    def set_ttl(self, ids: Sequence[str], ttl: timedelta | None) -> Call[int]:
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise InvalidInput(f"ids must be a list of ids, got {type(ids).__name__}")
        row_ids = [check_id(v, f"ids[{i}]") for i, v in enumerate(ids)]
        expires_at = expiry(ttl)
        if not row_ids:
            return Call(lambda: done(0))
        return self.scoped(lambda scope: writes.set_expiry(scope, row_ids, expires_at), operation="ttl")

    def rotate_key(
        self, new_key: str | bytes | None, batch: int, encrypted_metadata: Sequence[str] | None
    ) -> Call[int]:
        check_int(batch, "batch", 1)
        keys = tuple(encrypted_metadata) if encrypted_metadata is not None else self.sealer.encrypted_keys
        new = Sealer(TextCipher(new_key), keys) if new_key is not None else Sealer(None)

        def body(scope: Scope) -> Operation[int]:
            rewritten = yield from writes.rotate(scope, self.sealer, new, batch)
            self.sealer = new
            return rewritten

        return self.scoped(body, operation="rotate_key")
