"""The proxy in-process: what reaches a backend and what comes back, and whose error an error is.

The backend is a scripted HTTP server on a Unix socket; the supervisor is a stand-in that says
whether the backend ended (the real one is tested with real processes in test_orchestrator).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from ywmagics.client import BackendClient
from ywmagics.discovery import Connection
from ywmagics.errors import (
    IncompleteAnswerError,
    OrchestratorError,
    StartError,
)
from ywmagics.orchestrator.proxy import Proxy, seen_from
from ywmagics.orchestrator.upstream import UpstreamPool
from ywmagics.protocol import ERROR_HEADER

from .inprocess import BASE, TOKEN, LoopThread, make_app, sync_client


class Backend:
    """A backend that answers every request with what it saw (head and body), or as told."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answer: bytes | None = None  # a raw answer instead of the echo
        self.requests: list[dict[str, Any]] = []

    async def start(self) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                    lines = head.split("\r\n")
                    headers = [tuple(h.split(": ", 1)) for h in lines[1:] if h]
                    length = int(dict(headers).get("content-length", "0"))
                    body = await reader.readexactly(length)
                    self.requests.append({"line": lines[0], "headers": headers, "body": body})
                    if self.answer is not None:
                        writer.write(self.answer)
                        await writer.drain()
                        return
                    seen = json.dumps({"line": lines[0], "headers": headers}).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"set-cookie: theme=dark\r\nset-cookie: ywmagics_session=forged\r\n"
                        b"set-cookie: ywmagics_token =forged; Path=/\r\n"
                        b"set-cookie: ywmagics_partition\t=EVIL; Path=/backends\r\n"
                        b"x-ywmagics-error: 1\r\nconnection: keep-alive\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(seen), seen)
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            finally:
                writer.close()

        self.server = await asyncio.start_unix_server(serve, str(self.path))

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


class StandInSupervisor:
    def __init__(self) -> None:
        self.ended = False

    def has_ended(self, instance: object) -> bool:
        return self.ended

    async def wait_ended(self, instance: object, patience: float) -> bool:
        return self.ended


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def backend(tmp_path: Path, loop: LoopThread) -> Iterator[Backend]:
    served = Backend(tmp_path / "b.sock")
    loop.run(served.start())
    yield served
    loop.run(served.stop())


@pytest.fixture
def proxied(
    tmp_path: Path, loop: LoopThread, backend: Backend
) -> Iterator[tuple[httpx.Client, StandInSupervisor, list[tuple[str, str, str]]]]:
    """A client of the real app whose proxy reaches ``backend`` for any name, in any partition."""
    app, _ = make_app(tmp_path / "home")
    looked_up: list[tuple[str, str, str]] = []
    supervisor = StandInSupervisor()

    async def find(partition: str, name: str, version: str, bound: str | None = None) -> Any:
        looked_up.append((partition, name, version))
        return SimpleNamespace(
            partition=partition,
            manifest=SimpleNamespace(name=name, version="1.0.0", host=""),
            port=None,
            upstream=pool,
            base_path=f"/backends/{name}/1.0.0",
            log_path=tmp_path / "backend.log",
            where=f"{name} 1.0.0 in partition {partition!r}",
        )

    pool = UpstreamPool(uds=str(backend.path))
    proxy = Proxy(find, supervisor)  # type: ignore[arg-type]
    dispatch = app.app  # SecurityMiddleware -> BackendsDispatch
    dispatch.proxy = proxy
    yield sync_client(app, loop), supervisor, looked_up

    async def close() -> None:
        pool.close_idle()
        await asyncio.sleep(0.01)  # the transports' closing callbacks run

    loop.run(close())


MASTER = {"Authorization": f"Bearer {TOKEN}"}


def _seen(answer: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in answer.json()["headers"]}


