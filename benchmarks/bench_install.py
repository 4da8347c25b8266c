"""First install of pyrun_backend + numpy (warm package cache) against venv + pip install numpy.

Both build a fresh environment on the same Python (3.10 by default) with numpy, after one warm-up
each so that both package caches hold numpy already. Ours is timed from the install request to
the backend answering (so it includes starting it); the baseline stops when pip returns.
Goal: ratio at most 0.15.

    python benchmarks/bench_install.py [--python 3.10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import ywmagics
from ywmagics.orchestrator.interpreters import find_python

from _common import private_orchestrator, report


def venv_pip(python: str) -> float:
    import time

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        subprocess.run([python, "-m", "venv", f"{folder}/venv"], check=True)
        subprocess.run(
            [
                f"{folder}/venv/bin/python",
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "numpy",
            ],
            check=True,
        )
        return time.perf_counter() - start


def ours(python_request: str) -> float:
    import time

    with (
        tempfile.TemporaryDirectory(prefix="ywbench-") as home,
        private_orchestrator(Path(home)) as connection,
    ):
        start = time.perf_counter()
        client = ywmagics.install(
            {
                "modules": ["pyrun_backend#^0.1.0 as py"],
                "configurations": {
                    "pyrun_backend": {"build": {"python": python_request, "modules": "numpy"}}
                },
            },
            connection=connection,
        ).py
        client.fetch_json("/")
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default="3.10")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    python = str(find_python(args.python).path)
    venv_pip(python), ours(args.python)  # warm both caches
    baseline = [venv_pip(python) for _ in range(args.repeat)]
    mine = [ours(args.python) for _ in range(args.repeat)]
    report(
        f"first install of pyrun_backend + numpy on Python {args.python} (warm caches) "
        "vs python -m venv + pip install numpy",
        mine,
        baseline,
        goal="<= 0.15",
    )


if __name__ == "__main__":
    main()
