"""The orchestrator killed (SIGKILL) at random moments of installs and uninstalls, 50 times:
then nothing half-built or half-removed is used, no process of it is left, leftovers are
swept, and every install works again."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

import ywmagics
from ywmagics.client import OrchestratorClient
from ywmagics.discovery import Connection
from ywmagics.errors import YwMagicsError

from .conftest import start_orchestrator, stop_orchestrator

pytestmark = pytest.mark.slow  # 50 orchestrators, builds and backends
KILLS = 50


def _processes_of(home: Path) -> list[tuple[int, str]]:
    """Processes that work in ``home`` (by their command line or their folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(home) in cmdline or cwd.startswith(str(home))):
            found.append((int(entry.name), cmdline))
    return found


def _in_the_background(connection: Connection, step: int) -> threading.Thread:
    def work() -> None:
        try:
            if step % 3 == 2:
                OrchestratorClient(connection).uninstall("slow_build")
            else:
                flavour = f"f{step % 7}"
                ywmagics.install(
                    {
                        "modules": ["slow_build", "node_unix"],
                        "configurations": {"slow_build": {"build": {"flavour": flavour}}},
                    },
                    partition=f"Kill{step % 4}",
                    connection=connection,
                )
        except YwMagicsError:
            pass  # it is being killed: any answer, or none

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_kill_9_at_random_moments_leaves_nothing_used_or_running(tmp_path: Path) -> None:
    home = tmp_path / "home"
    generator = random.Random(20261201)
    killed: list[int] = []
    for step in range(KILLS):
        process, connection = start_orchestrator(home)
        worker = _in_the_background(connection, step)
        time.sleep(generator.uniform(0.0, 0.9))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        killed.append(process.pid)
        worker.join(30)
        deadline = time.monotonic() + 5
        while _processes_of(home) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_of(home) == [], f"left running after kill {step}"
    process, connection = start_orchestrator(home)
    try:
        environments = home / "data" / "environments"
        leftovers = [p for p in environments.glob("*/*/*") if p.name.startswith((".tmp", ".trash"))]
        assert leftovers == []  # swept at the start
        client = OrchestratorClient(connection)
        for environment in client.listing()["environments"]:
            path = Path(environment["path"])
            assert (path / "ywmeta.json").exists() and (path / "app" / "server.js").exists()
            if environment["name"] == "slow_build":
                assert (path / "app" / "built").exists()  # never one whose build was cut short
        for flavour in range(7):
            clients = ywmagics.install(
                {
                    "modules": ["slow_build as s"],
                    "configurations": {"slow_build": {"build": {"flavour": f"f{flavour}"}}},
                },
                partition="After",
                connection=connection,
            )
            assert clients.s.fetch_json("/") == {"name": "slow_build", "built": True}
        sockets = [d for pid in killed for d in Path("/tmp").glob(f"yw-{pid}-*")]
        assert sockets == []  # the killed orchestrators' socket folders are gone
    finally:
        stop_orchestrator(process)
    assert _processes_of(home) == []


LEAVE_PROCESSES = """
import os, subprocess, time
plain = subprocess.Popen(["sleep", "777"])
away = subprocess.Popen(["sleep", "778"], start_new_session=True)
read, write = os.pipe()
if os.fork() == 0:  # a daemon: double fork, a session of its own
    if os.fork() == 0:
        os.setsid()
        os.write(write, str(os.getpid()).encode())
        time.sleep(600)
    os._exit(0)
pids = [plain.pid, away.pid, int(os.read(read, 20))]
"""


@pytest.mark.parametrize("how", ["kill -9", "shutdown", "stop"])
def test_nothing_a_backend_started_outlives_it_or_the_orchestrator(
    tmp_path: Path, how: str
) -> None:
    # What a cell starts, even in a session of its own or as a daemon, ends with its backend:
    # the launcher under each backend is the reaper of all it leaves.
    from .test_pyrun_backend import _run

    process, connection = start_orchestrator(tmp_path / "home")
    try:
        runner = ywmagics.install("pyrun_backend as r", partition="Leave", connection=connection).r
        pids = _run(runner, LEAVE_PROCESSES, ["pids"])["capturedOut"]["pids"]
        assert len(pids) == 3 and all(Path(f"/proc/{pid}").exists() for pid in pids)
        if how == "kill -9":
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        elif how == "shutdown":
            OrchestratorClient(connection).shutdown()
            process.wait(30)
        else:
            OrchestratorClient(connection).stop(partition="Leave")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(pid) for pid in pids):
            time.sleep(0.02)
        assert [pid for pid in pids if _running(pid)] == []
    finally:
        stop_orchestrator(process)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
