"""The runner's file descriptors 1 and 2, captured, as ipykernel captures a kernel's: what is
written to them, not through ``sys.stdout`` (a subprocess, C code, a library that writes to the
descriptor), goes to the cell that runs; outside a cell, to the backend's log, where it went
before. The runner's own messages (``sys.__stderr__``) go to the log.

Standard library only, like the rest of the runner.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyrun_runner import CellRun


class FdCapture:
    """Pipes in place of descriptors 1 and 2, each read by a thread of its own."""

    def __init__(self, current: Callable[[], CellRun | None]) -> None:
        self._current = current
        self._pipes: list[tuple[int, threading.Lock]] = []  # read end, held while it forwards

    def start(self) -> None:
        if not _pending_is_known():
            return  # no way to tell when a pipe is drained (not POSIX): leave them be
        for fd, name in ((1, "stdout"), (2, "stderr")):
            try:
                saved = os.dup(fd)
            except OSError:
                continue  # closed: nothing to capture
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            forwarding = threading.Lock()
            thread = threading.Thread(
                target=self._forward, args=(read, saved, name, forwarding), name=f"fd-{name}",
                daemon=True,
            )  # fmt: skip
            thread.start()
            self._pipes.append((read, forwarding))
            if fd == 2:  # the runner's own messages: to the log, never to a cell
                sys.__stderr__ = open(  # type: ignore[misc]  # noqa: SIM115 (the process's)
                    saved, "w", buffering=1, closefd=False, errors="backslashreplace"
                )
        if sys.__stdout__ is not None:  # Python's own, on descriptor 1: through to the pipe
            sys.__stdout__.reconfigure(line_buffering=True)

    def _forward(self, read: int, saved: int, name: str, forwarding: threading.Lock) -> None:
        import select

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            select.select([read], [], [], 0.5)
            with forwarding:  # read and passed on at once: see drain
                if not _pending(read):
                    continue
                try:
                    data = os.read(read, 65536)
                except OSError:
                    return
                if not data:
                    return
                run = self._current()
                try:
                    if run is None:
                        os.write(saved, data)
                    else:
                        text = decoder.decode(data)
                        if text:
                            run.write(name, text)
                except OSError:
                    pass

    def drain(self, patience: float = 1.0) -> None:
        """Wait until what was written to the descriptors so far has been passed on (a cell's
        subprocess output before its result), for at most ``patience`` seconds."""
        _flush_c_stdio()
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        deadline = time.monotonic() + patience
        for read, forwarding in self._pipes:
            while time.monotonic() < deadline:
                with forwarding:  # not in the middle of passing something on
                    if not _pending(read):
                        break
                time.sleep(0.002)


def _pending(read: int) -> int:
    """Bytes waiting in the pipe."""
    try:
        import fcntl
        import struct
        import termios

        return int(struct.unpack("i", fcntl.ioctl(read, termios.FIONREAD, b"\0\0\0\0"))[0])
    except (ImportError, OSError):
        return 0


def _pending_is_known() -> bool:
    try:
        import fcntl  # noqa: F401
        import termios

        return hasattr(termios, "FIONREAD")
    except ImportError:
        return False


def _flush_c_stdio() -> None:
    """C's own buffers (a ``printf`` of an extension), written out."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, ImportError):
        pass
