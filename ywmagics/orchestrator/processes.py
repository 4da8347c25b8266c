"""Child processes that never outlive the orchestrator.

Each child gets its own session (so that a stop signals its whole process group) and, on Linux,
``PR_SET_PDEATHSIG`` so the kernel kills it if the orchestrator dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def child_popen_kwargs() -> dict[str, object]:
    """Keyword arguments for ``Popen``/``create_subprocess_exec`` that bind a child to us."""
    return {"start_new_session": True, "preexec_fn": _die_with_parent, "close_fds": True}


def terminate_group(pid: int, *, timeout: float = 5.0, is_alive: Callable[[], bool]) -> None:
    """TERM the process group, wait up to ``timeout``, then KILL it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_alive():
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def has_exited(pid: int) -> bool:
    """Whether ``pid`` has ended, reaped or not (a zombie has): the event loop may not have
    reaped it yet when its sockets already report it gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc (not Linux): ask the kernel whether it exists at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def run_logged(
    argv: list[str],
    *,
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> tuple[int, str]:
    """Run ``argv`` to the end, its output appended to ``log``; return (exit code, last lines)."""
    tail: deque[str] = deque(maxlen=40)
    with log.open("a", encoding="utf-8") as sink:
        sink.write(f"$ {' '.join(argv)}\n")
        sink.flush()
        try:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                **child_popen_kwargs(),  # type: ignore[call-overload]
            )
        except OSError as error:
            message = f"cannot run {argv[0]!r}: {error.strerror or error}"
            sink.write(message + "\n")
            return 127, message
        with process:  # closes the pipe, or each step would leak a file descriptor
            assert process.stdout is not None
            for line in process.stdout:
                sink.write(line)
                tail.append(line)
                if on_line is not None:
                    on_line(line.rstrip())
            return process.wait(), "".join(tail)


def tail_of(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - 64 * 1024))
            data = file.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
