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

from ywmagics.errors import InstanceNotFound
from ywmagics.orchestrator.browser import SESSION_COOKIE
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
    ("POST", "/browser-link"),
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
    stop = http.post("/stop", headers=MASTER, json={"all": True})
    assert stop.json() == {"stopped": []}


def test_admin_posts_must_be_json(http: httpx.Client) -> None:
    plain = http.post(
        "/stop", headers={**MASTER, "Content-Type": "text/plain"}, content=b'{"all": true}'
    )
    _refused(plain, 400, "as JSON")
    form = http.post("/stop", headers=MASTER, data={"all": "1"})
    _refused(form, 400, "as JSON")


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


class Pages:
    """Browser pages of a stand-in instance of node_echo 1.0.0 in partition ``Pinned``: links
    are made by the real /browser-link, and what reaches the proxy says where it would go."""

    def __init__(
        self, http: httpx.Client, served: tuple[ASGIApp, Orchestrator], label: str
    ) -> None:
        self.http = http
        app, orchestrator = served
        self.label = label
        self.host = f"{label}.localhost:8765"
        instance = SimpleNamespace(
            partition="Pinned", base_path="/backends/node_echo/1.0.0", browser_label=label
        )
        orchestrator.supervisor.by_label[label] = instance  # type: ignore[assignment]

        async def found(partition: str, name: str, version: str, bound: Any = None) -> Any:
            return instance  # for /browser-link

        async def reached(partition: str, name: str, version: str, bound: str | None) -> Any:
            raise InstanceNotFound(f"reached the proxy for {name} {version} in {partition}")

        orchestrator.instance_for = found  # type: ignore[method-assign]
        app.app.proxy.find = reached  # type: ignore[attr-defined]

    def link(self, path: str = "/docs") -> str:
        body = {"name": "node_echo", "version": "1.0.0", "partition": "Pinned", "path": path}
        answer = self.http.post("/browser-link", headers=MASTER, json=body)
        assert answer.status_code == 200, answer.text
        url = str(answer.json()["url"])
        assert url.startswith(f"http://{self.host}/backends/node_echo/1.0.0{path.split('?')[0]}")
        assert "yw_code=" in url
        return url

    def get(self, url: str, cookie: str | None = None, **headers: str) -> httpx.Response:
        """As a browser resolves *.localhost: to loopback, with the link's host name."""
        parts = httpx.URL(url)
        target = parts.raw_path.decode()
        sent = {
            "Host": parts.netloc.decode(),
            **{k.replace("_", "-"): v for k, v in headers.items()},
        }
        if cookie:
            sent["Cookie"] = cookie
        self.http.cookies.clear()  # the cookie jar is ours to fill, per host name
        return self.http.get(target, headers=sent)


def _session(answer: httpx.Response) -> str:
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # The whole host is the instance's: its root-relative links carry the session too.
    assert "Path=/;" in cookie and "Domain" not in cookie
    return cookie.split(";", 1)[0]


@pytest.fixture
def pages(http: httpx.Client, served: tuple[ASGIApp, Orchestrator]) -> Pages:
    return Pages(http, served, "b-0123456789abcdef")


def test_a_link_opens_its_instance_pages_with_a_session_of_their_own(pages: Pages) -> None:
    link = pages.link("/docs?theme=dark")
    opened = pages.get(link)
    assert opened.status_code == 303
    assert opened.headers["location"] == "/backends/node_echo/1.0.0/docs?theme=dark"  # no code
    # Nothing on an instance's host gives its name away to other sites (see test_browser).
    assert opened.headers["referrer-policy"] == "same-origin"
    session = _session(opened)
    assert TOKEN not in session  # never the orchestrator's token
    page = pages.get(f"http://{pages.host}{opened.headers['location']}", session)
    _refused(page, 404, "reached the proxy for node_echo 1.0.0 in Pinned")  # its partition
    # The page's own requests (openapi.json) carry the cookie: the same instance.
    spec = pages.get(f"http://{pages.host}/backends/node_echo/1.0.0/openapi.json", session)
    _refused(spec, 404, "reached the proxy for node_echo 1.0.0 in Pinned")
    # A reload of the link (its code spent) keeps working: back to the page, no code.
    reload = pages.get(link, session)
    assert reload.status_code == 303 and "yw_code" not in reload.headers["location"]


