"""The node shim: started on a cluster node instead of the backend, and its only network listener.

Standard library only, Python 3.8 or later, one file (it runs with whatever ``python3`` the
node has)::

    python3 -I node_shim.py CONFIG_PATH
    python3 -I -c BOOTSTRAP        (where no folder is shared: see below)

CONFIG_PATH is a private JSON file (mode 0600, this user's), deleted as soon as it is read::

    {"argv": [...], "env": {...}, "cwd": "...", "listen": "unix" | "tcp", "reach": "HOST",
     "cert": "PEM", "key": "PEM", "peer": "PEM", "lease": 10.0, "build": {...}}

(Other fields are ignored.) Where the node shares no folder with the orchestrator, ``-`` in place
of CONFIG_PATH reads that JSON as one line of stdin (srun's, a pipe of the orchestrator), after
``slurm.BOOTSTRAP`` has read this file's source and :mod:`node_build`'s from the line before. Then
``build`` says what to build on the node first (see
:mod:`~ywmagics.orchestrator.placements.node_build`), each step said on stdout as ``YW-BUILD
{"text": ..., "progress": ...}``, the end as ``YW-BUILT {...}`` or ``YW-FAILED {"message": ...,
"tail": [...]}`` (exit 3); ``{env}``, ``{app}``, ``{python}`` and ``{data}`` in ``argv``, ``env``
and ``cwd`` are then the built environment's. The end of stdin during the build (the orchestrator
gone) cancels it.

The shim starts the backend (``{socket}`` or ``{port}`` in ``argv`` and ``env`` filled in, on a
Unix socket in a private folder or a TCP port on 127.0.0.1; the node's environment with ``env``
on top), listens for TLS 1.3 on the address the node uses to reach ``reach`` and prints one line,
``YW-SHIM {"host": ..., "port": ..., "pid": <backend pid>}``. Only the certificate ``peer``
(pinned by its SHA-256) is let in; ALPN says what a connection is:

- ``yw-lease``: ``PING`` lines answered by ``PONG``; ``STOP`` ends the backend (exit 0). No
  ``PING`` for ``lease`` seconds, from the start too, ends it (exit 75). The shim asks for
  reverse connections there with ``NEED <n>``.
- ``http/1.1``: relayed byte for byte to the backend, half-closes passed on. One made before
  the backend listens is closed unanswered: readiness is an answer.
- ``yw-reverse``: kept idle until the backend connects to its ``YW_ORCHESTRATOR_URL`` (a port
  of the shim on 127.0.0.1), then relayed: the backend's calls go back over connections the
  orchestrator opened, and the node never connects out.

It exits as the backend exits (its code, 128 + N for signal N), ends the backend on SIGTERM,
SIGINT or SIGHUP (exit 128 + N), and exits 2 without starting it on a configuration it refuses.
Everything it says is one line on stderr, starting ``ywmagics node shim:``.

On the node, a Unix socket backend is reachable by this user only (a 0700 folder); a TCP
backend's port and the shim's port for the backend's calls are on 127.0.0.1, which other users
of the same node can reach too (the calls still need the instance's token).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

READY = "YW-SHIM"
BUILD, BUILT, FAILED = "YW-BUILD", "YW-BUILT", "YW-FAILED"
LEASE, PROXY, REVERSE = "yw-lease", "http/1.1", "yw-reverse"
USAGE_ERROR = 2  # exit code: refused to run (bad or unsafe configuration)
LEASE_LAPSED = 75  # exit code: the orchestrator stopped renewing the lease (EX_TEMPFAIL)
BUILD_FAILED = 3  # exit code: the environment could not be built on the node
END_GRACE = 3.0  # seconds the backend has after SIGTERM, then SIGKILL
HANDSHAKE_TIMEOUT = 10.0
REVERSE_WAIT = 10.0  # seconds a backend's call waits for a reverse connection
REVERSE_SPARE = 2  # idle reverse connections kept ahead of the backend's calls
NEED_RETRY = 5.0  # seconds after which reverse connections asked for and not come are asked again
CHUNK = 256 * 1024
# Anyone who reaches the node can open connections (its TLS port), and any user of the node the
# port for the backend's calls: so many at most wait there, beyond them new ones are closed at
# once, so that they cannot take every descriptor of the shim (its established connections, the
# orchestrator's, go on). Each kind of complaint is said at most once per SAY_EVERY seconds.
MAX_HANDSHAKING = 256  # TLS connections that have not shown the orchestrator's certificate
MAX_CALLS = 128  # connections of the backend's calls, waiting or relayed
SAY_EVERY = 10.0


def say(message: str) -> None:
    text = " ".join(str(message).split())  # one line, whatever an error's text holds
    print(f"ywmagics node shim: {text}", file=sys.stderr, flush=True)


_said_at: dict[str, tuple[float, int]] = {}  # kind -> when last said, how many held back since


def say_now_and_then(kind: str, message: str) -> None:
    """:func:`say`, for what others can make happen at will (a flood of connections): each
    ``kind`` once per :data:`SAY_EVERY` seconds, with the count of those held back (else the
    log, which is the orchestrator's, grows as fast as they can connect)."""
    now = time.monotonic()
    last, held = _said_at.get(kind, (-SAY_EVERY, 0))
    if now - last < SAY_EVERY:
        _said_at[kind] = (last, held + 1)
        return
    _said_at[kind] = (now, 0)
    say(message + (f" ({held} more like it in the last {now - last:.0f} s)" if held else ""))


def raise_descriptor_limit() -> None:
    """Up to the hard limit: a node's soft limit (often 1024) is for programs, not relays."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


class Refused(Exception):
    """The shim will not run: the configuration is missing, unsafe or wrong."""


class Config:
    """The configuration, checked: a mistake is told before anything starts."""

    def __init__(self, raw: dict[str, Any]) -> None:
        def field(name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
            value = raw.get(name, default)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise Refused(
                    f"configuration field {name!r} is missing or not a {kinds[0].__name__}"
                )
            return value

        self.argv: list[str] = field("argv", (list,))
        self.env: dict[str, str] = field("env", (dict,), {})
        if not self.argv or not all(isinstance(arg, str) for arg in self.argv):
            raise Refused("configuration field 'argv' must be a non-empty list of strings")
        if not all(isinstance(value, str) for value in self.env.values()):
            raise Refused("configuration field 'env' must map names to strings")
        self.cwd: str = field("cwd", (str,), os.getcwd())
        self.listen: str = field("listen", (str,), "unix")
        if self.listen not in ("unix", "tcp"):
            raise Refused(f"configuration field 'listen' is {self.listen!r}, not 'unix' or 'tcp'")
        self.reach: str = field("reach", (str,))
        self.cert: str = field("cert", (str,))
        self.key: str = field("key", (str,))
        self.peer: str = field("peer", (str,))
        self.lease = float(field("lease", (float, int), 10.0))
        if self.lease <= 0:
            raise Refused("configuration field 'lease' must be positive")
        try:
            self.peer_digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(self.peer)).digest()
        except ValueError:
            raise Refused("configuration field 'peer' is not a PEM certificate") from None
        self.build: dict[str, Any] | None = raw.get("build")
        if self.build is not None and not isinstance(self.build, dict):
            raise Refused("configuration field 'build' must be an object")

    def fill(self, placeholders: dict[str, str]) -> None:
        """Put the built environment's paths into what starts the backend."""

        def filled(text: str) -> str:
            for name, value in placeholders.items():
                text = text.replace("{" + name + "}", value)
            return text

        self.argv = [filled(arg) for arg in self.argv]
        self.env = {name: filled(value) for name, value in self.env.items()}
        self.cwd = filled(self.cwd)


def read_config(path: str) -> Config:
    """Read and delete the configuration; refuse one that others could have read (its key)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise Refused(f"cannot open the configuration {path}: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise Refused(f"{path} is not a file of this user (uid {os.getuid()}): refused")
        try:
            os.unlink(path)  # the key is in it: no longer on disk than needed, refused or not
        except OSError as error:
            say(f"could not delete the configuration {path}: {error.strerror}")
        if info.st_mode & 0o077:
            raise Refused(
                f"{path} is open to group or others (mode {stat.S_IMODE(info.st_mode):o}, must "
                "be 600): refused, its private key may have been read"
            )
        try:
            raw = json.loads(file.read())
        except ValueError as error:
            raise Refused(f"{path} is not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise Refused(f"{path} is not a JSON object")
    return Config(raw)


def read_config_line() -> Config:
    """The configuration as the next line of stdin (no folder is shared with the orchestrator)."""
    try:
        raw = json.loads(sys.stdin.buffer.readline())
    except ValueError as error:
        raise Refused(f"the configuration on stdin is not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise Refused("the configuration on stdin is not a JSON object")
    return Config(raw)


def build_on_node(config: Config) -> int:
    """Build the environment that ``config.build`` describes, or find it built; 0 once the
    backend's paths are filled in, else :data:`BUILD_FAILED` (said on stdout)."""
    if TYPE_CHECKING:
        from ywmagics.orchestrator.placements import node_build
    else:  # sent with this file's source (slurm.BOOTSTRAP): there is no package on the node
        import node_build

    def report(text: str, progress: float | None) -> None:
        said = {"text": text[: node_build.MAX_LINE], "progress": progress}
        print(f"{BUILD} {json.dumps(said)}", flush=True)

    def failed(error: node_build.BuildFailed) -> int:
        tail = [line[:500] for line in error.tail[-node_build.TAIL_LINES :]]
        said = {"message": error.message[: node_build.MAX_LINE], "tail": tail}
        print(f"{FAILED} {json.dumps(said)}", flush=True)
        return BUILD_FAILED

    assert config.build is not None
    try:
        builder = node_build.Builder(config.build, report)
    except node_build.BuildFailed as error:
        return failed(error)

    def watch_stdin() -> None:  # its end: the orchestrator (and its pipe to srun) is gone
        # The descriptor itself, not sys.stdin: a thread blocked in a buffered read holds its
        # lock, and the interpreter aborts at exit on it.
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        builder.cancel()

    threading.Thread(target=watch_stdin, daemon=True).start()
    # srun passes a stop or a kill on as SIGTERM: the build's steps (their own sessions) must end
    # with it, not run on as orphans once this process has died of the signal.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: builder.cancel())
    started = time.monotonic()
    try:
        placed = builder.run()
    except node_build.BuildFailed as error:
        if builder.cancelled.is_set():  # nobody waits for this job: its allocation too
            end_own_job()
        return failed(error)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)  # the shim's own handlers come with its loop
    done = {
        "built": bool(placed.pop("built")),
        "node": node_build.node_name(),
        "seconds": round(time.monotonic() - started, 2),
        "python_version": placed.pop("python_version"),
        "env": placed["env"],
    }
    print(f"{BUILT} {json.dumps(done)}", flush=True)
    config.fill(placed)
    return 0


