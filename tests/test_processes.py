"""Child processes: launched with the parent-death signal armed, found on the child's PATH."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from ywmagics.orchestrator.placements.local import free_port
from ywmagics.orchestrator.processes import (
    LAUNCHER,
    child_argv,
    end_all,
    has_exited,
    private_network_available,
    run_logged,
    signal_group,
    tail_of,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")


def test_a_missing_program_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        child_argv(["no-such-program-ywmagics"])
    with pytest.raises(FileNotFoundError):
        child_argv(["./run.sh"], cwd=tmp_path)
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    resolved = os.path.join(tmp_path, "./run.sh")
    assert child_argv(["./run.sh", "x"], cwd=tmp_path)[-3:] == [resolved, "./run.sh", "x"]


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda p: p.mkdir(), IsADirectoryError),
        (lambda p: p.write_text("#!/bin/sh\n"), PermissionError),  # not executable
        (lambda p: (p.write_text("echo no shebang\n"), p.chmod(0o755)), OSError),
    ],
)
def test_what_exec_would_refuse_is_refused_here(tmp_path: Path, make: Any, error: type) -> None:
    program = tmp_path / "prog"
    make(program)
    with pytest.raises(error) as raised:
        child_argv([str(program)])
    assert raised.value.filename == str(program)
    if error is OSError:
        assert raised.value.errno == errno.ENOEXEC


def test_relative_path_entries_are_the_childs_and_argv0_is_kept(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    tool = tmp_path / "bin" / "tool"
    tool.write_text('#!/bin/sh\necho "$0"\n')
    tool.chmod(0o755)
    argv = child_argv(["tool"], cwd=tmp_path, env={"PATH": "bin"})
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.strip().endswith("bin/tool")
    shell = subprocess.run(
        child_argv(["sh", "-c", 'echo "$0"']), capture_output=True, text=True, check=True
    )
    assert shell.stdout == "sh\n"  # as typed, not the resolved path


def test_the_program_is_looked_up_on_the_childs_path(tmp_path: Path) -> None:
    (tmp_path / "mytool").write_text("#!/bin/sh\necho from-mytool\n")
    (tmp_path / "mytool").chmod(0o755)
    argv = child_argv(["mytool"], env={"PATH": str(tmp_path)})
    assert str(tmp_path / "mytool") in argv
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert done.stdout == "from-mytool\n"


def test_run_logged_reports_a_missing_program_in_its_log(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    code, tail = run_logged(["no-such-program-ywmagics", "--x"], log=log)
    assert code == 127 and "cannot run 'no-such-program-ywmagics'" in tail
    assert "cannot run" in tail_of(log)


@linux_only
def test_the_launcher_refuses_to_run_for_a_parent_that_is_not_its_own() -> None:
    argv = child_argv(["true"])
    position = argv.index(str(os.getpid()))
    argv[position] = "1"  # as if our parent had died before the signal was armed
    assert subprocess.run(argv, check=False).returncode == 70


# A program that leaves processes everywhere: a plain child, one in a session of its own, and a
# daemon (double fork), then writes their pids and waits (or ends with the given code).
SPAWNER = """
import os, signal, subprocess, sys, time
plain = subprocess.Popen(["sleep", "600"])
away = subprocess.Popen(["sleep", "601"], start_new_session=True)
read, write = os.pipe()
if os.fork() == 0:
    if os.fork() == 0:
        os.setsid()
        os.write(write, str(os.getpid()).encode())
        time.sleep(600)
    os._exit(0)
daemon = int(os.read(read, 20))
open(sys.argv[1], "w").write(f"{plain.pid} {away.pid} {daemon}")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(5))
if sys.argv[2] != "wait":
    sys.exit(int(sys.argv[2]))
