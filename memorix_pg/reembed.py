"""Re-embedding a collection in place, online, resumable, switched atomically.

A collection keeps its vectors in one of two slots (``collections.vector_slot``, migration
0009). A run fills the other slot while reads and writes keep using the current one:

1. **fill**: batches in (tenant, id) order of the memories whose new-slot vector is missing
   (two tenants may hold the same id). Each batch is one transaction that writes the vectors and
   the run's progress (``reembed_runs.after_id``: the JSON array ``[tenant, id]`` of its last
   row), so a run killed at any point resumes after its last committed batch. A vector is written only
   if the memory's content hash is still the one that was embedded; a text changed later clears
   the new vector (trigger ``reembed_stale``). A process that opened the collection during the
   run computes both vectors of what it writes (:func:`follow`); one that opened it before
   writes the old vector only. A pass from the first id picks those up, until a pass finds none.
2. **index**: the new slot's HNSW index, built CONCURRENTLY beside the old one.
3. **switch**: one transaction, with writes to ``memories`` held off (``LOCK ... IN SHARE
   MODE``) for its length: the memories that still lack a new vector get one, then the
   collection's embedder, dimension and slot change in one UPDATE. Readers see the old
   collection or the new one, never a mix.
4. **clear**: the old slot's index is dropped CONCURRENTLY and its vectors set to NULL in
   batches (recording no history: the ``reembed`` event of each memory was written by the
   statement that filled its new vector). Then the run's row goes.

A dimension change needs nothing more: the vector columns are untyped and each index casts to
its collection's dimension (see :mod:`memorix_pg.vector_index`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import sql

from .crypto import PREFIX, Sealer
from .embedders import resolve_embedder
from .embedding import Embedding
from .errors import ConfigurationError, EmbedderMismatch, PermissionDenied
from .index_builds import drop_index
from .models import SCHEMA
from .scope import stored_tenant
from .steps import Admin, Operation, Query, ensure, execute, fetch_all, fetch_one, offload, set_local
from .vector_index import (
    CollectionInfo,
    embedding_column_name,
    index_name,
    rebuild_concurrently,
    vector_value,
)

__all__ = [
    "CLEAR_OPERATION",
    "OPERATION",
    "Pending",
    "ReembedReport",
    "check_untenanted",
    "follow",
    "pending_run",
    "reembed",
]

OPERATION = "reembed"  # the history's name for a memory given its new vector
CLEAR_OPERATION = "reembed-clear"  # clearing the old slot: no event (see migration 0009)
OPERATION_SETTING = "memorix.operation"  # the label the history triggers read (migration 0007)
REEMBED_LOCK_SPACE = 0x726565  # first key of the advisory lock one run of a collection holds

_MEMORIES = sql.Identifier(SCHEMA, "memories")
_RUNS = sql.Identifier(SCHEMA, "reembed_runs")
_COLLECTIONS = sql.Identifier(SCHEMA, "collections")


@dataclass(frozen=True)
class ReembedReport:
    """What one ``reembed`` call did.

    ``embedded``: memories given their new vector by this call. ``resumed``: it continued a run
    an earlier call started (interrupted, or stopped at its ``limit``). ``switched``: the
    collection now uses the new embedder; False when the call stopped at ``limit`` (call again
    to continue).
    """

    collection: str
    embedder: str
    dimensions: int
    embedded: int
    resumed: bool
    switched: bool


def check_untenanted(tenant: str | None) -> None:
    """A run covers every tenant's memories of the collection: not for a tenant's MemoryAPI."""
    if tenant is not None:
        raise PermissionDenied(
            "re-embedding rewrites every tenant's memories of the collection: call it on a "
            "MemoryAPI without tenant, as the role that owns the schema"
        )


def _vectors(info: CollectionInfo) -> tuple[sql.Identifier, sql.Identifier]:
    """Both columns of the slot of ``info`` (full and half precision)."""
    full = dataclasses.replace(info, precision="full")
    half = dataclasses.replace(info, precision="half")
    return sql.Identifier(embedding_column_name(full)), sql.Identifier(embedding_column_name(half))


def _lock(function: str, info: CollectionInfo) -> Query:
    return Query(
        sql.SQL("SELECT {}(%(space)s, %(id)s)").format(sql.Identifier(function)),
        {"space": REEMBED_LOCK_SPACE, "id": int(info.id)},
    )


def _admin(*queries: Query) -> Operation[Any]:
    results = yield Admin(queries)
    return results


def reembed(
    info: CollectionInfo,
    sealer: Sealer,
    target: Embedding,
    *,
    batch: int,
    limit: int | None,
    progress: bool,
) -> Operation[ReembedReport]:
    """Re-embed the collection with ``target`` (or resume the run in progress), one run at a time."""
    locked = (yield from _admin(_lock("pg_try_advisory_lock", info)))[0].rows[0][0]
    if not locked:
        raise ConfigurationError(f"collection {info.name!r} is being re-embedded by another process already")
    return (
        yield from ensure(
            _reembed(info, sealer, target, batch, limit, progress),
            lambda: _admin(_lock("pg_advisory_unlock", info)),
        )
    )


def _reembed(
    info: CollectionInfo, sealer: Sealer, target: Embedding, batch: int, limit: int | None, progress: bool
) -> Operation[ReembedReport]:
    select_run = Query(
        sql.SQL(
            "SELECT c.embedder, c.dimension, c.vector_slot, r.embedder, r.dimension, r.slot, r.phase "
            "FROM {} c LEFT JOIN {} r ON r.collection_id = c.id WHERE c.id = %(cid)s"
        ).format(_COLLECTIONS, _RUNS),
        {"cid": info.id},
    )
    found = yield from fetch_one(select_run, final=True)
    if found is None or tuple(found[:3]) != (info.embedder, info.dimension, info.slot):
        raise EmbedderMismatch(
            f"collection {info.name!r} was dropped or re-embedded by another process since this object "
            "opened it; make a new MemoryAPI with its current embedder"
        )
    run = found[3:] if found[3] is not None else None
    if run is not None and (run[0], run[1]) != (target.name, target.dim):
        raise ConfigurationError(
            f"collection {info.name!r} is being re-embedded with {run[0]!r} ({run[1]} dims); "
            f"finish that run first (reembed({run[0]!r})) before re-embedding with {target.name!r}"
        )
    if run is None:
        yield from _check_readable(info, sealer)
        new = dataclasses.replace(info, embedder=target.name, dimension=target.dim, slot=1 - info.slot)
        yield from drop_index(index_name(new))  # an old run's leftover
        start = sql.SQL(
            "INSERT INTO {} (collection_id, embedder, dimension, slot) "
            "VALUES (%(cid)s, %(embedder)s, %(dim)s, %(slot)s)"
        ).format(_RUNS)
        params = {"cid": info.id, "embedder": target.name, "dim": target.dim, "slot": new.slot}
        yield from execute(Query(start, params), final=True)
        phase = "filling"
    else:
        new = dataclasses.replace(info, embedder=target.name, dimension=target.dim, slot=int(run[2]))
        phase = str(run[3])
    report = ReembedReport(info.name, target.name, target.dim, 0, run is not None, False)
    if phase == "filling":
        embedded = yield from _fill(new, sealer, target, batch, limit, progress)
        report = dataclasses.replace(report, embedded=embedded)
        if limit is not None and embedded >= limit:
            left = yield from _missing(new, 1)
            yield from execute(final=True)
            if left:
                return report
        count = sql.SQL("SELECT count(*) FROM {} WHERE collection_id = %(cid)s").format(_MEMORIES)
        rows = int((yield from fetch_all(Query(count, {"cid": info.id}), final=True))[0][0])
        yield from rebuild_concurrently(new, rows)
        report = dataclasses.replace(report, embedded=embedded + (yield from _switch(new, sealer, target)))
    yield from _clear(new, batch)
    return dataclasses.replace(report, switched=True)


def _check_readable(info: CollectionInfo, sealer: Sealer) -> Operation[None]:
    """Encrypted texts need the key to be embedded again: checked before anything is written."""
    probe = sql.SQL(
        "SELECT id, text FROM {} WHERE collection_id = %(cid)s AND left(text, %(n)s) = %(prefix)s LIMIT 1"
    ).format(_MEMORIES)
    row = yield from fetch_one(Query(probe, {"cid": info.id, "n": len(PREFIX), "prefix": PREFIX}), final=True)
    if row is None:
        return None
    if sealer.cipher is None:
        raise ConfigurationError(
            f"collection {info.name!r} holds encrypted texts: re-embedding reads them, so open it with "
            "its encryption_key"
        )
    sealer.open_text(row[0], row[1])  # DecryptionError for a wrong key
    return None


def _missing_where(new: CollectionInfo) -> sql.Composed:
    full, half = _vectors(new)
    return sql.SQL("collection_id = %(cid)s AND {} IS NULL AND {} IS NULL").format(full, half)


_START = ("", "")  # before every (tenant, id): ids are never empty


def _marker(after: tuple[str, str]) -> str:
    """A position as ``reembed_runs.after_id`` keeps it (the column predates tenants' own ids)."""
    return json.dumps(list(after))


def _position(marker: str) -> tuple[str, str] | None:
    """The (tenant, id) a run's marker names; None for ``''`` or a bare id an older version wrote,
    which cannot say whose id it was: the pass starts from the first row. Any position read
    is safe: the fill ends with a pass from the first row, and only missing vectors are written."""
    try:
        found = json.loads(marker)
    except ValueError:
        return None
    if isinstance(found, list) and len(found) == 2 and all(isinstance(part, str) for part in found):
        return (found[0], found[1])
    return None


def _missing(
    new: CollectionInfo, n: int, after: tuple[str, str] = _START
) -> Operation[list[tuple[Any, ...]]]:
    """Up to ``n`` memories after ``after`` (tenant, id) that lack their new vector, in that
    order. The row comparison holds the collection too, so the primary key's index serves it."""
    query = sql.SQL(
        "SELECT tenant, id, text, content_hash FROM {} WHERE {} "
        "AND (tenant, collection_id, id) > (%(after_tenant)s, %(cid)s, %(after)s) "
        "ORDER BY tenant, collection_id, id LIMIT %(n)s"
    ).format(_MEMORIES, _missing_where(new))
    params = {"cid": new.id, "after_tenant": after[0], "after": after[1], "n": n}
    return (yield from fetch_all(Query(query, params)))


def _write_vectors(
    new: CollectionInfo, sealer: Sealer, target: Embedding, rows: Sequence[tuple[Any, ...]]
) -> Operation[int]:
    """Embed ``rows`` (tenant, id, stored text, hash) and write their new vectors (one UPDATE):
    those whose text did not change meanwhile."""
    texts = [sealer.open_text(row_id, text) for _, row_id, text, _ in rows]
    vectors = yield from offload(target.embed, texts)
    tenants, ids, hashes = [row[0] for row in rows], [row[1] for row in rows], [row[3] for row in rows]
    return (yield from _store_vectors(new, tenants, ids, vectors, hashes))


def _store_vectors(
    new: CollectionInfo,
    tenants: Sequence[str],
    ids: Sequence[str],
    vectors: npt.NDArray[np.float32],
    hashes: Sequence[bytes],
) -> Operation[int]:
    """The rows are (tenant, id): another tenant's memory of the same id is not this one."""
    column = sql.Identifier(embedding_column_name(new))
    kind = sql.SQL("halfvec[]" if new.precision == "half" else "vector[]")
    update = sql.SQL(
        "UPDATE {table} AS m SET {column} = u.vector "
        "FROM unnest(%(tenants)s::text[], %(ids)s::text[], %(vectors)b::{kind}, %(hashes)s::bytea[]) "
        "AS u(tenant, id, vector, hash) "
        "WHERE m.tenant = u.tenant AND m.collection_id = %(cid)s AND m.id = u.id "
        "AND m.content_hash = u.hash AND m.{column} IS NULL"
    ).format(table=_MEMORIES, column=column, kind=kind)
    params = {
        "tenants": list(tenants),
        "ids": list(ids),
        "vectors": [vector_value(new, v) for v in vectors],
        "hashes": list(hashes),
        "cid": new.id,
    }
    return int((yield from execute(Query(update, params)))[0].rowcount)


@dataclass(frozen=True)
class Pending:
    """A run filling the collection's other slot: this process's writes compute its vectors too."""

    target: CollectionInfo  # the collection as it will be: new embedder, dimension and slot
    embedding: Embedding


def pending_run(info: CollectionInfo) -> Operation[Pending | None]:
    """The run filling the collection, read when it is opened (so writes cost nothing more when
    none is). None too when its embedder is not one a name gives (a custom object): the run
    then embeds what this process writes."""
    query = sql.SQL(
        "SELECT embedder, dimension, slot FROM {} WHERE collection_id = %(cid)s AND phase = 'filling'"
    ).format(_RUNS)
    row = yield from fetch_one(Query(query, {"cid": info.id}), final=True)
    if row is None:
        return None
    try:
        embedder = resolve_embedder(str(row[0]))
    except ConfigurationError:
        return None
    if embedder.name != row[0] or embedder.dim != row[1]:
        return None
    target = dataclasses.replace(info, embedder=str(row[0]), dimension=int(row[1]), slot=int(row[2]))
    return Pending(target, Embedding(embedder, 0))


def follow(
    pending: Pending,
    tenant: str | None,
    ids: Sequence[str],
    texts: Sequence[str],
    hashes: Sequence[bytes],
) -> Operation[None]:
    """Give memories just written by ``tenant`` (plaintext ``texts``) their vector of the run in
    progress, in a transaction of their own, recorded as ``reembed`` events."""
    vectors = yield from offload(pending.embedding.embed, list(texts))
    yield from execute(set_local(OPERATION_SETTING, OPERATION))
    yield from _store_vectors(pending.target, [stored_tenant(tenant)] * len(ids), ids, vectors, hashes)
    yield from execute(final=True)


def _fill(
    new: CollectionInfo, sealer: Sealer, target: Embedding, batch: int, limit: int | None, progress: bool
) -> Operation[int]:
    """Give the collection's memories their new vector, a committed batch at a time (at most
    ``limit``), resuming after the run's last batch; then again from the first row until a pass
    finds none missing."""
    marker = sql.SQL("SELECT after_id FROM {} WHERE collection_id = %(cid)s").format(_RUNS)
    position = _position(str((yield from fetch_all(Query(marker, {"cid": new.id}), final=True))[0][0]))
    pending = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(_MEMORIES, _missing_where(new))
    total = int((yield from fetch_all(Query(pending, {"cid": new.id}), final=True))[0][0])
    advance = sql.SQL(
        "UPDATE {} SET after_id = %(after)s, filled = filled + %(n)s WHERE collection_id = %(cid)s"
    ).format(_RUNS)
    bar = _progress(progress, f"re-embedding {new.name}", total if limit is None else min(total, limit))
    after = position or _START
    embedded, scanned_from_start = 0, after == _START
    try:
        while limit is None or embedded < limit:
            size = batch if limit is None else min(batch, limit - embedded)
            rows = yield from _missing(new, size, after)
            if not rows:
                yield from execute(final=True)
                if scanned_from_start:
                    break
                after, scanned_from_start = _START, True  # memories written behind the marker
                continue
            written = yield from _write_vectors(new, sealer, target, rows)
            after = (str(rows[-1][0]), str(rows[-1][1]))
            yield from execute(
                Query(advance, {"after": _marker(after), "n": written, "cid": new.id}), final=True
            )
            embedded += len(rows)
            bar.update(len(rows))
    finally:
        bar.close()
    return embedded


def _switch(new: CollectionInfo, sealer: Sealer, target: Embedding) -> Operation[int]:
    """One transaction: the last memories without a new vector get one (writes wait meanwhile),
    then the collection moves to the new slot and embedder. Returns how many it embedded."""
    yield from execute(Query(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(_MEMORIES)))
    embedded = 0
    while rows := (yield from _missing(new, 1024)):
        written = yield from _write_vectors(new, sealer, target, rows)
        if written < len(rows):  # cannot be: the lock keeps writers out
            raise ConfigurationError(f"collection {new.name!r} changed during its switch; run reembed again")
        embedded += written
    switch = sql.SQL(
        "UPDATE {} SET embedder = %(embedder)s, dimension = %(dim)s, vector_slot = %(slot)s "
        "WHERE id = %(cid)s"
    ).format(_COLLECTIONS)
    phase = sql.SQL("UPDATE {} SET phase = 'clearing' WHERE collection_id = %(cid)s").format(_RUNS)
    params = {"embedder": new.embedder, "dim": new.dimension, "slot": new.slot, "cid": new.id}
    yield from execute(Query(switch, params), Query(phase, {"cid": new.id}), final=True)
    return embedded


def _clear(new: CollectionInfo, batch: int) -> Operation[None]:
    """Drop the old slot's index, set its vectors to NULL a batch at a time, end the run."""
    old = dataclasses.replace(new, slot=1 - new.slot)
    yield from drop_index(index_name(old))
    old_full, old_half = _vectors(old)
    new_full, new_half = _vectors(new)
    clear = sql.SQL(
        "UPDATE {table} SET {old_full} = NULL, {old_half} = NULL WHERE collection_id = %(cid)s AND id IN "
        "(SELECT id FROM {table} WHERE collection_id = %(cid)s AND ({old_full} IS NOT NULL OR "
        "{old_half} IS NOT NULL) AND ({new_full} IS NOT NULL OR {new_half} IS NOT NULL) "
        "ORDER BY id LIMIT %(n)s)"
    ).format(table=_MEMORIES, old_full=old_full, old_half=old_half, new_full=new_full, new_half=new_half)
    label = set_local(OPERATION_SETTING, CLEAR_OPERATION)
    while (yield from execute(label, Query(clear, {"cid": new.id, "n": batch}), final=True))[1].rowcount:
        pass
    end = sql.SQL("DELETE FROM {} WHERE collection_id = %(cid)s").format(_RUNS)
    yield from execute(Query(end, {"cid": new.id}), final=True)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, desc: str, total: int) -> Any:
    """A tqdm bar (as ``memorix-pg import`` shows), or one that draws nothing."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="memory")
