"""Cold start: ``%load_ext`` starts the orchestrator without waiting for it, and the first
command that needs it waits for it (or raises why it did not start).

Units drive the background start with a stand-in for the real one. The slow tests run IPython
shells in processes of their own, each with a fresh ``YW_HOME``, against real orchestrators held
at their start by a gate (``resources/gated_serve/sitecustomize.py``) until the test opens it:
what a kernel does before its orchestrator can answer is then seen, not raced.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ywmagics import paths
from ywmagics.client import _connect
from ywmagics.discovery import Connection, pid_alive, read_discovery
from ywmagics.errors import OrchestratorError
from ywmagics.protocol import PROTOCOL_VERSION

from .conftest import RESOURCES

slow = pytest.mark.slow

# ---- units: the real start lock, a stand-in for the orchestrator's process -------------------


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[StandIn]:
    monkeypatch.setenv("YW_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(_connect, "_background", None)
    orchestrators = StandIn()
    monkeypatch.setattr(_connect, "Spawned", orchestrators.spawn)
    monkeypatch.setattr(_connect, "find_orchestrator", orchestrators.find)
    monkeypatch.setattr(_connect, "read_discovery", orchestrators.find)
    yield orchestrators
    orchestrators.answer.set()
    if _connect._background is not None:
        _connect._background._done.wait(5)


class StandIn:
    """Stands in for orchestrator processes: a spawned one answers once ``answer`` is set, or
    fails with ``error`` if that is set then."""

    def __init__(self) -> None:
        self.answer = threading.Event()
        self.spawned_by: list[int] = []  # the threads that spawned one
        self.running: Connection | None = None
        self.error: Exception | None = None

    def find(self) -> Connection | None:
        return self.running

    def spawn(self) -> StandIn:
        self.spawned_by.append(threading.get_ident())
        return self

    def first_answer(self, timeout: float) -> Connection:
        assert self.answer.wait(10)
        if self.error is not None:
            raise self.error
        self.running = Connection("http://127.0.0.1:1", "token", 1234, protocol=PROTOCOL_VERSION)
        return self.running


def _start_lock_is_free() -> bool:
    lock = _connect.StartLock(paths.runtime_dir() / "start.lock")
    taken = lock.acquire(timeout=0)
    lock.release()
    return taken


def _background_over() -> None:
    pending = _connect._background
    assert pending is not None
    assert pending._done.wait(5)


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    done: list[Any] = []

    def run() -> None:
        try:
            done.append(call())
        except Exception as error:
            done.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def test_the_load_spawns_at_once_and_the_next_connect_waits_for_the_answer(
    stand_in: StandIn,
) -> None:
    _connect.start_in_background()
    # Spawned before the call returned, by the caller's own thread (no thread competes with
    # the notebook for the interpreter before the spawn), and the start lock is held.
    assert stand_in.spawned_by == [threading.get_ident()]
    assert not _start_lock_is_free()
    _connect.start_in_background()  # a second %load_ext: no second start
    waiting, got = _in_thread(_connect.connect)
    waiting.join(0.2)
    assert got == [] and stand_in.running is None  # connect waits for the start under way
    stand_in.answer.set()
    waiting.join(5)
    assert got == [stand_in.running] and len(stand_in.spawned_by) == 1
    assert _start_lock_is_free()
    assert _connect._background is None  # done with: the next connect finds it as usual
    assert _connect.connect() == stand_in.running and len(stand_in.spawned_by) == 1


def test_while_another_process_starts_one_the_load_spawns_none(stand_in: StandIn) -> None:
    other = _connect.StartLock(paths.runtime_dir() / "start.lock")
    assert other.acquire(timeout=0)  # as another kernel, starting one
    _connect.start_in_background()
    waiting, got = _in_thread(_connect.connect)
    waiting.join(0.2)
    assert got == []  # waits for the other's start
    stand_in.running = Connection("http://127.0.0.1:2", "other", 99, protocol=PROTOCOL_VERSION)
    other.release()
    waiting.join(5)
    assert got == [stand_in.running] and stand_in.spawned_by == []


def test_a_failed_background_start_is_raised_by_the_next_connect(stand_in: StandIn) -> None:
    stand_in.error = OrchestratorError("the orchestrator did not start", log_tail="BROKEN: why")
    stand_in.answer.set()
    _connect.start_in_background()
    _background_over()  # it failed before anything needed the orchestrator
    assert _start_lock_is_free()
    with pytest.raises(OrchestratorError) as raised:
        _connect.connect()
    assert raised.value is stand_in.error  # its own words and log tail, not a later error
    assert len(stand_in.spawned_by) == 1
    # Said once: the next call starts anew (and succeeds, if the cause is gone).
    stand_in.error = None
    assert _connect.connect() == stand_in.running and len(stand_in.spawned_by) == 2


def test_what_fails_before_the_spawn_is_raised_by_the_next_connect(
    stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unusable(timeout: float) -> Callable[[], Connection]:
        raise PermissionError("start.lock: permission denied")

    monkeypatch.setattr(_connect, "_begin_start", unusable)
    _connect.start_in_background()  # %load_ext never fails for it
    with pytest.raises(PermissionError, match="permission denied"):
        _connect.connect()


def test_every_waiter_of_a_failed_start_hears_of_it(stand_in: StandIn) -> None:
    stand_in.error = OrchestratorError("the orchestrator did not start")
    _connect.start_in_background()
    waiters = [_in_thread(_connect.connect) for _ in range(2)]
    time.sleep(0.1)
    stand_in.answer.set()
    for thread, got in waiters:
        thread.join(5)
        assert got == [stand_in.error]
    assert len(stand_in.spawned_by) == 1


def test_a_failed_start_is_not_raised_once_another_process_started_one(stand_in: StandIn) -> None:
    stand_in.error = OrchestratorError("the orchestrator did not start")
    stand_in.answer.set()
    _connect.start_in_background()
    _background_over()
    stand_in.running = Connection(
        "http://127.0.0.1:2", "other", 99, protocol=PROTOCOL_VERSION
    )  # another kernel's
    assert _connect.connect() == stand_in.running


def test_a_forked_process_does_not_wait_for_its_parents_start(stand_in: StandIn) -> None:
    _connect.start_in_background()
    child = os.fork()
    if child == 0:  # no start thread here: this process would find or start one itself
        os._exit(0 if _connect._background is None else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _connect._background is not None  # the parent's is still under way


def test_load_ext_starts_in_the_background_only_when_none_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ywmagics.kernel import YwMagics

    monkeypatch.setenv("YW_HOME", str(tmp_path / "home"))
    starts: list[None] = []
    monkeypatch.setattr(_connect, "start_in_background", lambda: starts.append(None))
    magics = YwMagics(shell=None)
    magics.find_orchestrator()
    assert len(starts) == 1
    magics.orchestrator_url, magics.orchestrator_token = "http://127.0.0.1:1", "t"
    magics.find_orchestrator()  # told where one runs: none is started
    assert len(starts) == 1


# ---- real kernels, real orchestrators ----------------------------------------------------------


class Kernel:
    """An IPython shell in a process of its own running ``script``, which says one JSON object
    per line (``say``) and may wait for the test by reading a line (:meth:`go_on`)."""

    def __init__(self, script: str, env: dict[str, str]) -> None:
        prelude = (
            "import contextlib, io, json, sys\n"
            "from IPython.core.interactiveshell import InteractiveShell\n"
            "shell = InteractiveShell.instance()\n"
            "def say(**what):\n"
            "    print(json.dumps(what), flush=True)\n"
            "def run(line):\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as said:\n"
            "        shell.run_line_magic(*line.split(' ', 1))\n"
            "    return said.getvalue()\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", prelude + script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")  # it ended

    def said(self, timeout: float = 60) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the kernel said nothing within {timeout} s") from None
        if not line:
            self.process.wait(10)
            assert self.process.stderr is not None
            raise AssertionError(f"the kernel ended: {self.process.stderr.read()}")
        said: dict[str, Any] = json.loads(line)
        return said

    def silent_for(self, seconds: float) -> bool:
        time.sleep(seconds)
        return self._lines.empty()

    def go_on(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def serve_children(self) -> list[int]:
        """The ``ywmagics serve`` processes this kernel started (and that still run)."""
        return [pid for pid, parent, _ in _serve_processes() if parent == self.process.pid]


def _serve_processes() -> list[tuple[int, int, bytes]]:
    """(pid, parent pid, environment) of every running ``python -m ywmagics serve``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes().split(b"\0")[-3:-1] != [b"ywmagics", b"serve"]:
                continue
            parent = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if pid_alive(int(entry.name)):
            found.append((int(entry.name), parent, environment))
    return found


