"""Another local user (``nobody``, through ``setpriv``) against a running orchestrator: it reads
no state, learns no token and reaches no backend.

The orchestrator's home is in a folder anyone may enter (as a home with mode 0755 is), so that
only the modes ywmagics sets keep the other user out.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ywmagics
from ywmagics.client import OrchestratorClient
from ywmagics.discovery import Connection

from .conftest import start_orchestrator, stop_orchestrator

pytestmark = [
    pytest.mark.slow,  # starts an orchestrator and backends
    pytest.mark.skipif(
        os.getuid() != 0 or shutil.which("setpriv") is None,
        reason="acting as another user needs root and setpriv (util-linux)",
    ),
]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def as_nobody(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NOBODY, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
        cwd="/",
    )


@pytest.fixture(scope="module")
def shared_home() -> Iterator[Path]:
    """A home in a folder every user may enter, as on a machine with 0755 homes."""
    top = Path("/tmp") / f"ywshared-{secrets.token_hex(4)}"
    top.mkdir(mode=0o755)
    os.chmod(top, 0o755)
    yield top / "home"
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def running(shared_home: Path) -> Iterator[tuple[Connection, list[int]]]:
    shared_home.mkdir(mode=0o755)
    os.chmod(shared_home, 0o755)
    process, connection = start_orchestrator(shared_home)
    try:
        for spec in ("node_unix as u", "node_echo as e"):
            client = ywmagics.install(spec, partition="Victim", connection=connection)
            assert next(iter(client.values())).fetch_json("/")["name"].startswith("node_")
        pids = [i["pid"] for i in OrchestratorClient(connection).listing()["instances"]]
        yield connection, [process.pid, *pids]
    finally:
        stop_orchestrator(process)


PROBE = r"""
import json, os, socket, sys
home, port, pids = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
found = {"read": [], "listed": [], "sockets": [], "environ": [], "secrets": []}
for root, folders, files in os.walk(home):
    found["listed"].append(root)
    for name in files:
        path = os.path.join(root, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        found["read"].append(path)
        if sys.argv[4].encode() in data:
            found["secrets"].append(path)
for entry in os.listdir("/tmp"):
    if entry.startswith("yw-"):
        try:
            for name in os.listdir(os.path.join("/tmp", entry)):
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(os.path.join("/tmp", entry, name))
                    found["sockets"].append(name)
                except OSError:
                    pass
        except OSError:
            pass
for pid in pids:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            found["environ"].append(pid)
    except OSError:
        pass
s = socket.create_connection(("127.0.0.1", port))
s.sendall(f"GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
found["status"] = s.recv(12).decode()
print(json.dumps(found))
"""


def test_another_user_reads_no_state_and_learns_no_token(
    running: tuple[Connection, list[int]], shared_home: Path
) -> None:
    import json

    connection, pids = running
    port = connection.url.rsplit(":", 1)[1]
    done = as_nobody(
        sys.executable,
        "-I",
        "-c",
        PROBE,
        str(shared_home),
        port,
        json.dumps(pids),
        connection.token,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["listed"] == [str(shared_home)]  # nothing below it can be entered
    assert found["read"] == [] and found["secrets"] == []
    assert found["sockets"] == [] and found["environ"] == []
    assert found["status"] == "HTTP/1.1 401"
    # Nor on command lines, which anyone can read.
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert connection.token.encode() not in cmdline


def test_another_user_reaches_no_backend_over_tcp(running: tuple[Connection, list[int]]) -> None:
    import json

    connection, _ = running
    listing = OrchestratorClient(connection).listing()["instances"]
    tcp = [i for i in listing if i["listen"].startswith("127.0.0.1:")]
    assert tcp, listing
    for instance in tcp:
        port = instance["listen"].rsplit(":", 1)[1]
        probe = (
            "import socket,sys\n"
            "try:\n"
            f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
            "    s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
            "    print(s.recv(100).decode())\n"
            "except OSError as e:\n"
            "    print('refused', e)\n"
        )
        done = as_nobody(sys.executable, "-I", "-c", probe)
        assert done.stdout.startswith("refused"), (instance, done.stdout, json.dumps(listing))
