"""Read replicas: reads on a hot standby, writes on the primary.

A ``MemoryAPI`` given ``read_url=`` (or a ``database_url`` naming several hosts with
``target_session_attrs``) runs its read-only calls (``Call.read``: retrieve, get, list, count,
stats, history, check_recall...) on a second pool, and everything else on the primary: writes,
migrations, opening a collection, index builds. Several hosts with ``target_session_attrs`` make
two URLs of one: ``read-write`` for writes (libpq finds the primary, the new one after a
promotion) and ``prefer-standby`` for reads.

* **Opening first.** A collection is opened (created, migrated) on the primary, and the reads
  wait until the standby has replayed that, so they never meet a table or collection that is
  not there yet.
* **Read your writes.** With ``read_your_writes=True`` a write ends by reading the primary's WAL
  position after its commit (one more round trip); the next read on the standby checks
  ``pg_last_wal_replay_lsn()`` in the pipeline of its first batch. A standby behind is polled
  every ~2 ms up to ``read_your_writes_timeout``, then the read goes to the primary (later reads
  check once and go to the primary without waiting again, until the next write). Without it,
  reads see the standby's replay lag (p50 under a millisecond on one machine, docs/scaling.md).
* **Standby down.** A read the standby cannot serve (unreachable, or cancelled by a conflict
  with recovery) runs on the primary; an unreachable standby is left alone for
  ``STANDBY_REST_SECONDS`` before reads try it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from psycopg import errors as pg_errors

from .connections import PoolOptions, async_source, sync_source
from .core import Core
from .database import ENV_URL, libpq_url, redact_url
from .errors import ConfigurationError, DatabaseUnavailable
from .runner import AsyncRunner, SyncRunner
from .steps import Batch, Call, Operation, Query

__all__ = [
    "STANDBY_REST_SECONDS",
    "AsyncRouter",
    "ReadReplicas",
    "SyncRouter",
    "split_hosts",
]

T = TypeVar("T")

STANDBY_REST_SECONDS = 5.0  # after the standby could not be reached, reads use the primary this long
POLL_SECONDS = 0.002  # replay of a single write: p50 0.3 ms here, p99 7-12 ms (docs/scaling.md)

# The WAL written so far, read after the write committed (so past its commit record), as a number.
_WRITTEN = Query(b"SELECT pg_current_wal_lsn() - '0/0'", prepare=True)
# Whether this server has replayed up to a position; a server not in recovery is a primary (the
# same one, or a promoted standby) and has all it will ever have.
_CAUGHT_UP = b"SELECT NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() - '0/0' >= %s"
# A hot standby cancels a read whose snapshot or lock the replay of the primary's changes needs
# ("conflict with recovery", SQLSTATE 40001): the primary answers it instead.
_NOT_ON_STANDBY = pg_errors.SerializationFailure


class _Behind(Exception):
    """The standby has not replayed this object's last write yet; ``wait=False``: the read failed
    in the check's pipeline (on a table not replayed yet, or by the caller's mistake), so the
    check's answer is unknown."""

    def __init__(self, wait: bool = True) -> None:
        super().__init__()
        self.wait = wait


