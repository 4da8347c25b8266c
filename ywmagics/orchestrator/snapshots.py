"""One snapshot of the orchestrator for every open dashboard, however many are open.

A snapshot costs the event loop a look at every instance and environment; built per open
stream and after each event, a build that printed 200,000 lines kept the orchestrator busy and
proxied requests waited seconds. So one task builds it, only while someone watches: after
events (at most every :data:`AT_MOST_EVERY` seconds, however many come), and every
:data:`EVERY` seconds anyway (CPU, memory, uptime); each stream sends the newest it has not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from ywmagics.orchestrator.events import EventBus

EVERY = 2.0
AT_MOST_EVERY = 0.1


class SnapshotFeed:
    def __init__(self, bus: EventBus, build: Callable[[], bytes]) -> None:
        self.bus = bus
        self.build = build
        self.version = 0
        self.latest = b""
        self._newer = asyncio.Condition()
        self._watchers = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Future[None] | None = None

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        self._watchers += 1
        self._wake.set()  # a new watcher is given a fresh one
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._produce())
        try:
            yield
        finally:
            self._watchers -= 1

    async def newer_than(self, version: int) -> tuple[bytes, int] | None:
        """The newest snapshot once it is newer than ``version``; ``None`` once the server is
        stopping."""
        async with self._newer:
            await self._newer.wait_for(lambda: self.version > version or self.bus.closed)
        return None if self.bus.closed else (self.latest, self.version)

    async def _produce(self) -> None:
        async with self.bus.subscribe() as events:
            while self._watchers and not self.bus.closed:
                self._wake.clear()
                self.latest, self.version = self.build(), self.version + 1
                async with self._newer:
                    self._newer.notify_all()
                waiting = {
                    asyncio.ensure_future(events.get()),
                    asyncio.ensure_future(self._wake.wait()),
                }
                _, pending = await asyncio.wait(
                    waiting, timeout=EVERY, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
                await asyncio.sleep(AT_MOST_EVERY)  # a burst of events: one snapshot for it
                while not events.empty():
                    events.get_nowait()
        async with self._newer:
            self._newer.notify_all()  # the server is stopping: the streams end
