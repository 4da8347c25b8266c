"""On shared hosts the orchestrator does not stay up for nobody: it exits after ``idle_timeout``
seconds with no kernel attached, no instance and no install running, says why in its log, and
the next client starts a new one."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import ywmagics
from ywmagics.client import OrchestratorClient

from .conftest import TEST_REGISTRY, run_in_ipython, start_orchestrator, stop_orchestrator

pytestmark = pytest.mark.slow  # orchestrators, backends, a real IPython


def _config(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)
    return home


def test_an_idle_orchestrator_exits_and_says_why(tmp_path: Path) -> None:
    home = _config(tmp_path / "home", "idle_timeout = 1\n")
    process, connection = start_orchestrator(home)
    try:
        # A running instance (a named partition's) keeps it up.
        ywmagics.install("node_echo", partition="Keep", connection=connection)
        time.sleep(2.5)
        assert process.poll() is None
        OrchestratorClient(connection).stop(partition="Keep")
        process.wait(10)
        log = (home / "serve.log").read_text()
        assert "ywmagics orchestrator exits: idle for 1 s (no kernel attached, no instance " in log
        assert "idle_timeout is 1 s (config.toml; 0 = never)" in log
        assert not (home / "run" / "orchestrator.json").exists()  # nobody is sent to it
    finally:
        stop_orchestrator(process)


def test_zero_means_never(tmp_path: Path) -> None:
    home = _config(tmp_path / "home", "idle_timeout = 0\n")
    process, _ = start_orchestrator(home)
    try:
        time.sleep(2)
        assert process.poll() is None
    finally:
        stop_orchestrator(process)


def test_a_kernel_after_the_orchestrator_left_gets_a_new_one(tmp_path: Path) -> None:
    home = _config(tmp_path / "home", "idle_timeout = 1\n")
    env = {**os.environ, "YW_HOME": str(home), "YW_BACKENDS_PATH": str(TEST_REGISTRY)}
    code = """
import time
from ywmagics.discovery import read_discovery
from ywmagics import paths
ip = get_ipython()
ip.run_line_magic("load_ext", "ywmagics")
ip.run_line_magic("backends", "status")  # the orchestrator runs (load_ext starts it in the back)
first = read_discovery(paths.discovery_file()).pid
deadline = time.monotonic() + 20
while read_discovery(paths.discovery_file()) is not None and time.monotonic() < deadline:
    time.sleep(0.2)
assert read_discovery(paths.discovery_file()) is None, "the idle orchestrator did not exit"
ip.run_line_magic("backends", "install node_echo as echo")
print("ANSWER", echo.fetch_json("/echo", method="POST", json={"x": 1}))
assert read_discovery(paths.discovery_file()).pid != first
"""
    said = run_in_ipython(code, env)
    assert "ANSWER {'x': 1, 'partition': 'kernel-" in said, said
    assert sys  # the kernel side ran in a Python of this environment
