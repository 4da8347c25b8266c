"""The dashboard's routes in-process: how a browser gets in (a one-time code for a session that
opens the dashboard's routes only), the snapshot it shows, installs that fail, and gc."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ywmagics.client import OrchestratorClient
from ywmagics.discovery import Connection
from ywmagics.errors import StartError
from ywmagics.events import Event
from ywmagics.orchestrator.dashboard import CONTENT_SECURITY_POLICY, PAGE_FOLDER
from ywmagics.orchestrator.environments import USED_MARKER
from ywmagics.orchestrator.service import Orchestrator
from ywmagics.spec import InstallRequest

from .inprocess import BASE, TOKEN, LoopThread, make_app, sync_client

MASTER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, Orchestrator, LoopThread]]:
    loop = LoopThread()
    app, orchestrator = make_app(tmp_path)
    with sync_client(app, loop) as http:
        yield http, orchestrator, loop
    loop.run(orchestrator.shutdown())
    loop.close()


def _session(http: httpx.Client, master: dict[str, str] = MASTER) -> dict[str, str]:
    """A dashboard session, as the page gets one from a link's code."""
    link = http.post("/dashboard-link", headers=master).json()["url"]
    assert link.startswith(f"{http.base_url}".rstrip("/") + "/dashboard/#code=")
    code = link.split("#code=", 1)[1]
    answer = http.post("/dashboard/session", json={"code": code})
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    return {"Authorization": f"Bearer {answer.json()['session']}"}


def test_a_link_is_one_code_for_one_session_which_opens_the_dashboard_only(
    served: tuple[httpx.Client, Orchestrator, LoopThread],
) -> None:
    http, _, _ = served
    assert http.post("/dashboard-link").status_code == 401  # only with the master token
    link = http.post("/dashboard-link", headers=MASTER).json()["url"]
    code = link.split("#code=", 1)[1]
    assert http.post("/dashboard/session", json={"code": code}).status_code == 200
    spent = http.post("/dashboard/session", json={"code": code})
    assert spent.status_code == 401 and "used already" in spent.json()["error"]["message"]
    assert http.post("/dashboard/session", json={"code": "guess"}).status_code == 401
    session = _session(http)
    assert http.get("/dashboard/state", headers=session).status_code == 200
    assert http.get("/dashboard/state").status_code == 401  # no credential, no data
    for method, path in [
        ("POST", "/install"),
        ("POST", "/shutdown"),
        ("GET", "/list"),
        ("GET", "/status"),
        ("POST", "/dashboard-link"),  # a session cannot make itself new ones
        ("POST", "/browser-link"),  # nor open a backend's pages: they are its API (pyrun runs code)
        ("GET", "/backends/node_echo/1.0.0/"),
    ]:
        answer = http.request(method, path, headers=session, json={})
        assert answer.status_code == 403, (method, path, answer.text)


