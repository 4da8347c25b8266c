"""The launcher of the orchestrator's children: a small program run between fork and the child's
own program, standard library only (run with ``python -I -S``, about 7 ms).

::

    launcher.py PARENT_PID [--grace SECONDS]
                [--private-network SOCKET PORT [--orchestrator PORT SOCKET]]
                PROGRAM ARGV0 [ARG ...]

It stays the parent of the program, and of everything the program starts: nothing a backend
or a build step started outlives it, nor the orchestrator, however that ends.

- It arms ``PR_SET_PDEATHSIG`` (a signal when the orchestrator ends, even by SIGKILL) and checks
  that its parent is still the orchestrator (one that died before the signal was armed would
  never send it). It is a ``PR_SET_CHILD_SUBREAPER``: what the program's processes leave
  behind, even through ``setsid`` or a double fork, becomes its child, not init's.
- It forks the program into a process group of its own, armed to be killed when the launcher
  dies, and forwards to that group the signals it gets (SIGTERM, SIGINT, SIGHUP, SIGQUIT,
  SIGUSR1): the orchestrator's stop, or a user's ``kill`` of the pid it lists.
- When the program ends, when the orchestrator is gone, or on :data:`END_SIGNAL` (the
  orchestrator's last word to a stop), it kills every process left under it, then ends as the
  program ended (its exit code, or its signal).
- With ``--grace``, an orchestrator's end first gives the program SIGTERM and that many seconds
  to end by itself: a program that must clean up elsewhere (``srun``, whose SIGTERM ends its
  job step on another machine, where a SIGKILL here would end nothing there) gets to.

The alternative to a launcher, a ``preexec_fn``, runs Python between fork and exec, which is
unsafe once threads run.

With ``--private-network``, the program gets a network namespace of its own (inside a user
namespace when not run as root), whose loopback no other local user can reach: a backend that
must listen on TCP listens there, on PORT. A connector process left in the namespace listens on
the Unix socket SOCKET (in the orchestrator's private folder), and answers each connection by
connecting to 127.0.0.1:PORT in the namespace and handing the connected socket's descriptor back
(``SCM_RIGHTS``): the orchestrator then talks to the backend directly, through no copy. With
``--orchestrator``, the connector also relays the orchestrator's port on the namespace's loopback
to the orchestrator's Unix socket, so that the backend can call it (and other backends) at the
URL it was given. The namespace has no other network: no internet, no other machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
END_SIGNAL = signal.SIGUSR2  # from the orchestrator: kill everything now, then end
# The parent-death signal, caught to kill everything first (launchers run on Linux only).
_ORPHANED = getattr(signal, "SIGRTMIN", 34) + 1
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCSIFFLAGS = 0x8914
_IFF_UP, _IFF_LOOPBACK, _IFF_RUNNING = 0x1, 0x8, 0x40
NO_PARENT = 70  # exit code: the orchestrator was gone before the signal could be armed
NO_PRIVATE_NETWORK = 71  # exit code: this machine gives no private network namespace

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with(parent: int, signum: int = signal.SIGKILL) -> None:
    if _libc.prctl(_PR_SET_PDEATHSIG, signum) != 0 or os.getppid() != parent:
        os._exit(NO_PARENT)


def _parents() -> dict[int, int]:
    """Every process now, with its parent: one pass over /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    found[int(entry)] = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except OSError:
                continue  # ended meanwhile
    return found


def _state(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return b"X"


def _descendants(pid: int) -> list[int]:
    """The whole tree under ``pid``, from one snapshot: killed in one pass, however deep it is
    (killed a level at a time, a deep tree outran the stop), and with any tracer in it (a
    process traced by its own descendant can be reaped only once its tracer is gone)."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, pending = [], list(children.get(pid, ()))
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(children.get(child, ()))
    return found


class Launcher:
    """The program's parent, and the reaper of all it leaves behind."""

    def __init__(self, parent: int, grace: float = 0.0) -> None:
        self.parent = parent
        self.grace = grace
        self.program = 0
        self.status: int | None = None  # the program's wait status, once it is reaped
        self.orphaned_at: float | None = None  # when the orchestrator's end was seen

    def watch_signals(self) -> None:
        for signum in _FORWARDED:
            signal.signal(signum, self._forward)
        signal.signal(END_SIGNAL, self._end_now)
        signal.signal(_ORPHANED, self._parent_died)
        # Children's ends are waited for with sigtimedwait: blocked, never handled.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})

    def _forward(self, signum: int, frame: object) -> None:
        if self.program:
            try:
                os.killpg(self.program, signum)
            except ProcessLookupError:  # it left its group (setsid): to itself, then
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.program, signum)

    def _end_now(self, signum: int, frame: object) -> None:
        self.end_everything()
        self.exit_as_the_program()

    def _parent_died(self, signum: int, frame: object) -> None:
        if os.getppid() == self.parent:  # a thread of it that ended, not the orchestrator
            return
        if self.grace > 0 and self.program and self.orphaned_at is None:
            self.orphaned_at = time.monotonic()  # run() ends it all once the grace is over
            self._forward(signal.SIGTERM, frame)
            return
        self.end_everything()
        os._exit(NO_PARENT)

    def _grace_over(self) -> bool:
        return self.orphaned_at is not None and time.monotonic() - self.orphaned_at > self.grace

    def _reap(self) -> None:
        """Collect every child that has ended, without waiting for any."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.program:
                self.status = status

    def end_everything(self) -> None:
        """Kill every process under this one, until none is left: what was forked meanwhile,
        or left to us by one killed (we are its subreaper), goes in the next round."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {*_FORWARDED, END_SIGNAL, _ORPHANED})
        here = os.getpid()
        while True:
            tree = _descendants(here)
            if not tree:
                return
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._reap()
            signal.sigtimedwait({signal.SIGCHLD}, 0.01)

    def run(self, program: str, argv: list[str]) -> None:
        """Fork and exec the program; reap until it ends; then end what it left; end as it did."""
        here = os.getpid()
        self.program = os.fork()
        if self.program == 0:
            for signum in (*_FORWARDED, END_SIGNAL, _ORPHANED):
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())  # a mask passes through exec
            os.setpgid(0, 0)
            _die_with(here)
            try:
                os.execv(program, argv)
            except OSError as error:
                sys.stderr.write(f"cannot run {argv[0]!r}: {error.strerror}\n")
            os._exit(127)
        with contextlib.suppress(OSError):  # as the child does: whichever runs first
            os.setpgid(self.program, self.program)
        while self.status is None and not self._grace_over():
            signal.sigtimedwait({signal.SIGCHLD}, 0.5)
            self._reap()
            if self.status is None and _state(self.program) == b"Z":
                break  # ended, but held by a tracer among what it started: killed next
        self.end_everything()
        if self.orphaned_at is not None:
            os._exit(NO_PARENT)
        self.exit_as_the_program()

    def exit_as_the_program(self) -> None:
        status = self.status
        if status is None:  # killed by us before it was reaped: it was, by SIGKILL
            status = signal.SIGKILL
        if os.WIFSIGNALED(status):
            import resource

            signum = os.WTERMSIG(status)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # its core, if any, was its own
            if signum != signal.SIGKILL:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
            os.kill(os.getpid(), signum)
            os._exit(128 + signum)
        os._exit(os.waitstatus_to_exitcode(status))


