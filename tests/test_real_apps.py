"""Real third-party web apps behind the proxy, as users put them there: Datasette (PyPI),
json-server and live-server (npm), driven by httpx and by a real Chromium.

Each is a backend of the test registry that installs the app from its registry; none of them
knows its base path but Datasette (``base_url``), and each builds URLs its own way: from the Host
it is sent, from the path it saw, or root-relative.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import ywmagics
from ywmagics.client import BackendClient, OrchestratorClient
from ywmagics.discovery import Connection

pytestmark = pytest.mark.slow  # installs apps from PyPI and npm; starts a browser


@pytest.fixture(scope="module")
def apps(orchestrator: Connection) -> dict[str, BackendClient]:
    modules = ["datasette_app as ds", "json_server_app as js", "live_server_app as live"]
    return dict(ywmagics.install({"modules": modules}, partition="Apps", connection=orchestrator))


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    opened = context.new_page()
    opened.failed = []  # what the page could not load
    opened.on("requestfailed", lambda request: opened.failed.append(request.url))
    yield opened
    context.close()


def _base(client: BackendClient) -> str:
    return client.url_base.split("://", 1)[1].split("/", 1)[1]  # backends/NAME/VERSION


def test_datasette_redirects_and_absolute_urls_stay_in_its_base_path(
    apps: dict[str, BackendClient],
) -> None:
    ds = apps["ds"]
    base = "/" + _base(ds)
    # Its trailing-slash redirect is root-relative, without its base_url: moved into it.
    moved = ds.fetch("/fixtures/")
    assert moved.status_code == 302
    assert moved.headers["location"] == f"{base}/fixtures"
    # Absolute URLs are built from the Host the client used, as the client sees them.
    listing = ds.fetch_json("/fixtures/items.json", params={"_size": 5})
    assert [row[1] for row in listing["rows"]] == [f"item {i}" for i in range(5)]
    assert listing["next_url"].startswith(f"{ds.url_base}/fixtures/items.json?")
    following = ds.fetch(listing["next_url"].removeprefix(ds.url_base))
    assert [row[1] for row in following.json()["rows"]] == [f"item {i}" for i in range(5, 10)]
    assert following.headers["link"].startswith(f"<{ds.url_base}/fixtures/items.json?")
    # Every page link and asset is in its base path, and is served.
    html = ds.fetch_text("/fixtures/items")
    assert f'href="{base}/-/static/app.css' in html
    assert ds.fetch(html.split(f'href="{base}', 1)[1].split('"', 1)[0]).status_code == 200


def test_datasette_in_a_browser(apps: dict[str, BackendClient], page: Any) -> None:
    ds = apps["ds"]
    page.goto(ds.browser_url("/"))
    page.get_by_role("link", name="fixtures", exact=True).first.click()
    page.get_by_role("link", name="items", exact=True).first.click()
    # Waited for: is_visible() looks once, and the click's page may not be there yet.
    page.get_by_text("item 4", exact=True).wait_for(state="visible", timeout=15_000)
    # Its next page link is absolute, built from the Host the browser sent: the instance's own.
    page.get_by_role("link", name="Next page").click()
    page.get_by_text("item 9", exact=True).wait_for(state="visible", timeout=15_000)
    assert page.url.startswith(ds.browser_url("/").split("/backends/", 1)[0])
    assert f"/{_base(ds)}/fixtures/items" in page.url
    assert page.failed == []  # its stylesheets and scripts, all through the proxy


def test_json_server_creates_updates_and_says_where_in_its_base_path(
    apps: dict[str, BackendClient],
) -> None:
    js = apps["js"]
    created = js.fetch("/posts", method="POST", json={"title": "third"})
    assert created.status_code == 201
    # Express built it from the Host it was sent and the path it saw (/posts): moved into the
    # base path, on the client's own host.
    location = created.headers["location"]
    assert location == f"{js.url_base}/posts/{created.json()['id']}"
    own = location.removeprefix(js.url_base)
    assert js.fetch_json(own) == {"title": "third", "id": created.json()["id"]}
    assert js.fetch_json(own, method="PUT", json={"title": "3rd"})["title"] == "3rd"
    assert js.fetch_json(own)["title"] == "3rd"
    assert js.fetch(own, method="DELETE").status_code == 200
    assert js.fetch(own).status_code == 404


def test_json_server_in_a_browser(apps: dict[str, BackendClient], page: Any) -> None:
    js = apps["js"]
    page.goto(js.browser_url("/"))
    assert "JSON Server" in page.content()
    # The page's own requests: a POST answered with a Location on the page's host.
    answer = page.evaluate(
        """async () => {
            const r = await fetch("posts", {method: "POST", body: JSON.stringify({title: "web"}),
                                            headers: {"content-type": "application/json"}});
            return [r.status, r.headers.get("location"), await r.json()];
        }"""
    )
    status, location, body = answer
    assert status == 201
    page_origin = page.url.split("/backends/", 1)[0]
    assert location == f"{page_origin}/{_base(js)}/posts/{body['id']}"
    page.goto(location)
    assert json.loads(page.locator("body").inner_text()) == {"title": "web", "id": body["id"]}


def _site_of(orchestrator_home: Path) -> Path:
    sites = list((orchestrator_home / "data" / "environments" / "live_server_app").glob("*/*/site"))
    assert len(sites) == 1, sites
    return sites[0]


def test_live_server_reloads_its_page_over_its_websocket(
    apps: dict[str, BackendClient], page: Any, orchestrator_home: Path
) -> None:
    live = apps["live"]
    base = "/" + _base(live)
    moved = live.fetch("/sub")  # a folder: its redirect is root-relative, moved into the base
    assert (moved.status_code, moved.headers["location"]) == (301, f"{base}/sub/")
    messages: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: messages.append(frame)))
    page.goto(live.browser_url("/"))
    assert page.locator("#title").inner_text() == "version 1"
    # Its stylesheet came through (a relative link, on the instance's host).
    color = page.evaluate("getComputedStyle(document.getElementById('title')).color")
    assert color == "rgb(0, 128, 0)"
    for _ in range(100):
        if "connected" in messages:
            break
        page.wait_for_timeout(50)
    assert "connected" in messages, messages  # the app's websocket is open, through the proxy
    index = _site_of(Path(orchestrator_home)) / "index.html"
    index.write_text(index.read_text().replace("version 1", "version 2"))
    # The app sees the change and tells the page over its websocket; the page reloads.
    page.locator("#title", has_text="version 2").wait_for(timeout=10_000)
    assert "reload" in messages
    # A folder link without its slash follows the moved redirect, to the listing and a file.
    page.click("#sub")
    assert page.url.endswith(f"{base}/sub/")
    page.get_by_text("note.txt").click()
    assert page.locator("body").inner_text().strip() == "a file in the sub folder"
    assert page.failed == []


def test_the_apps_are_listed_as_reachable_by_this_user_only(
    apps: dict[str, BackendClient], orchestrator: Connection
) -> None:
    listing = OrchestratorClient(orchestrator).listing()["instances"]
    mine = {i["name"]: i for i in listing if i["partition"] == "Apps"}
    assert set(mine) == {"datasette_app", "json_server_app", "live_server_app"}
    assert {i["reachable_by"] for i in mine.values()} == {"this user"}
    with pytest.raises(httpx.ConnectError):  # the TCP ones listen in their own network
        httpx.get(f"http://{mine['json_server_app']['listen']}/db", timeout=5)
