"""Connections that must not lock the orchestrator out: uvicorn's protocol, with two guards.

Anyone on the machine can open connections to the orchestrator's port, token or not. uvicorn
keeps a connection that never finishes its request's headers open forever, and one that sends a
byte now and then never times out; 1,100 of them used up the descriptors of a ``ulimit -n
1024`` and every request failed. So:

- a new connection's first request must have its headers complete within
  :data:`HEADERS_TIMEOUT`, else the connection is closed; at most :data:`MAX_WAITING` new
  connections may wait at once: past that, the one that has waited longest is closed. A client
  with a token sends its request at once, so it is served while someone else holds hundreds of
  connections open;
- a connection kept alive after an answer (so its client holds a credential: refusals close)
  waits for its next request's headers up to :data:`KEEP_ALIVE_TIMEOUT`, at most
  :data:`MAX_IDLE` of them (the oldest is closed past that). The timeout is longer than the
  idle expiry of clients' pools (httpx 5 s, aiohttp 15 s): when a server closes an idle
  connection at the moment its client reuses it, the request fails with no answer, and httpx
  does not send it again (uvicorn's own 5 s did that to one request in a thousand under load).
  New connections cannot push these out;
- a request line and headers (and a chunked body's trailers, which are dropped) may take at most
  :data:`MAX_HEAD_BYTES`, else the answer is 431 and the connection is closed: parsers build
  them by repeated concatenation, so an endless header value spent the event loop's time for
  the whole deadline, and many small headers took gigabytes. At most :data:`MAX_LINGERING`
  refused connections are drained before they close; past that they close at once.

Refused requests (no token, a foreign Host) are answered with ``Connection: close``
(:func:`ywmagics.orchestrator.security.refuse`), so they cannot hold a kept-alive connection.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ywmagics.errors import OrchestratorError
from ywmagics.protocol import ERROR_HEADER

HEADERS_TIMEOUT = 10.0
MAX_WAITING = 256
KEEP_ALIVE_TIMEOUT = 20  # seconds (uvicorn takes an int)
MAX_IDLE = 256
MAX_HEAD_BYTES = 64 * 1024
LINGER = 1.0  # seconds a refused connection is drained before it is closed
MAX_LINGERING = 32  # refused connections drained at once; past that, closed at once


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


class HeadWithItsBody:
    """A connection's transport as uvicorn writes to it: an answer's head waits for what is
    written next in the same turn of the loop (its body, most often), so that a small answer
    leaves in one write, and one packet, instead of two; at the end of that turn it leaves
    alone. Everything else is written at once (after a head that waits)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head + bytes(data))
        elif data[:9] == b"HTTP/1.1 " and data[-4:] == b"\r\n\r\n":
            self._head = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # the rest is the transport's own
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a headers deadline, a cap on waiting connections and
    one on the size of a request's head."""

    # Per event loop: one server per orchestrator process, but tests may run several.
    _waiting_by_loop: ClassVar[dict[asyncio.AbstractEventLoop, OrderedDict[Any, None]]] = {}
    _idle_by_loop: ClassVar[dict[asyncio.AbstractEventLoop, OrderedDict[Any, None]]] = {}
    _lingering_by_loop: ClassVar[dict[asyncio.AbstractEventLoop, set[Any]]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # a request line or headers are being received
        self._head_bytes = 0  # received of them so far
        self._refused = False
        self._trailer_bytes = 0
        self._waiting = self._waiting_by_loop.setdefault(self.loop, OrderedDict())
        self._idle = self._idle_by_loop.setdefault(self.loop, OrderedDict())
        self._lingering = self._lingering_by_loop.setdefault(self.loop, set())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, HeadWithItsBody(transport, self.loop)))
        self._wait_for_headers(self._waiting, HEADERS_TIMEOUT, MAX_WAITING)

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
        if self.transport.is_closing():
            return
        self.transport.write(_too_large_answer())
        if len(self._lingering) >= MAX_LINGERING:  # many at once: an attack, not a mistake
            self.transport.close()
            return
        self._lingering.add(self)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER, self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        self._lingering.discard(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._in_head = True
        self._trailer_bytes = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            super().on_header(name, value)
            return
        # A chunked body's trailers: uvicorn would add them to the request's headers, which the
        # application has already read (and checked). They are dropped, and count toward the cap.
        self._trailer_bytes += len(name) + len(value)
        if self._trailer_bytes > MAX_HEAD_BYTES and not self._refused:
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._stop_waiting()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._wait_for_headers(self._idle, KEEP_ALIVE_TIMEOUT, MAX_IDLE)  # the next request

    def _wait_for_headers(
        self, waiting: OrderedDict[Any, None], timeout: float, at_most: int
    ) -> None:
        self._stop_waiting()
        self._deadline = self.loop.call_later(timeout, self._close)
        waiting[self] = None
        while len(waiting) > at_most:
            oldest, _ = waiting.popitem(last=False)
            oldest._close()

    def _stop_waiting(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting.pop(self, None)
        self._idle.pop(self, None)

    def _close(self) -> None:
        self._stop_waiting()
        self._lingering.discard(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
