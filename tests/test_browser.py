"""In a real Chromium: backend pages on origins of their own, and no credential for anyone else.

The browser is Debian's ``chromium`` (``.ci/run`` installs it), driven by Playwright.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

import ywmagics
from ywmagics.client import BackendClient, OrchestratorClient
from ywmagics.discovery import Connection

from .conftest import Recorder

pytestmark = pytest.mark.slow  # starts a browser (conftest's ``browser``)


def _instance(orchestrator: Connection, partition: str) -> BackendClient:
    return ywmagics.install("node_echo as e", partition=partition, connection=orchestrator).e


def _instances(orchestrator: Connection) -> set[tuple[str, str, str]]:
    listing = OrchestratorClient(orchestrator).listing()["instances"]
    return {(i["partition"], i["name"], i["version"]) for i in listing}


def _text(page: Any) -> str:
    return str(page.locator("body").inner_text())


def test_backend_pages_get_no_credential_that_opens_more_than_their_instance(
    orchestrator: Connection, browser: Any, elsewhere: int
) -> None:
    mine = _instance(orchestrator, "BrowserA")
    other = _instance(orchestrator, "BrowserB")
    context = browser.new_context()
    page = context.new_page()
    # The user opens the other backend's page first: the browser holds a session for it too.
    page.goto(other.browser_url("/hits"))
    assert json.loads(_text(page)) == {"hits": 0}
    other_record = page.url.replace("/hits", "/record")
    port = httpx.URL(page.url).port
    targets = [
        other_record,
        f"http://127.0.0.1:{port}/install",
        f"http://127.0.0.1:{port}/status",
        f"http://localhost:{port}/backends/node_echo/1.0.0/record",
    ]
    before = _instances(orchestrator)
    page.goto(mine.browser_url("/page?" + urlencode({"targets": json.dumps(targets)})))
    assert "yw_code" not in page.url  # the code was traded and dropped from the address
    page.wait_for_function("document.getElementById('out').textContent !== 'running'")
    results = json.loads(page.locator("#out").inner_text())
    # The page's script could read none of it...
    assert {how for how, result in results.items() if result not in ("blocked", "opaque")} == set()
    # ...nor change anything: the other instance was not called, nothing was installed.
    assert other.fetch_json("/hits") == {"hits": 0}
    assert mine.fetch_json("/hits") == {"hits": 0}
    assert _instances(orchestrator) == before
    # A reload of a backend page keeps working.
    page.reload()
    page.wait_for_function("document.getElementById('out').textContent !== 'running'")
    # Servers on other ports of this machine get no credential of ours on the orchestrator's
    # host names. (On an instance's own host name they would: cookies know no ports. That name
    # is random and given to no other site; docs/security.md says so.)
    for host in ("127.0.0.1", "localhost"):
        page.goto(f"http://{host}:{elsewhere}/")
    page.goto(f"http://127.0.0.1:{elsewhere}/elsewhere")
    cookies = [seen.get("cookie", "") for seen in Recorder.seen]
    assert len(cookies) >= 3
    assert not any("ywmagics" in cookie for cookie in cookies), Recorder.seen
    assert not any(orchestrator.token in json.dumps(seen) for seen in Recorder.seen)
    # Nor does the browser hold one for the orchestrator's own host names.
    for cookie in context.cookies():
        assert cookie["domain"].endswith(".localhost") and cookie["domain"].startswith("b-")
        assert cookie["httpOnly"] and cookie["path"] == "/"
    context.close()


def test_backend_pages_give_their_host_name_to_no_other_site(
    orchestrator: Connection, browser: Any, elsewhere: int
) -> None:
    # The host name is where the theft of a session starts (another local user's server on
    # another port sets a cookie for it): it must not reach other sites in a Referer, whatever
    # the backend asks for (node_echo's /links says 'Referrer-Policy: unsafe-url').
    mine = _instance(orchestrator, "BrowserRef")
    context = browser.new_context()
    page = context.new_page()
    Recorder.seen.clear()
    page.goto(mine.browser_url("/links?" + urlencode({"to": f"http://127.0.0.1:{elsewhere}"})))
    host = httpx.URL(page.url).host
    page.click("#away")
    page.wait_for_url(f"http://127.0.0.1:{elsewhere}/away")
    paths = {seen["path"] for seen in Recorder.seen}
    assert {"/pixel", "/away"} <= paths, Recorder.seen
    assert not any(host in json.dumps(seen) for seen in Recorder.seen), Recorder.seen
    context.close()


def test_a_stopped_instance_ends_its_pages_sessions(orchestrator: Connection, browser: Any) -> None:
    mine = _instance(orchestrator, "BrowserC")
    context = browser.new_context()
    page = context.new_page()
    page.goto(mine.browser_url("/hits"))
    assert json.loads(_text(page)) == {"hits": 0}
    OrchestratorClient(orchestrator).stop(partition="BrowserC")
    answer = page.goto(page.url)
    assert answer is not None and answer.status == 404
    assert "not running any more" in _text(page)
    context.close()


def test_a_spent_link_opens_nothing_in_another_browser(
    orchestrator: Connection, browser: Any, tmp_path: Path
) -> None:
    mine = _instance(orchestrator, "BrowserD")
    link = mine.browser_url("/hits")
    first = browser.new_context()
    first.new_page().goto(link)
    second = browser.new_context()  # another browser profile, e.g. someone the link was sent to
    page = second.new_page()
    answer = page.goto(link)
    assert answer is not None and answer.status == 401
    assert "needs a link from the notebook" in _text(page)
    first.close()
    second.close()


def test_a_backend_page_uses_its_websocket(orchestrator: Connection, browser: Any) -> None:
    echo = ywmagics.install("ws_echo as w", partition="BrowserWs", connection=orchestrator).w
    context = browser.new_context()
    page = context.new_page()
    page.goto(echo.browser_url("/page"))
    page.wait_for_function("document.getElementById('out').textContent !== 'running'")
    hello, reply = json.loads(page.locator("#out").inner_text())
    assert json.loads(hello)["host"] == httpx.URL(page.url).netloc.decode()  # the page's host
    assert reply == "ping from the page"
    context.close()


def test_the_demo_backends_docs_work_offline(orchestrator: Connection, browser: Any) -> None:
    demo = ywmagics.install(
        "demo_yw_backend#^0.1.1 as d", partition="BrowserDocs", connection=orchestrator
    ).d
    context = browser.new_context()
    page = context.new_page()
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(demo.docs_url)
    # Swagger UI, from the backend's own files (this machine reaches no CDN), shows the routes.
    page.get_by_text("/cow-say", exact=True).wait_for(timeout=15_000)
    assert "demo_yw_backend" in page.title()
    assert failed == []
    context.close()
