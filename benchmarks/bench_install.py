"""First install of pyrun_backend + numpy (warm package caches), against raw uv and venv + pip.

Each variant builds a fresh environment on the same Python (3.10 by default) with numpy, after
one warm-up each so that every package cache holds numpy already; the rounds are interleaved
(order rotated), so that a busy machine slows all of them alike.

- ours: from the install request to the backend's first answer (so it includes finding the
  interpreter, building, starting and the readiness wait), on a fresh orchestrator each time;
- raw uv, as typed: ``uv venv --python python3.10`` then ``uv pip install numpy``, with the uv
  binary and the cache that ours uses. uv looks the interpreter up itself; where pyenv's shim is
  the first python3.10 on PATH and 3.10 is not pyenv's active version, the command fails, so it
  runs as a pyenv user makes it work (``pyenv shell 3.10.13``: PYENV_VERSION set);
- raw uv, given the interpreter's path (``uv venv --python /path/to/python3.10``): no lookup at
  all, the floor of any uv-based install;
- venv + pip: ``python -m venv`` then ``pip install numpy``, what a user without uv does.

Goals: at most 1.3x raw uv as typed, at most 0.15x venv + pip. Ours compiles the environment's
bytecode in the background once the backend answers; the time that finished at is printed too.

    python benchmarks/bench_install.py [--python 3.10] [--repeat 5] [--pip-repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import ywmagics
from ywmagics.events import Event
from ywmagics.orchestrator.interpreters import find_python, uv_binary

from _common import private_orchestrator, report

COMPILE_PATIENCE = 120.0  # seconds to wait for the background compile before the next round


def venv_pip(python: str) -> float:
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


def raw_uv(uv: str, python: str, env: dict[str, str], *, quiet: bool = False) -> float:
    """The two commands a uv user types, in a fresh folder (``.venv`` in it: ``env`` has no
    VIRTUAL_ENV, so that ``uv pip install`` fills the new one)."""
    errors = subprocess.DEVNULL if quiet else None
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        for argv in (
            [uv, "venv", "--quiet", "--python", python],
            [uv, "pip", "install", "--quiet", "numpy"],
        ):
            subprocess.run(argv, cwd=folder, env=env, stderr=errors, check=True)
        return time.perf_counter() - start


def uv_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["UV_PYTHON_DOWNLOADS"] = "never"  # a lookup that fails fails, rather than downloading
    return env


def as_typed(uv: str, name: str, interpreter: Path) -> dict[str, str] | None:
    """The environment in which ``uv venv --python NAME`` works as typed: this one, or, where
    pyenv's shim stands first on PATH, this one with the interpreter's pyenv version made
    active (PYENV_VERSION); ``None`` when it works in neither."""
    attempts = [uv_env()]
    if interpreter.parent.name == "bin" and interpreter.parents[2].name == "versions":
        attempts.append({**uv_env(), "PYENV_VERSION": interpreter.parents[1].name})
    for env in attempts:
        try:
            raw_uv(uv, name, env, quiet=True)
        except subprocess.CalledProcessError:
            continue
        return env
    return None


class Install:
    """One install of ours: its time to the first answer, its events and when the background
    compile was done (seconds from the request)."""

    def __init__(self, python_request: str) -> None:
        self.events: list[tuple[float, Event]] = []
        self.compiled_at: float | None = None
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
                on_event=lambda event: self.events.append((time.perf_counter() - start, event)),
            ).py
            client.fetch_json("/")
            self.seconds = time.perf_counter() - start
            # Waited for: a compile still running would slow the next round of every variant.
            deadline = time.monotonic() + COMPILE_PATIENCE
            while time.monotonic() < deadline:
                if any(Path(home).glob("**/environments/*/*/*/.compiled")):
                    self.compiled_at = time.perf_counter() - start
                    break
                time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default="3.10")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of ours and of raw uv")
    parser.add_argument("--pip-repeat", type=int, default=3, help="rounds of venv + pip (slow)")
    args = parser.parse_args()
    uv = uv_binary()
    if uv is None:
        raise SystemExit("uv is needed for the baseline: pip install uv")
    python = str(find_python(args.python).path)
    typed_name = "python" + ".".join(args.python.split(".")[:2])
    typed_env = as_typed(uv, typed_name, Path(python))  # also a warm-up of uv's caches
    if typed_env is None:
        raise SystemExit(f"'uv venv --python {typed_name}' does not work on this machine")
    typed = f"uv venv --python {typed_name}" + (
        f" (PYENV_VERSION={typed_env['PYENV_VERSION']})" if "PYENV_VERSION" in typed_env else ""
    )
    venv_pip(python), raw_uv(uv, python, uv_env()), Install(args.python)  # warm every cache
    ours: list[Install] = []
    typed_times: list[float] = []
    floor_times: list[float] = []
    pip_times: list[float] = []
    variants = {
        "ours": (args.repeat, lambda: ours.append(Install(args.python))),
        "typed": (args.repeat, lambda: typed_times.append(raw_uv(uv, typed_name, typed_env))),
        "floor": (args.repeat, lambda: floor_times.append(raw_uv(uv, python, uv_env()))),
        "venv + pip": (args.pip_repeat, lambda: pip_times.append(venv_pip(python))),
    }
    names = list(variants)
    for round_ in range(max(args.repeat, args.pip_repeat)):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            rounds, run = variants[name]
            if round_ < rounds:
                run()
    mine = [install.seconds for install in ours]
    title = f"first install of pyrun_backend + numpy on Python {args.python} (warm caches)"
    report(f"{title} vs {typed} + uv pip install numpy", mine, typed_times, goal="<= 1.3")
    report(f"{title} vs uv venv --python {python} + uv pip install numpy", mine, floor_times)
    report(f"{title} vs python -m venv + pip install numpy", mine, pip_times, goal="<= 0.15")
    print(
        f"  min: ours {min(mine):.3f} s, raw uv as typed {min(typed_times):.3f} s, "
        f"given the path {min(floor_times):.3f} s"
    )
    for install in ours:
        compiled = f"{install.compiled_at:.2f} s" if install.compiled_at else "not within patience"
        print(f"  to answer {install.seconds:.3f} s, background compile done at {compiled}")
    done = [install.compiled_at for install in ours if install.compiled_at is not None]
    if done:
        print(f"  background compile done at: median {statistics.median(done):.2f} s")
    print("events of the last install (seconds from the request):")
    for seconds, event in ours[-1].events:
        print(f"  {seconds:7.3f} {event.kind.name}: {event.text}")


if __name__ == "__main__":
    main()
