"""Child processes that never outlive the orchestrator: how they are launched and signalled.

On Linux each child runs under a small launcher (:mod:`ywmagics.orchestrator.launcher`): it is
told by the kernel when the orchestrator dies, even by SIGKILL, and it is the reaper of all its
program starts, so that it can kill all of it, even what left the process group. It is started
as a program, not by a ``preexec_fn``: that runs Python between fork and exec, which is unsafe
once threads run (the build steps start from worker threads). Elsewhere each child leads a
process group of its own, signalled as a whole.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ywmagics.orchestrator.launcher import END_SIGNAL
from ywmagics.portable import lines_until_ended

LAUNCHER = str(Path(__file__).with_name("launcher.py"))  # run with -I -S: about 7 ms
END_GRACE = 2.0  # seconds a launcher has to kill what its program left (then: SIGKILL)
_EXECUTABLE_MAGIC = (b"#!", b"\x7fELF")
_ARMS_PDEATHSIG = sys.platform.startswith("linux")


@dataclass(frozen=True)
class PrivateNetwork:
    """A network namespace of its own for a TCP backend: where its connector listens, the port
    the backend listens on inside, and the orchestrator's port and Unix socket to relay."""

    connector: Path
    port: int
    orchestrator_port: int | None = None
    orchestrator_socket: Path | None = None

    def launcher_arguments(self) -> list[str]:
        arguments = ["--private-network", str(self.connector), str(self.port)]
        if self.orchestrator_port is not None and self.orchestrator_socket is not None:
            arguments += [
                "--orchestrator",
                str(self.orchestrator_port),
                str(self.orchestrator_socket),
            ]
        return arguments


def child_argv(
    argv: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    private_network: PrivateNetwork | None = None,
    end_grace: float = 0.0,
) -> list[str]:
    """``argv`` as started by the launcher (Linux), its program resolved on the child's PATH.

    Raises :class:`FileNotFoundError` for a program that does not exist, as ``Popen`` would: with
    a launcher in between, the failure would otherwise only show as an exit code. With
    ``private_network`` (a connector socket and a port), the program runs in a network
    namespace of its own. With ``end_grace``, an orchestrator's end gives the program SIGTERM
    and that many seconds before everything is killed (see
    :mod:`ywmagics.orchestrator.launcher`)."""
    program = argv[0]
    where = os.fspath(cwd) if cwd is not None else os.getcwd()
    if os.sep in program:
        resolved: str | None = os.path.join(where, program)
    else:
        # As the child would look it up: relative PATH entries are relative to its folder.
        path = (env if env is not None else os.environ).get("PATH", os.defpath)
        folders = [os.path.join(where, folder) for folder in path.split(os.pathsep)]
        resolved = shutil.which(program, path=os.pathsep.join(folders))
    if resolved is None or not os.path.exists(resolved):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    _check_runnable(resolved, program)
    if not _ARMS_PDEATHSIG:
        return [resolved, *argv[1:]]
    options = ["--grace", str(end_grace)] if end_grace > 0 else []
    if private_network is not None:
        options += private_network.launcher_arguments()
    return [sys.executable, "-I", "-S", LAUNCHER, str(os.getpid()), *options, resolved, *argv]


@functools.cache
def private_network_available() -> bool:
    """Whether this machine gives a child a network namespace of its own (Linux, as root or
    with unprivileged user namespaces allowed)."""
    if not _ARMS_PDEATHSIG:
        return False
    done = subprocess.run(
        [sys.executable, "-I", "-S", LAUNCHER, "--probe"], capture_output=True, check=False
    )
    return done.returncode == 0


def _check_runnable(path: str, program: str) -> None:
    """The errors ``exec`` would give, raised here, where the launcher would only exit."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), program)
    if not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
    try:
        with open(path, "rb") as file:
            start = file.read(4)
    except OSError:
        return  # executable but not readable: exec may still run it
    if not start.startswith(_EXECUTABLE_MAGIC):
        raise OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC), program)


def signal_group(pid: int, signum: int) -> None:
    """Send ``signum`` to the process group of ``pid`` (each child leads its own), quietly when
    the group is gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def end_all(pid: int) -> None:
    """Kill the child ``pid`` and everything it started: its launcher does that, finding even
    what left the group; a child without one (not Linux) has its group killed. Whoever waits
    for it gives it :data:`END_GRACE`, then kills its group (:func:`signal_group`)."""
    if not _ARMS_PDEATHSIG:
        signal_group(pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, END_SIGNAL)


def program_pid(pid: int) -> int:
    """The pid of the program a child runs: under a launcher, its child that leads a process
    group of its own (the connector of a private network does not); else ``pid`` itself."""
    if not _ARMS_PDEATHSIG:
        return pid
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as listing:
            children = [int(child) for child in listing.read().split()]
    except (OSError, ValueError):
        return pid
    for child in children:
        with contextlib.suppress(OSError):
            if os.getpgid(child) == child:
                return child
    return pid  # not forked yet, or ended


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


class RunningSteps:
    """The build steps running now, by the folder they work on: to be ended, group and all, when
    that folder is removed or the orchestrator stops (a step must not outlive either)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, set[subprocess.Popen[bytes]]] = {}
        self._ended: set[str] = set()

    def add(self, key: str, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._by_key.setdefault(key, set()).add(process)
            ended = key in self._ended
        if ended:  # its folder went away while it started
            end_all(process.pid)

    def release(self, key: str) -> None:
        """Let steps of ``key`` run again: its folder is gone, and what builds there now is a
        new environment (installed again after an uninstall)."""
        with self._lock:
            self._ended.discard(key)

    def discard(self, key: str, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._by_key.get(key, set()).discard(process)

    def end(self, key: str | None = None) -> None:
        """Kill the steps of ``key`` (every step when ``None``) and wait for them; later steps
        of ``key`` are killed as they start."""
        with self._lock:
            if key is None:
                processes = {p for group in self._by_key.values() for p in group}
            else:
                self._ended.add(key)
                processes = set(self._by_key.get(key, ()))
        for process in processes:
            end_all(process.pid)
        for process in processes:
            try:
                process.wait(END_GRACE)
            except subprocess.TimeoutExpired:
                signal_group(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)


def run_logged(
    argv: list[str],
    *,
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    running: RunningSteps | None = None,
    key: str = "",
) -> tuple[int, str]:
    """Run ``argv`` to the end, its output appended to ``log``; return (exit code, last lines).

    With ``running``, the step is known there under ``key`` while it runs."""
    tail: deque[str] = deque(maxlen=40)
    with log.open("a", encoding="utf-8") as sink:
        sink.write(f"$ {' '.join(argv)}\n")
        sink.flush()
        try:
            process = subprocess.Popen(
                child_argv(argv, cwd=cwd, env=env),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, signalled as a whole
                close_fds=True,
            )
        except OSError as error:
            message = f"cannot run {argv[0]!r}: {error.strerror or error}"
            sink.write(message + "\n")
            return 127, message
        if running is not None:
            running.add(key, process)
        try:
            with process:  # closes the pipe, or each step would leak a file descriptor
                assert process.stdout is not None
                for line in lines_until_ended(process, process.stdout.fileno()):
                    sink.write(line)
                    tail.append(line)
                    if on_line is not None:
                        on_line(line.rstrip())
                return process.wait(), "".join(tail)
        finally:
            if running is not None:
                running.discard(key, process)


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