def test_what_reaches_the_backend(proxied: Any) -> None:
    http, _, looked_up = proxied
    answer = http.get(
        "/backends/echo/%5E1/some/path%2Fx?q=1&yw_other=2",
        headers={
            **MASTER,
            "X-Backends-Partition": "P1",
            "Cookie": "ywmagics_session=s; theme=dark; ywmagics_token =T; ywmagics_partition\t=P9",
            "Proxy-Authorization": "Basic x",
            "Connection": "keep-alive, X-Hop",
            "X-Custom": "kept",
        },
    )
    assert answer.status_code == 200
    assert looked_up == [("P1", "echo", "^1")]
    assert answer.json()["line"] == "GET /some/path%2Fx?q=1&yw_other=2 HTTP/1.1"
    seen = _seen(answer)
    assert "authorization" not in seen and "proxy-authorization" not in seen
    assert seen["cookie"] == "theme=dark"  # ours stripped, however written; the backend's kept
    assert seen["x-backends-partition"] == "P1"
    assert seen["x-forwarded-prefix"] == "/backends/echo/1.0.0"
    assert seen["host"] == seen["x-forwarded-host"] == "127.0.0.1:8765"  # the client's Host
    assert (seen["x-forwarded-proto"], seen["x-forwarded-port"]) == ("http", "8765")
    assert seen["x-custom"] == "kept"
    assert [k for k, _ in answer.json()["headers"]].count("host") == 1


def test_a_proxy_in_front_that_holds_the_token_says_where_it_serves_the_backend(
    proxied: Any,
) -> None:
    """The Jupyter server's extension: the backend is told the extension's host and prefix."""
    http, _, _ = proxied
    outer = {
        "X-Forwarded-Host": "jupyter.example:8888",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Prefix": "/user/alice/ywmagics/b/CAPABILITY",
    }
    seen = _seen(http.get("/backends/echo/1/x", headers={**MASTER, **outer}))
    assert seen["x-forwarded-prefix"] == "/user/alice/ywmagics/b/CAPABILITY"
    assert seen["host"] == seen["x-forwarded-host"] == "jupyter.example:8888"
    assert (seen["x-forwarded-proto"], seen["x-forwarded-port"]) == ("https", "8888")
    # A prefix that is not a path is not taken.
    seen = _seen(http.get("/backends/echo/1/x", headers={**MASTER, "X-Forwarded-Prefix": "x"}))
    assert seen["x-forwarded-prefix"] == "/backends/echo/1.0.0"


def test_anyone_elses_word_for_where_it_is_served_does_not_count() -> None:
    instance = SimpleNamespace(base_path="/backends/echo/1.0.0")
    headers = [(b"host", b"127.0.0.1:9"), (b"x-forwarded-prefix", b"/elsewhere")]
    headers += [(b"x-forwarded-host", b"evil.example")]
    for state in ({}, {"pinned_partition": "P"}, {"trusted_forwarding": "yes"}):
        scope = {"headers": headers, "state": state, "scheme": "http"}
        assert seen_from(scope, instance) == ("127.0.0.1:9", "/backends/echo/1.0.0", "http")
    scope = {"headers": headers, "state": {"trusted_forwarding": True}, "scheme": "http"}
    assert seen_from(scope, instance) == ("evil.example", "/elsewhere", "http")


def test_what_comes_back_from_the_backend(proxied: Any) -> None:
    http, _, _ = proxied
    answer = http.get("/backends/echo/1/", headers=MASTER)
    assert answer.status_code == 200
    assert ERROR_HEADER not in answer.headers  # a backend cannot pass for the orchestrator
    assert answer.headers.get_list("set-cookie") == ["theme=dark"]  # nor set our cookies
    assert "connection" not in answer.headers or answer.headers["connection"] != "keep-alive"


def test_the_partition_comes_from_the_header_else_default(proxied: Any) -> None:
    http, _, looked_up = proxied
    http.get("/backends/echo/1/", headers=MASTER)
    http.get("/backends/echo/1/", headers={**MASTER, "Cookie": "ywmagics_partition=FromCookie"})
    http.get("/backends/echo/1/", headers={**MASTER, "X-Backends-Partition": "P2"})
    answer = http.get("/backends/echo/1/", headers={**MASTER, "X-Backends-Partition": "../x"})
    assert [p for p, _, _ in looked_up] == ["Default", "Default", "P2"]  # no cookie picks one
    assert answer.status_code == 400 and "not a valid partition" in answer.text


