"""A program in a network namespace of its own, reached from outside through one door.

``python tests/netns_door.py SOCKET PORT PROGRAM [ARG ...]`` enters a new network namespace
(loopback only: no other machine, and none of this machine's ports), leaves a door behind (a
process that answers each connection on the Unix socket SOCKET with one to ``127.0.0.1:PORT``
inside), then becomes PROGRAM. Everything PROGRAM starts (a Jupyter server's kernels, the
orchestrator they start) lives in the namespace too. :func:`open_door` makes the door a TCP port
of the outside's loopback: what a browser there can reach is PORT and nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path


def pump(one: socket.socket, other: socket.socket) -> None:
    """Copy both ways until both sides have ended."""

    def copy(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    back = threading.Thread(target=copy, args=(other, one), daemon=True)
    back.start()
    copy(one, other)
    back.join()
    one.close()
    other.close()


def _serve(listener: socket.socket, connect: tuple[int, object]) -> None:
    family, address = connect
    while True:
        try:
            client, _ = listener.accept()
        except OSError:  # closed: the door is shut
            return
        inside = socket.socket(family, socket.SOCK_STREAM)
        try:
            inside.connect(address)
        except OSError:
            client.close()
            inside.close()
            continue
        threading.Thread(target=pump, args=(client, inside), daemon=True).start()


@contextlib.contextmanager
def open_door(path: Path) -> Iterator[int]:
    """A port of this loopback whose connections go through the door at ``path``."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    threading.Thread(
        target=_serve, args=(listener, (socket.AF_UNIX, str(path))), daemon=True
    ).start()
    try:
        yield port
    finally:
        listener.close()


def main(argv: list[str]) -> None:
    from ywmagics.orchestrator.launcher import enter_private_network

    path, port, program = argv[0], int(argv[1]), argv[2:]
    enter_private_network()
    if os.fork() == 0:  # the door, ended with the program
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        _serve(listener, (socket.AF_INET, ("127.0.0.1", port)))
    os.execvp(program[0], program)


if __name__ == "__main__":
    main(sys.argv[1:])
