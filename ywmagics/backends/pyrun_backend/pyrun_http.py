"""HTTP/1.1 over ``socketserver``: just what the python runner needs, and quick to import.

``http.server`` would do, but it imports ``http.client``, ``email`` and ``ssl``: about 50 ms more
at each start of a runner, which is measured from process start to first answer. This module
reads a request line, headers and a body (``Content-Length`` or chunked, after ``Expect:
100-continue`` when asked), keeps connections alive as HTTP/1.1 does, and writes either a whole
JSON answer with its length or a chunked stream. A body is read when the route asks for it: whole
(``request.body``), or bit by bit into buffers of the route's own (``request.reader``), which is
how the frames of big values go straight into the memory of the arrays they become.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import sys
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}
MAX_LINE = 65536
MAX_HEADERS = 200
DEFAULT_MAX_BODY = 2 << 30  # bytes; YW_BUILD_MAX_BODY (the max_body build option) changes it


def max_body(text: str) -> int:
    """``2GiB``, ``512MiB``, ``100MB``, ``1048576``: a size in bytes (the default if empty)."""
    text = text.strip().upper().replace(" ", "")
    if not text:
        return DEFAULT_MAX_BODY
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9}
    for unit, factor in units.items():
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * factor
    if text.endswith("B"):
        text = text[:-1]
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a size (say e.g. 2GiB or 512MiB)")
    return int(text)


class HTTPError(Exception):
    """Answered with ``status`` and ``{"detail": detail}``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Request:
    """One parsed request; header names are lower case."""

    __slots__ = ("_body", "headers", "keep_alive", "method", "path", "query", "reader")

    def __init__(
        self, method: str, target: str, headers: dict[str, str], keep_alive: bool, reader: Body
    ) -> None:
        self.method = method
        path, _, self.query = target.partition("?")
        self.path = path.rstrip("/") or "/"
        self.headers = headers
        self.keep_alive = keep_alive
        self.reader = reader
        self._body: bytes | None = None

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = self.reader.read_all()
        return self._body


class Body:
    """A request's body as it arrives (``Content-Length`` or chunked), at most ``limit`` bytes."""

    def __init__(self, rfile: Any, headers: dict[str, str], limit: int) -> None:
        self._rfile = rfile
        self._limit = limit
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._left = 0  # bytes left of the whole body, or of the current chunk
        self.ended = False
        self.too_big = False
        if not self._chunked:
            length = headers.get("content-length", "") or "0"
            if not length.isdigit():
                raise HTTPError(400, f"malformed Content-Length {length!r}")
            self._left = int(length)
            self._check(self._left)
            self.ended = self._left == 0
        self._total = self._left

    def _check(self, total: int) -> None:
        if total > self._limit:
            self.too_big = True  # the rest of the body is not read: the connection closes
            raise HTTPError(
                413,
                f"the request's body ({total} bytes or more) is larger than this runner takes "
                f"({self._limit} bytes): send less, or install the runner with "
                "--config pyrun_backend.build.max_body=SIZE (e.g. 4GiB)",
            )

    def _more(self) -> bool:
        """Whether there is more to read, moving on to the next chunk if need be."""
        if self.ended:
            return False
        if self._left:
            return True
        if not self._chunked:
            self.ended = True
            return False
        line = self._rfile.readline(MAX_LINE)
        digits = line.split(b";", 1)[0].strip()
        if not 0 < len(digits) <= 16 or digits.strip(b"0123456789abcdefABCDEF"):
            raise HTTPError(400, "malformed chunked body")  # int() would take '-1' or '+1_0'
        size = int(digits, 16)
        if size == 0:
            while self._rfile.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            self.ended = True
            return False
        self._total += size
        self._check(self._total)
        self._left = size
        return True

    def _consumed(self, count: int) -> None:
        if not count:
            raise OSError("the client closed the connection in the middle of the body")
        self._left -= count
        if self._chunked and not self._left:
            self._rfile.readline(3)  # the CRLF after a chunk

    def most_to_come(self) -> int:
        """The most bytes the rest of the body may hold: what its length says, or the limit."""
        if not self._chunked:
            return self._left
        return self._limit - (self._total - self._left)

    def readinto(self, view: memoryview) -> int:
        """Read into ``view`` (as much as comes at once); 0 at the end of the body."""
        if not view.nbytes or not self._more():
            return 0
        count: int = self._rfile.readinto(view[: min(view.nbytes, self._left)])
        self._consumed(count)
        return count

    def readline(self) -> bytes:
        """The body up to and with its next newline (or its end)."""
        parts = []
        while self._more():
            part = self._rfile.readline(self._left)
            self._consumed(len(part))
            parts.append(part)
            if part.endswith(b"\n"):
                break
        return b"".join(parts)

    def read_all(self) -> bytes:
        parts = []
        while self._more():
            part = self._rfile.read(self._left)
            self._consumed(len(part))
            parts.append(part)
        return b"".join(parts)

    def drain(self) -> None:
        """Read what the route left unread, so that the next request on the connection starts
        where it should."""
        while self._more():
            self._consumed(len(self._rfile.read(min(self._left, 1 << 20))))