time.sleep(600)
"""


def _spawned(pid_file: Path) -> list[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pid_file.exists() and len(pid_file.read_text().split()) == 3:
            return [int(pid) for pid in pid_file.read_text().split()]
        time.sleep(0.01)
    raise AssertionError("the program did not start its processes")


def _all_end(pids: list[int], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(has_exited(pid) for pid in pids):
            return True
        time.sleep(0.01)
    return False


@linux_only
def test_nothing_a_child_started_outlives_its_parent_killed_by_sigkill(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from ywmagics.orchestrator.processes import child_argv\n"
            "argv = [sys.executable, '-c', sys.argv[1], sys.argv[2], 'wait']\n"
            "subprocess.Popen(child_argv(argv), start_new_session=True)\n"
            "time.sleep(60)\n",
            SPAWNER,
            str(pid_file),
        ]
    )
    try:
        spawned = _spawned(pid_file)
        assert not any(has_exited(pid) for pid in spawned)
        os.kill(parent.pid, signal.SIGKILL)  # as 'kill -9' of the orchestrator
        parent.wait()
        assert _all_end(spawned), [pid for pid in spawned if not has_exited(pid)]
    finally:
        parent.kill()
        parent.wait()


# A program that says it runs, then on SIGTERM writes "cleaned up" (as srun ends its job step
# elsewhere) and exits, or with "stubborn" ignores SIGTERM.
CLEANER = """
import os, signal, sys, time
def clean_up(*_):
    open(sys.argv[1] + ".cleaned", "w").write("cleaned up")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[2] == "stubborn" else clean_up)
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(600)
"""


@linux_only
@pytest.mark.parametrize(
    ("grace", "program"),
    [
        (0, "cleaner"),
        (0, "stubborn"),
        (1.5, "cleaner"),
        pytest.param(1.5, "stubborn", marks=pytest.mark.slow),  # waits out its whole grace
    ],
)
def test_a_grace_lets_a_program_clean_up_after_its_orchestrator_died(
    tmp_path: Path, grace: float, program: str
) -> None:
    pid_file = tmp_path / "pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from ywmagics.orchestrator.processes import child_argv\n"
            "argv = [sys.executable, '-c', sys.argv[1], sys.argv[2], sys.argv[3]]\n"
            "grace = float(sys.argv[4])\n"
            "subprocess.Popen(child_argv(argv, end_grace=grace), start_new_session=True)\n"
            "time.sleep(60)\n",
            CLEANER,
            str(pid_file),
            program,
            str(grace),
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        pid = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        killed = time.monotonic()
        assert _all_end([pid], within=grace + 5), "the program outlived its grace"
        ended_after = time.monotonic() - killed
        cleaned = Path(f"{pid_file}.cleaned").exists()
        assert cleaned == (grace > 0 and program == "cleaner")
        if program == "stubborn" and grace > 0:
            assert ended_after >= grace - 0.5, f"killed {ended_after:.1f} s into its grace"
        if grace == 0:
            assert ended_after < 2
    finally:
        parent.kill()
        parent.wait()


def _launched(tmp_path: Path, how: str) -> tuple[subprocess.Popen[bytes], list[int]]:
    pid_file = tmp_path / "pids"
    argv = [sys.executable, "-c", SPAWNER, str(pid_file), how]
    process = subprocess.Popen(child_argv(argv), start_new_session=True)
    return process, _spawned(pid_file)


@linux_only
def test_a_stop_ends_everything_a_child_started_wherever_it_went(tmp_path: Path) -> None:
    process, spawned = _launched(tmp_path, "wait")
    signal_group(process.pid, signal.SIGTERM)  # passed on to the program: it exits with 5
    assert process.wait(10) == 5
    assert _all_end(spawned, 1)  # its processes ended before the launcher did


@linux_only
def test_the_end_signal_kills_everything_at_once(tmp_path: Path) -> None:
    process, spawned = _launched(tmp_path, "wait")
    end_all(process.pid)
    assert process.wait(10) == -signal.SIGKILL  # as the program ended
    assert _all_end(spawned, 1)


@linux_only
def test_a_child_ends_as_its_program_did_and_takes_what_it_left(tmp_path: Path) -> None:
    process, spawned = _launched(tmp_path, "3")
    assert process.wait(10) == 3
    assert _all_end(spawned, 1)
    killed = subprocess.Popen(child_argv(["sh", "-c", "kill -HUP $$"]), start_new_session=True)
    assert killed.wait(10) == -signal.SIGHUP


# A program traced by one of its own processes (which can then hold its end), above a chain of
# processes each in a session of its own; then it waits, or ends with the given code.
DEEP_AND_TRACED = """
import ctypes, os, sys, time
program, name, depth, how = os.getpid(), sys.argv[1], int(sys.argv[2]), sys.argv[3]
def named():
    with open("/proc/self/comm", "w") as comm:
        comm.write(name)
ready, told = os.pipe()
if os.fork() == 0:  # the tracer
    os.setsid()
    named()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.ptrace(0x4206, program, None, None) == 0  # PTRACE_SEIZE
    os.write(told, b".")
    time.sleep(600)
