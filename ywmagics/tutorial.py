"""``ywmagics tutorial``: the backends tutorial, run in this terminal. Each step is a notebook cell
of ``example_notebooks/`` run by a real IPython shell with the extension loaded, printed with
what it gave; the orchestrator is found or started with its embedded defaults (the bundled
backends, environments on this machine). Any step that fails ends it with a non-zero exit.

``ywmagics tutorial --lab`` opens the same tutorial as notebooks in JupyterLab, installing
JupyterLab into this environment first if it is missing (after asking).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NOTEBOOKS = Path(__file__).parents[1] / "example_notebooks"
FIRST_NOTEBOOK = NOTEBOOKS / "01_getting_started.ipynb"
# The runner of the tutorial gets another Python than this one when the machine has one.
OTHER_PYTHONS = ("3.12", "3.11", "3.10", "3.13")


@dataclass(frozen=True)
class Step:
    title: str
    cells: tuple[str, ...]
    said: str = ""  # printed before the cells


def steps(python: str, python_said: str) -> list[Step]:
    config = f" --config pyrun_backend.build.python={python}" if python else ""
    return [
        Step(
            "Load the extension: it finds the orchestrator, or starts it", ("%load_ext ywmagics",)
        ),
        Step(
            "Install a backend (its environment is built the first time, in seconds)",
            ("%backends install demo_yw_backend#^0.1.1 as ywDemoClient",),
        ),
        Step(
            "Call it: through the orchestrator's proxy, with the client bound to its alias",
            (
                'body = {"message": "hello backends", "character": "trex"}\n'
                'print(ywDemoClient.fetch_json("/cow-say", method="POST", json=body))',
            ),
        ),
        Step(
            "A runner of Python code, in an environment of its own",
            (f"%backends install pyrun_backend#^0.1.0 as pyRunner{config}",),
            said=python_said,
        ),
        Step(
            "An interpreter cell: values in (--in) and out (--out)",
            (
                "n = 4",
                "%%interpreter pyRunner --in n --out squares pyVersion\n"
                "import sys\n"
                "squares = [i * i for i in range(n)]\n"
                "pyVersion = sys.version.split()[0]",
                'print(f"squares computed by Python {pyVersion}: {squares}")',
            ),
        ),
        Step(
            "Partitions keep one notebook's backends apart from another's",
            (
                "%backends install pyrun_backend#^0.1.0 as runnerAlice --partition Alice\n"
                "%backends install pyrun_backend#^0.1.0 as runnerBob --partition Bob",
                '%%interpreter runnerAlice\nsecret = "set in Alice\'s runner"',
                "%%interpreter runnerAlice --out seen_by_alice\nseen_by_alice = secret",
                "%%interpreter runnerBob --out seen_by_bob\n"
                'seen_by_bob = globals().get("secret", "<not defined in Bob\'s runner>")',
                'print("Alice sees:", seen_by_alice)\nprint("Bob sees:  ", seen_by_bob)',
            ),
        ),
        Step(
            "Stop what the tutorial started",
            ("%backends stop --partition Alice\n%backends stop --partition Bob\n%backends stop",),
        ),
    ]


def other_python() -> tuple[str, str]:
    """A Python version for the runner other than this one, found as ``build.python`` finds
    them; else ``""`` (this one), and what to say of it."""
    from ywmagics.errors import ConfigurationError
    from ywmagics.orchestrator.interpreters import find_python, places_searched

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    for version in OTHER_PYTHONS:
        if version == here:
            continue
        try:
            found = find_python(version)
        except ConfigurationError:
            continue
        return (
            version,
            f"(this runs Python {here}; the runner gets Python {found.version}, at {found.path})",
        )
    return "", (
        f"(no Python other than this one, {here}, was found {places_searched()}: the runner "
        "uses this one; with another installed, build.python picks it)"
    )


def run() -> int:
    """Every step, printed as a notebook would show it; 0, or 1 at the first that fails."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    python, python_said = other_python()
    count = 0
    for number, step in enumerate(steps(python, python_said), 1):
        print(f"\n## {number}. {step.title}", flush=True)
        if step.said:
            print(step.said)
        for cell in step.cells:
            count += 1
            prompt = f"In [{count}]: "
            lines = cell.splitlines()
            print(prompt + lines[0])
            for line in lines[1:]:
                print(" " * (len(prompt) - 5) + "...: " + line)
            sys.stdout.flush()
            result = shell.run_cell(cell, store_history=False)  # type: ignore[no-untyped-call,unused-ignore]
            if not result.success:
                error = result.error_in_exec or result.error_before_exec
                print(
                    f"\nywmagics tutorial: step {number} ({step.title}) failed: {error}",
                    file=sys.stderr,
                )
                return 1
    print(
        "\nDone. Next:\n"
        "  the same tutorial in JupyterLab:  ywmagics tutorial --lab\n"
        "  the dashboard of what runs:       ywmagics dashboard"
    )
    return 0


def open_lab(assume_yes: bool = False) -> int:
    """JupyterLab on the first notebook of the tutorial (installed here first, if the user
    agrees)."""
    if not FIRST_NOTEBOOK.exists():
        print(
            f"ywmagics tutorial --lab: the notebooks are not here ({NOTEBOOKS}); they come with "
            "a clone of ywmagics (git clone, then pip install -e .)",
            file=sys.stderr,
        )
        return 1
    if importlib.util.find_spec("jupyterlab") is None:
        question = (
            f"JupyterLab is not installed in this environment ({sys.prefix}). Install it? [y/N] "
        )
        if not assume_yes and not _yes(question):
            print("Not installed; 'pip install jupyterlab' does it, then run this again.")
            return 1
        installed = subprocess.run([*_pip(), "jupyterlab"], check=False)
        if installed.returncode != 0:
            print("ywmagics tutorial --lab: installing JupyterLab failed", file=sys.stderr)
            return 1
    return subprocess.run(
        [sys.executable, "-m", "jupyterlab", str(FIRST_NOTEBOOK)], cwd=NOTEBOOKS, check=False
    ).returncode


def _pip() -> list[str]:
    """How to install into this environment: uv's pip when it is there (seconds), else pip."""
    from ywmagics.orchestrator.interpreters import uv_binary

    uv = uv_binary()
    if uv:
        return [uv, "pip", "install", "--python", sys.executable]
    return [sys.executable, "-m", "pip", "install"]


def _yes(question: str) -> bool:
    if not sys.stdin.isatty():
        print(question + "(no terminal to answer: taken as no; --yes says yes)")
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False
