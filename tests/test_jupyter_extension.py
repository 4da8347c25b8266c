"""Backends' pages through a real Jupyter server with the extension, under a JupyterHub-like
``base_url``: Jupyter's login first, then a capability for one instance; the orchestrator's
token never reaches the browser; a backend's answers are sandboxed (an opaque origin)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import ywmagics
from ywmagics.discovery import Connection

from .conftest import start_orchestrator, stop_orchestrator
from .local_server import ServerProcess, free_port

pytestmark = pytest.mark.slow  # an orchestrator, a backend, a Jupyter server

BASE = "/user/alice/"
TOKEN = "jupyter-test-token"


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Connection, str]]:
    """An orchestrator, and a Jupyter server of the same user (YW_HOME) at ``BASE``."""
    home = tmp_path / "home"
    monkeypatch.setenv("YW_HOME", str(home))
    process, connection = start_orchestrator(home)
    port = free_port()
    jupyter = ServerProcess(tmp_path / "jupyter.log")
    argv = [
        sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}",
        "--ip=127.0.0.1", f"--ServerApp.base_url={BASE}", f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={tmp_path}", "--allow-root",
    ]  # fmt: skip
    try:
        jupyter.start(argv, f"http://127.0.0.1:{port}{BASE}api/status?token={TOKEN}")
        yield connection, f"http://127.0.0.1:{port}"
    finally:
        jupyter.stop()
        stop_orchestrator(process)


def test_the_extension_is_enabled_by_the_install() -> None:
    enabled = Path(sys.prefix) / "etc/jupyter/jupyter_server_config.d/ywmagics.json"
    assert '"ywmagics.jupyter": true' in enabled.read_text()
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    said = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)  # its colours
    assert "ywmagics.jupyter enabled" in said and "ywmagics.jupyter  OK" in said


def test_a_backend_through_jupyter_login_then_its_capability_sandboxed(
    served: tuple[Connection, str],
) -> None:
    connection, jupyter = served
    echo = ywmagics.install("node_echo as e", partition="Alice", connection=connection).e
    opening = f"{jupyter}{BASE}ywmagics/open/Alice/node_echo/1.0.0/"
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        # Without Jupyter's login: no capability.
        refused = browser.get(opening)
        assert refused.status_code in (302, 403)
        assert "/ywmagics/b/" not in refused.headers.get("location", "")
        # Logged in (Jupyter's token, as its login page would leave a cookie).
        given = browser.get(opening + "?token=" + TOKEN + "&x=1")
        assert given.status_code == 302, given.text
        location = given.headers["location"]
        assert location.startswith(f"{BASE}ywmagics/b/") and location.endswith("/?x=1")
        assert TOKEN not in location  # Jupyter's token is not the backend's to see
        # The capability alone opens that instance (a sandboxed page has no cookie to send).
        page = browser.get(jupyter + location)
        assert page.status_code == 200, page.text
        policy = page.headers["content-security-policy"]
        assert policy.startswith("sandbox ") and "allow-same-origin" not in policy
        assert page.headers["referrer-policy"] == "no-referrer"
        assert connection.token not in page.text + str(page.headers)
        capability = location.split("/ywmagics/b/", 1)[1].split("/", 1)[0]
        # As a sandboxed page's script sends it: from an opaque origin.
        sandboxed = {"Origin": "null", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}
        posted = browser.post(
            f"{jupyter}{BASE}ywmagics/b/{capability}/echo", json={"x": 1}, headers=sandboxed
        )
        assert posted.json() == {"x": 1, "partition": "Alice"}  # its partition, pinned
        assert posted.headers["access-control-allow-origin"] == "null"  # its script reads it
        unknown = browser.get(f"{jupyter}{BASE}ywmagics/b/{'x' * 32}/")
        assert unknown.status_code == 404
        # A capability opens that instance's path and nothing else: not the orchestrator's
        # own routes, not another backend.
        own = f"{jupyter}{BASE}ywmagics/b/{capability}"
        for escape in ("/..%2F..%2F..%2Fstatus", "/%2e%2e/%2e%2e/%2e%2e/list", "/a%2F..%2Fb"):
            assert browser.get(own + escape).status_code == 400, escape
        # Another site cannot make the logged-in browser open a backend.
        cross = browser.get(opening + "?token=" + TOKEN, headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403
        # A sandboxed page's preflight, for a call to its own backend.
        preflight = browser.options(
            f"{own}/echo",
            headers={"Origin": "null", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"},
        )  # fmt: skip
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "null"
    assert echo.fetch_json("/echo", method="POST", json={"y": 2})["y"] == 2


def test_links_made_under_the_extension_point_through_jupyter(
    served: tuple[Connection, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    connection, _ = served
    echo = ywmagics.install("node_echo as e", partition="Bob", connection=connection).e
    assert echo.browser_url("/docs").startswith("http://")  # no Jupyter server: the orchestrator's
    monkeypatch.setenv("YW_JUPYTER_BASE_URL", BASE)  # as the extension sets it for its kernels
    assert echo.browser_url("/docs") == f"{BASE}ywmagics/open/Bob/node_echo/1.0.0/docs"


def test_a_backends_websocket_through_jupyter(served: tuple[Connection, str]) -> None:
    from websockets.sync.client import connect

    connection, jupyter = served
    ywmagics.install("ws_echo", partition="Ws", connection=connection)
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        opened = browser.get(f"{jupyter}{BASE}ywmagics/open/Ws/ws_echo/1.0.0/?token={TOKEN}")
        location = opened.headers["location"]
    url = "ws" + jupyter[len("http") :] + location.rstrip("/") + "/echo"
    # From a sandboxed page: Origin null, no cookie.
    with connect(url, additional_headers={"Origin": "null"}, open_timeout=20) as socket:
        greeting = socket.recv(timeout=20)  # ws_echo first says what it saw
        assert '"subprotocol": null' in str(greeting)
        socket.send("hello")
        answer = socket.recv(timeout=20)
        socket.send(b"\x00bytes")
        binary = socket.recv(timeout=20)
    assert "hello" in str(answer)
    assert isinstance(binary, bytes) and b"\x00bytes" in binary
