"""The dashboard in a real Chromium: opened from a link, live, and acting on real processes.

One orchestrator of its own serves the module (each test works in partitions of its own); the
test that stops an orchestrator starts another. Screenshots go to ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ywmagics
from ywmagics.client import OrchestratorClient
from ywmagics.discovery import Connection, pid_alive
from ywmagics.errors import YwMagicsError
from ywmagics.events import Event, EventKind
from ywmagics.protocol import PROTOCOL_VERSION
from ywmagics.spec import InstallRequest
from ywmagics.wire import CODEC_VERSION

from .conftest import TEST_REGISTRY, start_orchestrator, stop_orchestrator

pytestmark = pytest.mark.slow  # starts a browser and backends

ARTIFACTS = Path(__file__).parents[1] / "test-artifacts" / "dashboard"
BROKEN_BUILD = """\
name = "broken_build"
version = "1.0.0"
description = "Test backend whose install step fails, saying why on stderr."
runtime = "command"
listen = "tcp"
install = [["sh", "-c", "echo 'BROKEN_BUILD: no compiler here' >&2; exit 2"]]
start = ["node", "-e", "process.exit(1)"]
"""


class Home:
    """The module's orchestrator: its process, where it listens, its YW_HOME."""

    def __init__(self, process: subprocess.Popen[bytes], connection: Connection, home: Path):
        self.process = process
        self.connection = connection
        self.home = home
        self.client = OrchestratorClient(connection)

    def link(self) -> str:
        return str(self.client._call("POST", "/dashboard-link").json()["url"])

    def state(self) -> dict[str, Any]:
        return dict(self.client._call("GET", "/dashboard/state").json())

    def instance(self, partition: str, name: str = "node_echo") -> dict[str, Any]:
        for group in self.state()["partitions"]:
            for instance in group["instances"]:
                if (instance["partition"], instance["name"]) == (partition, name):
                    return dict(instance)
        raise LookupError(f"no {name} in {partition}")

    def install(self, spec: str, partition: str, **configuration: str) -> None:
        configurations = {spec.split("#")[0]: {"build": configuration}} if configuration else None
        ywmagics.install(
            spec, partition=partition, configurations=configurations, connection=self.connection
        )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    folder = tmp_path_factory.mktemp("dashboard-home")
    broken = tmp_path_factory.mktemp("broken-registry")
    (broken / "broken_build").mkdir()
    (broken / "broken_build" / "ywbackend.toml").write_text(BROKEN_BUILD)
    # A registry of its own besides TEST_REGISTRY (start_orchestrator sets YW_BACKENDS_PATH).
    (folder / "config.toml").write_text(f"registries = [{json.dumps(str(broken))}]\n")
    process, connection = start_orchestrator(folder)
    yield Home(process, connection, folder)
    stop_orchestrator(process)


@pytest.fixture
def open_dashboard(browser: Any, home: Home) -> Iterator[Callable[..., Any]]:
    """Open the dashboard from a fresh link in a new browser context; each is closed after."""
    contexts: list[Any] = []

    def open_(viewport: dict[str, int] | None = None, link: str | None = None) -> Any:
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []  # what the page's script raised
        refused: list[str] = []  # what the browser said was wrong (CSP, failed loads)

        def on_console(message: Any) -> None:
            if message.type == "error":
                refused.append(message.text)

        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", on_console)
        page.errors, page.refused = errors, refused
        page.goto(link or home.link())
        page.locator("#orchestrator [data-field='version']").filter(has_text=".").wait_for()
        return page

    yield open_
    for context in contexts:
        context.close()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.is_file() and path.stat().st_size > 0
    return path


def _selector(testid: str, data: dict[str, str]) -> str:
    return f"[data-testid='{testid}']" + "".join(f"[data-{k}='{v}']" for k, v in data.items())


def row(page: Any, testid: str, **data: str) -> Any:
    """The row of an instance, environment or install, by its data- attributes."""
    return page.locator(_selector(testid, data))


