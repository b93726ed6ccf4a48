"""Reading memories without ranking them: get, get_many, page, count and stats."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from .. import lifecycle, reads
from ..errors import InvalidInput
from ..memory import Memory
from ..scope import Scope
from ..steps import Call, Operation
from ..validation import check_id
from .arguments import check_bool, check_int
from .base import CoreBase, no_memories

__all__ = ["MAX_TOP_K", "Reading"]

MAX_TOP_K = 2**31 - 1  # LIMIT takes a bigint; nothing sensible asks for more than int4


class Reading(CoreBase):
    """The calls that read memories by id, filter or order."""

    # -- reading ------------------------------------------------------------------------

    def get(self, id: str | UUID, include_embeddings: bool = False) -> Call[Memory | None]:
        row_id = check_id(id)
        vectors = check_bool(include_embeddings, "include_embeddings")

        def body(scope: Scope) -> Operation[Memory | None]:
            rows = yield from reads.get(scope, row_id, vectors)
            return self.read_row(rows[0], vectors) if rows else None

        return self.scoped(body, idempotent=True, read=True)

    def get_many(self, ids: Sequence[str | UUID], include_embeddings: bool = False) -> Call[list[Memory]]:
        """The memories that exist among ``ids``, in their order (an id given twice comes back
        twice), missing ones skipped: one statement."""
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
            raise InvalidInput(f"ids must be a list of ids, got {type(ids).__name__}")
        row_ids = [check_id(v, f"ids[{i}]") for i, v in enumerate(ids)]
        vectors = check_bool(include_embeddings, "include_embeddings")
        if not row_ids:
            return Call(no_memories)

        def body(scope: Scope) -> Operation[list[Memory]]:
            rows = yield from reads.get_many(scope, list(dict.fromkeys(row_ids)), vectors)
            found = {row[0]: self.read_row(row, vectors) for row in rows}
            return [found[i] for i in row_ids if i in found]

        return self.scoped(body, idempotent=True, read=True)

    def page(
        self,
        filter: Mapping[str, Any] | None,
        limit: int,
        cursor: str | UUID | None,
        offset: int,
        order: str,
        include_embeddings: bool,
    ) -> Call[list[Memory]]:
        check_int(limit, "limit", 1, MAX_TOP_K)
        check_int(offset, "offset", 0, MAX_TOP_K)
        if order not in reads.ORDERS:
            raise InvalidInput(f"order must be one of {', '.join(map(repr, reads.ORDERS))}, got {order!r}")
        after = check_id(cursor, "cursor") if cursor is not None else None
        vectors = check_bool(include_embeddings, "include_embeddings")
        f = self.compiled_filter(filter)

        def body(scope: Scope) -> Operation[list[Memory]]:
            rows = yield from reads.page(scope, f, limit, offset, after, order, vectors)
            if not rows and after is not None and not (yield from reads.exists(scope, after)):
                # Keyset paging needs the cursor's row: without it the page would silently be
                # empty, and a caller would take that for the end of the collection.
                raise InvalidInput(
                    f"cursor {after!r:.80} is not the id of a memory of collection "
                    f"{self.collection_name!r} (was it deleted since the previous page?)"
                )
            return [self.memory(r, embedding=r[5], expires_at=r[6]) for r in rows]

        return self.scoped(body, idempotent=True, read=True)

    def count(self, filter: Mapping[str, Any] | None) -> Call[int]:
        f = self.compiled_filter(filter)
        return self.scoped(lambda scope: reads.count(scope, f), idempotent=True, read=True)

    def stats(self, group_by: str | None, filter: Mapping[str, Any] | None) -> Call[dict[str, Any]]:
        f = self.compiled_filter(filter)
        if group_by is None:

            def total(scope: Scope) -> Operation[dict[str, Any]]:
                return {"total": (yield from reads.count(scope, f)), "groups": {}}

            return self.scoped(total, idempotent=True, read=True)
        self.sealer.check_group_key(group_by)

        def grouped(scope: Scope) -> Operation[dict[str, Any]]:
            groups = yield from lifecycle.group_counts(scope, group_by, f)
            return {"total": sum(groups.values()), "groups": groups}

        return self.scoped(grouped, idempotent=True, read=True)
