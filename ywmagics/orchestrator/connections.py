"""Connections that must not lock the orchestrator out: uvicorn's protocol, with two guards.

Anyone on the machine can open connections to the orchestrator's port, token or not. uvicorn
keeps a connection that never finishes its request's headers open forever, and one that sends a
byte now and then never times out; 1,100 of them used up the descriptors of a ``ulimit -n
1024`` and every request failed. So:

- a request's headers must be complete within :data:`HEADERS_TIMEOUT` of the connection opening
  or of the previous answer, else the connection is closed;
- at most :data:`MAX_WAITING` connections may wait for their headers at once: past that, the
  one that has waited longest is closed. A client with a token sends its request at once, so it
  is served while someone else holds hundreds of connections open;
- a request line and headers may take at most :data:`MAX_HEAD_BYTES`, else the answer is 431 and
  the connection is closed: parsers build them by repeated concatenation, so an endless header
  value spent the event loop's time for the whole deadline, and many small headers took gigabytes.

Refused requests (no token, a foreign Host) are answered with ``Connection: close``
(:func:`ywmagics.orchestrator.security.refuse`), so they cannot hold a kept-alive connection.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ywmagics.errors import OrchestratorError
from ywmagics.protocol import ERROR_HEADER

HEADERS_TIMEOUT = 10.0
MAX_WAITING = 256
MAX_HEAD_BYTES = 64 * 1024
LINGER = 1.0  # seconds a refused connection is drained before it is closed


def _too_large_answer() -> bytes:
    error = OrchestratorError(
        f"the request line and headers are over {MAX_HEAD_BYTES // 1024} KiB",
        hint="send fewer or shorter headers",
    )
    payload = json.dumps({"error": error.to_dict()}).encode()
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        "content-type: application/json\r\n"
        f"{ERROR_HEADER}: 1\r\n"
        f"content-length: {len(payload)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + payload


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a headers deadline, a cap on waiting connections and
    one on the size of a request's head."""

    # Per event loop: one server per orchestrator process, but tests may run several.
    _waiting_by_loop: ClassVar[dict[asyncio.AbstractEventLoop, OrderedDict[Any, None]]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # a request line or headers are being received
        self._head_bytes = 0  # received of them so far
        self._refused = False
        self._waiting = self._waiting_by_loop.setdefault(self.loop, OrderedDict())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_headers()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_head:  # a body, or an answer under way: not a head
            super().data_received(data)
            return
        room = MAX_HEAD_BYTES - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Past the cap unless the headers end within it: the rest may be a body.
        super().data_received(data[:room])
        if self._in_head:
            self._refuse_head()
        elif not self.transport.is_closing():
            super().data_received(data[room:])

    def _refuse_head(self) -> None:
        """Answer 431, then read and drop what the client still sends, for a moment: closing
        with unread data would reset the connection, and the client would never see why."""
        self._stop_waiting()
        self._refused = True
        if not self.transport.is_closing():
            self.transport.write(_too_large_answer())
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER, self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
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
