"""A small HTTP/1.1 client for the proxy's hop to a backend: pooled keep-alive connections over a
Unix socket or loopback TCP, parsed with httptools (uvicorn's own parser).

Why not httpx: on this hop httpx's per-request cost was about 2 ms, four times the budget the
proxy has for a whole hop. This client does only what the hop needs: one request at a time per
connection, bodies given whole or streamed (chunked), responses streamed back.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    import ssl

Headers = list[tuple[bytes, bytes]]
Body = bytes | AsyncIterator[bytes] | None
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_READ_SIZE = 256 * 1024
_CONNECT_TRIES = 30
IDLE_TIMEOUT = 4.0  # seconds an idle pooled connection is kept (under uvicorn's 5 s keep-alive)


def may_resend(method: str, body: Body, sent: bool) -> bool:
    """The one rule for sending a request again after its connection failed: when nothing was
    sent, or when the method is idempotent and the body is still ours (not a stream already
    read). A POST that may have reached the backend is never sent twice: it may have run."""
    return not sent or (method in IDEMPOTENT and isinstance(body, (bytes, type(None))))


class UpstreamError(Exception):
    """The connection failed or was dropped. ``sent`` says whether the request may have been
    received by the backend (then it must not be sent again blindly)."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class _ResponseReader:
    """httptools' callbacks, collecting one response."""

    def __init__(self) -> None:
        self.headers: Headers = []
        self.headers_done = False
        self.interim = False
        self.chunks: list[bytes] = []
        self.complete = False
        self.surplus = False  # bytes after the answer: the connection can't be trusted again
        # Read in the callback: httptools forgets it once the message has ended.
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        if self.complete:
            self.surplus = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:  # later ones are trailers: not headers of this answer
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self.interim = True
            self.headers = []
            return
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()


_SHORT_BODY = 64 * 1024


def _short(parsed: _ResponseReader) -> bool:
    """A body whose length is said and small, not all here yet."""
    if parsed.complete:
        return False
    for name, value in parsed.headers:
        if name == b"content-length":
            return value.isdigit() and int(value) <= _SHORT_BODY
    return False


async def socket_from_connector(path: str) -> socket.socket:
    """A socket connected to the backend, received from its connector."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as asking:
        asking.setblocking(False)
        await loop.sock_connect(asking, path)
        received: asyncio.Future[list[int]] = loop.create_future()

        def readable() -> None:
            if received.done():  # called again before the reader was removed
                return
            try:
                _, fds, _, _ = socket.recv_fds(asking, 1, 1)
            except BlockingIOError:
                return
            except OSError as error:
                received.set_exception(error)
            else:
                received.set_result(fds)

        loop.add_reader(asking.fileno(), readable)
        try:
            fds = await asyncio.wait_for(received, 10)
        finally:
            loop.remove_reader(asking.fileno())
    if not fds:
        raise ConnectionRefusedError("the backend's connector could not reach it")
    return socket.socket(fileno=fds[0])


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    @property
    def usable(self) -> bool:
        """Still open on both sides. An idle connection has nothing to read: if the socket is
        readable, the backend closed it (or sent what no request asked for), even when the event
        loop has not read that yet."""
        if self.reader.at_eof() or self.writer.is_closing():
            return False
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)

    async def feed(self, parsed: _ResponseReader) -> bool:
        """Read once into the parser; ``False`` at the end of the stream."""
        data = await self.reader.read(_READ_SIZE)
        if not data:
            return False
        parsed.parser.feed_data(data)
        return True

    def close(self) -> None:
        self.writer.close()


class UpstreamResponse:
    """A response whose body is read with :meth:`iter_body`; :meth:`release` must follow.

    Reading happens in the caller's task, as the body is consumed: no task per request."""

    def __init__(
        self, pool: UpstreamPool, connection: _Connection, parsed: _ResponseReader, head_only: bool
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._parsed = parsed
        self._head_only = head_only
        self.status: int = parsed.parser.get_status_code()
        self._abandoned = False
        self.headers = parsed.headers

    async def iter_body(self) -> AsyncIterator[tuple[bytes, bool]]:
        """Body chunks as they come, each with whether it is the last one, so that a small
        answer goes out in one send."""
        parsed = self._parsed
        if self._head_only:
            yield b"", True
            return
        while True:
            chunks, parsed.chunks = parsed.chunks, []
            if parsed.complete:
                yield b"".join(chunks), True
                return
            if chunks:
                yield b"".join(chunks), False
            try:
                more = await self._connection.feed(parsed)
            except (OSError, httptools.HttpParserError) as error:
                raise UpstreamError(f"the answer broke off: {error}", sent=True) from error
            if not more and not parsed.complete:
                raise UpstreamError("the backend closed the connection mid-answer", sent=True)

    @property
    def complete(self) -> bool:
        """The whole answer has arrived already (the common case for small ones)."""
        return self._head_only or self._parsed.complete

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def abandon(self) -> None:
        """Stop reading: close the connection (a pending read then ends)."""
        self._abandoned = True
        self._connection.close()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk, _ in self.iter_body()])

    async def release(self) -> None:
        """Give the connection back when the exchange completed cleanly, else close it."""
        parsed = self._parsed
        reusable = self._head_only or (parsed.complete and parsed.keep_alive)
        if reusable and not parsed.surplus and not self._abandoned:
            self._pool._give_back(self._connection)
        else:
            self._connection.close()


