"""What concerns a whole database rather than one collection: bringing its schema to the
latest revision once per process, listing its collections, forgetting a subject everywhere, and
the settings that name an operation and its actor in the history."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .. import lifecycle
from ..catalog import CollectionSummary, collection_summaries
from ..database import check_pgvector, get_engine
from ..errors import ConfigurationError, FilterError
from ..filters import compile_filter
from ..models import history
from ..statements import Filter, compile_where
from ..steps import Call, Operation, Query, offload, set_local
from .arguments import check_bool

__all__ = [
    "ACTOR_SETTING",
    "OPERATION_SETTING",
    "forget_database",
    "forget_everywhere",
    "labelled",
    "list_collections",
    "prepare_database",
    "subject",
]

_prepared: set[str] = set()
_prepared_lock = threading.Lock()


def prepare_database(url: str, auto_migrate: bool) -> None:
    """Once per URL per process: check pgvector is there and bring the schema to head."""
    with _prepared_lock:
        if url in _prepared:
            return
        from ..migrate import current_revision, head_revision, upgrade  # alembic: only when first used

        engine = get_engine(url)
        check_pgvector(engine, url)
        if current_revision(engine) != head_revision():
            if not auto_migrate:
                raise ConfigurationError(
                    "the memorix schema is not at the latest revision; run `memorix-pg migrate` "
                    "(or `alembic upgrade head`) with a role that may create tables, "
                    "or pass auto_migrate=True"
                )
            upgrade(url)
        _prepared.add(url)


def list_collections(url: str) -> Call[list[CollectionSummary]]:
    """The collections of the database at ``url`` (brought to the latest schema first, as
    ``MemoryAPI`` does), with their live memories counted."""

    def make() -> Operation[list[CollectionSummary]]:
        yield from offload(prepare_database, url, True)
        return (yield from collection_summaries())

    return Call(make, idempotent=True, scoped=False)


OPERATION_SETTING = "memorix.operation"
ACTOR_SETTING = "memorix.actor"


def labelled(operation: str | None) -> tuple[Query, ...]:
    """The setting the history triggers (migration 0007) read the operation's name from."""
    return (set_local(OPERATION_SETTING, operation),) if operation is not None else ()


def subject(filter: Mapping[str, Any] | None) -> Filter:
    if not filter or not isinstance(filter, Mapping):
        raise FilterError(
            "forget needs a non-empty filter naming the subject, e.g. {'user_id': 'u1'} "
            "(to delete everything, drop the collections)"
        )
    return compile_where(filter)


def forget_everywhere(
    url: str, filter: Mapping[str, Any] | None, tenant: str | None, dry_run: bool
) -> Call[lifecycle.ForgetReceipt]:
    """Every memory matching ``filter`` in every collection of the database (of ``tenant``
    only, when given), and the summaries built from them: one statement."""
    f = subject(filter)
    in_history = compile_filter(filter, history.c.metadata)
    check_bool(dry_run, "dry_run")

    def make() -> Operation[lifecycle.ForgetReceipt]:
        yield from offload(prepare_database, url, True)
        return (
            yield from lifecycle.forget(
                f, in_history, tenant=tenant, every_tenant=True, collection_id=None, dry_run=dry_run
            )
        )

    return Call(make, settings=labelled("forget"))


def forget_database(url: str) -> None:
    """Check and migrate ``url`` again on next use (after it was dropped and recreated)."""
    with _prepared_lock:
        _prepared.discard(url)
