"""The node shim as a real process, driven as the orchestrator drives it: a configuration file,
its ``YW-SHIM`` line, a lease, proxied and reverse connections over TLS with pinned certificates.
The certificates come from :mod:`ywmagics.orchestrator.placements.certificates`."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ywmagics.orchestrator.placements import certificates, node_shim
from ywmagics.orchestrator.placements.certificates import client_context, pinned, self_signed

from .conftest import PYTHON38, needs_python38, running

pytestmark = pytest.mark.slow  # about 16 s: leases lapse for real (2.5 s without those tests)

SHIM = node_shim.__file__
LEASE, PROXY, REVERSE = "yw-lease", "http/1.1", "yw-reverse"

# A tiny backend: HTTP on {socket} or {port}; /call asks the orchestrator at its
# YW_ORCHESTRATOR_URL. "drain" and "greet" are raw Unix socket servers that half-close.
BACKEND = r"""
import http.client, http.server, json, os, socket, socketserver, sys, urllib.parse

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/call":
            url = urllib.parse.urlsplit(os.environ["YW_ORCHESTRATOR_URL"])
            connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            connection.request("GET", "/hello")
            body = connection.getresponse().read()
            connection.close()
        else:
            body = json.dumps({"pid": os.getpid(), "argv": sys.argv, "env": dict(os.environ)})
            body = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class TcpHandler(Handler):
    disable_nagle_algorithm = True

mode, where = sys.argv[1], sys.argv[2]
if mode == "unix":
    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
    Server(where, Handler).serve_forever()
elif mode == "tcp":
    class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
    Server(("127.0.0.1", int(where)), TcpHandler).serve_forever()
else:
    server = socket.socket(socket.AF_UNIX)
    server.bind(where)
    server.listen()
    while True:
        connection, _ = server.accept()
        with connection:
            if mode == "greet":
                connection.sendall(b"hello")
                connection.shutdown(socket.SHUT_WR)
            received = []
            while True:
                data = connection.recv(65536)
                if not data:
                    break
                received.append(data)
            if mode == "drain":
                connection.sendall(b"read %d bytes" % sum(map(len, received)))
            else:
                with open(sys.argv[3], "wb") as file:
                    file.write(b"".join(received))
