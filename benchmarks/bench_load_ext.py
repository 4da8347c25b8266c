"""``%load_ext ywmagics`` in a fresh process each time: with an orchestrator running, and with
none (a fresh ``YW_HOME``: the load starts one).

Baseline: ``%load_ext autoreload`` (an extension shipped with IPython) in the same kind of fresh
process, interleaved. Each case is measured twice: ywmagics compiled at each start ("no .pyc",
an editable install with ``PYTHONDONTWRITEBYTECODE=1``) and from bytecode (".pyc", as a wheel
install has it). Goal: ours at most 150 ms in every case. With no orchestrator, the time to the
end of the first command that needs it (``%backends status``) is printed too: that command waits
for the orchestrator the load started.

    python benchmarks/bench_load_ext.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import ywmagics

from _common import (
    bytecode_variants,
    note_stray_bytecode,
    private_orchestrator,
    report,
    stop_orchestrator_of,
)

PROBE = """
import contextlib, io, json, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
start = time.perf_counter()
shell.run_line_magic("load_ext", {extension!r})
loaded = time.perf_counter() - start
if {first_command!r}:
    with contextlib.redirect_stdout(io.StringIO()) as said:
        shell.run_line_magic(*{first_command!r}.split(" ", 1))
    assert "orchestrator" in said.getvalue(), said.getvalue()
print(json.dumps([loaded, time.perf_counter() - start]))
"""


def load_time(extension: str, env: dict[str, str], first_command: str = "") -> tuple[float, float]:
    """Seconds from the start of the load to its end, and to the end of ``first_command``
    (run right after it, as a notebook's next cell would be)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(extension=extension, first_command=first_command)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stdout + done.stderr)
    loaded, finished = json.loads(done.stdout.strip().splitlines()[-1])
    return float(loaded), float(finished)


def cold_load(env: dict[str, str], folder: str) -> tuple[float, float]:
    """The load with no orchestrator running, then ``%backends status``; the orchestrator it
    started is ended."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=folder))
    try:
        return load_time("ywmagics", {**env, "YW_HOME": str(home)}, "backends status")
    finally:
        stop_orchestrator_of(home)


def interleaved(
    repeat: int, ours: Callable[[], float], baseline: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Ours and the baseline, one after the other: a busy machine slows both alike."""
    mine: list[float] = []
    theirs: list[float] = []
    for _ in range(repeat):
        mine.append(ours())
        theirs.append(baseline())
    return mine, theirs


def with_orchestrator(variant: str, env: dict[str, str], repeat: int) -> None:
    load_time("ywmagics", env), load_time("autoreload", env)  # warm-up (and bytecode)
    ours, baseline = interleaved(
        repeat, lambda: load_time("ywmagics", env)[0], lambda: load_time("autoreload", env)[0]
    )
    report(
        f"%load_ext ywmagics, orchestrator running ({variant}) vs %load_ext autoreload",
        ours,
        baseline,
        unit="ms",
        goal="ours <= 150 ms",
    )


def without_orchestrator(variant: str, env: dict[str, str], folder: str, repeat: int) -> None:
    cold_load(env, folder)  # warm-up (and bytecode, for ".pyc")
    firsts: list[float] = []

    def cold() -> float:
        loaded, finished = cold_load(env, folder)
        firsts.append(finished)
        return loaded

    ours, baseline = interleaved(repeat, cold, lambda: load_time("autoreload", env)[0])
    report(
        f"%load_ext ywmagics, no orchestrator running ({variant}) vs %load_ext autoreload",
        ours,
        baseline,
        unit="ms",
        goal="ours <= 150 ms",
    )
    print(
        "  load + first command (%backends status, which waits for the orchestrator): "
        f"median {statistics.median(firsts) * 1000:.1f} ms, min {min(firsts) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    note_stray_bytecode()
    with tempfile.TemporaryDirectory(prefix="ywbench-") as folder:
        variants = bytecode_variants(Path(folder, "pycache"))
        with private_orchestrator() as connection:
            ywmagics.install("demo_yw_backend", connection=connection)  # a warm, busy one
            for variant, env in variants.items():
                # private_orchestrator's YW_HOME: the load finds the orchestrator running there
                with_orchestrator(variant, {**env, "YW_HOME": os.environ["YW_HOME"]}, args.repeat)
        for variant, env in variants.items():
            without_orchestrator(variant, env, folder, args.repeat)


if __name__ == "__main__":
    main()