def private_file(folder: str, name: str, text: str) -> str:
    path = os.path.join(folder, name)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    return path


def server_context(config: Config, folder: str) -> ssl.SSLContext:
    if not getattr(ssl, "HAS_TLSv1_3", False):
        raise Refused(f"this Python's {ssl.OPENSSL_VERSION} has no TLS 1.3")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.num_tickets = 0  # no session resumption: every connection shows its certificate
    context.set_alpn_protocols([LEASE, PROXY, REVERSE])
    try:
        context.load_verify_locations(cadata=config.peer)
        # load_cert_chain reads files only: they live for this call, in the private folder.
        cert = private_file(folder, "shim.crt", config.cert)
        key = private_file(folder, "shim.key", config.key)
        try:
            context.load_cert_chain(cert, key)
        finally:
            os.unlink(key)
            os.unlink(cert)
    except ssl.SSLError as error:
        raise Refused(f"the certificates of the configuration do not load: {error}") from None
    return context


def local_address(reach: str) -> tuple[int, str]:
    """The family and address this node reaches ``reach`` from (a UDP connect sends nothing)."""
    family, _, _, _, address = socket.getaddrinfo(reach, 9, 0, socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(address)
        return family, str(probe.getsockname()[0])


def listener(family: int, host: str) -> socket.socket:
    """A listening socket on a port the kernel picks, kept open: no race for the port."""
    # IPPROTO_TCP said, not 0: asyncio turns Nagle off only on sockets that say it, and Nagle
    # with delayed ACKs holds a request's last segment for 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def free_port() -> int:
    # Only for backends that insist on TCP: the backend binds the port itself, so a short race
    # remains. Unix sockets (the default) have none.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class End(Protocol):
    """What one side of a relay offers the other (and a lease offers its connection)."""

    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Side(asyncio.Protocol):
    """One connection of a relay: what it reads goes to its peer, the peer's flow control
    pauses it (a slow reader on one side holds the other, nothing piles up in the shim)."""

    def __init__(self, shim: Shim, peer: End | None) -> None:
        self.shim, self.peer = shim, peer
        self.transport = cast(asyncio.Transport, None)
        self.eof_in = self.eof_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.shim.transports.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.shim.transports.discard(self.transport)
        if self.peer is not None:
            self.peer.close()
        self.shim.forget(self)

    def admit(self, into: set[Any], cap: int, kind: str, refusal: str) -> bool:
        """Count this connection in ``into``; one past ``cap`` is closed at once instead."""
        if len(into) >= cap:
            self.transport.abort()
            say_now_and_then(kind, refusal)
            return False
        into.add(self)
        return True

    def attach(self, peer: End) -> None:
        self.peer = peer
        if self.eof_in:
            peer.write_eof()
        self.transport.resume_reading()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()


class Tls(Side):
    """A TLS connection from the orchestrator, decrypted here through memory buffers rather than
    by asyncio's TLS transport, which cannot half-close (TLS 1.3's close_notify can)."""

    def __init__(self, shim: Shim, context: ssl.SSLContext) -> None:
        super().__init__(shim, None)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.pending: list[bytes] = []  # what came before there was a peer to give it to
        self.ready = self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.timer = self.shim.loop.call_later(HANDSHAKE_TIMEOUT, self.transport.abort)
        self.admit(
            self.shim.handshaking,
            MAX_HANDSHAKING,
            "handshakes",
            f"closed a connection from {self._address()}: {MAX_HANDSHAKING} are already in "
            "their handshake",
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.timer.cancel()
        self.shim.handshaking.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.ready:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                return self._flush()
            except ssl.SSLError as error:
                self._flush()  # the alert, so that the client learns why
                self.transport.close()
                why = f"refused a connection from {self._address()}: {error.reason or error}"
                return say_now_and_then("handshake", why)
            self.ready = True
            self.shim.handshaking.discard(self)
            self.timer.cancel()
            self._flush()
            if not self.shim.accept(self):
                return self.close()
        self._read()

    def eof_received(self) -> bool:
        if self.ready:
            self._end_of_input()  # a TCP end with no close_notify counts as one
        return self.ready

    def _read(self) -> None:
        chunks, eof = [], False
        while True:
            try:
                chunk = self.tls.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                eof = True
                break
            except ssl.SSLError:
                return self.transport.abort()
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        self._flush()
        if chunks and self.peer is None:
            self.pending.append(b"".join(chunks))
            self.transport.pause_reading()
        elif chunks and self.peer is not None:
            self.peer.write(b"".join(chunks))
        if eof:
            self._end_of_input()

    def _end_of_input(self) -> None:
        if not self.eof_in:
            self.eof_in = True
            if self.peer is not None:
                self.peer.write_eof()
            if self.eof_out:
                self.transport.close()

    def _flush(self) -> None:
        if self.outgoing.pending and not self.transport.is_closing():
            self.transport.write(self.outgoing.read())

    def _address(self) -> str:
        return str(self.transport.get_extra_info("peername", ("?",))[0])

    def attach(self, peer: End) -> None:
        if self.closed:
            return peer.close()
        if self.pending:
            peer.write(b"".join(self.pending))
            self.pending = []
        super().attach(peer)

    def write(self, data: bytes) -> None:
        if self.closed or self.eof_out:
            return
        try:
            self.tls.write(data)  # into memory: all of it at once
        except ssl.SSLError:
            return self.transport.abort()
        self._flush()

    def write_eof(self) -> None:
        if self.closed or self.eof_out:
            return
        self.eof_out = True
        # Puts close_notify out, and our side can still read (SSLWantReadError: the peer's own
        # close_notify is not waited for).
        with contextlib.suppress(ssl.SSLError):
            self.tls.unwrap()
        self._flush()
        if self.eof_in:
            self.transport.close()

    def close(self) -> None:
        if not self.closed:
            self.write_eof()
            self.transport.close()


class Plain(Side):
    """A connection on the node: the shim's to the backend (a proxied request), or the
    backend's to the reverse listener (a call to the orchestrator, held until it has a peer)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.peer is None:  # a call of the backend (or of another user of the node)
            if not self.admit(
                self.shim.calls,
                MAX_CALLS,
                "calls",
                f"closed a connection to the port for the backend's calls: {MAX_CALLS} are "
                "already open (another user of the node may be filling it)",
            ):
                return
            self.transport.pause_reading()  # until a reverse connection is paired with it
            self.shim.wait_for_reverse(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.shim.calls.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.write(data)

    def eof_received(self) -> bool:
        self.eof_in = True
        if self.peer is not None:
            self.peer.write_eof()
        return not self.eof_out  # both ways ended: close

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.eof_out or self.transport.is_closing():
            return
        self.eof_out = True
        if self.eof_in or not self.transport.can_write_eof():
            self.transport.close()
        else:
            self.transport.write_eof()

    def close(self) -> None:
        self.transport.close()


class Lease:
    """The control connection: the orchestrator's ``PING`` and ``STOP``, the shim's ``NEED``."""

    def __init__(self, shim: Shim, tls: Tls) -> None:
        self.shim, self.tls, self.buffer = shim, tls, b""

    def write(self, data: bytes) -> None:  # what the orchestrator sent
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        if len(self.buffer) > 1024:
            return self.tls.close()  # no line of this protocol is that long
        for line in lines:
            word = line.strip()
            if word == b"PING":
                self.tls.write(b"PONG\n")
                self.shim.renew()
            elif word == b"STOP":
                self.shim.finish(0, "stopped by the orchestrator")
            elif word:
                say(f"ignored an unknown lease message {word[:40]!r}")

    def send(self, line: str) -> None:
        self.tls.write(line.encode())

    def write_eof(self) -> None:
        self.tls.close()

    def close(self) -> None:
        if self in self.shim.leases:
            self.shim.leases.remove(self)
            if not self.shim.done.done():
                say(f"a lease connection closed ({len(self.shim.leases)} left)")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Shim:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[tuple[int, str]] = self.loop.create_future()
        self.folder = tempfile.mkdtemp(prefix="yw-shim-")  # 0700
        if len(os.path.join(self.folder, "backend.sock")) > 100:  # sun_path is 108 bytes
            os.rmdir(self.folder)
            self.folder = tempfile.mkdtemp(prefix="yw-shim-", dir="/tmp")
        self.transports: set[asyncio.Transport] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.socket_path, self.port = "", 0  # the backend's: one of them
        self.backend: subprocess.Popen[bytes] | None = None
        self.exited: asyncio.Future[int] | None = None
        self.last_ping = time.monotonic()  # the first lease must come within `lease` too
        self.leases: list[Lease] = []
        self.idle: list[Tls] = []  # reverse connections from the orchestrator, unused yet
        self.waiting: dict[Plain, asyncio.TimerHandle] = {}  # backend calls without one
        self.asked, self.asked_at = 0, 0.0  # reverse connections asked for, not come yet
        self.handshaking: set[Tls] = set()  # capped: see MAX_HANDSHAKING
        self.calls: set[Plain] = set()  # capped: see MAX_CALLS

    async def run(self) -> int:
        # asyncio's own complaints (an accept that fails for want of descriptors, each time the
        # loop turns) are said the same way.
        self.loop.set_exception_handler(
            lambda _, context: say_now_and_then("asyncio", str(context.get("message")))
        )
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            name = signal.Signals(signum).name
            self.loop.add_signal_handler(signum, self.finish, 128 + signum, f"got {name}: stopped")
        try:
            await self.start()
            code, why = await self.done
        except Refused as error:
            code, why = USAGE_ERROR, str(error)
        except OSError as error:
            code, why = 1, f"could not start: {error}"
        finally:  # whatever went wrong, nothing is left running or on disk
            self.finish(1, "")
            for server in self.servers:
                server.close()
            await self.end_backend()
            for transport in list(self.transports):
                transport.abort()
            await asyncio.sleep(0)  # their connection_lost, before the last word
            shutil.rmtree(self.folder, ignore_errors=True)
        say(why)
        if code == LEASE_LAPSED:
            end_own_job()
        return code

    async def start(self) -> None:
        config = self.config
        context = server_context(config, self.folder)
        family, host = local_address(config.reach)
        public, reverse = listener(family, host), listener(socket.AF_INET, "127.0.0.1")
        self.servers = [
            await self.loop.create_server(lambda: Tls(self, context), sock=public),
            await self.loop.create_server(lambda: Plain(self, None), sock=reverse),
        ]

        if config.listen == "unix":
            self.socket_path = os.path.join(self.folder, "backend.sock")
            fill = {"{socket}": self.socket_path}
        else:
            self.port = free_port()
            fill = {"{port}": str(self.port)}

        def filled(text: str) -> str:
            for placeholder, value in fill.items():
                text = text.replace(placeholder, value)
            return text

        # The node's environment (Slurm's, the GPUs it was given) with the instance's on top.
        env = dict(os.environ)
        env.update({name: filled(value) for name, value in config.env.items()})
        env["YW_ORCHESTRATOR_URL"] = f"http://127.0.0.1:{reverse.getsockname()[1]}"
        if config.listen == "tcp":
            env["PORT"] = str(self.port)
        shim = os.getpid()
        self.backend = subprocess.Popen(
            [filled(arg) for arg in config.argv],
            cwd=config.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: ended as a whole
            preexec_fn=lambda: die_with(shim),
        )
        address = {"host": host, "port": public.getsockname()[1], "pid": self.backend.pid}
        print(f"{READY} {json.dumps(address)}", flush=True)
        self.exited = self.loop.run_in_executor(None, self.backend.wait)
        self.exited.add_done_callback(self._backend_exited)
        self.loop.create_task(self.watch_lease())

    def _backend_exited(self, exited: asyncio.Future[int]) -> None:
        status = exited.result()
        if status < 0:  # killed by a signal: exit as a shell tells it
            name = signal.Signals(-status).name
            self.finish(128 - status, f"the backend was killed by {name}")
        else:
            self.finish(status, f"the backend exited with code {status}")

    def finish(self, code: int, why: str) -> None:
        if not self.done.done():
            self.done.set_result((code, why))

    async def end_backend(self) -> None:
        """SIGTERM to its process group; SIGKILL to what is left of it after END_GRACE."""
        if self.backend is None or self.exited is None:
            return
        pid, deadline = self.backend.pid, time.monotonic() + END_GRACE
        if self._signal(pid, signal.SIGTERM):
            while time.monotonic() < deadline and (not self.exited.done() or self._signal(pid, 0)):
                await asyncio.sleep(0.02)
            self._signal(pid, signal.SIGKILL)
        await self.exited

    @staticmethod
    def _signal(group: int, signum: int) -> bool:
        """Signal the backend's process group; whether any of it was still there."""
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            return False
        return True

    async def watch_lease(self) -> None:
        # Only PINGs renew the lease, not an open connection: a connection to an orchestrator
        # whose machine went down, or that the network cut off, stays open here forever.
        while True:
            left = self.last_ping + self.config.lease - time.monotonic()
            if left <= 0:
                lease = self.config.lease
                why = f"no lease renewed for {lease:g} s (the orchestrator is gone or cut off)"
                return self.finish(LEASE_LAPSED, why)
            await asyncio.sleep(left)

    def renew(self) -> None:
        self.last_ping = time.monotonic()
        if self.asked and self.last_ping - self.asked_at > NEED_RETRY:
            self.asked = 0  # those asked for never came (a failed connect): ask again
            self.ask()

    def accept(self, tls: Tls) -> bool:
        """Give a connection that passed the handshake its role; False closes it."""
        der = tls.tls.getpeercert(binary_form=True) or b""
        if not hmac.compare_digest(hashlib.sha256(der).digest(), self.config.peer_digest):
            say_now_and_then(
                "certificate",
                f"refused a connection from {tls._address()}: not the orchestrator's certificate",
            )
            return False
        alpn = tls.tls.selected_alpn_protocol()
        if alpn == LEASE:
            lease = Lease(self, tls)
            tls.attach(lease)
            self.leases.append(lease)
            self.renew()
            self.asked = 0  # asked on an older lease, perhaps never answered
            self.ask()
        elif alpn == PROXY:
            self.loop.create_task(self.proxy(tls))
        elif alpn == REVERSE:
            self.idle.append(tls)
            self.asked = max(0, self.asked - 1)
            self.pair()
        else:
            say_now_and_then(
                "alpn", f"refused a connection from {tls._address()}: no known ALPN ({alpn})"
            )
            return False
        return True

    async def proxy(self, tls: Tls) -> None:
        # The relay connects to the backend's own socket or port, and nowhere else.
        try:
            if self.config.listen == "unix":
                _, plain = await self.loop.create_unix_connection(
                    lambda: Plain(self, tls), self.socket_path
                )
            else:
                _, plain = await self.loop.create_connection(
                    lambda: Plain(self, tls), "127.0.0.1", self.port
                )
        except OSError:
            return tls.close()  # not listening (yet): no answer at all
        tls.attach(plain)

    def wait_for_reverse(self, plain: Plain) -> None:
        self.waiting[plain] = self.loop.call_later(REVERSE_WAIT, self._gave_up, plain)
        self.pair()

    def _gave_up(self, plain: Plain) -> None:
        if self.waiting.pop(plain, None) is not None:
            say_now_and_then(
                "gave up",
                "a call of the backend got no connection to the orchestrator in "
                f"{REVERSE_WAIT:g} s",
            )
            plain.transport.abort()

    def pair(self) -> None:
        while self.waiting and self.idle:
            plain, timer = next(iter(self.waiting.items()))
            del self.waiting[plain]
            timer.cancel()
            tls = self.idle.pop(0)
            tls.attach(plain)
            plain.attach(tls)
        self.ask()

    def ask(self) -> None:
        lacking = len(self.waiting) + REVERSE_SPARE - len(self.idle) - self.asked
        if lacking > 0 and self.leases:
            self.leases[-1].send(f"NEED {lacking}\n")
            self.asked += lacking
            self.asked_at = time.monotonic()

    def forget(self, connection: Side) -> None:
        if isinstance(connection, Tls) and connection in self.idle:
            self.idle.remove(connection)
            self.ask()
        elif isinstance(connection, Plain) and connection in self.waiting:
            self.waiting.pop(connection).cancel()


def die_with(parent: int) -> None:
    """In the backend, before it runs: it ends when the shim does, however the shim ends (an
    OOM kill, SIGKILL): else it would run on with its token and socket, and keep srun's
    output open, so that nobody would see it go."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the shim ended before the above took effect
        os._exit(1)


def end_own_job() -> None:
    """Cancel the job this shim runs in: an allocation that ``srun`` made outlives its step when
    that ``srun`` is gone (its orchestrator killed with it), holding the node until cancelled."""
    job, scancel = os.environ.get("SLURM_JOB_ID"), shutil.which("scancel")
    if job and scancel:
        say(f"cancelling job {job}, whose orchestrator is gone")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [scancel, job],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
                check=False,
            )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        say("usage: node_shim.py CONFIG_PATH")
        return USAGE_ERROR
    try:
        config = read_config_line() if argv[1] == "-" else read_config(argv[1])
    except Refused as error:
        say(str(error))
        return USAGE_ERROR
    if config.build is not None:
        code = build_on_node(config)
        if code:
            return code
    raise_descriptor_limit()

    async def run() -> int:
        return await Shim(config).run()

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main(sys.argv))
