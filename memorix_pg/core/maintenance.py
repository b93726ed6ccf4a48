"""Keeping a collection in shape: cleanup by age, expiry, archiving, compression, duplicates
and expression indexes on metadata. The statements live in the lifecycle package."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from .. import history as history_events
from .. import lifecycle
from ..catalog import open_collection
from ..errors import FilterError, InvalidInput
from ..filters import index_expression
from ..planner import planner_for
from ..scope import Scope
from ..steps import Call, Operation
from ..validation import check_collection_name
from ..vector_index import create_expression_index, metadata_index_name
from .arguments import check_int, positive_timedelta
from .base import CoreBase

__all__ = ["Maintenance"]


class Maintenance(CoreBase):
    """The calls that age, move, compress and index memories."""

    # -- lifecycle ----------------------------------------------------------------------

    def cleanup(self, older_than: timedelta, filter: Mapping[str, Any] | None) -> Call[int]:
        age = positive_timedelta(older_than, "older_than")
        f = self.compiled_filter(filter)
        return self.scoped(
            lambda scope: lifecycle.cleanup(scope, self.planner, f, age, unfiltered=not filter),
            operation="cleanup",
        )

    def count_older_than(self, older_than: timedelta, filter: Mapping[str, Any] | None) -> Call[int]:
        age = positive_timedelta(older_than, "older_than")
        f = self.compiled_filter(filter)
        return self.scoped(
            lambda scope: lifecycle.count_older_than(scope, f, age), idempotent=True, read=True
        )

    def purge_expired(self) -> Call[int]:
        def body(scope: Scope) -> Operation[int]:
            purged = yield from lifecycle.purge_expired(scope, self.planner)
            if self.history_retention is not None:
                yield from history_events.prune(scope, self.history_retention)
            return purged

        return self.scoped(body, operation="purge")

    def archive(self, filter: Mapping[str, Any], to: str) -> Call[int]:
        if filter is None:
            raise FilterError("archive needs a filter; pass {} to archive the whole collection")
        target_name = check_collection_name(to)
        if target_name == self.collection_name:
            raise InvalidInput(f"cannot archive collection {to!r} into itself")
        f = self.compiled_filter(filter)

        def body(scope: Scope) -> Operation[int]:
            info = scope.info
            # Created with this collection's embedder and options when absent; checked when present.
            target = yield from open_collection(
                target_name,
                self.embedding.name,
                self.embedding.dim,
                info.distance,
                info.precision,
                info.text_search_config,
            )
            return (
                yield from lifecycle.archive(scope, self.planner, planner_for(self.url, target.id), f, target)
            )

        return self.scoped(body, operation="archive")

    def compress(
        self,
        filter: Mapping[str, Any] | None,
        window: timedelta,
        summarizer: lifecycle.Summarizer | None,
        min_group: int,
        max_chars: int,
        group_by: Sequence[str],
    ) -> Call[lifecycle.CompressionReport]:
        size = positive_timedelta(window, "window")
        check_int(min_group, "min_group", 1)
        f = self.compiled_filter(filter)
        return self.scoped(
            lambda scope: lifecycle.compress(
                scope,
                self.planner,
                f,
                self.sealer,
                self.embedding,
                window=size,
                summarizer=summarizer,
                min_group=min_group,
                max_chars=max_chars,
                group_by=group_by,
            ),
            operation="compress",
        )

    def find_duplicates(
        self, threshold: float, limit: int, neighbours: int
    ) -> Call[list[lifecycle.DuplicatePair]]:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not -1.0 <= threshold <= 1.0
        ):
            raise InvalidInput(f"threshold must be a number in [-1, 1], got {threshold!r}")

        def body(scope: Scope) -> Operation[list[lifecycle.DuplicatePair]]:
            rows = yield from lifecycle.find_duplicates(scope, threshold, limit, neighbours)
            open_text = self.sealer.open_text
            return [
                lifecycle.DuplicatePair(a, b, float(s), open_text(a, ta), open_text(b, tb))
                for a, b, s, ta, tb in rows
            ]

        return self.scoped(body, idempotent=True, read=True)

    def create_index(self, key: str, type: str) -> Call[str]:
        index_expression(key, type)  # validates the key and the type before anything runs
        name = metadata_index_name(key, type)

        def body(scope: Scope) -> Operation[str]:
            yield from create_expression_index(name, lambda column: index_expression(key, type, column))
            return name

        return self.scoped(body, idempotent=True)