os.read(ready, 1)
built, says_built = os.pipe()
if os.fork() == 0:  # the chain
    for _ in range(depth):
        os.setsid()
        if os.fork() != 0:
            break
    else:  # the last of the chain: all are there (a loaded machine takes seconds)
        named()
        os.write(says_built, b".")
    named()
    time.sleep(600)
os.read(built, 1)
time.sleep(0.2)  # each one named itself
if how != "wait":
    os._exit(int(how))
time.sleep(600)
"""


def _named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if (
                entry.name.isdigit()
                and (entry / "comm").read_text().strip() == name
                and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            ):
                found.append(int(entry.name))
    return found


@linux_only
@pytest.mark.slow  # a tree of hundreds of processes, each waited for
@pytest.mark.parametrize("how", ["4", "end signal"])
def test_a_tracer_and_a_deep_tree_do_not_hold_a_child_up(how: str) -> None:
    name = f"ywdeep{os.getpid() % 10000}"
    argv = [
        sys.executable,
        "-c",
        DEEP_AND_TRACED,
        name,
        "300",
        how if how != "end signal" else "wait",
    ]
    process = subprocess.Popen(child_argv(argv), start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(_named(name)) < 302 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_named(name)) == 302  # the tracer and the chain of 301
        began = time.monotonic()
        if how == "end signal":
            end_all(process.pid)
            assert process.wait(10) == -signal.SIGKILL
        else:  # it ends by itself while traced: its end is seen, and all it left is killed
            assert process.wait(10) == 4
        assert time.monotonic() - began < 5
        assert _named(name) == []
    finally:
        for pid in _named(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait()


SERVE_INSIDE = """
import http.server, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "6"); self.end_headers()
        self.wfile.write(b"inside")
    def log_message(self, *a): pass
socketserver.TCPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _as_whom(whom: str) -> list[str]:
    return [] if whom == "me" else ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@linux_only
@pytest.mark.parametrize("whom", ["me", "nobody"])
def test_a_private_network_is_reached_through_its_connector_only(whom: str) -> None:
    if whom == "nobody" and (os.getuid() != 0 or shutil.which("setpriv") is None):
        pytest.skip("acting as another user needs root and setpriv")
    if not private_network_available():
        pytest.skip("this machine gives no private network namespace")
    shared = Path(tempfile.mkdtemp(prefix="ywnet-"))  # a folder the other user can enter too
    os.chmod(shared, 0o777)
    connector = shared / "c.sock"
    port = free_port()
    # Another user may not enter our Python's folders: the system's Python serves for it.
    python = sys.executable if whom == "me" else shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for another user")
    launcher = [
        python, "-I", "-S", LAUNCHER, str(os.getpid()), "--private-network",
        str(connector), str(port), python, "python", "-c", SERVE_INSIDE, str(port),
    ]  # fmt: skip
    backend = subprocess.Popen([*_as_whom(whom), *launcher])  # setpriv execs it: we are its parent
    try:
        deadline = time.monotonic() + 10
        answer = b""
        while time.monotonic() < deadline and not answer.endswith(b"inside"):
            time.sleep(0.05)
            with contextlib.suppress(OSError):
                with socket.socket(socket.AF_UNIX) as asking:
                    asking.connect(str(connector))
                    _, fds, _, _ = socket.recv_fds(asking, 1, 1)
                if not fds:
                    continue  # the server does not listen yet: the connector hands nothing
                with socket.socket(fileno=fds[0]) as tcp:
                    tcp.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    answer = tcp.recv(1000)
        assert answer.endswith(b"inside")
        with pytest.raises(ConnectionRefusedError):  # nothing listens on this machine's port
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        backend.kill()
        backend.wait()
        shutil.rmtree(shared, ignore_errors=True)


def test_a_steps_output_is_read_until_it_ends_not_until_its_pipe_closes() -> None:
    # Something that escaped a step (it cannot, under the launcher; without one it can) and
    # holds its output pipe must not keep a shutdown waiting forever.
    from ywmagics.portable import lines_until_ended

    held = subprocess.Popen(
        ["sh", "-c", "echo first; (sleep 30 &); echo last; exit 0"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        began = time.monotonic()
        assert held.stdout is not None
        assert list(lines_until_ended(held, held.stdout.fileno())) == ["first\n", "last\n"]
        assert time.monotonic() - began < 3
    finally:
        os.killpg(held.pid, signal.SIGKILL)
        held.wait()
        if held.stdout is not None:
            held.stdout.close()
