"""Backends' pages through a real Jupyter server with the extension, under a JupyterHub-like
``base_url``: Jupyter's login first, then a capability for one instance; the orchestrator's
token never reaches the browser; a backend's answers are sandboxed (an opaque origin)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def test_the_dashboard_through_jupyter_login_with_its_own_session(
    served: tuple[Connection, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    connection, jupyter = served
    ywmagics.install("node_echo as e", partition="Dash", connection=connection)
    root = f"{jupyter}{BASE}ywmagics"
    with httpx.Client(follow_redirects=False, timeout=30) as stranger:
        assert stranger.get(f"{root}/dashboard").status_code in (302, 403)  # Jupyter's login
        assert stranger.get(f"{root}/dashboard/").status_code in (302, 403)
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        opened = browser.get(f"{root}/dashboard?token={TOKEN}")
        assert opened.status_code == 302, opened.text
        location = opened.headers["location"]
        assert location.startswith(f"{BASE}ywmagics/dashboard/#code="), location
        page = browser.get(f"{root}/dashboard/")  # Jupyter's login cookie, from here on
        assert page.status_code == 200 and 'src="static/app.js"' in page.text
        assert "frame-ancestors 'self'" in page.headers["content-security-policy"]
        assert browser.get(f"{root}/dashboard/static/app.js").status_code == 200
        # The page trades its code for a session of its own, and sends it in its header.
        code = location.split("#code=", 1)[1]
        traded = browser.post(f"{root}/dashboard/session", json={"code": code})
        assert traded.status_code == 200, traded.text
        session = {"x-ywmagics-session": traded.json()["session"]}
        state = browser.get(f"{root}/dashboard/state", headers=session)
        assert state.status_code == 200, state.text
        partitions = state.json()["partitions"]
        listed = [(p["name"], i["name"]) for p in partitions for i in p["instances"]]
        assert listed == [("Dash", "node_echo")]
        # Without the session, Jupyter's login alone opens no data; a spent code opens nothing.
        assert browser.get(f"{root}/dashboard/state").status_code == 401
        assert browser.post(f"{root}/dashboard/session", json={"code": code}).status_code == 401
        # Only the dashboard's own routes are forwarded.
        for route in ("dashboard/shutdown", "dashboard/../status", "list"):
            assert browser.get(f"{root}/{route}", headers=session).status_code == 404, route
        assert browser.post(f"{root}/shutdown", headers=session).status_code in (403, 404)
        stopped = browser.post(f"{root}/stop", headers=session, json={"partition": "Dash"})
        assert stopped.status_code == 200, stopped.text
        for answer in (opened, page, traded, state, stopped):
            assert connection.token not in answer.text + str(answer.headers)
    # The session alone, without Jupyter's login, is refused by the Jupyter server.
    with httpx.Client(follow_redirects=False, timeout=30) as stranger:
        assert stranger.get(f"{root}/dashboard/state", headers=session).status_code in (302, 403)
    assert ywmagics.client.OrchestratorClient(connection).listing()  # still serving
    monkeypatch.setenv("YW_JUPYTER_BASE_URL", BASE)  # as the extension sets it for its kernels
    link = ywmagics.client.OrchestratorClient(connection).dashboard_link()
    assert link.startswith(f"{BASE}ywmagics/dashboard/#code="), link


def test_the_demo_backends_docs_through_jupyter_load_their_files_and_schema_there(
    served: tuple[Connection, str],
) -> None:
    """The demo backend builds its absolute links from the prefix it is told: through the
    Jupyter server, they are the Jupyter server's (not the orchestrator's /backends/...)."""
    connection, jupyter = served
    ywmagics.install("demo_yw_backend#^0.1.1", partition="Docs", connection=connection)
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        opened = browser.get(f"{jupyter}{BASE}ywmagics/open/Docs/demo_yw_backend/0.1.1/docs")
        assert opened.status_code in (302, 403)  # no login yet
        opened = browser.get(
            f"{jupyter}{BASE}ywmagics/open/Docs/demo_yw_backend/0.1.1/docs?token={TOKEN}"
        )
        location = opened.headers["location"]
        own = location.rsplit("/docs", 1)[0]  # {BASE}ywmagics/b/CAPABILITY
        page = browser.get(jupyter + location)
        assert page.status_code == 200 and "swagger" in page.text.lower()
        assert f"{own}/openapi.json" in page.text and "/backends/" not in page.text
        schema = browser.get(f"{jupyter}{own}/openapi.json")
        assert schema.json()["servers"] == [{"url": own}]  # try-it-out calls go here too
        script = browser.get(f"{jupyter}{own}/static-offline-docs/swagger-ui-bundle.js")
        assert script.status_code == 200
        # A redirect of the app's own stays under the Jupyter server's path.
        redirected = browser.get(f"{jupyter}{own}/docs/")
        assert redirected.status_code == 307, redirected.text  # FastAPI's trailing slash
        assert redirected.headers["location"] == f"{own}/docs"
        said = browser.post(
            f"{jupyter}{own}/cow-say", json={"message": "through jupyter"},
            headers={"Origin": "null"},
        )  # fmt: skip
        assert "through jupyter" in said.json()


def test_an_instance_keeps_its_capability_while_it_is_young() -> None:
    from ywmagics.jupyter.handlers import Capabilities, Instance

    capabilities = Capabilities()
    first = capabilities.new(Instance("P", "app", "1.0.0"))
    assert capabilities.new(Instance("P", "app", "1.0.0")) == first
    assert capabilities.new(Instance("Q", "app", "1.0.0")) != first
    opened = capabilities.get(first)
    assert opened is not None and (opened.partition, opened.name) == ("P", "app")
    assert capabilities.get("x" * 32) is None


def test_the_websocket_relay_reaches_the_orchestrator_by_its_unix_socket(tmp_path: Path) -> None:
    # Not its TCP port, which another local user could bind once a stopping orchestrator frees
    # it: here nothing listens on the URL's port, only on the socket.
    import asyncio

    import websockets
    from tornado import websocket

    from ywmagics.jupyter.handlers import _RELAY_OVER_THE_SOCKET, OrchestratorSocket

    assert _RELAY_OVER_THE_SOCKET, "this Tornado takes no resolver: the relay would use TCP"
    path = str(tmp_path / "orchestrator.sock")

    async def echo(connection: Any) -> None:
        async for message in connection:
            await connection.send(f"{connection.request.path} {message}")

    async def round_trip() -> str:
        async with websockets.unix_serve(echo, path):
            client = await websocket.websocket_connect(
                f"ws://127.0.0.1:{free_port()}/backends/x/1/ws",
                resolver=OrchestratorSocket(path=path),
            )
            await client.write_message("hello")
            answer = await client.read_message()
            client.close()
            return str(answer)

    assert asyncio.run(round_trip()) == "/backends/x/1/ws hello"


def _execute_in_a_kernel_of(jupyter: str, code: str) -> list[dict[str, Any]]:
    """Start a kernel through the Jupyter server's API, run ``code`` in it over the server's
    websocket (Jupyter's own protocol), and give back the outputs it published."""
    import json
    import uuid

    from websockets.sync.client import connect

    auth = {"Authorization": f"token {TOKEN}"}
    kernel = httpx.post(f"{jupyter}{BASE}api/kernels", headers=auth, json={}, timeout=60).json()
    url = f"ws{jupyter[4:]}{BASE}api/kernels/{kernel['id']}/channels?token={TOKEN}"
    outputs: list[dict[str, Any]] = []
    try:
        with connect(url, open_timeout=60, max_size=None) as channel:
            asked = uuid.uuid4().hex
            header = {"msg_id": asked, "msg_type": "execute_request", "session": "t",
                      "username": "t", "version": "5.3", "date": ""}  # fmt: skip
            channel.send(json.dumps({
                "header": header, "parent_header": {}, "metadata": {}, "channel": "shell",
                "content": {"code": code, "silent": False, "store_history": False,
                            "user_expressions": {}, "allow_stdin": False},
            }))  # fmt: skip
            while True:
                message = json.loads(channel.recv(timeout=300))
                if message.get("parent_header", {}).get("msg_id") != asked:
                    continue
                kind = message["header"]["msg_type"]
                if kind in ("display_data", "stream", "error", "execute_result"):
                    outputs.append({"kind": kind, **message["content"]})
                if kind == "status" and message["content"]["execution_state"] == "idle":
                    return outputs
    finally:
        httpx.delete(f"{jupyter}{BASE}api/kernels/{kernel['id']}", headers=auth, timeout=60)


def _links_published_by(jupyter: str, code: str) -> list[str]:
    """The links to the extension's routes that ``code`` published, run in a kernel of the
    server, which must raise nothing."""
    outputs = _execute_in_a_kernel_of(jupyter, code)
    assert not [o for o in outputs if o["kind"] == "error"], outputs
    return [
        o["data"]["text/plain"]
        for o in outputs
        if o["kind"] == "display_data" and f"{BASE}ywmagics/" in o["data"].get("text/plain", "")
    ]


def test_a_notebooks_docs_link_made_in_a_kernel_of_the_server_opens_in_a_browser(
    served: tuple[Connection, str], browser: Any
) -> None:
    """The whole way: a kernel that the Jupyter server started installs the demo backend; the
    link that '%backends docs' publishes is the Jupyter server's, and renders in Chromium."""
    _, jupyter = served
    code = (
        "%load_ext ywmagics\n"
        "%backends install demo_yw_backend#^0.1.1 as demo\n"
        "%backends docs demo\n"
    )
    links = _links_published_by(jupyter, code)
    assert len(links) == 1, links
    assert links[0].startswith(f"{BASE}ywmagics/open/") and links[0].endswith("/docs")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{jupyter}{BASE}api/status?token={TOKEN}")  # logged in
        page.goto(jupyter + links[0])
        page.locator(".opblock-summary-path", has_text="/cow-say").wait_for(timeout=30_000)
    finally:
        context.close()


def test_a_real_browser_that_reaches_only_the_jupyter_server(
    served: tuple[Connection, str], browser: Any
) -> None:
    """Chromium, every request of which to any other port than the Jupyter server's is refused
    (and recorded): the docs render, a page's websocket answers, the dashboard opens, and a
    backend's page cannot read the Jupyter server's cookies; without the login, nothing opens."""
    connection, jupyter = served
    ywmagics.install("demo_yw_backend#^0.1.1", partition="Docs", connection=connection)
    ywmagics.install("ws_echo", partition="Docs", connection=connection)
    elsewhere: list[str] = []

    def only_jupyter(route: Any) -> None:
        if route.request.url.startswith(jupyter + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    opening = f"{jupyter}{BASE}ywmagics/open/Docs"
    stranger = browser.new_context()
    stranger.route("**/*", only_jupyter)
    try:
        page = stranger.new_page()
        for url in (f"{opening}/demo_yw_backend/0.1.1/docs", f"{jupyter}{BASE}ywmagics/dashboard"):
            page.goto(url)
            assert f"{BASE}login" in page.url, page.url  # Jupyter's login page, nothing else
    finally:
        stranger.close()
    context = browser.new_context()
    context.route("**/*", only_jupyter)
    sockets: list[str] = []
    try:
        page = context.new_page()
        page.on("websocket", lambda socket: sockets.append(socket.url))
        page.goto(f"{jupyter}{BASE}api/status?token={TOKEN}")  # logs in, as Jupyter's page does
        page.goto(f"{opening}/demo_yw_backend/0.1.1/docs")
        page.locator(".opblock-summary-path", has_text="/cow-say").wait_for(timeout=30_000)
        # The page runs as an opaque origin: Jupyter's cookies and storage are not its own.
        seen = page.evaluate(
            "() => { try { return document.cookie; } catch (error) { return error.name; } }"
        )
        assert seen == "SecurityError", seen
        page.goto(f"{opening}/ws_echo/1.0.0/page")
        page.locator("#out", has_text="ping from the page").wait_for(timeout=30_000)
        assert sockets and all(url.startswith("ws" + jupyter[4:] + "/") for url in sockets)
        page.goto(f"{jupyter}{BASE}ywmagics/dashboard")
        page.locator("#orchestrator [data-field='version']").filter(has_text=".").wait_for()
        page.locator("[data-testid='instance'][data-name='ws_echo']").wait_for(timeout=30_000)
    finally:
        context.close()
    assert elsewhere == [], elsewhere


def test_a_browser_that_leaves_a_stream_leaves_no_error_behind(
    served: tuple[Connection, str], tmp_path: Path
) -> None:
    connection, jupyter = served
    ywmagics.install("node_echo as e", partition="Left", connection=connection)
    root = f"{jupyter}{BASE}ywmagics"
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        code = browser.get(f"{root}/dashboard?token={TOKEN}").headers["location"].split("=")[1]
        session = browser.post(f"{root}/dashboard/session", json={"code": code}).json()
        headers = {"x-ywmagics-session": session["session"]}
        for _ in range(3):  # a tab closed while its live stream is open
            with browser.stream("GET", f"{root}/dashboard/stream", headers=headers) as stream:
                assert next(stream.iter_lines()).startswith('{"state"')
        ywmagics.install("node_echo as again", partition="Left2", connection=connection)
        time.sleep(1.5)  # a new snapshot: what still streamed to a closed tab would fail now
        # The extension still serves.
        assert browser.get(f"{root}/dashboard/state", headers=headers).status_code == 200
    log = (tmp_path / "jupyter.log").read_text()
    assert "Traceback" not in log and "StreamClosedError" not in log, log[-3000:]


def test_in_a_network_namespace_a_browser_reaches_the_jupyter_server_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Any
) -> None:
    """As on a JupyterHub or a tunnel: the Jupyter server, its kernels and the orchestrator they
    start run in a network namespace of their own; the browser outside reaches the Jupyter
    server's port only (tests/netns_door.py). A notebook installs the demo backend and a
    websocket one; the links it publishes open and work in Chromium."""
    from tests.conftest import TEST_REGISTRY
    from tests.netns_door import open_door
    from ywmagics import paths
    from ywmagics.discovery import read_discovery
    from ywmagics.orchestrator.processes import private_network_available

    if not private_network_available():
        pytest.skip("no network namespace on this machine")
    home = tmp_path / "home"
    monkeypatch.setenv("YW_HOME", str(home))  # the kernels' orchestrator: started by them
    monkeypatch.setenv("YW_BACKENDS_PATH", str(TEST_REGISTRY))
    # The namespace has no network to the package index: the environments are built first.
    process, outside = start_orchestrator(home)
    try:
        ywmagics.install("demo_yw_backend#^0.1.1", partition="Build", connection=outside)
        ywmagics.install("ws_echo", partition="Build", connection=outside)
    finally:
        stop_orchestrator(process)
    door, inner_port = tmp_path / "door.sock", 8888  # a port of the namespace's own loopback
    argv = [
        sys.executable, str(Path(__file__).with_name("netns_door.py")), str(door),
        str(inner_port), sys.executable, "-m", "jupyter_server", "--no-browser",
        f"--port={inner_port}", "--ip=127.0.0.1", f"--ServerApp.base_url={BASE}",
        f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={tmp_path}", "--allow-root",
    ]  # fmt: skip
    jupyter_process = ServerProcess(tmp_path / "jupyter.log")
    connection = None
    with open_door(door) as port:
        jupyter = f"http://127.0.0.1:{port}"
        try:
            jupyter_process.start(argv, f"{jupyter}{BASE}api/status?token={TOKEN}")
            code = (
                "%load_ext ywmagics\n"
                "%backends install demo_yw_backend#^0.1.1 as demo\n"
                "%backends install ws_echo as ws\n"
                "%backends docs demo\n"
                "%backends docs ws /page\n"
                "%backends dashboard\n"
            )
            docs, page, dashboard = _links_published_by(jupyter, code)
            connection = read_discovery(paths.discovery_file())  # the one the kernel started
            assert connection is not None
            # The premise: the orchestrator the kernel started is not reachable from here.
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", httpx.URL(connection.url).port), 2)
            context = browser.new_context()
            try:
                tab = context.new_page()
                tab.goto(f"{jupyter}{BASE}api/status?token={TOKEN}")  # logged in
                tab.goto(jupyter + docs)
                tab.locator(".opblock-summary-path", has_text="/cow-say").wait_for(timeout=30_000)
                tab.goto(jupyter + page)
                tab.locator("#out", has_text="ping from the page").wait_for(timeout=30_000)
                tab.goto(jupyter + dashboard)
                tab.locator("[data-testid='instance'][data-name='ws_echo']").wait_for(
                    timeout=30_000
                )
            finally:
                context.close()
        finally:
            jupyter_process.stop()
            if connection is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(connection.pid, signal.SIGTERM)


def test_a_hostile_backends_answers_stay_inside_its_own_pages(
    served: tuple[Connection, str],
) -> None:
    """What a backend answers cannot send the browser elsewhere on the Jupyter server's origin,
    nor set rules for the whole origin (found by an attack: ../open/…, http:/…, backslashes)."""
    import json

    connection, jupyter = served
    ywmagics.install("node_echo as e", partition="Hostile", connection=connection)
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        opened = browser.get(f"{jupyter}{BASE}ywmagics/open/Hostile/node_echo/1.0.0/?token={TOKEN}")
        own = opened.headers["location"].rstrip("/")  # {BASE}ywmagics/b/CAPABILITY

        def answer(status: int, *headers: tuple[str, str]) -> httpx.Response:
            asked = {"status": str(status), "headers": json.dumps(headers)}
            return browser.get(f"{jupyter}{own}/answer", params=asked)

        for away in (
            "../../open/Other/node_echo/1.0.0/record",
            f"http:{BASE}api/contents",
            f"HTTP:{BASE}api/contents",
            f"\\\\{jupyter.split('//')[1]}{BASE}api/contents",
            f"{own}/%2e%2e/%2e%2e/dashboard",
            f"{BASE}api/contents",  # root-relative: moved inside by the orchestrator, kept there
        ):
            redirected = answer(302, ("Location", away))
            location = redirected.headers.get("location", "")
            if redirected.status_code == 302:
                assert location.startswith(own + "/"), (away, location)
            else:
                assert redirected.status_code == 502, (away, redirected.status_code)
        inside = answer(302, ("Location", "next?page=2"))
        assert inside.headers["location"] == f"{own}/next?page=2"
        elsewhere = answer(302, ("Location", "https://example.org/login"))
        assert elsewhere.headers["location"] == "https://example.org/login"
        # Headers that would rule the whole origin do not pass; the backend's own kinds do.
        ruling = [
            ("Strict-Transport-Security", "max-age=0"), ("WWW-Authenticate", "Basic"),
            ("Alt-Svc", 'h2=":1"'), ("X-Frame-Options", "DENY"),
            ("Cross-Origin-Opener-Policy", "unsafe-none"), ("Accept-CH", "Sec-CH-UA"),
        ]  # fmt: skip
        kept = [("Content-Type", "text/plain"), ("ETag", '"v1"'), ("X-Request-Id", "7")]
        headers = answer(200, *ruling, *kept).headers
        assert not [name for name, _ in ruling if name.lower() in headers]
        assert headers["etag"] == '"v1"' and headers["x-request-id"] == "7"
        # A backend's cookies are its own, kept to its path; no other cookie of the origin (a
        # hub's, a front proxy's) reaches it.
        set_cookie = answer(200, ("Set-Cookie", "sid=1; Path=/; Domain=127.0.0.1; HttpOnly"))
        given = set_cookie.headers["set-cookie"]
        assert given.startswith("ywb-sid=1;") and f"Path={own}" in given
        assert "Domain" not in given and "HttpOnly" in given
        cookies = "ywb-sid=1; __Host-jupyterhub-session-id=h; _oauth2_proxy=p; theme=x"
        seen = browser.get(f"{jupyter}{own}/headers", headers={"Cookie": cookies}).json()
        assert seen.get("cookie") == "sid=1", seen
        # Another Host than the Jupyter server's own names is refused, as Jupyter refuses it.
        rebound = browser.get(f"{jupyter}{own}/echo", headers={"Host": "attacker.example"})
        assert rebound.status_code == 403