def button_of(page: Any, testid: str, action: str, **data: str) -> Any:
    """A button of a row (in the row's tbody, which also holds its log panel)."""
    return page.locator(f"tbody:has({_selector(testid, data)}) [data-action='{action}']")


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """For what is outside the page (processes, folders); the page has Playwright's waits.
    Never while a dialog may open: the sync API hands it to its handler only inside its calls."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def no_page_scroll(page: Any) -> bool:
    return bool(page.evaluate("() => document.documentElement.scrollWidth <= innerWidth"))


# --- tests ---------------------------------------------------------------------------------------


def test_the_dashboard_opens_from_a_link_and_a_reload_keeps_it(
    home: Home, open_dashboard: Callable[..., Any], browser: Any
) -> None:
    link = home.link()
    assert link.startswith(f"{home.connection.url}/dashboard/#code=")
    page = open_dashboard(link=link)
    assert "code=" not in page.url  # spent, and out of the address bar and history
    box = page.locator("#orchestrator")
    versions = f"{ywmagics.__version__} (protocol {PROTOCOL_VERSION}, codec {CODEC_VERSION})"
    assert box.locator("[data-field='version']").inner_text() == versions
    assert box.locator("[data-field='url']").inner_text() == home.connection.url
    assert box.locator("[data-field='pid']").inner_text() == str(home.connection.pid)
    assert box.locator("[data-field='kernels']").inner_text().isdigit()
    # A kernel attaches (it owns a partition): the version of its ywmagics is shown.
    request = InstallRequest.from_object("node_echo", partition="DashKernel")
    OrchestratorClient(home.connection).install(request, owner=os.getpid())
    attached = f"{os.getpid()}: {ywmagics.__version__}"
    box.locator("[data-field='clients']").filter(has_text=attached).wait_for()
    OrchestratorClient(home.connection).stop(partition="DashKernel")
    assert page.locator("#gone").is_hidden()
    page.reload()  # the session is in the tab's sessionStorage
    box.locator("[data-field='url']").filter(has_text=home.connection.url).wait_for()
    assert page.locator("#gone").is_hidden()
    shot(page, "opened")
    assert page.errors == []
    assert page.refused == []  # no CSP violation, no failed load (not even /favicon.ico)
    # A session the orchestrator does not know (it restarted): a 401, and the page says so.
    page.evaluate("() => sessionStorage.setItem('ywmagics.dashboard.session', 'forgotten')")
    page.reload()
    page.locator("#gone[data-reason='gone']").filter(has_text="open a new link").wait_for()

    # The same link again (someone it was sent to): spent, and the page says how to get one.
    other = browser.new_context()
    spent = other.new_page()
    spent.goto(link)
    banner = spent.locator("#gone")
    banner.wait_for()
    assert "already used" in banner.inner_text() and "ywmagics dashboard" in banner.inner_text()
    # No code and no session: the page says it needs a link.
    spent.goto(f"{home.connection.url}/dashboard/")
    spent.locator("#gone[data-reason='no-link']").wait_for()
    assert "%backends dashboard" in spent.locator("#gone").inner_text()
    other.close()


def test_an_install_from_the_cli_appears_and_becomes_ready_live(
    home: Home, open_dashboard: Callable[..., Any]
) -> None:
    page = open_dashboard()
    page.evaluate("() => { window.notReloaded = true; }")
    # When each (partition, state) was first seen on the page, by the page's own clock.
    page.evaluate(
        """() => {
        window.seen = {};
        const look = () => {
          for (const row of document.querySelectorAll("[data-testid='instance']")) {
            const key = row.dataset.partition + "/" + row.dataset.state;
            if (!(key in window.seen)) window.seen[key] = Date.now() / 1000;
          }
        };
        new MutationObserver(look).observe(document.body,
          {subtree: true, childList: true, attributes: true});
        look();
      }"""
    )
    events: list[Event] = []
    subscribed = threading.Event()

    def read() -> None:
        try:
            for event in home.client.events(on_subscribed=subscribed.set):
                events.append(event)
                if event.kind is EventKind.READY and event.partition == "DashLive":
                    return
        except YwMagicsError:  # the orchestrator went away: the test fails on its own
            return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert subscribed.wait(10)
    env = {**os.environ, "YW_HOME": str(home.home), "YW_BACKENDS_PATH": str(TEST_REGISTRY)}
    done = subprocess.run(
        [sys.executable, "-m", "ywmagics", "install", "node_echo", "--partition", "DashLive"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    reader.join(10)
    ready = [e for e in events if e.kind is EventKind.READY and e.partition == "DashLive"]
    assert ready, events
    page.wait_for_function("() => window.seen['DashLive/ready'] !== undefined", timeout=5000)
    seen = page.evaluate("() => window.seen['DashLive/ready']")
    assert seen - ready[0].time < 1.0, (seen, ready[0].time)
    assert page.evaluate("() => window.notReloaded") is True
    line = row(page, "instance", partition="DashLive", name="node_echo")
    assert line.get_attribute("data-version") == "1.0.0"
    pid = home.instance("DashLive")["pid"]
    assert line.locator("td[data-label='PID']").inner_text() == str(pid)
    assert line.locator("td[data-label='Configuration']").inner_text() == "greeting=hello"
    assert row(page, "environment", name="node_echo").count() >= 1
    shot(page, "installed-live")


def test_a_log_is_followed_as_it_grows(home: Home, open_dashboard: Callable[..., Any]) -> None:
    home.install("node_echo", "DashLog")
    log = Path(home.instance("DashLog")["log"])
    page = open_dashboard()
    button_of(page, "instance", "log", partition="DashLog").click()
    panel = page.locator("tbody:has([data-partition='DashLog']) [data-testid='log']")
    panel.wait_for()
    with log.open("a") as out:
        out.write("".join(f"request {n} <b>not markup</b>\n" for n in range(300)))
    panel.filter(has_text="request 299 <b>not markup</b>").wait_for()
    assert panel.locator("b").count() == 0  # text, never markup
    # The panel follows the end while the reader is there...
    page.wait_for_function(
        "sel => { const el = document.querySelector(sel);"
        " return el.scrollHeight > el.clientHeight"
        " && el.scrollHeight - el.scrollTop - el.clientHeight < 8; }",
        arg="tbody:has([data-partition='DashLog']) [data-testid='log']",
    )
    # ...and stays put once they scroll up to read; each new snapshot leaves the panel alone.
    panel.evaluate("el => { el.scrollTop = 0; el.dataset.mark = 'kept'; }")
    uptime = page.locator("#orchestrator [data-field='uptime']").inner_text()
    with log.open("a") as out:
        out.write("one more line\n")
    panel.filter(has_text="one more line").wait_for()
    page.wait_for_function(
        "u => document.querySelector(\"#orchestrator [data-field='uptime']\").textContent !== u",
        arg=uptime,
        timeout=10_000,
    )
    assert panel.evaluate("el => [el.dataset.mark, el.scrollTop]") == ["kept", 0]
    shot(page, "log")
    # Closed with its button: the panel goes.
    button_of(page, "instance", "log", partition="DashLog").click()
    panel.wait_for(state="detached")


def test_many_open_logs_leave_the_page_usable(
    home: Home, open_dashboard: Callable[..., Any]
) -> None:
    # A browser opens at most 6 connections to a host: with the stream and 5 followed logs,
    # a Stop never got through, nor did a second dashboard tab.
    partitions = [f"DashMany{n}" for n in range(5)]
    for partition in partitions:
        home.install("node_echo", partition)
    page = open_dashboard()
    for partition in partitions:
        button_of(page, "instance", "log", partition=partition).click()
        page.locator(f"tbody:has([data-partition='{partition}']) [data-testid='log']").wait_for()
    paused = page.locator(".log-head").filter(has_text="paused: at most 2 logs")
    wait_until(lambda: paused.count() == 3)
    second = page.context.new_page()  # another tab, sharing the connections to the host
    second.goto(home.link())
    second.locator(_selector("instance", {"partition": partitions[0]})).wait_for()
    pid = home.instance(partitions[0])["pid"]
    page.on("dialog", lambda dialog: dialog.accept())
    button_of(page, "instance", "stop", partition=partitions[0]).click()
    row(page, "instance", partition=partitions[0]).wait_for(state="detached")
    wait_until(lambda: not pid_alive(pid))


def test_stop_and_restart_from_the_page(home: Home, open_dashboard: Callable[..., Any]) -> None:
    home.install("node_echo", "DashStop")
    first = home.instance("DashStop")["pid"]
    page = open_dashboard()
    messages: list[str] = []
    answer = {"accept": False}

    def on_dialog(dialog: Any) -> None:
        messages.append(dialog.message)
        dialog.accept() if answer["accept"] else dialog.dismiss()

    page.on("dialog", on_dialog)
    line = row(page, "instance", partition="DashStop")
    line.wait_for()
    # Said no to: nothing happens.
    button_of(page, "instance", "stop", partition="DashStop").click()
    assert "node_echo#1.0.0" in messages[-1] and "DashStop" in messages[-1]
    assert pid_alive(first) and home.instance("DashStop")["pid"] == first

    answer["accept"] = True
    button_of(page, "instance", "restart", partition="DashStop").click()
    page.wait_for_function(
        """pid => {
          const row = document.querySelector("[data-testid='instance'][data-partition='DashStop']");
          return row && row.dataset.pid !== String(pid) && row.dataset.state === 'ready';
        }""",
        arg=first,
        timeout=20_000,
    )
    assert "Restart" in messages[-1]
    second = home.instance("DashStop")["pid"]
    assert second != first
    wait_until(lambda: not pid_alive(first))

    button_of(page, "instance", "stop", partition="DashStop").click()
    line.wait_for(state="detached", timeout=20_000)
    assert "Stop node_echo#1.0.0" in messages[-1]
    wait_until(lambda: not pid_alive(second))
    with pytest.raises(LookupError):
        home.instance("DashStop")
    assert page.errors == []


def test_uninstall_from_the_page_removes_the_folder(
    home: Home, open_dashboard: Callable[..., Any]
) -> None:
    home.install("node_echo", "DashUninstall", greeting="uninstall-me")
    fingerprint = home.instance("DashUninstall")["fingerprint"]
    (environment,) = [e for e in home.state()["environments"] if e["fingerprint"] == fingerprint]
    folder = Path(environment["path"])
    assert folder.is_dir()
    page = open_dashboard()
    line = row(page, "environment", fingerprint=fingerprint)
    assert "greeting=uninstall-me" in line.inner_text()
    assert "DashUninstall" in line.locator("td[data-label='In use by']").inner_text()
    # Who built it (a command backend shares no codec with kernels: none is said).
    assert line.locator("td[data-label='Built by']").inner_text() == ywmagics.__version__
    # Its install log, on demand.
    button_of(page, "environment", "install-log", fingerprint=fingerprint).click()
    install_log = page.locator(f"tbody:has([data-fingerprint='{fingerprint}']) [data-testid='log']")
    install_log.filter(has_text="# install of node_echo 1.0.0").wait_for()
    messages: list[str] = []

    def on_dialog(dialog: Any) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.on("dialog", on_dialog)
    button_of(page, "environment", "uninstall", fingerprint=fingerprint).click()
    line.wait_for(state="detached", timeout=20_000)
    assert "Uninstall node_echo#1.0.0" in messages[0] and "uninstall-me" in messages[0]
    assert "DashUninstall" in messages[0]  # it says what else goes
    wait_until(lambda: not folder.exists())
    row(page, "instance", partition="DashUninstall").wait_for(state="detached")
    shot(page, "uninstalled")


def test_old_environments_are_removed_after_a_preview(
    home: Home, open_dashboard: Callable[..., Any]
) -> None:
    home.install("node_echo", "DashGc", greeting="collect-me")
    fingerprint = home.instance("DashGc")["fingerprint"]
    home.client.stop(partition="DashGc")
    (environment,) = [e for e in home.state()["environments"] if e["fingerprint"] == fingerprint]
    page = open_dashboard()
    asked: list[str] = []
    answer = {"accept": False}

    def on_dialog(dialog: Any) -> None:  # runs while the click that opened it waits
        asked.append(dialog.message)
        dialog.accept() if answer["accept"] else dialog.dismiss()

    page.on("dialog", on_dialog)
    gc = page.locator("[data-action='gc']")
    page.fill("#gc-days", "30")  # nothing is that old: nothing asked, nothing removed
    gc.click()
    page.locator("#notice").filter(has_text="No environment").wait_for()
    assert asked == []
    page.fill("#gc-days", "0")
    gc.click()
    page.locator("[data-action='gc']:not([disabled])").wait_for()
    assert len(asked) == 1 and "collect-me" in asked[0]  # the dry run names what would go
    assert Path(environment["path"]).is_dir()  # said no to: still there
    answer["accept"] = True
    gc.click()
    row(page, "environment", fingerprint=fingerprint).wait_for(state="detached", timeout=20_000)
    assert not Path(environment["path"]).exists()
    page.locator("#notice").filter(has_text="Removed").wait_for()


def test_a_failed_install_is_shown_in_red_with_its_log_tail(
    home: Home, open_dashboard: Callable[..., Any]
) -> None:
    page = open_dashboard()
    with pytest.raises(YwMagicsError):
        home.install("broken_build", "DashBroken")
    card = row(page, "install", state="failed").filter(has_text="broken_build")
    card.wait_for()
    assert "failed" in card.get_attribute("class").split()
    assert "DashBroken" in card.inner_text()
    assert "BROKEN_BUILD: no compiler here" in card.locator("[data-testid='log-tail']").inner_text()
    red = card.evaluate("el => getComputedStyle(el).backgroundColor")
    assert red != "rgba(0, 0, 0, 0)" and red.startswith("rgb(253"), red  # a red tint
    shot(page, "failed-install")


def test_the_page_fits_a_wide_and_a_narrow_screen(
    home: Home, open_dashboard: Callable[..., Any]
) -> None:
    home.install("node_echo", "DashFits")
    page = open_dashboard()
    row(page, "instance", partition="DashFits").wait_for()
    button_of(page, "instance", "log", partition="DashFits").click()
    assert no_page_scroll(page)
    shot(page, "wide-1280x800")
    page.set_viewport_size({"width": 400, "height": 800})
    page.wait_for_function("() => innerWidth === 400")
    assert no_page_scroll(page)
    assert row(page, "instance", partition="DashFits").is_visible()
    # Rows become cards: each value with its label, all inside the screen.
    right = row(page, "instance", partition="DashFits").evaluate(
        "el => el.getBoundingClientRect().right"
    )
    assert right <= 400
    shot(page, "narrow-400x800")


def test_another_site_cannot_act_with_the_dashboard(
    home: Home, open_dashboard: Callable[..., Any], elsewhere: int
) -> None:
    home.install("node_echo", "DashXsite")
    pid = home.instance("DashXsite")["pid"]
    page = open_dashboard()
    session = page.evaluate("() => sessionStorage.getItem('ywmagics.dashboard.session')")
    assert session  # the dashboard holds one, in its own origin only
    # Even the dashboard's session opens nothing but the dashboard's routes.
    refused = page.evaluate(
        """async s => (await fetch('/list', {headers: {authorization: 'Bearer ' + s}})).status""",
        session,
    )
    assert refused == 403
    other = page.context.new_page()  # the same browser profile: another site, another tab
    other.goto(f"http://127.0.0.1:{elsewhere}/")
    results = other.evaluate(
        """async ([url]) => {
          const out = {session: sessionStorage.getItem('ywmagics.dashboard.session')};
          const body = JSON.stringify({partition: 'DashXsite'});
          const tries = {
            cors: {method: 'POST', body, credentials: 'include',
                   headers: {'content-type': 'application/json'}},
            'no-cors': {method: 'POST', body, mode: 'no-cors', credentials: 'include'},
          };
          for (const [how, init] of Object.entries(tries)) {
            try {
              const answer = await fetch(url + '/stop', init);
              out[how] = answer.type === 'opaque' ? 'opaque' : answer.status;
            } catch (error) {
              out[how] = 'blocked';
            }
          }
          return out;
        }""",
        [home.connection.url],
    )
    assert results["session"] is None
    assert results["cors"] in ("blocked", 401, 403), results
    assert results["no-cors"] in ("blocked", "opaque"), results
    assert pid_alive(pid) and home.instance("DashXsite")["pid"] == pid


def test_a_page_that_frames_the_dashboard_gets_no_live_one(
    home: Home, open_dashboard: Callable[..., Any], elsewhere: int
) -> None:
    # The tab that held a dashboard goes to another local page, which frames the dashboard:
    # the frame shares the tab's sessionStorage (same origin, same site), so a stored session
    # would make it live under a page that can lure clicks onto its buttons.
    home.install("node_echo", "DashFramed")
    page = open_dashboard()
    assert page.evaluate("() => sessionStorage.getItem('ywmagics.dashboard.session')")
    page.goto(f"http://127.0.0.1:{elsewhere}/framing")

    def framed(src: str) -> Any:
        page.evaluate(
            """src => { const f = document.createElement('iframe'); f.src = src;
                        f.width = 1000; f.height = 600; document.body.append(f); }""",
            src,
        )
        return page.frame_locator("iframe").last

    lured = framed(f"{home.connection.url}/dashboard/")
    lured.locator("#gone[data-reason='no-link']").wait_for()
    assert lured.locator("[data-testid='instance']").count() == 0
    # A notebook's --inline frame comes with a fresh code of its own: that one is live.
    inline = framed(home.link())
    inline.locator(_selector("instance", {"partition": "DashFramed"})).wait_for()


def test_the_page_says_when_the_orchestrator_is_gone(browser: Any, tmp_path: Path) -> None:
    process, connection = start_orchestrator(tmp_path / "home")
    try:
        link = str(OrchestratorClient(connection)._call("POST", "/dashboard-link").json()["url"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(link)
        page.locator("#orchestrator [data-field='url']").filter(has_text=connection.url).wait_for()
        assert page.locator("#gone").is_hidden()
    finally:
        stop_orchestrator(process)
    banner = page.locator("#gone[data-reason='gone']")
    banner.wait_for(timeout=15_000)
    text = banner.inner_text()
    assert "The orchestrator is gone" in text
    assert "ywmagics dashboard" in text and "%backends dashboard" in text
    shot(page, "gone")
    context.close()


# --- another site ---------------------------------------------------------------------------------
