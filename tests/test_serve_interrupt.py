"""A lone Ctrl-C to ``ywmagics serve``, whenever it comes: a quiet, clean stop (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ywmagics.discovery import read_discovery

from .conftest import TEST_REGISTRY, start_orchestrator

pytestmark = pytest.mark.slow  # starts some thirty orchestrators

COMMAND = [sys.executable, "-m", "ywmagics", "serve"]


def _serve(home: Path) -> subprocess.Popen[bytes]:
    """``ywmagics serve`` as tests/conftest.py starts it: its own YW_HOME, the test registry."""
    home.mkdir(parents=True)
    env = {**os.environ, "YW_HOME": str(home), "YW_BACKENDS_PATH": str(TEST_REGISTRY)}
    with (home / "serve.log").open("wb") as log:
        return subprocess.Popen(COMMAND, env=env, stdout=log, stderr=log)


def _seconds_until_ready(home: Path) -> float:
    started = time.monotonic()
    process = _serve(home)
    while read_discovery(home / "run" / "orchestrator.json") is None:
        assert process.poll() is None, (home / "serve.log").read_text()
        time.sleep(0.005)
    elapsed = time.monotonic() - started
    process.send_signal(signal.SIGINT)
    process.wait(30)
    return elapsed


def _seconds_before_main() -> float:
    """How long Python takes to import the command, before its ``main`` runs: a Ctrl-C then is
    Python's own (a KeyboardInterrupt traceback), as for any Python program."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import ywmagics.cli"], check=True)
    return time.monotonic() - started


def _assert_stopped_quietly(process: subprocess.Popen[bytes], home: Path, when: str) -> None:
    try:
        code = process.wait(30)
    except subprocess.TimeoutExpired:  # the Ctrl-C was lost: it runs on
        process.kill()
        process.wait()
        raise AssertionError(f"Ctrl-C {when}: still running after 30 s") from None
    log = (home / "serve.log").read_text()
    said = [line for line in log.splitlines() if " listening on " not in line]
    assert "Traceback" not in log and "Exception ignored" not in log, f"Ctrl-C {when}:\n{log}"
    assert code == 130, f"Ctrl-C {when}: exit code {code}\n{log}"
    assert said == [f"orchestrator (pid {process.pid}) stopped"], f"Ctrl-C {when}:\n{log}"
    left = sorted(p.name for p in (home / "run").glob("orchestrator.*"))
    assert left == [], f"Ctrl-C {when}: left {left}"


def test_a_lone_ctrl_c_stops_serve_quietly_whenever_it_comes(tmp_path: Path) -> None:
    # During the start above all: it used to end in a traceback, be lost in a weakref
    # callback (the orchestrator ran on), kill Python by SIGINT or leave the socket behind.
    ready = _seconds_until_ready(tmp_path / "warm")
    first = max(0.1, 2 * _seconds_before_main())
    delays = sorted({0.1, 0.5} | {first + ready * i / 24 for i in range(25)})
    for number, delay in enumerate(d for d in delays if d >= first):
        home = tmp_path / f"home{number}"
        process = _serve(home)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _assert_stopped_quietly(process, home, f"{delay:.2f} s after the start")


def test_a_ctrl_c_once_ready_stops_it_and_its_backends_quietly(tmp_path: Path) -> None:
    import ywmagics
    from ywmagics.client import OrchestratorClient

    home = tmp_path / "home"
    process, connection = start_orchestrator(home)
    ywmagics.install("node_echo", partition="CtrlC", connection=connection)
    pid = OrchestratorClient(connection).listing()["instances"][0]["pid"]
    process.send_signal(signal.SIGINT)
    _assert_stopped_quietly(process, home, "once ready")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
