"""Start of an installed pyrun_backend to its first answer, through the orchestrator.

The instance is stopped, then one request both starts it and gets its answer. The baseline is
the floor any Python backend pays: the same environment's interpreter running ``-c pass``.
Goal: at most 0.3 s.

    python benchmarks/bench_start.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import subprocess
import time

import ywmagics
from ywmagics.client import OrchestratorClient

from _common import private_orchestrator, report, timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
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
        for _ in range(args.repeat):
            cold_start()
        baseline = timed(lambda: subprocess.run([python, "-c", "pass"], check=True), args.repeat)
        report(
            "start of an installed pyrun_backend to its first answer vs python -c pass",
            durations,
            baseline,
            goal="ours <= 0.3 s",
        )


if __name__ == "__main__":
    main()
