"""The receipt :func:`~memorix_pg.move.move_tenant` returns."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MoveReceipt"]


@dataclass(frozen=True)
class MoveReceipt:
    """What :func:`move_tenant` did: memories moved per collection name, history events
    copied, the seconds it took, and whether the tenant was deleted at the source."""

    tenant: str
    collections: dict[str, int]
    history_events: int
    seconds: float
    source_cleaned: bool

    @property
    def total(self) -> int:
        return sum(self.collections.values())