class Connection(socketserver.StreamRequestHandler):
    """A client connection: its requests, one after the other, until it closes.

    Subclasses implement ``respond(request)`` with ``send_json`` or the ``stream_*`` methods.
    """

    server_name = "pyrun"
    verbose = False
    max_body = DEFAULT_MAX_BODY

    def handle(self) -> None:
        self._head_only = False
        self._reader: Body | None = None
        while True:
            self._answered = False
            try:
                request = self._read_request()
            except HTTPError as exc:
                self.send_json(exc.status, {"detail": exc.detail}, close=True)
                return
            except (OSError, ValueError):
                return
            if request is None:
                return
            self._keep_alive = request.keep_alive
            self._reader = request.reader
            self._head_only = request.method == "HEAD"
            try:
                self.respond(request)
                if self._keep_alive:
                    request.reader.drain()
            except OSError:  # the client went away
                return
            except HTTPError as exc:  # a body too big, malformed: read after the answer began
                if not self._answered:
                    self.send_json(exc.status, {"detail": exc.detail}, close=True)
                return
            except Exception as exc:
                import traceback

                traceback.print_exc(file=sys.__stderr__)
                if not self._answered:
                    self.send_json(500, {"detail": f"{type(exc).__name__}: {exc}"}, close=True)
                return
            if self.verbose and sys.__stderr__ is not None:
                sys.__stderr__.write(f"{self.server_name}: {request.method} {request.path}\n")
            if not self._keep_alive:
                return

    def respond(self, request: Request) -> None:
        raise NotImplementedError

    # reading -----------------------------------------------------------------------------

    def _read_line(self) -> bytes:
        line = self.rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HTTPError(431, "line too long")
        return line

    def _read_request(self) -> Request | None:
        line = self._read_line()
        while line in (b"\r\n", b"\n"):  # tolerated before a request line (RFC 9112, 2.2)
            line = self._read_line()
        if not line:
            return None
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            raise HTTPError(400, f"malformed request line {line[:100]!r}")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HTTPError(505, f"unsupported {version}")
        headers: dict[str, str] = {}
        while True:
            line = self._read_line()
            if line in (b"\r\n", b"\n", b""):
                break
            if len(headers) >= MAX_HEADERS:
                raise HTTPError(431, "too many headers")
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                raise HTTPError(400, f"malformed header {line[:100]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            keep_alive = "close" not in connection
        else:
            keep_alive = "keep-alive" in connection
        reader = Body(self.rfile, headers, self.max_body)
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return Request(method, target, headers, keep_alive, reader)

    # writing -----------------------------------------------------------------------------

    def _head(self, status: int, headers: list[tuple[str, str]], close: bool) -> bytes:
        self._answered = True
        if close or (self._reader is not None and self._reader.too_big):
            self._keep_alive = False
        lines = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
            f"Server: {self.server_name}",
        ]
        lines += [f"{name}: {value}" for name, value in headers]
        if not self._keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send_json(self, status: int, payload: Any, close: bool = False) -> None:
        body = json.dumps(payload).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        head = self._head(status, headers, close)
        if self._head_only:
            self.wfile.write(head)
        elif len(body) < 65536:  # one write: one packet for the usual small answer
            self.wfile.write(head + body)
        else:
            self.wfile.write(head)
            self.wfile.write(body)

    def stream_start(self, content_type: str) -> None:
        headers = [
            ("Content-Type", content_type),
            ("Transfer-Encoding", "chunked"),
            ("Cache-Control", "no-cache"),
        ]
        self.wfile.write(self._head(200, headers, close=False))

    def stream_write(self, data: bytes | memoryview) -> None:
        size = memoryview(data).nbytes
        if size > 65536:  # a frame: sent from where it is, not copied into a chunk first
            self.wfile.write(b"%x\r\n" % size)
            self.wfile.write(data)
            self.wfile.write(b"\r\n")
        elif size:
            self.wfile.write(b"%x\r\n%s\r\n" % (size, data))

    def stream_end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")


# socketserver's default backlog is 5: a burst of clients (kernels, the proxy's pool filling up)
# had its connects refused with EAGAIN.
BACKLOG = 1024


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = BACKLOG

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        # Without it, Nagle's algorithm may hold a small write until the previous one is acked.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


if hasattr(socketserver, "UnixStreamServer"):

    class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
        block_on_close = False
        request_queue_size = BACKLOG


def shut_down_now(server: Any, socket_path: str | None) -> None:
    """``server.shutdown()``, without waiting out the accept loop's poll interval: a connection
    of our own wakes it, and it sees the request at once (a stop is not 0.1 s longer)."""
    stopping = threading.Thread(target=server.shutdown, name="shutdown")
    stopping.start()
    family = socket.AF_UNIX if socket_path is not None else socket.AF_INET
    address = socket_path if socket_path is not None else server.socket.getsockname()
    while stopping.is_alive():
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as poke:
            poke.settimeout(0.05)
            poke.connect(address)
        stopping.join(0.01)
