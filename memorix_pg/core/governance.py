"""Governance: forgetting a subject, the history of changes, metadata schemas, re-embedding."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from .. import history as history_events
from .. import lifecycle, reads
from .. import reembed as reembedding
from ..catalog import write_metadata_schema
from ..embedders import Embedder, resolve_embedder
from ..embedding import Embedding
from ..errors import InvalidInput
from ..filters import compile_filter
from ..models import history
from ..schemas import MetadataSchema, SchemaProblem
from ..scope import Scope
from ..steps import Call, Operation
from ..validation import check_id, check_timestamp
from .arguments import check_bool, check_int, positive_timedelta
from .base import CoreBase
from .database import subject
from .reading import MAX_TOP_K

__all__ = ["Governance"]


class Governance(CoreBase):
    """The calls that forget, keep history and hold metadata to a schema."""

    # -- governance ---------------------------------------------------------------------

    def forget(
        self, filter: Mapping[str, Any] | None, all_collections: bool, dry_run: bool
    ) -> Call[lifecycle.ForgetReceipt]:
        f = subject(filter)
        self.sealer.check_filter(filter)
        everywhere = check_bool(all_collections, "all_collections")
        check_bool(dry_run, "dry_run")

        def body(scope: Scope) -> Operation[lifecycle.ForgetReceipt]:
            receipt = yield from lifecycle.forget(
                f,
                compile_filter(filter, history.c.metadata),
                tenant=self.tenant,
                every_tenant=False,
                collection_id=None if everywhere else scope.info.id,
                dry_run=dry_run,
            )
            self.planner.changed_rows(receipt.memories.get(self.collection_name, 0))
            return receipt

        return self.scoped(body, operation="forget")

    def history(
        self, id: str | UUID | None, filter: Mapping[str, Any] | None, since: datetime | None, limit: int
    ) -> Call[list[history_events.HistoryEvent]]:
        row_id = check_id(id) if id is not None else None
        if row_id is not None and filter is not None:
            raise InvalidInput("history takes an id or a filter, not both")
        check_int(limit, "limit", 1, MAX_TOP_K)
        after = check_timestamp(since, "since") if since is not None else None
        where = compile_filter(filter, history.c.metadata)

        def body(scope: Scope) -> Operation[list[history_events.HistoryEvent]]:
            if row_id is not None:
                rows = yield from history_events.events_of(scope, row_id, limit)
            else:
                rows = yield from history_events.events(scope, where, after, limit)
            return [self._event(r) for r in rows]

        return self.scoped(body, idempotent=True, read=True)

    def _event(self, row: Sequence[Any]) -> history_events.HistoryEvent:
        event = history_events.HistoryEvent(*row)
        if event.metadata is not None and event.memory_id is not None:
            opened = self.sealer.open_metadata(event.memory_id, dict(event.metadata))
            event = dataclasses.replace(event, metadata=opened)
        return event

    def prune_history(self, older_than: timedelta) -> Call[int]:
        age = positive_timedelta(older_than, "older_than")
        return self.scoped(lambda scope: history_events.prune(scope, age))

    def set_schema(self, schema: Mapping[str, Any] | None) -> Call[None]:
        checked = MetadataSchema(schema) if schema is not None else None

        def body(scope: Scope) -> Operation[None]:
            yield from write_metadata_schema(scope.info, checked.document if checked else None)
            self.schema = checked

        return self.scoped(body)

    def get_schema(self) -> Call[dict[str, Any] | None]:
        def body(scope: Scope) -> Operation[dict[str, Any] | None]:
            return dict(self.schema.document) if self.schema is not None else None
            yield  # pragma: no cover - makes this a generator

        return self.scoped(body, idempotent=True, read=True)

    def validate_existing(self) -> Call[list[SchemaProblem]]:
        def body(scope: Scope) -> Operation[list[SchemaProblem]]:
            if self.schema is None:
                return []
            rows = yield from reads.all_metadata(scope)
            problems: list[SchemaProblem] = []
            for row_id, metadata in rows:
                problems += self.schema.problems(row_id, self.sealer.open_metadata(row_id, dict(metadata)))
            return problems

        return self.scoped(body, idempotent=True, read=True)

    def reembed(
        self, embedder: str | Embedder, batch: int, limit: int | None, progress: bool
    ) -> Call[reembedding.ReembedReport]:
        """Re-embed the whole collection (every tenant's memories) with ``embedder``: see reembed.py."""
        reembedding.check_untenanted(self.tenant)
        check_int(batch, "batch", 1)
        if limit is not None:
            check_int(limit, "limit", 1)
        check_bool(progress, "progress")
        target = Embedding(resolve_embedder(embedder), self.embedding.info().maxsize)

        def body(scope: Scope) -> Operation[reembedding.ReembedReport]:
            report = yield from reembedding.reembed(
                scope.info, self.sealer, target, batch=batch, limit=limit, progress=progress
            )
            if report.switched:  # this object now writes and searches with the new embedder
                self.embedding = target
            self.info = None  # opened again: the run in progress (if any) is read then
            return report

        return self.scoped(body, operation=reembedding.OPERATION)