"""
HTTP_UNIX = [sys.executable, "-c", BACKEND, "unix", "{socket}"]
HTTP_TCP = [sys.executable, "-c", BACKEND, "tcp", "{port}"]


@dataclass(frozen=True)
class Pki:
    shim: tuple[str, str]
    orchestrator: tuple[str, str]
    foreign: tuple[str, str]

    def context(self, alpn: str, client: tuple[str, str] | None = None) -> ssl.SSLContext:
        return client_context(self.shim[0], *(client or self.orchestrator), [alpn])


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki(self_signed("shim"), self_signed("orchestrator"), self_signed("orchestrator"))


@dataclass
class Shim:
    process: subprocess.Popen[str]
    config: Path
    stderr: list[str] = field(default_factory=list)
    line: str = ""  # its YW-SHIM line
    address: dict[str, Any] = field(default_factory=dict)
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.address["host"], self.address["port"]

    def said(self) -> str:
        return "\n".join(self.stderr)

    def ended(self, timeout: float) -> int:
        return self.process.wait(timeout)


StartShim = Callable[..., Shim]


def _read_lines(stream: Any, into: list[str], found: queue.Queue[str] | None) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))
        if found is not None and line.startswith("YW-SHIM "):
            found.put(line)


@pytest.fixture
def start_shim(tmp_path: Path, pki: Pki) -> Iterator[StartShim]:
    started: list[Shim] = []

    def start(
        argv: list[str] = HTTP_UNIX,
        listen: str = "unix",
        lease: float = 10.0,
        mode: int = 0o600,
        wait: bool = True,
        python: str = sys.executable,
        nofile: tuple[int, int] | None = None,
    ) -> Shim:
        config = tmp_path / f"shim-{len(started)}.json"
        settings = {
            "argv": argv,
            "env": {"YW_PARTITION": "p1", "YW_ORCHESTRATOR_URL": "http://elsewhere:1"},
            "cwd": str(tmp_path),
            "listen": listen,
            "reach": "127.0.0.1",
            "cert": pki.shim[0],
            "key": pki.shim[1],
            "peer": pki.orchestrator[0],
            "lease": lease,
            "ready_path": "/",
        }
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(settings, file)
        config.chmod(mode)
        limit = ["prlimit", f"--nofile={nofile[0]}:{nofile[1]}"] if nofile else []
        process = subprocess.Popen(
            [*limit, python, "-I", SHIM, str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        shim = Shim(process, config)
        started.append(shim)
        found: queue.Queue[str] = queue.Queue()
        for stream, into, ready in (
            (process.stdout, [], found),
            (process.stderr, shim.stderr, None),
        ):
            reader = threading.Thread(target=_read_lines, args=(stream, into, ready), daemon=True)
            reader.start()
            shim.readers.append(reader)
        if wait:
            try:
                line = found.get(timeout=30)
            except queue.Empty:
                pytest.fail(f"no YW-SHIM line; it said: {shim.said()}")
            shim.line = line.rstrip("\n")
            shim.address = json.loads(shim.line.split(" ", 1)[1])
        return shim

    yield start
    for shim in started:
        if shim.process.poll() is None:
            shim.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                shim.process.wait(10)
        shim.process.kill()
        shim.process.wait()
        for reader in shim.readers:
            reader.join(10)
        for stream in (shim.process.stdout, shim.process.stderr):
            if stream is not None:
                stream.close()
        if shim.address:
            with contextlib.suppress(OSError):
                os.killpg(shim.address["pid"], signal.SIGKILL)


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie that no one reaps counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def connect(endpoint: tuple[str, int], context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(endpoint, timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return context.wrap_socket(raw)


def http_connection(sock: ssl.SSLSocket) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("ywmagics-node")
    connection.sock = sock  # already connected: through the shim
    return connection


def get(connection: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    connection.request("GET", path)
    answer = connection.getresponse()
    return answer.status, answer.read()


def ready_connection(
    shim: Shim, context: ssl.SSLContext, timeout: float = 30.0
) -> http.client.HTTPConnection:
    """A connection through the shim once the backend answers (as the orchestrator waits for
    readiness: a connection closed unanswered means not listening yet)."""
    deadline = time.monotonic() + timeout
    while True:
        connection = http_connection(connect(shim.endpoint, context))
        try:
            get(connection, "/")
            return connection
        except (http.client.RemoteDisconnected, ConnectionResetError):
            connection.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def answers(endpoint: tuple[str, int], context: ssl.SSLContext) -> bool:
    """Whether an HTTP request on a connection made with ``context`` gets any answer."""
    try:
        with connect(endpoint, context) as sock:
            sock.sendall(b"GET /env HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(100) != b""
    except (ssl.SSLError, OSError):
        return False


class Lease:
    """The orchestrator's side of a lease, in a thread of its own (an SSL socket is not for two
    threads at once): ``PING`` every 0.3 s while ``pinging`` is set, lines sent on request."""

    def __init__(self, shim: Shim, pki: Pki, on_need: Callable[[int], None] | None = None):
        self.sock = connect(shim.endpoint, pki.context(LEASE))
        self.sock.settimeout(0.05)
        self.lines: queue.Queue[str] = queue.Queue()
        self.outbox: queue.Queue[str] = queue.Queue()
        self.on_need = on_need
        self.pinging = threading.Event()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self, every: float = 0.3) -> None:
        buffer, due = b"", 0.0
        while not self.closed.is_set():
            try:
                while not self.outbox.empty():
                    self.sock.sendall(self.outbox.get().encode())
                if self.pinging.is_set() and time.monotonic() >= due:
                    self.sock.sendall(b"PING\n")
                    due = time.monotonic() + every
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            *lines, buffer = (buffer + data).split(b"\n")
            for line in lines:
                text = line.decode()
                if text.startswith("NEED ") and self.on_need is not None:
                    self.on_need(int(text.split()[1]))
                self.lines.put(text)

    def expect(self, line: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                if self.lines.get(timeout=0.1) == line:
                    return
        pytest.fail(f"no {line!r} on the lease in {timeout} s")

    def send(self, line: str) -> None:
        self.outbox.put(line)

    def close(self) -> None:
        self.closed.set()
        self.thread.join(5)
        self.sock.close()


OpenLease = Callable[..., Lease]


@pytest.fixture
def open_lease(pki: Pki) -> Iterator[OpenLease]:
    opened: list[Lease] = []

    def open_one(shim: Shim, on_need: Callable[[int], None] | None = None) -> Lease:
        opened.append(Lease(shim, pki, on_need))
        return opened[-1]

    yield open_one
    for lease in opened:
        lease.close()


def test_it_proxies_to_the_backend_and_reports_where_it_listens(
    start_shim: StartShim, pki: Pki, open_lease: OpenLease
) -> None:
    shim = start_shim()
    assert not shim.config.exists()  # deleted as soon as it was read
    assert re.fullmatch(r'YW-SHIM \{"host": "127\.0\.0\.1", "port": \d+, "pid": \d+\}', shim.line)
    lease = open_lease(shim)
    assert pinned(lease.sock, pki.shim[0])
    assert not pinned(lease.sock, pki.foreign[0])
    lease.send("PING\n")
    lease.expect("PONG")

    strict = pki.context(PROXY)
    strict.verify_flags |= ssl.VERIFY_X509_STRICT  # as Python 3.13's default contexts check
    connection = ready_connection(shim, strict)
    status, body = get(connection, "/env")
    assert status == 200
    backend = json.loads(body)
    assert backend["pid"] == shim.address["pid"]
    socket_path = backend["argv"][-1]
    assert socket_path.endswith("/backend.sock")
    assert os.stat(os.path.dirname(socket_path)).st_mode & 0o777 == 0o700
    assert os.listdir(os.path.dirname(socket_path)) == ["backend.sock"]  # keys gone once loaded
    env = backend["env"]
    assert env["YW_PARTITION"] == "p1"
    assert env["YW_ORCHESTRATOR_URL"].startswith("http://127.0.0.1:")  # the shim's, not given
    assert not any("PRIVATE KEY" in value for value in env.values())
    assert get(connection, "/again")[0] == 200  # the connection is kept alive
    took = []
    for _ in range(20):
        start = time.perf_counter()
        get(connection, "/")
        took.append(time.perf_counter() - start)
    # Nagle's algorithm left on anywhere on the way shows as 40 ms (delayed ACKs) a request.
    assert sorted(took)[10] < 0.02
    connection.close()
    with open(f"/proc/{shim.process.pid}/cmdline", "rb") as cmdline:
        assert b"PRIVATE" not in cmdline.read()
    lease.close()


@needs_python38
def test_it_runs_on_the_oldest_python_a_node_may_have(
    start_shim: StartShim, pki: Pki, open_lease: OpenLease
) -> None:
    shim = start_shim(python=str(PYTHON38))
    lease = open_lease(shim)
    lease.expect(f"NEED {node_shim.REVERSE_SPARE}")
    with contextlib.closing(ready_connection(shim, pki.context(PROXY))) as connection:
        assert get(connection, "/")[0] == 200
    lease.send("STOP\n")
    assert shim.ended(10) == 0


def test_a_tcp_backend_gets_its_port(start_shim: StartShim, pki: Pki) -> None:
    shim = start_shim(HTTP_TCP, listen="tcp")
    with contextlib.closing(ready_connection(shim, pki.context(PROXY))) as connection:
        status, body = get(connection, "/")
    backend = json.loads(body)
    assert status == 200
    assert backend["env"]["PORT"] == backend["argv"][-1]


def test_only_the_orchestrators_certificate_and_known_alpns_get_in(
    start_shim: StartShim, pki: Pki
) -> None:
    shim = start_shim()
    foreign = pki.context(PROXY, client=pki.foreign)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=pki.shim[0])
    anonymous.set_alpn_protocols([PROXY])
    assert not answers(shim.endpoint, foreign)
    assert not answers(shim.endpoint, anonymous)
    assert not answers(shim.endpoint, pki.context("h2"))
    no_alpn = client_context(pki.shim[0], *pki.orchestrator, [])
    assert not answers(shim.endpoint, no_alpn)
    ready_connection(shim, pki.context(PROXY)).close()  # and the orchestrator does
    said = shim.said()
    assert "ywmagics node shim: refused a connection from 127.0.0.1" in said
    assert "no known ALPN" in said


def test_a_connection_before_the_backend_listens_is_closed_unanswered(
    start_shim: StartShim, pki: Pki, open_lease: OpenLease
) -> None:
    shim = start_shim([sys.executable, "-c", "import time; time.sleep(60)"])
    assert not answers(shim.endpoint, pki.context(PROXY))
    lease = open_lease(shim)
    lease.send("STOP\n")
    assert shim.ended(10) == 0


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_configuration_others_could_read_is_refused(start_shim: StartShim, mode: int) -> None:
    shim = start_shim(mode=mode, wait=False)
    assert shim.ended(30) == 2
    assert f"mode {mode:o}, must be 600" in shim.said()
    assert shim.said().startswith("ywmagics node shim: ")
    assert not shim.config.exists()  # its key may have been read: not left there either


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a file to another user")
def test_a_configuration_of_another_user_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text("{}")
    other.chmod(0o600)
    os.chown(other, 65534, 65534)
    done = subprocess.run(
        [sys.executable, "-I", SHIM, str(other)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "is not a file of this user" in done.stderr
    assert other.exists()  # not ours to delete


def test_stop_on_the_lease_ends_the_backend(
    start_shim: StartShim, pki: Pki, open_lease: OpenLease
) -> None:
    shim = start_shim()
    with contextlib.closing(ready_connection(shim, pki.context(PROXY))) as connection:
        private = os.path.dirname(json.loads(get(connection, "/")[1])["argv"][-1])
    lease = open_lease(shim)
    lease.send("PING\nSTOP\n")
    assert shim.ended(10) == 0
    assert not os.path.exists(private)
    assert gone(shim.address["pid"])
    assert "stopped by the orchestrator" in shim.said()
    lease.close()


def test_the_shim_exits_as_the_backend_exits(start_shim: StartShim) -> None:
    shim = start_shim([sys.executable, "-c", "import sys, time; time.sleep(0.3); sys.exit(7)"])
    assert shim.ended(30) == 7
    assert "ywmagics node shim: the backend exited with code 7" in shim.said()


def test_sigterm_ends_the_backend_then_the_shim(start_shim: StartShim) -> None:
    shim = start_shim()
    shim.process.send_signal(signal.SIGTERM)
    assert shim.ended(10) == 128 + signal.SIGTERM
    assert gone(shim.address["pid"])
    assert "got SIGTERM" in shim.said()


@pytest.mark.parametrize("how", ["closed", "silent", "never"])
def test_a_lapsed_lease_ends_the_backend_and_the_shim(
    start_shim: StartShim, pki: Pki, how: str, open_lease: OpenLease
) -> None:
    shim = start_shim(lease=2)
    if how != "never":
        lease = open_lease(shim)
        lease.pinging.set()
        time.sleep(3)  # longer than the lease: each PING renews it
        assert shim.process.poll() is None
        lease.pinging.clear()
        lapsed_from = time.monotonic()
        if how == "closed":
            lease.close()
    else:
        lapsed_from = time.monotonic()
    assert shim.ended(2 + 3 + 2) == 75
    assert time.monotonic() - lapsed_from < 2 + 3
    assert gone(shim.address["pid"])
    assert "ywmagics node shim: no lease renewed for 2 s" in shim.said()


class _Orchestrator(http.server.BaseHTTPRequestHandler):
    """What answers a backend's call at the orchestrator's end of a reverse connection."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"hello from the orchestrator at {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_backends_calls_come_back_over_reverse_connections(
    start_shim: StartShim, pki: Pki, open_lease: OpenLease
) -> None:
    shim = start_shim()
    needs: list[int] = []

    def serve(sock: ssl.SSLSocket) -> None:
        with sock:
            _Orchestrator(sock, ("reverse", 0), None)  # type: ignore[arg-type]

    def on_need(count: int) -> None:
        needs.append(count)
        for _ in range(count):
            sock = connect(shim.endpoint, pki.context(REVERSE))
            threading.Thread(target=serve, args=(sock,), daemon=True).start()

    lease = open_lease(shim, on_need)
    lease.pinging.set()
    lease.expect(f"NEED {node_shim.REVERSE_SPARE}")
    with contextlib.closing(ready_connection(shim, pki.context(PROXY))) as connection:
        connection.sock.settimeout(30)
        assert get(connection, "/call") == (200, b"hello from the orchestrator at /hello")
        assert get(connection, "/call")[0] == 200
    lease.expect("NEED 1")  # a reverse connection serves one call: the spare is made up
    lease.close()


def _half_closed_exchange(endpoint: tuple[str, int], context: ssl.SSLContext, sent: bytes) -> bytes:
    """Send ``sent``, then close_notify (TLS's half-close), then read all that comes back."""
    sock = socket.create_connection(endpoint, timeout=10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    tls.write(sent)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.unwrap()
    sock.sendall(outgoing.read())
    received = b""
    with sock:
        while data := sock.recv(65536):
            incoming.write(data)
            try:
                while chunk := tls.read(65536):
                    received += chunk
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLZeroReturnError:  # the other side's close_notify
                break
    return received


def _wait_listening(shim: Shim, timeout: float = 30.0) -> None:
    """Until the backend's socket (its fifth argument) exists: these backends answer nothing."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{shim.address['pid']}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")  # the shim's own until the backend's exec
        if argv[2:3] == [BACKEND.encode()] and os.path.exists(argv[4]):
            return
        assert time.monotonic() < deadline, "the backend does not listen"
        time.sleep(0.02)


def test_half_closes_are_passed_on_both_ways(
    start_shim: StartShim, pki: Pki, tmp_path: Path
) -> None:
    drain = start_shim([sys.executable, "-c", BACKEND, "drain", "{socket}"])
    _wait_listening(drain)
    context = pki.context(PROXY)
    # close_notify from the client: the backend reads to its end, then answers
    assert _half_closed_exchange(drain.endpoint, context, b"x" * 100_000) == b"read 100000 bytes"
    # a TCP end without close_notify counts the same
    with connect(drain.endpoint, context) as sock:
        sock.sendall(b"abc")
        socket.socket.shutdown(sock, socket.SHUT_WR)
        assert sock.recv(100) == b"read 3 bytes"

    written = tmp_path / "received"
    greet = start_shim([sys.executable, "-c", BACKEND, "greet", "{socket}", str(written)])
    _wait_listening(greet)
    with connect(greet.endpoint, context) as sock:
        assert sock.recv(100) == b"hello"
        assert sock.recv(100) == b""  # the backend's half-close, as close_notify
        sock.sendall(b"still heard")  # the other way stays open
    deadline = time.monotonic() + 10
    while not (written.exists() and written.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert written.read_bytes() == b"still heard"


def test_certificates_are_fresh_and_fingerprinted() -> None:
    first, second = self_signed("a"), self_signed("a")
    assert first[0] != second[0] and first[1] != second[1]
    assert certificates.fingerprint(first[0]) != certificates.fingerprint(second[0])
    assert len(certificates.fingerprint(first[0])) == 64
    assert "PRIVATE KEY" in first[1] and "CERTIFICATE" in first[0]


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end has closed ``sock`` by now (looked at without waiting)."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def test_a_flood_of_connections_is_capped_said_in_few_lines_and_the_orchestrator_served_on(
    start_shim: StartShim, pki: Pki, open_lease: OpenLease
) -> None:
    shim = start_shim()
    lease = open_lease(shim)
    lease.pinging.set()
    served = ready_connection(shim, pki.context(PROXY))
    _, body = get(served, "/env")
    calls_port = int(json.loads(body)["env"]["YW_ORCHESTRATOR_URL"].rsplit(":", 1)[1])
    foreign = pki.context(PROXY, client=pki.foreign)
    for _ in range(60):
        assert not answers(shim.endpoint, foreign)
    # Another user of the node fills the port for the backend's calls, and the TLS port with
    # connections that never begin their handshake: those beyond the caps are closed at once.
    calls = [
        socket.create_connection(("127.0.0.1", calls_port)) for _ in range(node_shim.MAX_CALLS + 20)
    ]
    silent = [
        socket.create_connection(shim.endpoint) for _ in range(node_shim.MAX_HANDSHAKING + 20)
    ]
    try:
        time.sleep(0.5)
        assert sum(map(_closed_by_peer, calls)) == 20
        assert sum(map(_closed_by_peer, silent)) == 20
        assert get(served, "/")[0] == 200  # the orchestrator's connection is served on
    finally:
        served.close()
        for sock in calls + silent:
            sock.close()
    time.sleep(0.2)
    ready_connection(shim, pki.context(PROXY)).close()  # and new ones once those are gone
    lease.send("PING\n")
    lease.expect("PONG")
    assert shim.process.poll() is None
    # One line per kind, however many came (60 refused, 20 and 20 closed).
    said = [line for line in shim.stderr if "refused" in line or "closed a connection" in line]
    assert len(said) == 3, said
    assert "refused a connection from 127.0.0.1" in said[0]
    assert "backend's calls: 128 are already open" in said[1]
    assert "256 are already in their handshake" in said[2]


def test_the_shim_raises_its_descriptor_limit_to_the_hard_one(start_shim: StartShim) -> None:
    shim = start_shim(nofile=(256, 4096))  # as a node's defaults may be
    limits = Path(f"/proc/{shim.process.pid}/limits").read_text()
    (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert line.split()[3:5] == ["4096", "4096"], line


def test_a_build_on_the_node_ends_with_the_shim_on_sigterm(tmp_path: Path, pki: Pki) -> None:
    """srun passes a stop or a kill on as SIGTERM: the build's step must not run on alone."""
    from ywmagics.orchestrator.placements import slurm

    from .test_node_build import _spec

    config = {
        "argv": HTTP_UNIX, "env": {}, "cwd": "{env}", "listen": "unix", "reach": "127.0.0.1",
        "cert": pki.shim[0], "key": pki.shim[1], "peer": pki.orchestrator[0], "lease": 10.0,
        "build": _spec(tmp_path / "node", install=[["sleep", "93"]]),
    }  # fmt: skip
    shim = subprocess.Popen(
        [sys.executable, "-I", "-c", slurm.BOOTSTRAP],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert shim.stdin is not None and shim.stdout is not None
    try:
        shim.stdin.write(f"{slurm.shim_sources()}\n{json.dumps(config)}\n")
        shim.stdin.flush()  # and kept open, as the orchestrator keeps it
        for line in shim.stdout:
            if line.startswith("YW-BUILD ") and "install step 1/1" in line:
                break
        time.sleep(0.3)
        assert running("sleep", "93")
        shim.send_signal(signal.SIGTERM)
        assert shim.wait(10) == node_shim.BUILD_FAILED
        time.sleep(0.3)
        assert not running("sleep", "93"), "the build's step outlived the shim"
    finally:
        shim.kill()
        shim.wait()
        for stream in (shim.stdin, shim.stdout, shim.stderr):
            if stream is not None:
                stream.close()
