"""Starts to a first answer: the orchestrator's own, and an installed backend's through it.

- orchestrator: from spawning ``python -m ywmagics serve`` (a fresh ``YW_HOME``) to its first
  answer to ``GET /status``, what the first ``%load_ext`` of a session waits for at its first
  command. Measured twice: ywmagics compiled at each start ("no .pyc", an editable install with
  ``PYTHONDONTWRITEBYTECODE=1``) and from bytecode (".pyc", as a wheel install has it). Baseline:
  ``python -c pass`` in the same environment, interleaved. Goal: at most 0.3 s.
- backend: an installed pyrun_backend is stopped, then one request both starts it and gets its
  answer. Baseline: the floor any Python backend pays, the same environment's interpreter running
  ``-c pass``. Goal: at most 0.3 s.

    python benchmarks/bench_start.py [--repeat 10] [--only orchestrator|backend]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ywmagics
from ywmagics.client import OrchestratorClient

from _common import (
    bytecode_variants,
    note_stray_bytecode,
    orchestrator_first_answer,
    private_orchestrator,
    report,
    timed,
)


def orchestrator_starts(repeat: int) -> None:
    note_stray_bytecode()
    with tempfile.TemporaryDirectory(prefix="ywbench-") as folder:
        for variant, env in bytecode_variants(Path(folder, "pycache")).items():

            def fresh_home() -> Path:
                return Path(tempfile.mkdtemp(prefix="home-", dir=folder))

            orchestrator_first_answer(env, fresh_home())  # warm-up (and bytecode, for ".pyc")
            ours: list[float] = []
            baseline: list[float] = []
            for _ in range(repeat):  # interleaved: a busy machine slows both alike
                ours.append(orchestrator_first_answer(env, fresh_home()))
                start = time.perf_counter()
                subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
                baseline.append(time.perf_counter() - start)
            report(
                f"orchestrator, spawn to its first answer ({variant}) vs python -c pass",
                ours,
                baseline,
                unit="ms",
                goal="ours <= 300 ms",
            )
            print(f"  min: ours {min(ours) * 1000:.1f} ms, baseline {min(baseline) * 1000:.1f} ms")


def backend_starts(repeat: int) -> None:
    with private_orchestrator() as connection:
        client = ywmagics.install(
            "pyrun_backend as py", partition="Start", connection=connection
        ).py
        admin = OrchestratorClient(connection)
        environment = admin.listing()["environments"][0]
        python = f"{environment['path']}/venv/bin/python"

        def cold_start() -> None:
            admin.stop(partition="Start")
            start = time.perf_counter()
            client.fetch_json("/")
            durations.append(time.perf_counter() - start)

        durations: list[float] = []
        for _ in range(repeat):
            cold_start()
        baseline = timed(lambda: subprocess.run([python, "-c", "pass"], check=True), repeat)
        report(
            "start of an installed pyrun_backend to its first answer vs python -c pass",
            durations,
            baseline,
            goal="ours <= 0.3 s",
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--only", choices=["orchestrator", "backend"])
    args = parser.parse_args()
    if args.only in (None, "orchestrator"):
        orchestrator_starts(args.repeat)
    if args.only in (None, "backend"):
        backend_starts(args.repeat)


if __name__ == "__main__":
    main()
