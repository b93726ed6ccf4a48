"""Running ``AsyncMemoryAPI`` from the same (synchronous) test bodies as ``MemoryAPI``.

The ``make_api`` fixture is parametrised over both APIs. For the async side it returns an
:class:`AwaitedAPI`: every coroutine method of the real ``AsyncMemoryAPI`` is run to completion
on one event loop that lives in a thread for the whole test session, so a test asserts the
same behaviour of both without being written twice.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoopThread:
    """One event loop running in a daemon thread; ``run`` waits for a coroutine's result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-event-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class AwaitedAPI:
    """An ``AsyncMemoryAPI`` whose coroutine methods are awaited on ``loop`` for the caller."""

    def __init__(self, loop: EventLoopThread, api: Any) -> None:
        self._loop = loop
        self._api = api
        loop.run(api.open())  # MemoryAPI opens (and checks) the collection in its constructor

    @property
    def wrapped(self) -> Any:
        return self._api

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._api, name)
        if inspect.iscoroutinefunction(attribute):
            return lambda *args, **kwargs: self._loop.run(attribute(*args, **kwargs))
        return attribute

    def __repr__(self) -> str:
        return repr(self._api)
