"""Where a cell's output goes in the notebook: its two streams, in order, and its displays.

Used by ``%%interpreter`` (:mod:`ywmagics.kernel.interpreter`) for what a runner streams.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ywmagics.kernel import _ipython

Write = Callable[[str], None]
Display = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Output:
    """Where a cell's output goes: its printed text and its displays (and, for the notebook's
    own output, the order of its two streams)."""

    stdout: Write
    stderr: Write
    display: Display
    order: StreamOrder | None = None

    def flush(self) -> None:
        """What the cell printed, sent on before what comes after it (its result, an error)."""
        if self.order is None or self.order.last:  # nothing written: nothing to send
            flush_output()


def publish(bundle: dict[str, Any]) -> None:
    """Show a display bundle ``{"data": {mime: ...}, "metadata": {...}}`` under the cell."""
    data = bundle.get("data")
    if isinstance(data, dict) and data:
        _ipython.publish(data, bundle.get("metadata") or {})


class StreamOrder:
    """What keeps stdout and stderr of one cell in their order: which one was written last, and
    how often the cell switches between them.

    Each switch sends what the other stream holds as a message of its own. A frontend must not
    get them faster than it can take: the kernel's iopub socket drops messages, silently, when a
    subscriber falls behind, and Jupyter's server stops forwarding output past 1000 messages a
    second over 3 s (``iopub_msg_rate_limit``). So a burst of switches goes at once, and past
    :attr:`RATE` a second the two streams go in batches of their own, as in a plain kernel: each
    one's text whole and in order, their order between each other by batch, as the cell is told
    (:data:`APPROXIMATE_ORDER`)."""

    RATE = 800.0  # switches a second kept exactly, once the burst is spent
    BURST = 400.0

    def __init__(self) -> None:
        self.last = ""
        self.exact = True
        self._allowance = self.BURST
        self._checked = time.monotonic()

    def switch_to(self, stream_name: str) -> None:
        if self.last and self.last != stream_name and self.exact:
            _flush(self.last)
            if not self._allowed():
                self.exact = False
                sys.stderr.write(APPROXIMATE_ORDER)
                _flush("stderr")
        self.last = stream_name

    def _allowed(self) -> bool:
        now = time.monotonic()
        self._allowance = min(self.BURST, self._allowance + (now - self._checked) * self.RATE)
        self._checked = now
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        return True


APPROXIMATE_ORDER = (
    f"[ywmagics: this cell switches between stdout and stderr more than {StreamOrder.RATE:.0f} "
    "times a second, more than a notebook can show one by one; from here on each stream's "
    "output is whole and in order, but stdout and stderr are interleaved by batch]\n"
)


def writer(stream_name: str, order: StreamOrder | None = None) -> Write:
    """Write to the kernel's current ``sys.stdout``/``sys.stderr`` (looked up at each call).

    Not flushed at each write: the kernel's streams send their text in batches (a message per
    write made a loop of prints slow, and lost lines: see :class:`StreamOrder`), and flush
    before a display. ``order``, shared by the writers of one output, flushes the other stream
    when the stream changes, so that stdout and stderr keep their order."""

    def write(text: str) -> None:
        if order is not None:
            order.switch_to(stream_name)
        stream = sys.stderr if stream_name == "stderr" else sys.stdout
        try:
            stream.write(text)
        except UnicodeEncodeError:  # a lone surrogate, or a terminal that can't show it
            stream.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))

    return write


def _flush(stream_name: str) -> None:
    with contextlib.suppress(Exception):
        (sys.stderr if stream_name == "stderr" else sys.stdout).flush()


def flush_output() -> None:
    """What a cell printed, sent on before what comes after it (its result, an error)."""
    _flush("stdout")
    _flush("stderr")


def notebook_output() -> Output:
    """The notebook's own output: the kernel's stdout/stderr and its display."""
    order = StreamOrder()
    return Output(writer("stdout", order), writer("stderr", order), publish, order)
