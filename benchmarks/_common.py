"""What the benchmarks share: a private orchestrator, timing, printing ratios, and the two ways
Python may load ywmagics' own modules (compiled at each start, or from bytecode)."""

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

from ywmagics.discovery import Connection, answers, pid_alive, read_discovery


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


def bytecode_variants(folder: Path) -> dict[str, dict[str, str]]:
    """The environments of child processes, by name, for the two ways modules get loaded.

    - "no .pyc": nothing written; ywmagics is compiled from source at every start when its
      folders have no ``__pycache__`` (an editable install with ``PYTHONDONTWRITEBYTECODE=1``,
      as on the project's machine); installed packages keep their bytecode;
    - ".pyc": every module from bytecode kept under ``folder`` (``PYTHONPYCACHEPREFIX``), as a
      wheel install has it; the first run writes it (do a warm-up run first).
    """
    without = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    without["PYTHONDONTWRITEBYTECODE"] = "1"
    with_ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with_["PYTHONPYCACHEPREFIX"] = str(folder)
    return {"no .pyc": without, ".pyc": with_}


def note_stray_bytecode() -> None:
    """Say so when ywmagics has ``__pycache__`` folders: "no .pyc" then loads from them."""
    import ywmagics

    found = list(Path(ywmagics.__file__).parent.rglob("__pycache__"))
    if found:
        print(f"note: {len(found)} __pycache__ folders in ywmagics: 'no .pyc' uses them too")


def orchestrator_first_answer(env: dict[str, str], home: Path) -> float:
    """Seconds from spawning ``python -m ywmagics serve`` in ``home`` (a fresh ``YW_HOME``) to
    its first 200 answer to ``GET /status``; the orchestrator is stopped afterwards."""
    env = {**env, "YW_HOME": str(home)}
    discovery = home / "run" / "orchestrator.json"
    with (home / "serve.log").open("ab") as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "ywmagics", "serve"], env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            connection = read_discovery(discovery)
            if connection is not None and connection.pid == process.pid and answers(connection):
                return time.perf_counter() - start
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError((home / "serve.log").read_text())
            time.sleep(0.002)  # fine enough to time, light enough not to slow what it waits for
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def stop_orchestrator_of(home: Path) -> None:
    """End the orchestrator that a process (not this one) started in ``home``, and wait."""
    connection = read_discovery(home / "run" / "orchestrator.json")
    if connection is None:
        return
    os.kill(connection.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pid_alive(connection.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
