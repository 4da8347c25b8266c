"""``ywmagics tutorial`` says which step failed and exits non-zero (test_readme.py runs the whole
tutorial from a fresh virtualenv)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a Python with IPython, in a process of its own

FAILING = """
from ywmagics import tutorial
tutorial.steps = lambda *_: [tutorial.Step("one that fails", ("x = 1", "1 / 0"))]
raise SystemExit(tutorial.run())
"""


def test_a_step_that_fails_is_named_and_the_exit_is_not_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FAILING], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 1
    assert "step 1 (one that fails) failed: division by zero" in done.stderr
    assert "In [2]: 1 / 0" in done.stdout and "Done." not in done.stdout


def test_lab_without_a_terminal_to_ask_does_not_install(tmp_path: Path) -> None:
    code = (
        "import importlib.util, sys\n"
        "importlib.util.find_spec = lambda name, *a: None\n"  # as if JupyterLab were missing
        "from ywmagics import tutorial\n"
        "raise SystemExit(tutorial.open_lab())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Install it? [y/N] (no terminal to answer: taken as no; --yes says yes)" in done.stdout
