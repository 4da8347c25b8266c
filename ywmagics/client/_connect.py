"""Finding the user's orchestrator, or starting one in the background."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import filelock

from ywmagics import paths
from ywmagics.discovery import Connection, answers, pid_alive, read_discovery
from ywmagics.errors import OrchestratorError

START_TIMEOUT = 30.0


def find_orchestrator() -> Connection | None:
    """The running orchestrator of this user, or ``None``."""
    connection = read_discovery()
    return connection if connection is not None and answers(connection) else None


def connect(*, start: bool = True, timeout: float = START_TIMEOUT) -> Connection:
    """Find the orchestrator, starting it in the background when none runs (and ``start``)."""
    found = find_orchestrator()
    if found is not None:
        return found
    if not start:
        raise OrchestratorError(
            "no orchestrator is running", hint="start one with 'ywmagics serve'"
        )
    # Two kernels starting at once must not start two orchestrators.
    lock = filelock.FileLock(str(paths.runtime_dir() / "start.lock"), timeout=timeout, mode=0o600)
    with lock:
        found = find_orchestrator()
        if found is not None:
            return found
        return _start(timeout)


def _orchestrator_environment() -> dict[str, str]:
    # A kernel forces colours for its own output (FORCE_COLOR, CLICOLOR_FORCE): the orchestrator,
    # its build tools and its backends write logs and events, which want plain text.
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    env.update(PYTHONUNBUFFERED="1", NO_COLOR="1")
    return env


def _start(timeout: float) -> Connection:
    log_path = paths.runtime_dir() / "orchestrator.log"
    # Private whatever the caller's umask (it holds what backends print); kept so if it exists.
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ywmagics", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # shared by all kernels: it must outlive the one starting it
            env=_orchestrator_environment(),
        )
    # Reap it when it ends: a process that started the orchestrator (a kernel) would otherwise
    # keep a zombie, which looks alive to 'ywmagics shutdown' and the discovery check.
    threading.Thread(target=process.wait, name="ywmagics-reaper", daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = read_discovery()
        if connection is not None and connection.pid == process.pid and answers(connection):
            return connection
        if process.poll() is not None:
            break
        time.sleep(0.02)
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    if process.poll() is None and pid_alive(process.pid):
        process.kill()
    raise OrchestratorError(
        "the orchestrator did not start", hint=f"its log is {log_path}", log_tail=tail
    )
