"""The launcher of the orchestrator's children: a small program run between fork and the child's
own program, standard library only (run with ``python -I -S``, about 7 ms).

::

    launcher.py PARENT_PID [--private-network SOCKET PORT [--orchestrator PORT SOCKET]]
                PROGRAM ARGV0 [ARG ...]

It arms ``PR_SET_PDEATHSIG`` (SIGKILL when the orchestrator ends, however it ends), checks that
its parent is still the orchestrator (one that died before the signal was armed would never send
it), then ``exec``\\ s the program. The alternative, a ``preexec_fn``, runs Python between fork
and exec, which is unsafe once threads run.

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

import ctypes
import os
import sys

_PR_SET_PDEATHSIG = 1
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCSIFFLAGS = 0x8914
_IFF_UP, _IFF_LOOPBACK, _IFF_RUNNING = 0x1, 0x8, 0x40
NO_PARENT = 70  # exit code: the orchestrator was gone before the signal could be armed
NO_PRIVATE_NETWORK = 71  # exit code: this machine gives no private network namespace

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with(parent: int) -> None:
    if _libc.prctl(_PR_SET_PDEATHSIG, 9) != 0 or os.getppid() != parent:
        os._exit(NO_PARENT)


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
        _die_with(parent)
        here = os.getpid()
        if os.fork() == 0:  # the connector, which ends with the program it serves
            _die_with(here)
            try:
                serve_connections(path, port, orchestrator)
            finally:
                os._exit(0)
    _die_with(parent)
    program, program_argv = rest[0], rest[1:]
    try:
        os.execv(program, program_argv)
    except OSError as error:
        sys.stderr.write(f"cannot run {program_argv[0]!r}: {error.strerror}\n")
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
