"""Everything an interpreter cell prints reaches the notebook, in order, whatever the volume, in a
real kernel: every ``stream`` message on iopub is counted, as a frontend receives them.

Lost lines had one cause: one iopub message per printed line. The kernel's iopub socket is a
ZeroMQ PUB socket, which drops messages, silently, once a subscriber falls behind by its
high-water mark; and Jupyter's server stops forwarding output past 1000 messages a second
(``iopub_msg_rate_limit``, over a 3 s window). Output now goes in batches; switches between
stdout and stderr, each a message of its own to keep their order, are kept exactly up to a rate
below that limit, and past it the cell is told that the two streams now interleave by batch."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ywmagics.discovery import Connection
from ywmagics.kernel.output import APPROXIMATE_ORDER, StreamOrder

from .test_runner_binding import Kernel

pytestmark = pytest.mark.slow  # a real kernel and a runner

SERVER_WINDOW = 3.0  # jupyter_server's rate_limit_window, seconds
SERVER_MESSAGES_PER_SECOND = 1000  # its iopub_msg_rate_limit


class Frontend:
    """A real kernel and what a frontend receives of one cell: ``(time, stream, text)``."""

    def __init__(self) -> None:
        self.kernel = Kernel()  # with the extension loaded
        _, error = self.run("%backends install pyrun_backend#^0.1.0 as r")
        assert error is None, error

    def interrupt(self) -> None:
        """The stop button: SIGINT to the kernel (from any thread, as jupyter_client's own
        method is not: it makes an event loop in the thread that calls it)."""
        os.kill(self.kernel.pid, signal.SIGINT)

    def run(self, code: str) -> tuple[list[tuple[float, str, str]], dict[str, Any] | None]:
        streams: list[tuple[float, str, str]] = []
        error: dict[str, Any] | None = None

        def hook(message: dict[str, Any]) -> None:
            nonlocal error
            if message["msg_type"] == "stream":
                content = message["content"]
                streams.append((time.monotonic(), content["name"], content["text"]))
            elif message["msg_type"] == "error":
                error = message["content"]

        self.kernel.client.execute_interactive(
            code, output_hook=hook, allow_stdin=False, timeout=300
        )
        return streams, error

    def close(self) -> None:
        self.kernel.close()


@pytest.fixture(scope="module")
def frontend(orchestrator: Connection) -> Iterator[Frontend]:
    opened = Frontend()
    yield opened
    opened.close()


def busiest_window(times: list[float], window: float) -> int:
    """The most of ``times`` (sorted) that fall within any ``window`` seconds."""
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


def text_of(streams: list[tuple[float, str, str]], name: str) -> str:
    return "".join(text for _, stream, text in streams if stream == name)


def test_a_million_short_lines_all_arrive_in_order(frontend: Frontend) -> None:
    count = 1_000_000
    streams, error = frontend.run(
        f"%%interpreter r\nfor i in range({count}):\n    print('line', i)"
    )
    assert error is None, error
    expected = "".join(f"line {i}\n" for i in range(count))
    received = text_of(streams, "stdout")
    if received != expected:
        lines = received.splitlines()
        first_wrong = next(
            (i for i, line in enumerate(lines) if line != f"line {i}"), min(len(lines), count)
        )
        pytest.fail(f"{len(lines)} of {count} lines arrived; first wrong or missing: {first_wrong}")
    assert len(streams) < 1000  # in batches, not a message per line


def test_a_hundred_megabytes_in_one_print_arrive_whole(frontend: Frontend) -> None:
    code = "%%interpreter r\nprint(('x' * 99 + '\\n') * 1_000_000, end='')\nprint('end')"
    streams, error = frontend.run(code)
    assert error is None, error
    received = text_of(streams, "stdout").encode()
    expected = ("x" * 99 + "\n").encode() * 1_000_000 + b"end\n"
    assert len(received) == len(expected)
    assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()


def test_interleaved_stdout_and_stderr_keep_their_order_below_the_servers_rate(
    frontend: Frontend,
) -> None:
    count = 15_000  # 10,000 switches between the two streams, in well under a second
    code = (
        "%%interpreter r\nimport sys\n"
        f"for i in range({count}):\n"
        "    print('line', i, file=sys.stderr if i % 3 == 0 else sys.stdout)"
    )
    streams, error = frontend.run(code)
    assert error is None, error
    expected = [f"line {i}\n" for i in range(count)]
    # Each stream whole and in its order.
    assert text_of(streams, "stdout") == "".join(t for i, t in enumerate(expected) if i % 3)
    stderr = text_of(streams, "stderr")
    assert stderr.count(APPROXIMATE_ORDER) == 1, stderr[:300]
    assert stderr.replace(APPROXIMATE_ORDER, "") == "".join(expected[::3])
    # In order across the two streams, exactly, for a burst of switches; then said not to be.
    joined = "".join(text for _, _, text in streams)
    exact = joined[: joined.index(APPROXIMATE_ORDER)]
    assert exact == "".join(expected)[: len(exact)] and exact.count("\n") > StreamOrder.BURST
    # Never more than Jupyter's server forwards: beyond that it drops output.
    busiest = busiest_window([at for at, _, _ in streams], SERVER_WINDOW)
    assert busiest < 0.9 * SERVER_MESSAGES_PER_SECOND * SERVER_WINDOW, busiest


def test_a_few_switches_keep_their_exact_order(frontend: Frontend) -> None:
    code = (
        "%%interpreter r\nimport sys\n"
        "for i in range(300):\n"
        "    print('line', i, file=sys.stderr if i % 2 else sys.stdout)"
    )
    streams, error = frontend.run(code)
    assert error is None, error
    assert "".join(text for _, _, text in streams) == "".join(f"line {i}\n" for i in range(300))


def test_an_interrupt_during_a_flood_of_output_stops_the_cell_and_keeps_its_lines(
    frontend: Frontend,
) -> None:
    code = (
        "%%interpreter r\nimport sys, itertools\n"
        "for i in itertools.count():\n"
        "    print('line', i, file=sys.stderr if i % 2 else sys.stdout)"
    )
    timer = threading.Timer(3.0, frontend.interrupt)
    timer.start()
    streams, error = frontend.run(code)
    timer.join()
    assert error is not None and error["ename"] == "Interrupted", error
    for name, parity in (("stdout", 0), ("stderr", 1)):
        lines = text_of(streams, name).replace(APPROXIMATE_ORDER, "").splitlines()
        expected = [f"line {i}" for i in range(parity, 2 * len(lines), 2)]
        assert len(lines) > 1000
        assert lines[:-1] == expected[:-1]  # none lost
        assert expected[-1].startswith(lines[-1])  # the print the interrupt cut short
    # The kernel and its runner go on.
    streams, error = frontend.run("%%interpreter r\nprint('after')")
    assert (error, text_of(streams, "stdout")) == (None, "after\n")
