"""demo_yw_backend, the tutorial's first backend, installed for real and used through the proxy."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import ywmagics
from ywmagics.client import BackendClient
from ywmagics.discovery import Connection
from ywmagics.errors import BackendHTTPError

pytestmark = pytest.mark.slow  # builds the demo's FastAPI environment


@pytest.fixture(scope="module")
def demo(orchestrator: Connection) -> BackendClient:
    return ywmagics.install(
        "demo_yw_backend#^0.1.1 as ywDemoClient", partition="DemoP", connection=orchestrator
    ).ywDemoClient


def test_cow_say_through_the_proxy(demo: BackendClient, orchestrator: Connection) -> None:
    assert demo.version == "0.1.1"
    assert demo.url_base == f"{orchestrator.url}/backends/demo_yw_backend/0.1.1"
    picture = demo.fetch_json(
        "/cow-say", method="POST", json={"message": "hello backends", "character": "trex"}
    )
    assert isinstance(picture, str)
    assert "hello backends" in picture
    assert picture.count("\n") > 10  # a T-rex is a tall picture
    assert demo.fetch_json("/hello-world") == {"message": "Hello world"}


def test_unknown_character_is_a_422_with_the_valid_ones(demo: BackendClient) -> None:
    with pytest.raises(BackendHTTPError, match="422") as error:
        demo.fetch_json("/cow-say", method="POST", json={"message": "x", "character": "unicorn"})
    assert "trex" in str(error.value) and error.value.status == 422


def test_async_twin(demo: BackendClient) -> None:
    async def main() -> object:
        try:
            return await demo.afetch_json("/hello-world")
        finally:
            await demo.aio.aclose()

    assert asyncio.run(main()) == {"message": "Hello world"}


def _as_a_browser(http: httpx.Client, url: str, cookie: str = "") -> httpx.Response:
    """GET ``url`` as a browser does: ``*.localhost`` is loopback, the Host is the link's."""
    parts = httpx.URL(url)
    headers = {"Host": parts.netloc.decode(), **({"Cookie": cookie} if cookie else {})}
    return http.get(f"http://127.0.0.1:{parts.port}{parts.raw_path.decode()}", headers=headers)


def test_docs_open_in_a_browser_through_the_proxy(
    demo: BackendClient, orchestrator: Connection
) -> None:
    # A browser has no Authorization header: the link's one-time code gives it a session for
    # this instance's own host name, which the page's own request for openapi.json carries.
    link = demo.docs_url
    assert orchestrator.token not in link
    assert httpx.URL(link).host.endswith(".localhost")
    with httpx.Client() as browser:
        opened = _as_a_browser(browser, link)
        assert opened.status_code == 303, opened.text
        session = opened.headers["set-cookie"].split(";", 1)[0]
        page_url = link.split("/backends/", 1)[0] + opened.headers["location"]
        page = _as_a_browser(browser, page_url, session)
        assert page.status_code == 200 and "swagger" in page.text.lower()
        assert "/backends/demo_yw_backend/0.1.1/openapi.json" in page.text
        spec_url = link.split("/backends/", 1)[0] + "/backends/demo_yw_backend/0.1.1/openapi.json"
        spec = _as_a_browser(browser, spec_url, session)
        assert spec.status_code == 200 and "/cow-say" in spec.json()["paths"]
        assert spec.json()["servers"] == [{"url": "/backends/demo_yw_backend/0.1.1"}]
        script = spec_url.replace("openapi.json", "static-offline-docs/swagger-ui-bundle.js")
        assert _as_a_browser(browser, script, session).status_code == 200
        # The page is the instance in DemoP, the client's partition: nothing started in Default.
        assert _as_a_browser(
            browser, page_url.replace("/docs", "/partition-echo"), session
        ).json() == {"partition": "DemoP"}
    # The code works once: a saved link, or one read from a notebook, opens nothing.
    with httpx.Client() as stranger:
        assert _as_a_browser(stranger, link).status_code == 401


def test_calls_from_a_backend_stay_in_its_partition(
    demo: BackendClient, orchestrator: Connection
) -> None:
    ywmagics.install("demo_yw_backend#^0.1.1", partition="OtherP", connection=orchestrator)
    # The demo in DemoP calls the demo through the orchestrator with its instance token, asking
    # for partition OtherP: the orchestrator pins the call to DemoP anyway.
    answer = demo.fetch_json(
        "/call",
        params={
            "path": "/backends/demo_yw_backend/^0.1.1/partition-echo",
            "partition": "OtherP",
        },
    )
    assert answer == {"partition": "DemoP"}


def test_websockets_through_the_proxy(orchestrator: Connection) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    ywmagics.install("ws_echo", partition="Ws", connection=orchestrator)
    base = orchestrator.url.replace("http://", "ws://") + "/backends/ws_echo/^1"
    headers = {**orchestrator.headers, "X-Backends-Partition": "Ws"}
    with connect(f"{base}/echo", additional_headers=headers, subprotocols=["superchat"]) as ws:
        assert ws.subprotocol == "superchat"
        hello = json.loads(ws.recv())
        assert hello == {"subprotocol": "superchat", "host": orchestrator.url.split("//")[1]}
        ws.send("text")
        assert ws.recv() == "text"
        ws.send(b"\x00bytes" * 1000)
        assert ws.recv() == b"\x00bytes" * 1000
    with connect(f"{base}/close", additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    with pytest.raises(InvalidStatus) as refused:  # no token: refused at the handshake
        connect(f"{base}/echo").close()
    assert refused.value.response.status_code == 401