def test_a_malformed_backend_url_is_the_orchestrators_answer(proxied: Any) -> None:
    http, _, _ = proxied
    for path in ("/backends/echo", "/backends/echo/", "/backends//1/"):
        answer = http.get(path, headers=MASTER)
        assert answer.status_code == 400 and answer.headers[ERROR_HEADER] == "1"
        assert "/backends/NAME/VERSION/PATH" in answer.json()["error"]["message"]


def test_a_backend_that_drops_the_request_is_said_so(proxied: Any, backend: Backend) -> None:
    http, supervisor, _ = proxied
    backend.answer = b""  # reads the request, answers nothing, closes
    alive = http.post("/backends/echo/1/run", headers=MASTER, json={})
    assert alive.status_code == 502 and alive.json()["error"]["type"] == "StartError"
    assert "did not answer" in alive.json()["error"]["message"]
    supervisor.ended = True
    ended = http.post("/backends/echo/1/run", headers=MASTER, json={})
    assert ended.status_code == 502
    assert ended.json()["error"]["type"] == "IncompleteAnswerError"
    assert len(backend.requests) == 2  # each POST reached it once: never sent twice


def test_an_idempotent_request_is_sent_again_to_a_restarted_backend(
    proxied: Any, backend: Backend
) -> None:
    http, supervisor, looked_up = proxied
    backend.answer = b""
    supervisor.ended = True
    answer = http.get("/backends/echo/1/", headers=MASTER)
    assert answer.status_code == 502  # the stand-in never comes back; but it was tried again
    assert len(looked_up) == 2 and len(backend.requests) == 2


def test_a_fault_of_the_orchestrator_is_never_blamed_on_the_backend(
    tmp_path: Path, loop: LoopThread
) -> None:
    app, orchestrator = make_app(tmp_path)

    async def broken(partition: str, name: str, version: str, bound: str | None) -> Any:
        raise KeyError("a bug of ours")

    app.app.proxy.find = broken  # type: ignore[attr-defined]
    orchestrator.listing = lambda: 1 / 0  # type: ignore[assignment,method-assign]
    http = sync_client(app, loop)
    for path in ("/backends/echo/1/", "/list"):
        answer = http.get(path, headers=MASTER)
        assert answer.status_code == 500 and answer.headers[ERROR_HEADER] == "1"
        error = answer.json()["error"]
        assert error["type"] == "OrchestratorError"
        assert "internal error in the orchestrator" in error["message"]
        assert ("KeyError" if "backends" in path else "ZeroDivisionError") in error["message"]
    # The client raises it as the orchestrator's, not as the backend's answer.
    client = BackendClient(Connection(BASE, TOKEN), "echo", "1", "P", http=http)
    with pytest.raises(OrchestratorError, match="internal error in the orchestrator"):
        client.fetch_json("/")
    with pytest.raises(OrchestratorError, match="internal error"):
        client.fetch("/")  # even the raw fetch, which returns backends' error answers


def test_the_clients_take_an_http_client_and_raise_the_orchestrators_errors(
    proxied: Any, backend: Backend
) -> None:
    http, supervisor, _ = proxied
    client = BackendClient(Connection(BASE, TOKEN), "echo", "1", "P", http=http)
    assert client.fetch_json("/x")["line"] == "GET /x HTTP/1.1"
    backend.answer = b""
    supervisor.ended = True
    with pytest.raises(IncompleteAnswerError, match="exited without answering"):
        client.fetch_json("/x", method="POST")
    supervisor.ended = False
    with pytest.raises(StartError, match="did not answer"):
        client.fetch_json("/x", method="POST")


def test_a_redirect_never_leaves_the_backends_base_path(proxied: Any, backend: Backend) -> None:
    http, _, _ = proxied
    backend.answer = (
        b"HTTP/1.1 302 Found\r\nlocation: /db/\r\nlink: </app.css>; rel=preload\r\n"
        b"content-length: 0\r\n\r\n"
    )
    answer = http.get("/backends/echo/1/db", headers=MASTER, follow_redirects=False)
    assert answer.status_code == 302
    assert answer.headers["location"] == "/backends/echo/1.0.0/db/"
    assert answer.headers["link"] == "</backends/echo/1.0.0/app.css>; rel=preload"
