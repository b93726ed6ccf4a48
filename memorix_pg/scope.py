"""Which rows a call may see: one collection, one tenant (or none), not expired.

Every statement the core runs starts from :class:`Scope`. The collection id is rendered inline
(the partial HNSW index's predicate must be provable, see vector_index.py); the tenant is a
bound parameter, so the statements of every tenant share one prepared text. "No tenant" is
stored as ``''`` (``NO_TENANT``; migration 0010), so every statement names its tenant with
``tenant = $1``: the explicit predicate that routes a Citus query to one shard, and prunes a
table hash-partitioned by tenant to one partition. The tenant
predicate is the library's own check; row-level security enforces the same for roles that do
not own the table, through the ``memorix.tenant`` setting each transaction sets with
``SET LOCAL``.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .models import memories
from .statements import Filter
from .steps import Query, set_local
from .vector_index import CollectionInfo, collection_literal

__all__ = ["NO_TENANT", "TENANT_SETTING", "Scope", "live_predicate", "stored_tenant", "tenant_settings"]

TENANT_SETTING = "memorix.tenant"
NO_TENANT = ""  # the tenant column's value for ``tenant=None``


def stored_tenant(tenant: str | None) -> str:
    """The tenant column's value for the library's ``tenant`` (None: no tenant)."""
    return NO_TENANT if tenant is None else tenant


def live_predicate(table: Any = memories) -> sa.ColumnElement[bool]:
    """Not expired: an expired memory is never returned or counted."""
    return sa.or_(table.c.expires_at.is_(None), table.c.expires_at > sa.func.now())


@dataclass(frozen=True)
class Scope:
    info: CollectionInfo
    tenant: str | None

    @property
    def key(self) -> Hashable:
        """What a statement's text depends on: the collection, and whether a tenant is set."""
        return (self.info, self.tenant is None)

    @property
    def params(self) -> dict[str, Any]:
        return {"tenant": stored_tenant(self.tenant)}

    def rows(self, table: Any = memories) -> sa.ColumnElement[bool]:
        """This collection's rows of this tenant (or without a tenant, when none is set)."""
        return sa.and_(table.c.collection_id == collection_literal(self.info), self.tenant_rows(table))

    def tenant_rows(self, table: Any = memories) -> sa.ColumnElement[bool]:
        """``table.tenant = :tenant``: every statement and join names the tenant explicitly."""
        column: sa.ColumnElement[Any] = table.c.tenant
        return column == sa.bindparam("tenant", type_=sa.Text())

    def live(self, where: Filter | sa.ColumnElement[bool] | None = None) -> sa.ColumnElement[bool]:
        """This collection's live memories of this tenant, matching ``where``."""
        expression = where.expression if isinstance(where, Filter) else where
        parts = [self.rows(), live_predicate()]
        return sa.and_(*parts, expression) if expression is not None else sa.and_(*parts)


def tenant_settings(tenant: str | None) -> tuple[Query, ...]:
    """The settings that open each of the tenant's transactions (RLS reads ``memorix.tenant``)."""
    return () if tenant is None else (set_local(TENANT_SETTING, tenant),)