def _wait_for(condition: Callable[[], Any], seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"not within {seconds} s: {condition}")


@pytest.fixture
def cold_home(tmp_path: Path) -> Iterator[ColdHome]:
    home = ColdHome(tmp_path)
    yield home
    home.close()


class ColdHome:
    """A fresh ``YW_HOME`` (no orchestrator runs there), its gate, and the kernels started in
    it; ended with whatever orchestrator they started."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "home"
        self.gate = tmp_path / "gate"
        self.kernels: list[Kernel] = []
        paths = [str(RESOURCES / "gated_serve"), *os.environ.get("PYTHONPATH", "").split(":")]
        self.env = {
            **os.environ,
            "YW_HOME": str(self.path),
            "YWTEST_SERVE_GATE": str(self.gate),
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        }

    def kernel(self, script: str) -> Kernel:
        self.kernels.append(Kernel(script, self.env))
        return self.kernels[-1]

    def open_gate(self) -> None:
        self.gate.touch()

    @property
    def log(self) -> str:
        log = self.path / "run" / "orchestrator.log"
        return log.read_text() if log.exists() else ""

    def close(self) -> None:
        for kernel in self.kernels:
            kernel.process.kill()
            kernel.process.communicate()
        # Those the kernels started run on without them (in sessions of their own).
        mark = b"\0YW_HOME=" + bytes(self.path) + b"\0"
        started = [pid for pid, _, env in _serve_processes() if mark in b"\0" + env]
        for pid in started:
            os.kill(pid, signal.SIGTERM)
        _wait_for(lambda: not any(pid_alive(pid) for pid in started))


@slow
def test_load_ext_returns_before_the_orchestrator_answers_and_the_first_command_waits(
    cold_home: ColdHome,
) -> None:
    kernel = cold_home.kernel(
        "shell.run_line_magic('load_ext', 'ywmagics')\n"
        "from ywmagics.discovery import read_discovery\n"
        "loaded = [m for m in ('httpx', 'starlette', 'uvicorn') if m in sys.modules]\n"
        "again = run('load_ext ywmagics')\n"  # IPython says it is loaded already
        "run('reload_ext ywmagics')\n"  # unload, load: the start under way is not repeated
        "say(loaded=loaded, found=read_discovery() is not None, again=again)\n"
        "say(status=run('backends status'))\n"
    )
    first = kernel.said()
    # The load is over; the orchestrator it spawned is held at its start, so cannot answer.
    assert first["loaded"] == [] and first["found"] is False
    assert "already loaded" in first["again"]
    (spawned,) = _wait_for(kernel.serve_children)
    assert read_discovery(cold_home.path / "run" / "orchestrator.json") is None
    # The first command needs the orchestrator: it waits for it...
    assert kernel.silent_for(0.5)
    cold_home.open_gate()
    # ...and works once it answers.
    status = kernel.said()["status"]
    assert f"(pid {spawned}," in status and "0 running instance(s)" in status
    assert kernel.serve_children() == [spawned]  # one orchestrator, for all three loads
    assert cold_home.log.count("listening on") == 1


@slow
def test_a_failed_start_is_told_by_the_first_command_with_the_log_tail(
    cold_home: ColdHome,
) -> None:
    cold_home.path.mkdir()
    (cold_home.path / "config.toml").write_text("registries = [unclosed\n")
    cold_home.open_gate()
    kernel = cold_home.kernel(
        "shell.run_line_magic('load_ext', 'ywmagics')\n"
        "say(loaded=True)\n"
        "sys.stdin.readline()\n"
        "for attempt in range(2):\n"
        "    try:\n"
        "        run('backends status')\n"
        "        say(error=None)\n"
        "    except Exception as error:\n"
        "        say(error=type(error).__name__, text=str(error))\n"
    )
    assert kernel.said() == {"loaded": True}
    # The start fails after the load is over, and before anything needs the orchestrator.
    _wait_for(lambda: "not valid TOML" in cold_home.log)
    _wait_for(lambda: not kernel.serve_children())
    time.sleep(0.2)  # the kernel's start thread has seen the orchestrator end
    kernel.go_on()
    first = kernel.said()
    assert first["error"] == "OrchestratorError"
    assert "the orchestrator did not start" in first["text"]
    assert "last lines of the log" in first["text"] and "not valid TOML" in first["text"]
    # Told once; the next command tries again (and says why it fails, again).
    second = kernel.said()
    assert second["error"] == "OrchestratorError" and "not valid TOML" in second["text"]
    assert cold_home.log.count("not valid TOML") == 2
    _, stderr = kernel.process.communicate(timeout=30)
    assert "Traceback" not in stderr  # the load said nothing: its thread raised nothing


@slow
def test_two_kernels_loading_at_once_start_one_orchestrator(cold_home: ColdHome) -> None:
    script = (
        "sys.stdin.readline()\n"
        "shell.run_line_magic('load_ext', 'ywmagics')\n"
        "say(loaded=True)\n"
        "say(status=run('backends status'))\n"
    )
    kernels = [cold_home.kernel(script), cold_home.kernel(script)]
    for kernel in kernels:
        kernel.go_on()
    for kernel in kernels:
        assert kernel.said() == {"loaded": True}
    # Both loads are over while the orchestrator is held: one of them spawned it, the other
    # waits for the start lock.
    spawned = _wait_for(lambda: [pid for k in kernels for pid in k.serve_children()])
    assert len(spawned) == 1
    time.sleep(0.3)
    assert len([pid for k in kernels for pid in k.serve_children()]) == 1
    cold_home.open_gate()
    for kernel in kernels:
        assert f"(pid {spawned[0]}," in kernel.said()["status"]
    assert cold_home.log.count("listening on") == 1


@slow
def test_in_a_jupyter_kernel_the_load_returns_and_the_next_cell_waits(cold_home: ColdHome) -> None:
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=cold_home.env)
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        loaded = client.execute_interactive("%load_ext ywmagics", timeout=60)
        assert loaded["content"]["status"] == "ok"
        kernel = manager.provisioner.pid  # type: ignore[union-attr]
        (spawned,) = _wait_for(
            lambda: [p for p, parent, _ in _serve_processes() if parent == kernel]
        )
        # The next cell can only end once the orchestrator answers, after the gate is opened.
        opened = threading.Timer(0.5, cold_home.open_gate)
        opened.start()
        shown: list[str] = []

        def output(message: dict[str, Any]) -> None:
            if message["msg_type"] == "stream":
                shown.append(message["content"]["text"])

        status = client.execute_interactive("%backends status", timeout=60, output_hook=output)
        assert status["content"]["status"] == "ok" and cold_home.gate.exists()
        assert f"(pid {spawned}," in "".join(shown)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
