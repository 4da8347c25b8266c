"""Signals of the python runner: SIGINT interrupts the running cell, SIGTERM stops the server.

Cells run in the main thread, which alone runs Python signal handlers. So an interrupt asked for
over HTTP (from another thread) is a SIGINT sent to the main thread, which breaks a blocking call
such as ``time.sleep(60)`` at once; and signals are sent again until they are heard, because one
that arrives just before the main thread enters a blocking call is only handled once the call
returns. Where there are no POSIX signals, an asynchronous exception is set on the main thread
instead (seen between two bytecodes only).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

INSIST_FOR = 5.0  # seconds a signal is sent again until it is heard
INSIST_EVERY = 0.25
IGNORE_REPEATS_FOR = 2.0


class Terminate(BaseException):
    """Raised in the main thread by SIGTERM: stop the cell, if any, and the server."""


class Signals:
    """The runner's signal state: whether a cell runs (``busy``), whether a SIGINT is ours."""

    def __init__(self) -> None:
        self.main_thread = threading.main_thread().ident
        self.terminating = False
        self._busy = False  # cell code is executing: SIGINT raises KeyboardInterrupt in it
        self._interrupting = False  # the coming SIGINT comes from interrupt(), not a terminal
        self._insisted_at = 0.0  # when a signal was last sent again (time.monotonic)
        self._wakeup: Any = None
        self._holding = 0  # depth of held sections in the main thread (see hold)
        self._held = False  # an interrupt came in one: raised at its end

    def hold(self) -> _Held:
        """A section of the runner's own code in the cell's thread (its output, under a lock)
        where an interrupt waits until the section ends: raised inside, it would leave the lock
        held, and the cell's next print and the server's reader would wait on each other."""
        return _Held(self)

    @property
    def busy(self) -> bool:
        return self._busy

    @contextlib.contextmanager
    def running_cell(self) -> Iterator[None]:
        """While the cell's own code runs: a SIGINT then interrupts it."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    def install(self) -> None:
        """Handle SIGINT and SIGTERM (main thread): from here on, SIGTERM raises Terminate."""
        signal.signal(signal.SIGTERM, self.on_sigterm)
        signal.signal(signal.SIGINT, self.on_sigint)

    # -- handlers (main thread) ------------------------------------------------------------

    def on_sigint(self, signum: int, frame: Any) -> None:
        ours, self._interrupting = self._interrupting, False
        if not ours and time.monotonic() - self._insisted_at < IGNORE_REPEATS_FOR:
            return  # a repeat sent by _insist for an interrupt that was heard meanwhile
        if self._busy:
            if self._holding:
                self._held = True
                return
            raise KeyboardInterrupt
        if not ours:  # Ctrl-C in a terminal while no cell runs: stop the server
            self.on_sigterm(signum, frame)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        if not self.terminating:
            self.terminating = True
            raise Terminate

    # -- any thread ------------------------------------------------------------------------

    def interrupt_cell(self) -> bool:
        """Raise KeyboardInterrupt in the running cell; ``False`` when no cell runs."""
        if not self._busy or self.main_thread is None:
            return False
        self._interrupting = True
        if hasattr(signal, "pthread_kill"):
            self._insist(signal.SIGINT, lambda: not self._interrupting or not self._busy)
        else:
            import ctypes

            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.main_thread), ctypes.py_object(KeyboardInterrupt)
            )
        return True

    def _insist(self, signum: int, heard: Callable[[], bool], now: bool = True) -> None:
        """Send ``signum`` to the main thread until ``heard()``, for up to ``INSIST_FOR``, from
        a thread. The thread is made by a thread that blocks SIGINT and SIGTERM, so it blocks
        them too. A repeat may still arrive after the first was heard: ``on_sigint`` ignores
        SIGINTs that it does not expect for ``IGNORE_REPEATS_FOR`` after one."""
        main_thread = self.main_thread
        if main_thread is None:
            return

        def insist() -> None:
            for attempt in range(int(INSIST_FOR / INSIST_EVERY)):
                if attempt or now:
                    if attempt:
                        self._insisted_at = time.monotonic()
                    signal.pthread_kill(main_thread, signum)
                time.sleep(INSIST_EVERY)
                if heard():
                    return

        threading.Thread(target=insist, name="insist", daemon=True).start()

    def watch(self) -> None:
        """Follow SIGTERM through a wakeup file descriptor (main thread, with SIGINT and SIGTERM
        blocked): if the Python handler has not run ``INSIST_EVERY`` later, insist."""
        if not hasattr(signal, "pthread_kill"):
            return
        import socket

        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

        def watch() -> None:
            while True:
                received = reader.recv(64)
                if not received:
                    return
                if signal.SIGTERM in received and not self.terminating:
                    self._insist(signal.SIGTERM, lambda: self.terminating, now=False)

        self._wakeup = (reader, writer)  # kept open for the life of the process
        threading.Thread(target=watch, name="signals", daemon=True).start()


class _Held:
    """One :meth:`Signals.hold` section; counted in the main thread only (others are not
    interrupted, and must not race the count)."""

    def __init__(self, signals: Signals) -> None:
        self._signals = signals
        self._counted = False

    def __enter__(self) -> None:
        if threading.get_ident() == self._signals.main_thread:
            self._signals._holding += 1
            self._counted = True

    def __exit__(self, *exc_info: object) -> None:
        if not self._counted:
            return
        signals = self._signals
        signals._holding -= 1
        if not signals._holding and signals._held:
            signals._held = False
            if signals.busy:
                raise KeyboardInterrupt
