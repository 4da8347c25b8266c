"""What the benchmarks share: a private orchestrator, timing, and printing ratios."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ywmagics.discovery import Connection, read_discovery


@contextlib.contextmanager
def private_orchestrator(home: Path | None = None) -> Iterator[Connection]:
    """A real orchestrator in its own ``YW_HOME`` (never the user's), stopped afterwards."""
    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ywbench-")))
        os.environ["YW_HOME"] = str(home)
        log = (home / "serve.log").open("ab")
        stack.callback(log.close)
        process = subprocess.Popen(
            [sys.executable, "-m", "ywmagics", "serve"], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        connection = None
        while connection is None or connection.pid != process.pid:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError((home / "serve.log").read_text())
            time.sleep(0.02)
            connection = read_discovery()
        try:
            yield connection
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def timed(function: Callable[[], object], repeat: int) -> list[float]:
    """Seconds taken by each of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def report(
    title: str, ours: list[float], baseline: list[float], *, unit: str = "s", goal: str = ""
) -> None:
    scale = 1000.0 if unit == "ms" else 1.0
    median_ours, median_base = statistics.median(ours), statistics.median(baseline)
    print(f"{title}")
    print(f"  ours     median {median_ours * scale:9.3f} {unit}  (n={len(ours)})")
    print(f"  baseline median {median_base * scale:9.3f} {unit}  (n={len(baseline)})")
    print(
        f"  ratio ours/baseline = {median_ours / median_base:.3f}"
        + (f"   goal {goal}" if goal else "")
    )