def enter_private_network() -> None:
    """Unshare the network (and, when not root, the user) namespace; bring its loopback up."""
    import fcntl
    import socket
    import struct

    uid, gid = os.geteuid(), os.getegid()
    flags = _CLONE_NEWNET | (_CLONE_NEWUSER if uid != 0 else 0)
    if _libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), "unshare")
    if uid != 0:  # the same user inside as outside
        maps = [("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")]
        for name, text in maps:
            with open(f"/proc/self/{name}", "w") as file:
                file.write(text)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as handle:
        request = struct.pack("16sH14x", b"lo", _IFF_UP | _IFF_LOOPBACK | _IFF_RUNNING)
        fcntl.ioctl(handle, _SIOCSIFFLAGS, request)


def serve_connections(path: str, port: int, orchestrator: tuple[int, str] | None) -> None:
    """The connector: each connection on ``path`` gets a socket connected to ``port`` here; and
    with ``orchestrator`` (its port, and its Unix socket outside), connections to that port on
    this namespace's loopback are relayed to the orchestrator, so that the backend reaches it at
    the URL it was given (``YW_ORCHESTRATOR_URL``)."""
    import selectors
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    if orchestrator is not None:
        inside = socket.create_server(("127.0.0.1", orchestrator[0]), backlog=128)
        selector.register(inside, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            client, _ = key.fileobj.accept()  # type: ignore[union-attr]
            if key.fileobj is listener:
                with client:
                    try:
                        backend = socket.create_connection(("127.0.0.1", port), timeout=5)
                    except OSError:
                        continue  # not listening (yet, or any more): the asker sees it close
                    with backend:
                        socket.send_fds(client, [b"."], [backend.fileno()])
            elif orchestrator is not None:
                _relay(client, orchestrator[1])


def _relay(client: object, path: str) -> None:
    """Copy both ways between ``client`` and the orchestrator's Unix socket, in two threads."""
    import socket
    import threading

    assert isinstance(client, socket.socket)
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return

    def copy(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            source.close()

    threading.Thread(target=copy, args=(client, upstream), daemon=True).start()
    threading.Thread(target=copy, args=(upstream, client), daemon=True).start()


def main(argv: list[str]) -> None:
    if argv == ["--probe"]:  # can this machine give a private network namespace?
        try:
            enter_private_network()
        except OSError:
            os._exit(NO_PRIVATE_NETWORK)
        os._exit(0)
    parent = int(argv[0])
    rest = argv[1:]
    grace = 0.0
    if rest[:1] == ["--grace"]:
        grace, rest = float(rest[1]), rest[2:]
    private: tuple[str, int, tuple[int, str] | None] | None = None
    if rest[:1] == ["--private-network"]:
        path, port, rest = rest[1], int(rest[2]), rest[3:]
        orchestrator = None
        if rest[:1] == ["--orchestrator"]:
            orchestrator, rest = (int(rest[1]), rest[2]), rest[3:]
        try:
            enter_private_network()
        except OSError as error:
            sys.stderr.write(f"no private network namespace here: {error}\n")
            os._exit(NO_PRIVATE_NETWORK)
        private = (path, port, orchestrator)
    launcher = Launcher(parent, grace)
    launcher.watch_signals()
    _die_with(parent, _ORPHANED)
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1) != 0:
        sys.stderr.write("cannot become the reaper of the program's processes\n")
        os._exit(NO_PARENT)
    here = os.getpid()
    if private is not None and os.fork() == 0:  # the connector, killed with all the rest
        for signum in (*_FORWARDED, END_SIGNAL, _ORPHANED):
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        _die_with(here)
        try:
            serve_connections(*private)
        finally:
            os._exit(0)
    launcher.run(rest[0], rest[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