@pytest.mark.parametrize("path", ["/%E2%82%AC", "/a%3Fb", "/x%23y", "/sp%20ace", "/q"])
def test_a_link_leads_to_the_very_address_it_names(pages: Pages, path: str) -> None:
    # Built from the decoded path, '%3F' became a query, '%23' a fragment, and '€' a 500.
    link = pages.link(path + "?a=1&b=%26&c")
    opened = pages.get(link)
    assert opened.status_code == 303, opened.text
    assert opened.headers["location"] == f"/backends/node_echo/1.0.0{path}?a=1&b=%26&c"


def test_a_link_works_once_and_a_session_opens_nothing_else(
    pages: Pages, http: httpx.Client, served: tuple[ASGIApp, Orchestrator]
) -> None:
    link = pages.link()
    session = _session(pages.get(link))
    _refused(pages.get(link), 401, "needs a link from the notebook")  # spent, and no cookie
    _refused(pages.get(link.replace("yw_code=", "yw_code=x")), 401, "needs a link")
    other = Pages(http, served, "b-fedcba9876543210")
    _refused(other.get(f"http://{other.host}/backends/node_echo/1.0.0/", session), 401, "link")
    # Its code does not open another instance's host, and is not spent by trying.
    second = other.link()
    _refused(pages.get(second.replace(other.host, pages.host)), 401, "needs a link")
    assert other.get(second).status_code == 303
    # The session opens neither the orchestrator's API nor anything on its own host name.
    for path in ("/status", "/backends/other/1.0.0/", "/backends/node_echo/1.0.1/"):
        # Its own pages, whatever the path: the instance's host reaches nothing else.
        reached = pages.get(f"http://{pages.host}{path}", session)
        _refused(reached, 404, "reached the proxy for node_echo 1.0.0 in Pinned")
    for path in ("/status", "/backends/node_echo/1.0.0/"):
        _refused(http.get(path, headers={"Cookie": session}), 401, "carries no token")
    # A stopped instance's sessions end with it.
    del served[1].supervisor.by_label[pages.label]
    _refused(pages.get(f"http://{pages.host}/backends/node_echo/1.0.0/", session), 404, "any more")


def test_other_pages_scripts_cannot_use_a_session(pages: Pages) -> None:
    session = _session(pages.get(pages.link()))
    page = f"http://{pages.host}/backends/node_echo/1.0.0/run"
    for headers in (
        {"Origin": "http://b-fedcba9876543210.localhost:8765"},
        {"Origin": "http://127.0.0.1:8765"},
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"},
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
    ):
        answer = pages.get(page, session, **headers)
        assert answer.status_code == 403, headers
    # A link opened from another site (the notebook's) is a navigation: it is let through.
    navigation = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    _refused(pages.get(page, session, **navigation), 404, "reached the proxy")
    own = {"Origin": f"http://{pages.host}", "Sec-Fetch-Site": "same-origin"}
    _refused(pages.get(page, session, **own), 404, "reached the proxy")


def test_codes_and_cookies_open_nothing_on_the_orchestrators_host(pages: Pages) -> None:
    link = pages.link()
    code_only = "/backends/node_echo/1.0.0/docs?" + link.split("?", 1)[1]
    refused = pages.http.get(code_only)
    _refused(refused, 401, "carries no token")
    assert "open on the backend's own host name" in refused.json()["error"]["hint"]
    session = _session(pages.get(link))
    for cookie in (session, f"ywmagics_token={TOKEN}", f"{SESSION_COOKIE} ={TOKEN}"):
        _refused(pages.http.get("/status", headers={"Cookie": cookie}), 401, "no token")


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
    # With the token, the application decides: the proxy looks for the backend (it is not
    # installed: it says so), the admin routes serve no websocket (Starlette closes).
    through = _websocket(app, path, {**MASTER, **host}, extensions={})
    assert through[0]["type"] == "websocket.close"
    if path.startswith("/backends/"):
        assert "not installed" in through[0]["reason"]
    else:
        assert through[0].get("code") != 1008


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
