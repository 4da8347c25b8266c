"""Connections that must not lock the orchestrator out: uvicorn's protocol, with two guards.

Anyone on the machine can open connections to the orchestrator's port, token or not. uvicorn
keeps a connection that never finishes its request's headers open forever, and one that sends a
byte now and then never times out; 1,100 of them used up the descriptors of a ``ulimit -n
1024`` and every request failed. So:

- a request's headers must be complete within :data:`HEADERS_TIMEOUT` of the connection opening
  or of the previous answer, else the connection is closed;
- at most :data:`MAX_WAITING` connections may wait for their headers at once: past that, the
  one that has waited longest is closed. A client with a token sends its request at once, so it
  is served while someone else holds hundreds of connections open.

Refused requests (no token, a foreign Host) are answered with ``Connection: close``
(:func:`ywmagics.orchestrator.security.refuse`), so they cannot hold a kept-alive connection.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADERS_TIMEOUT = 10.0
MAX_WAITING = 256


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a headers deadline and a cap on waiting connections."""

    # Per event loop: one server per orchestrator process, but tests may run several.
    _waiting_by_loop: ClassVar[dict[asyncio.AbstractEventLoop, OrderedDict[Any, None]]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting = self._waiting_by_loop.setdefault(self.loop, OrderedDict())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._wait_for_headers()  # the next request, kept alive

    def _wait_for_headers(self) -> None:
        self._stop_waiting()
        self._deadline = self.loop.call_later(HEADERS_TIMEOUT, self._close)
        self._waiting[self] = None
        while len(self._waiting) > MAX_WAITING:
            oldest, _ = self._waiting.popitem(last=False)
            oldest._close()

    def _stop_waiting(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting.pop(self, None)

    def _close(self) -> None:
        self._stop_waiting()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