class UpstreamPool:
    """Keep-alive connections to one backend: on a Unix socket (``uds``), on loopback TCP
    (``port``), or on TCP in the backend's private network namespace, through the connector
    that hands connected sockets out (``connector``, see :mod:`ywmagics.orchestrator.launcher`);
    or over TLS to a node shim that relays to it (``host``, ``port`` and ``tls``).
    """

    def __init__(
        self,
        *,
        uds: str | None = None,
        port: int | None = None,
        connector: str | None = None,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        max_idle: int = 256,
    ) -> None:
        self.uds = uds
        self.port = port
        self.connector = connector
        self.host = host  # with ``tls``: a node shim on another machine (placements/slurm.py)
        self.tls = tls
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._prune: asyncio.TimerHandle | None = None

    async def _open(self) -> _Connection:
        """A new connection; a connect refused for a full backlog (EAGAIN: the backend is busy
        accepting) is tried again at once, then with short pauses, for up to a second."""
        pause = 0.0
        for _ in range(_CONNECT_TRIES):
            try:
                return await self._connect()
            except UpstreamError as error:
                if not isinstance(error.__cause__, BlockingIOError):
                    raise
            await asyncio.sleep(pause)
            pause = min(0.05, pause * 2 or 0.001)
        return await self._connect()

    async def _connect(self) -> _Connection:
        try:
            if self.uds is not None:
                reader, writer = await asyncio.open_unix_connection(self.uds, limit=_READ_SIZE)
            else:
                sock = await socket_from_connector(self.connector) if self.connector else None
                if sock is None:
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port, limit=_READ_SIZE, ssl=self.tls
                    )
                else:
                    reader, writer = await asyncio.open_connection(sock=sock, limit=_READ_SIZE)
                tcp = writer.get_extra_info("socket")
                if tcp is not None:
                    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as error:
            raise UpstreamError(f"cannot connect: {error}", sent=False) from error
        return _Connection(reader, writer)

    def _give_back(self, connection: _Connection) -> None:
        """Keep it for the next request: as many as recent concurrency needed, each for at most
        :data:`IDLE_TIMEOUT` unused (then the orchestrator's descriptors are back to what they
        were before a burst)."""
        if connection.usable and len(self._idle) < self.max_idle:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
            if self._prune is None:
                self._prune = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._close_old)
        else:
            connection.close()

    def _close_old(self) -> None:
        self._prune = None
        cutoff = time.monotonic() - IDLE_TIMEOUT
        old = [c for c in self._idle if c.idle_since <= cutoff]
        self._idle = [c for c in self._idle if c.idle_since > cutoff]
        for connection in old:
            connection.close()
        if self._idle:
            self._prune = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._close_old)

    async def request(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: Body = None,
    ) -> UpstreamResponse:
        """Send one request. A pooled connection that fails before any answer (the backend closed
        it while idle) is replaced once, when :func:`may_resend` allows it."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.usable:
                connection.close()
                continue
            try:
                return await self._exchange(connection, method, target, headers, body)
            except UpstreamError as error:
                if not may_resend(method, body, error.sent):
                    raise
            break
        return await self._exchange(await self._open(), method, target, headers, body)

    async def _exchange(
        self,
        connection: _Connection,
        method: str,
        target: str,
        headers: Headers,
        body: Body,
    ) -> UpstreamResponse:
        head = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
        if not any(name == b"host" for name, _ in headers):
            head.append(b"host: localhost\r\n")  # the readiness probe's, say: HTTP/1.1 wants one
        head += [name + b": " + value + b"\r\n" for name, value in headers]
        streaming = body is not None and not isinstance(body, bytes)
        if isinstance(body, bytes) and (body or method not in ("GET", "HEAD")):
            head.append(b"content-length: %d\r\n" % len(body))
        elif streaming:
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"\r\n")
        writer = connection.writer
        parsed = _ResponseReader()
        try:
            writer.write(b"".join(head))
            if isinstance(body, bytes):
                if body:
                    writer.write(body)
            elif body is not None:
                async for chunk in body:
                    if chunk:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()
            while not parsed.headers_done:
                if not await connection.feed(parsed):
                    raise UpstreamError("connection closed before an answer", sent=True)
            if method != "HEAD" and _short(parsed):
                # Servers often write a head and its short body separately (uvicorn does): the
                # body follows at once. Waited for here, the answer goes on in one piece, with
                # no watch for a client that leaves in the middle of a long one.
                while not parsed.complete:
                    if not await connection.feed(parsed):
                        raise UpstreamError(
                            "the backend closed the connection mid-answer", sent=True
                        )
        except (OSError, httptools.HttpParserError) as error:
            connection.close()
            raise UpstreamError(f"connection lost: {error}", sent=True) from error
        except BaseException:  # ours, or the body's (its client went away): half a request
            connection.close()
            raise
        return UpstreamResponse(self, connection, parsed, method == "HEAD")

    def close_idle(self) -> None:
        """Close the idle connections (those in use close when their exchange ends)."""
        while self._idle:
            self._idle.pop().close()
        if self._prune is not None:
            self._prune.cancel()
            self._prune = None