def test_the_page_holds_no_data_and_runs_only_its_own_files(
    served: tuple[httpx.Client, Orchestrator, LoopThread],
) -> None:
    http, _, _ = served
    page = http.get("/dashboard/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert (
        "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    )
    assert page.text == (PAGE_FOLDER / "index.html").read_text()
    assert http.get("/dashboard").status_code == 308  # to the folder: its files are relative
    for shipped in PAGE_FOLDER.iterdir():
        answer = http.get(f"/dashboard/static/{shipped.name}")
        assert answer.status_code == 200 and answer.content == shipped.read_bytes()
    assert http.head("/dashboard/").status_code == 200  # as GET: no credential
    unknown = http.get("/dashboard/static/nope.js")
    assert unknown.status_code == 404 and unknown.headers["x-ywmagics-error"] == "1"
    for stray in ["../app.py", "..%2Fapp.py", "nope.js", "%2e%2e%2fservice.py"]:
        # 401 when the client made the path leave the folder: then it needs a credential
        assert http.get(f"/dashboard/static/{stray}").status_code in (401, 404), stray


@pytest.mark.slow  # starts backends
def test_a_failed_install_shows_in_red_with_its_log_tail(
    served: tuple[httpx.Client, Orchestrator, LoopThread],
) -> None:
    http, _, _ = served
    session = _session(http)
    client = OrchestratorClient(Connection(BASE, TOKEN), http=http)
    with pytest.raises(StartError):
        client.install(InstallRequest.from_object({"modules": ["broken_start"], "partition": "P"}))
    with pytest.raises(Exception, match="unknown backend"):
        client.install(InstallRequest.from_object({"modules": ["nope"], "partition": "P"}))
    installs = http.get("/dashboard/state", headers=session).json()["installs"]
    unknown, broken = installs[0], installs[1]  # newest first
    assert (unknown["name"], unknown["state"]) == ("nope", "failed")
    assert "unknown backend" in unknown["error"]
    assert (broken["name"], broken["version"], broken["state"]) == (
        "broken_start",
        "1.0.0",
        "failed",
    )
    assert "BROKEN_START: cannot bind" in broken["log_tail"]
    assert [s["kind"] for s in broken["steps"]][:2] == ["resolved", "built"]
    assert broken["ended"] >= broken["started"]


@pytest.mark.slow  # starts backends
def test_the_snapshot_and_gc_of_environments_unused_for_days(
    served: tuple[httpx.Client, Orchestrator, LoopThread],
) -> None:
    http, _, _ = served
    session = _session(http)
    client = OrchestratorClient(Connection(BASE, TOKEN), http=http)
    client.install(InstallRequest.from_object({"modules": ["node_echo"], "partition": "Dash"}))
    client.install(
        InstallRequest.from_object({"modules": ["versions_demo#0.1.0"], "partition": "Old"})
    )
    state = http.get("/dashboard/state", headers=session).json()
    assert state["orchestrator"]["pid"] == os.getpid()
    (dash,) = [p for p in state["partitions"] if p["name"] == "Dash"]
    (echo,) = dash["instances"]
    assert (echo["name"], echo["state"], echo["given_up"]) == ("node_echo", "ready", False)
    assert echo["rss"] > 0 and echo["cpu_percent"] is not None and echo["pid"] > 0
    assert abs(echo["started"] + echo["uptime"] - time.time()) < 5
    environments = {e["name"]: e for e in state["environments"]}
    assert environments["node_echo"]["in_use"] == ["Dash"]
    # Stopped, and last used 40 days ago: gc at 30 days takes it (a dry run first says so).
    http.post("/stop", headers=session, json={"partition": "Old"}).raise_for_status()
    old = Path(environments["versions_demo"]["path"])
    forty_days_ago = time.time() - 40 * 86400
    os.utime(old / USED_MARKER, (forty_days_ago, forty_days_ago))
    dry = http.post("/gc", headers=session, json={"older_than_days": 30, "dry_run": True}).json()
    assert [e["name"] for e in dry["removed"]] == ["versions_demo"] and old.exists()
    # Only what was confirmed: another key removes nothing.
    other = {"older_than_days": 30, "only": ["versions_demo/0.1.0/000000"]}
    assert http.post("/gc", headers=session, json=other).json()["removed"] == [] and old.exists()
    confirmed = [f"{e['name']}/{e['version']}/{e['fingerprint']}" for e in dry["removed"]]
    done = http.post("/gc", headers=session, json={"older_than_days": 30, "only": confirmed}).json()
    assert [e["name"] for e in done["removed"]] == ["versions_demo"] and not old.exists()
    assert {e["name"] for e in done["kept"]} == {"node_echo"}  # in use: never taken
    # Uninstalled, then installed again: the same build, built anew (its install step was once
    # told to end for good, and so was every later one).
    again = InstallRequest.from_object({"modules": ["slow_build"], "partition": "Again"})
    client.install(again)
    (built,) = [e for e in client.listing()["environments"] if e["name"] == "slow_build"]
    removal = {"spec": "slow_build", "fingerprint": built["fingerprint"]}
    http.post("/uninstall", headers=session, json=removal).raise_for_status()
    assert not Path(built["path"]).exists()
    client.install(again)
    assert (Path(built["path"]) / "app" / "built").read_text() == "built\n"
    assert http.post("/gc", headers=session, json={"older_than_days": -1}).status_code == 400
    # Restart: the same instance, a new process.
    restarted = http.post(
        "/restart",
        headers=session,
        json={"partition": "Dash", "name": "node_echo", "version": "1.0.0"},
    ).json()["restarted"]
    assert restarted["restarts"] == 1 and restarted["pid"] != echo["pid"]
    missing = http.post(
        "/restart",
        headers=session,
        json={"partition": "Nope", "name": "node_echo", "version": "1.0.0"},
    )
    assert missing.status_code == 404


@pytest.mark.slow  # a real orchestrator and backends
def test_the_stream_sends_a_new_snapshot_after_events_and_logs_follow(tmp_path: Path) -> None:
    import json
    import threading

    import ywmagics

    from .conftest import start_orchestrator, stop_orchestrator

    process, connection = start_orchestrator(tmp_path / "home")
    try:
        with httpx.Client(base_url=connection.url, timeout=30) as http:
            session = _session(http, connection.headers)
            states: list[tuple[float, dict[str, Any]]] = []
            subscribed = threading.Event()

            def ready(state: dict[str, Any]) -> bool:
                live = [p for p in state["partitions"] if p["name"] == "Live"]
                return bool(live) and live[0]["instances"][0]["state"] == "ready"

            def read() -> None:
                with http.stream("GET", "/dashboard/stream", headers=session) as answer:
                    for line in answer.iter_lines():
                        states.append((time.time(), json.loads(line)["state"]))
                        subscribed.set()
                        if ready(states[-1][1]):
                            return

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            assert subscribed.wait(10) and not ready(states[0][1])
            events: list[Event] = []
            echo = ywmagics.install(
                "node_echo as e", partition="Live", connection=connection, on_event=events.append
            ).e
            reader.join(10)
            seen_at, last = states[-1]
            assert ready(last)
            (ready_event,) = [e for e in events if e.kind.value == "ready"]
            assert seen_at - ready_event.time < 1.0  # pushed, not found at the next 2 s look
            (live,) = [p for p in last["partitions"] if p["name"] == "Live"]
            # The log: what the backend writes after the panel opened comes through.
            query = {"partition": "Live", "name": "node_echo", "version": "1.0.0"}
            with http.stream("GET", "/dashboard/log", params=query, headers=session) as answer:
                chunks = answer.iter_text()
                assert "--- start" in next(chunks)
                log_path = Path(live["instances"][0]["log"])
                with log_path.open("a") as log:
                    log.write("a line written later\n")
                assert "a line written later" in next(chunks)
            assert echo.fetch("/").status_code == 200
    finally:
        stop_orchestrator(process)


@pytest.mark.slow  # a real orchestrator
def test_open_streams_end_when_the_orchestrator_stops(tmp_path: Path) -> None:
    # uvicorn waits for open answers at shutdown, for its whole graceful timeout (5 s): an open
    # dashboard tab made every stop 5 s slower.
    import threading

    from ywmagics.discovery import pid_alive

    from .conftest import start_orchestrator, stop_orchestrator

    process, connection = start_orchestrator(tmp_path / "home")
    ended: list[str] = []
    try:
        with httpx.Client(base_url=connection.url, timeout=30) as http:
            session = _session(http, connection.headers)

            def follow(path: str, headers: dict[str, str]) -> None:
                with http.stream("GET", path, headers=headers) as answer:
                    for _ in answer.iter_lines():
                        pass
                ended.append(path)

            readers = [
                threading.Thread(target=follow, args=(path, headers), daemon=True)
                for path, headers in [
                    ("/dashboard/stream", session),
                    ("/events", connection.headers),
                ]
            ]
            for reader in readers:
                reader.start()
            time.sleep(0.5)  # both answers under way
            started = time.monotonic()
            http.post("/shutdown", headers=connection.headers).raise_for_status()
            while pid_alive(process.pid) and time.monotonic() - started < 10:
                time.sleep(0.02)
            took = time.monotonic() - started
            for reader in readers:
                reader.join(5)
        assert sorted(ended) == ["/dashboard/stream", "/events"]
        assert took < 3, f"the orchestrator took {took:.1f} s to stop"
    finally:
        stop_orchestrator(process)


@pytest.mark.slow  # starts a backend
def test_gc_racing_a_request_that_starts_an_old_environment_breaks_nothing(
    served: tuple[httpx.Client, Orchestrator, LoopThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request for an installed backend that does not run lists the environments, then plans
    # in a thread: a gc in between took the environment, and the start failed ('No such file',
    # 'is the program on PATH?') and left a broken instance behind for every later request.
    import asyncio
    import threading

    from ywmagics.errors import BackendNotFound

    http, orchestrator, loop = served
    client = OrchestratorClient(Connection(BASE, TOKEN), http=http)
    client.install(InstallRequest.from_object({"modules": ["node_echo"], "partition": "Race"}))
    client.stop(partition="Race")
    (environment,) = orchestrator.installer.environments()
    forty_days_ago = time.time() - 40 * 86400
    os.utime(environment.path / USED_MARKER, (forty_days_ago, forty_days_ago))
    orchestrator._last_used.clear()  # as after a restart of the orchestrator: planned again
    planning, go_on = threading.Event(), threading.Event()
    plan = orchestrator.installer.plan

    def slow_plan(*args: object) -> object:
        planning.set()
        go_on.wait(10)
        return plan(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(orchestrator.installer, "plan", slow_plan)

    async def race() -> tuple[object, dict[str, object]]:
        start = asyncio.ensure_future(orchestrator.instance_for("Race", "node_echo", "^1"))
        await asyncio.to_thread(planning.wait, 10)
        collected = await orchestrator.gc(30)
        go_on.set()
        outcome = (await asyncio.gather(start, return_exceptions=True))[0]
        return outcome, collected

    outcome, collected = loop.run(race())
    assert [e["name"] for e in collected["removed"]] == ["node_echo"]  # type: ignore[index]
    assert isinstance(outcome, BackendNotFound)
    assert "was uninstalled while this request was starting it" in outcome.message
    assert not orchestrator.supervisor.instances  # nothing broken left behind
