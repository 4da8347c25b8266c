"""Who may talk to the orchestrator, checked in-process on its real ASGI app: every route, every
kind of credential, websocket scopes too."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp

from ywmagics.orchestrator.security import COOKIE
from ywmagics.orchestrator.service import Orchestrator
from ywmagics.protocol import ERROR_HEADER

from .inprocess import (
    BASE,
    TOKEN,
    LoopThread,
    call_asgi,
    make_app,
    sync_client,
    websocket_scope,
)

ADMIN_ROUTES = [
    ("GET", "/status"),
    ("GET", "/list"),
    ("POST", "/install"),
    ("GET", "/logs/node_echo"),
    ("POST", "/stop"),
    ("POST", "/uninstall"),
    ("POST", "/shutdown"),
    ("POST", "/browser-code"),
]
EVERY_ROUTE = [*ADMIN_ROUTES, ("GET", "/events"), ("GET", "/backends/node_echo/1/x")]
MASTER = {"Authorization": f"Bearer {TOKEN}"}
INSTANCE_TOKEN = "an-instance-token"


@pytest.fixture
def served(tmp_path: Path) -> tuple[ASGIApp, Orchestrator]:
    app, orchestrator = make_app(tmp_path)
    # As if a backend ran in partition "Pinned" with this token.
    orchestrator.supervisor.by_token[INSTANCE_TOKEN] = SimpleNamespace(partition="Pinned")  # type: ignore[assignment]
    return app, orchestrator


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def http(served: tuple[ASGIApp, Orchestrator], loop: LoopThread) -> httpx.Client:
    return sync_client(served[0], loop)


def _refused(answer: Any, status: int, text: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers[ERROR_HEADER] == "1"
    assert text in answer.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path"), EVERY_ROUTE)
def test_no_token_or_a_wrong_one_is_refused_everywhere(
    http: httpx.Client, method: str, path: str
) -> None:
    _refused(http.request(method, path), 401, "carries no token")
    wrong = {"Authorization": "Bearer not-the-token"}
    _refused(http.request(method, path, headers=wrong), 401, "wrong token")
    _refused(http.request(method, path, headers={"Cookie": "other=1"}), 401, "no token")


@pytest.mark.parametrize(("method", "path"), EVERY_ROUTE)
def test_foreign_hosts_and_origins_are_refused_everywhere(
    http: httpx.Client, method: str, path: str
) -> None:
    foreign = {**MASTER, "Host": "evil.example:8765"}
    _refused(http.request(method, path, headers=foreign), 403, "loopback names only")
    rebinding = {**MASTER, "Host": "127.0.0.1.evil.example"}
    _refused(http.request(method, path, headers=rebinding), 403, "loopback names only")
    other_port = {**MASTER, "Origin": "http://127.0.0.1:8888"}
    _refused(http.request(method, path, headers=other_port), 403, "cross-origin")
    _refused(http.request(method, path, headers={**MASTER, "Origin": "null"}), 403, "cross-origin")


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "[::1]:8765", "LOCALHOST"])
def test_loopback_names_and_our_own_origin_pass(http: httpx.Client, host: str) -> None:
    answer = http.get("/status", headers={**MASTER, "Host": host, "Origin": f"http://{host}"})
    assert answer.status_code == 200 and answer.json()["url"] == BASE


def test_the_master_token_opens_the_admin_routes(http: httpx.Client) -> None:
    assert http.get("/status", headers=MASTER).status_code == 200
    assert http.get("/list", headers=MASTER).json()["instances"] == []
    code = http.post("/browser-code", headers=MASTER)
    assert code.status_code == 200 and len(code.json()["code"]) > 20
    stop = http.post("/stop", headers=MASTER, json={"all": True})
    assert stop.json() == {"stopped": []}


def test_admin_posts_must_be_json(http: httpx.Client) -> None:
    plain = http.post(
        "/stop", headers={**MASTER, "Content-Type": "text/plain"}, content=b'{"all": true}'
    )
    _refused(plain, 400, "as JSON")
    form = http.post("/stop", headers=MASTER, data={"all": "1"})
    _refused(form, 400, "as JSON")


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_the_browser_cookie_opens_no_admin_route(
    http: httpx.Client, method: str, path: str
) -> None:
    _refused(http.request(method, path, headers={"Cookie": f"{COOKIE}={TOKEN}"}), 401, "no token")


def test_the_browser_cookie_reaches_backends(http: httpx.Client) -> None:
    answer = http.get("/backends/node_echo/1/x", headers={"Cookie": f"{COOKIE}={TOKEN}"})
    _refused(answer, 404, "not running in partition 'Default' and not installed")


@pytest.mark.parametrize(("method", "path"), [r for r in ADMIN_ROUTES if r[1] != "/install"])
def test_an_instance_token_opens_no_other_admin_route(
    http: httpx.Client, method: str, path: str
) -> None:
    answer = http.request(method, path, headers={"Authorization": f"Bearer {INSTANCE_TOKEN}"})
    _refused(answer, 403, "instance token reaches other backends and /install only")


def test_an_instance_token_is_pinned_to_its_partition(http: httpx.Client) -> None:
    as_backend = {"Authorization": f"Bearer {INSTANCE_TOKEN}", "X-Backends-Partition": "Other"}
    answer = http.get("/backends/node_echo/1/x", headers=as_backend)
    _refused(answer, 404, "not running in partition 'Pinned'")  # not 'Other'


def test_a_one_time_code_opens_one_page_once_and_no_admin_route(http: httpx.Client) -> None:
    code = http.post("/browser-code", headers=MASTER).json()["code"]
    _refused(http.get(f"/status?yw_code={code}"), 401, "no token")  # not spent on this
    page = http.get(f"/backends/node_echo/1/docs?yw_code={code}&yw_partition=P1")
    _refused(page, 404, "not running in partition 'P1'")  # through security, to the proxy
    cookies = page.headers.get_list("set-cookie")
    assert any(c.startswith(f"{COOKIE}=") and "HttpOnly" in c for c in cookies)
    assert any("ywmagics_partition=P1; Path=/backends/node_echo/1" in c for c in cookies)
    http.cookies.clear()  # a browser without the cookie
    _refused(http.get(f"/backends/node_echo/1/docs?yw_code={code}"), 401, "no token")
    _refused(http.get("/backends/node_echo/1/docs?yw_code=made-up"), 401, "no token")


def _websocket(app: ASGIApp, path: str, headers: dict[str, str], **extra: Any) -> list[Any]:
    return asyncio.run(call_asgi(app, websocket_scope(path, headers, **extra)))


@pytest.mark.parametrize("path", ["/backends/node_echo/1/ws", "/events", "/status"])
def test_websockets_are_checked_like_requests(
    served: tuple[ASGIApp, Orchestrator], path: str
) -> None:
    app = served[0]
    host = {"Host": "127.0.0.1:8765"}
    for headers in (
        host,  # no token
        {**host, "Authorization": "Bearer wrong"},
        {**MASTER, "Host": "evil.example"},
        {**MASTER, **host, "Origin": "http://evil.example"},
    ):
        sent = _websocket(app, path, headers)
        assert sent[0]["type"] == "websocket.close" and sent[0]["code"] == 1008, headers
    # Where the server can answer a handshake with HTTP, it does, with our error.
    denied = _websocket(app, path, host, extensions={"websocket.http.response": {}})
    assert denied[0]["type"] == "websocket.http.response.start" and denied[0]["status"] == 401
    assert (ERROR_HEADER.encode(), b"1") in denied[0]["headers"]
    # With the token, the application decides (it serves no websocket: it closes).
    through = _websocket(app, path, {**MASTER, **host}, extensions={})
    assert through[0]["type"] == "websocket.close" and through[0].get("code") != 1008


def test_unknown_scope_types_are_never_passed_on(served: tuple[ASGIApp, Orchestrator]) -> None:
    scope = {"type": "webtransport", "path": "/status", "headers": [], "query_string": b""}
    assert asyncio.run(call_asgi(served[0], scope)) == []


@pytest.mark.parametrize(
    ("path", "headers", "message"),
    [
        ("/backends/node_echo%0a/1/", {}, "is not a valid backend name"),
        ("/backends/..%2f..%2fetc/1/", {}, "is not a valid backend name"),
    ],
)
def test_names_and_partitions_are_matched_whole(
    http: httpx.Client, path: str, headers: dict[str, str], message: str
) -> None:
    _refused(http.get(path, headers={**MASTER, **headers}), 400, message)
