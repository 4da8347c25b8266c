"""The orchestrator's event bus: every event goes to the live stream's subscribers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from ywmagics.events import Event, EventKind

Emit = Callable[[Event], None]


class Named(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...


def event_of(
    kind: EventKind, backend: Named, partition: str, text: str, progress: float | None = None
) -> Event:
    """An event about ``backend`` (a manifest) in ``partition``."""
    return Event(kind, backend.name, backend.version, partition, text, progress)


class EventBus:
    """Fan-out of events to subscribers; a slow subscriber loses events rather than slowing us.
    A subscriber's queue gives ``None`` once the bus is closed: its stream ends."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self.closed = False

    def publish(self, event: Event) -> None:
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    def close(self) -> None:
        """End every subscription: the server is stopping, and waits for open streams."""
        self.closed = True
        for queue in self._subscribers:
            _end(queue)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Event | None]]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=1000)
        if self.closed:
            _end(queue)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)


def _end(queue: asyncio.Queue[Event | None]) -> None:
    while queue.full():  # the end matters more than the oldest event
        queue.get_nowait()
    queue.put_nowait(None)
