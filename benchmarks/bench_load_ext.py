"""``%load_ext ywmagics`` with an orchestrator already running, in a fresh process each time.

Baseline: ``%load_ext autoreload`` (an extension shipped with IPython) in the same kind of fresh
process. Goal: ours at most 150 ms.

    python benchmarks/bench_load_ext.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import ywmagics

from _common import private_orchestrator, report

PROBE = """
import json, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
start = time.perf_counter()
shell.run_line_magic("load_ext", {extension!r})
print(json.dumps(time.perf_counter() - start))
"""


def load_time(extension: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(extension=extension)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with private_orchestrator() as connection:
        ywmagics.install("demo_yw_backend", connection=connection)  # a warm, busy orchestrator
        ours = [load_time("ywmagics") for _ in range(args.repeat)]
        baseline = [load_time("autoreload") for _ in range(args.repeat)]
    report(
        "%load_ext ywmagics (orchestrator running) vs %load_ext autoreload",
        ours,
        baseline,
        unit="ms",
        goal="ours <= 150 ms",
    )


if __name__ == "__main__":
    main()