def _with_query(url: str, **values: str) -> str:
    """``url`` with the query parameters ``values`` set (others kept as they are, in order)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in values]
    return urlunsplit(parts._replace(query=urlencode([*query, *values.items()], safe="/,:")))


def split_hosts(url: str) -> str:
    """``postgresql://u@h1:5432,h2:5433/db`` as ``postgresql://u@/db?host=h1,h2&port=5432,5433``:
    the same libpq URL, in the form URL parsers (SQLAlchemy's) take."""
    scheme, sep, rest = url.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    user, at, hostlist = netloc.rpartition("@")
    if not sep or "," not in hostlist:
        return url
    hosts, ports = [], []
    for entry in hostlist.split(","):
        host, colon, port = entry.rpartition(":") if not entry.endswith("]") else (entry, "", "")
        if not colon or "]" in port:
            host, port = entry, ""
        hosts.append(host.strip("[]"))
        ports.append(port)
    path, _, query = tail.partition("?")
    given = dict(parse_qsl(query, keep_blank_values=True))
    if "host" in given or "port" in given:
        raise ConfigurationError(
            f"the URL names hosts both before the path and in its query: {redact_url(url)!r}"
        )
    base = f"{scheme}://{user}{at}{path or '/'}" + (f"?{query}" if query else "")
    values = {"host": ",".join(hosts)}
    if any(ports):
        values["port"] = ",".join(ports)
    return _with_query(base, **values)


def _several_hosts(url: str) -> bool:
    return "," in dict(parse_qsl(urlsplit(url).query)).get("host", "")


class ReadReplicas:
    """Where reads go, and what this object wrote last (the WAL position reads wait for)."""

    def __init__(
        self, database_url: str | None, read_url: str | None, read_your_writes: bool, timeout: float
    ) -> None:
        if not isinstance(read_your_writes, bool):
            raise ConfigurationError(f"read_your_writes must be True or False, got {read_your_writes!r:.80}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < 3600:
            raise ConfigurationError(
                f"read_your_writes_timeout must be a number of seconds in (0, 3600), got {timeout!r:.80}"
            )
        if read_url is not None and (not isinstance(read_url, str) or not read_url):
            raise ConfigurationError(f"read_url must be a PostgreSQL URL, got {read_url!r:.80}")
        self.read_your_writes = read_your_writes
        self.timeout = float(timeout)
        # What the core resolves: the primary.
        self.database_url = split_hosts(database_url) if isinstance(database_url, str) else database_url
        self.read_url: str | None = None
        given = self.database_url or os.environ.get(ENV_URL) or None
        if read_url is not None:
            self.read_url = libpq_url(split_hosts(read_url))
        elif isinstance(given, str) and "target_session_attrs" in given:
            url = split_hosts(given)
            if _several_hosts(url):
                self.database_url = _with_query(url, target_session_attrs="read-write")
                self.read_url = libpq_url(_with_query(url, target_session_attrs="prefer-standby"))
        self._pending: int | None = None  # the WAL position the next standby read waits for
        self._gave_up: int | None = None  # a position waited for in vain: checked, not waited for again
        self._lock = threading.Lock()
        self._rest_until = 0.0

    # -- routers for the façades ----------------------------------------------------------

    def sync_runner(self, primary: SyncRunner, core: Core, options: PoolOptions) -> SyncRunner | SyncRouter:
        """``primary`` alone, or with a runner on the standby when there is one."""
        if self.read_url is None:
            return primary
        standby = SyncRunner(sync_source(self.read_url, options), self.read_url, primary.settings)
        return SyncRouter(self, core, primary, standby)

    def async_runner(
        self, primary: AsyncRunner, core: Core, options: PoolOptions
    ) -> AsyncRunner | AsyncRouter:
        if self.read_url is None:
            return primary
        standby = AsyncRunner(async_source(self.read_url, options), self.read_url, primary.settings)
        return AsyncRouter(self, core, primary, standby)

    # -- state -----------------------------------------------------------------------------

    def on_standby(self, call: Call[Any], core: Core) -> bool:
        """A read, of a collection already open, while the standby is not resting."""
        return (
            call.read and core.info is not None and not core.dropped and time.monotonic() >= self._rest_until
        )

    def tracked(self, call: Call[T], core: Core) -> Call[T]:
        """``call`` for the primary: ending with the WAL position when the standby must wait for it."""
        if core.info is not None and (call.read or not self.read_your_writes):
            return call
        make = call.make

        def written() -> Operation[T]:
            value = yield from make()
            yield Batch((), final=True)  # commits the call's open transaction, if any
            results = yield Batch((_WRITTEN,), final=True)
            self._wrote(int(results[0].rows[0][0]))
            return value

        return dataclasses.replace(call, make=written)

    def _wrote(self, lsn: int) -> None:
        with self._lock:
            if self._pending is None or lsn > self._pending:
                self._pending = lsn

    def pending(self) -> int | None:
        return self._pending

    def caught_up(self, lsn: int) -> None:
        """The standby has replayed ``lsn``: reads stop checking until the next write."""
        with self._lock:
            if self._pending is not None and self._pending <= lsn:
                self._pending = None

    def rest(self) -> None:
        self._rest_until = time.monotonic() + STANDBY_REST_SECONDS

    def deadline(self, lsn: int) -> float:
        """Until when a read waits for the standby to replay ``lsn``: once per write, so a
        standby far behind costs one timeout, not one per read."""
        return time.monotonic() + (self.timeout if lsn != self._gave_up else 0.0)

    def gave_up(self, lsn: int) -> None:
        self._gave_up = lsn


def _checked(call: Call[T], lsn: int) -> Call[T]:
    """``call`` with the replay check in the pipeline of its first batch: raises _Behind when
    the standby has not replayed ``lsn``. The operation still runs to its end (its result
    discarded): abandoned mid-way, the core would take its collection for broken and open it
    again."""
    make = call.make

    def checked() -> Operation[T]:
        op = make()
        value: Any = None
        error: BaseException | None = None
        checking, behind, unsure = True, False, False
        while True:
            try:
                step = op.send(value) if error is None else op.throw(error)
            except StopIteration as stop:
                if behind:
                    raise _Behind from None
                return stop.value  # type: ignore[no-any-return]
            except Exception:
                if behind or unsure:  # perhaps because of what the standby lacks
                    raise _Behind(wait=behind) from None
                raise
            value, error = None, None
            try:
                if checking and isinstance(step, Batch):
                    checking = False
                    check = Query(_CAUGHT_UP, (lsn,))
                    unsure = True  # until the check's answer comes back
                    results = yield Batch((check, *step.queries), step.final, step.settings)
                    unsure, behind = False, not results[0].rows[0][0]
                    value = results[1:]
                else:
                    value = yield step
            except Exception as exc:  # the runner's error for the step, handed to the operation
                error = exc

    return dataclasses.replace(call, make=checked)


def _probe(lsn: int) -> Call[bool]:
    def make() -> Operation[bool]:
        results = yield Batch((Query(_CAUGHT_UP, (lsn,)),), final=True)
        return bool(results[0].rows[0][0])

    return Call(make, idempotent=True, scoped=False, read=True)


class SyncRouter:
    """Runs reads on the standby (waiting for this object's writes when asked), the rest on the primary."""

    def __init__(self, replicas: ReadReplicas, core: Core, primary: SyncRunner, standby: SyncRunner) -> None:
        self.replicas, self.core, self.primary, self.standby = replicas, core, primary, standby

    def run(self, call: Call[T]) -> T:
        replicas = self.replicas
        if replicas.on_standby(call, self.core):
            try:
                return self._on_standby(call)
            except _Behind:
                pass
            except DatabaseUnavailable:
                replicas.rest()
            except _NOT_ON_STANDBY:
                pass
        return self.primary.run(replicas.tracked(call, self.core))

    def _on_standby(self, call: Call[T]) -> T:
        lsn = self.replicas.pending()
        if lsn is None:
            return self.standby.run(call)
        deadline = self.replicas.deadline(lsn)
        while True:
            try:
                value = self.standby.run(_checked(call, lsn))
            except _Behind as behind:
                if not behind.wait and self.standby.run(_probe(lsn)):
                    raise  # caught up, so the read failed by itself: the primary answers or repeats it
                try:
                    self._wait(lsn, deadline)
                except _Behind:
                    self.replicas.gave_up(lsn)
                    raise
                continue
            self.replicas.caught_up(lsn)
            return value

    def _wait(self, lsn: int, deadline: float) -> None:
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(POLL_SECONDS, left))
            if self.standby.run(_probe(lsn)):
                return
        raise _Behind


class AsyncRouter:
    """:class:`SyncRouter`, awaited."""

    def __init__(
        self, replicas: ReadReplicas, core: Core, primary: AsyncRunner, standby: AsyncRunner
    ) -> None:
        self.replicas, self.core, self.primary, self.standby = replicas, core, primary, standby

    async def run(self, call: Call[T]) -> T:
        replicas = self.replicas
        if replicas.on_standby(call, self.core):
            try:
                return await self._on_standby(call)
            except _Behind:
                pass
            except DatabaseUnavailable:
                replicas.rest()
            except _NOT_ON_STANDBY:
                pass
        return await self.primary.run(replicas.tracked(call, self.core))

    async def _on_standby(self, call: Call[T]) -> T:
        lsn = self.replicas.pending()
        if lsn is None:
            return await self.standby.run(call)
        deadline = self.replicas.deadline(lsn)
        while True:
            try:
                value = await self.standby.run(_checked(call, lsn))
            except _Behind as behind:
                if not behind.wait and await self.standby.run(_probe(lsn)):
                    raise  # caught up, so the read failed by itself: the primary answers or repeats it
                try:
                    await self._wait(lsn, deadline)
                except _Behind:
                    self.replicas.gave_up(lsn)
                    raise
                continue
            self.replicas.caught_up(lsn)
            return value

    async def _wait(self, lsn: int, deadline: float) -> None:
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(POLL_SECONDS, left))
            if await self.standby.run(_probe(lsn)):
                return
        raise _Behind
