"""The orchestrator with real processes: a real server, real environments, real backends.

Backends in Node.js (tests/resources/registry) keep these tests fast; the bundled Python backends
have their own files (test_demo_backend.py, test_pyrun_backend.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

import ywmagics
from ywmagics.client import OrchestratorClient
from ywmagics.discovery import Connection, pid_alive, read_discovery
from ywmagics.errors import (
    AuthenticationError,
    BackendNotFound,
    ConfigurationError,
    InstallError,
    SpecError,
    StartError,
)
from ywmagics.events import Event, EventKind
from ywmagics.protocol import PROTOCOL_VERSION

from .conftest import (
    TEST_REGISTRY,
    run_cli,
    run_concurrently,
    start_orchestrator,
    stop_orchestrator,
)

pytestmark = pytest.mark.slow  # installs backends into a real orchestrator


def test_status_and_discovery_file_is_private(
    orchestrator: Connection, orchestrator_home: Path
) -> None:
    status = OrchestratorClient(orchestrator).status()
    assert status["pid"] == orchestrator.pid
    assert status["url"] == orchestrator.url
    mode = (orchestrator_home / "run" / "orchestrator.json").stat().st_mode & 0o777
    assert mode == 0o600


def test_node_backend_over_tcp_with_partition(orchestrator: Connection) -> None:
    events: list[Event] = []
    clients = ywmagics.install(
        ["node_echo#^1.0.0 as echo"],
        partition="NodeP",
        on_event=events.append,
        connection=orchestrator,
    )
    answer = clients.echo.fetch_json("/echo", method="POST", json={"hello": "world"})
    assert answer == {"hello": "world", "partition": "NodeP"}
    assert clients.echo.url_base == f"{orchestrator.url}/backends/node_echo/1.0.0"
    kinds = [e.kind for e in events]
    assert kinds[0] is EventKind.RESOLVED and kinds[-1] is EventKind.READY
    assert all(e.partition == "NodeP" and e.name == "node_echo" for e in events)


def test_version_ranges_pick_the_highest_match(orchestrator: Connection) -> None:
    clients = ywmagics.install(
        [
            "versions_demo#^0.1.0 as old",
        ],
        partition="Ranges",
        connection=orchestrator,
    )
    assert clients.old.version == "0.1.5"
    assert clients.old.fetch_json("/")["version"] == "0.1.5"
    # The proxy resolves ranges too, against what runs in the partition.
    with httpx.Client(headers={**orchestrator.headers, "X-Backends-Partition": "Ranges"}) as http:
        proxied = http.get(f"{orchestrator.url}/backends/versions_demo/~0.1.0/").json()
    assert proxied["version"] == "0.1.5"
    latest = ywmagics.install(
        "versions_demo#latest as new", partition="Ranges", connection=orchestrator
    )
    assert latest.new.version == "0.2.0"


def test_clear_errors_for_bad_input(orchestrator: Connection) -> None:
    with pytest.raises(BackendNotFound, match="unknown backend 'no_such_backend'") as unknown:
        ywmagics.install("no_such_backend", connection=orchestrator)
    assert "node_echo" in unknown.value.hint  # it lists what exists
    with pytest.raises(BackendNotFound, match="no version of 'versions_demo' matches") as nomatch:
        ywmagics.install("versions_demo#^9.0.0", connection=orchestrator)
    assert "0.1.0, 0.1.5, 0.2.0" in nomatch.value.hint
    with pytest.raises(SpecError, match="not a version range"):
        ywmagics.install("versions_demo#^banana", connection=orchestrator)
    with pytest.raises(ConfigurationError, match="has no build option 'colour'"):
        ywmagics.install(
            {
                "modules": ["node_echo"],
                "configurations": {"node_echo": {"build": {"colour": "red"}}},
            },
            connection=orchestrator,
        )
    with pytest.raises(ConfigurationError, match="not being installed"):
        ywmagics.install(
            {
                "modules": ["node_echo"],
                "configurations": {"pyrun_backend": {"build": {"python": "3.10"}}},
            },
            connection=orchestrator,
        )


def test_wrong_token_foreign_host_and_origin_are_refused(orchestrator: Connection) -> None:
    bad = Connection(orchestrator.url, "not-the-token", orchestrator.pid)
    with pytest.raises(AuthenticationError, match="wrong token"):
        OrchestratorClient(bad).status()
    assert httpx.get(f"{orchestrator.url}/status").status_code == 401
    foreign = httpx.get(
        f"{orchestrator.url}/status", headers={**orchestrator.headers, "Host": "evil.example:80"}
    )
    assert foreign.status_code == 403 and "loopback" in foreign.json()["error"]["message"]
    cross = httpx.get(
        f"{orchestrator.url}/status",
        headers={**orchestrator.headers, "Origin": "http://evil.example"},
    )
    assert cross.status_code == 403


def test_start_failure_shows_the_log_tail(orchestrator: Connection) -> None:
    with pytest.raises(StartError, match="exited with code 3") as failure:
        ywmagics.install("broken_start", connection=orchestrator)
    assert "BROKEN_START: cannot bind" in failure.value.log_tail


def test_install_failure_shows_the_build_log_and_leaves_nothing(
    orchestrator: Connection, orchestrator_home: Path
) -> None:
    with pytest.raises(InstallError) as failure:
        ywmagics.install("bad_requirement", connection=orchestrator)
    assert "this-package-does-not-exist-ywmagics" in failure.value.log_tail
    folder = orchestrator_home / "data" / "environments" / "bad_requirement" / "1.0.0"
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []


def test_killed_instance_is_restarted_on_next_request(orchestrator: Connection) -> None:
    clients = ywmagics.install("crasher as c", partition="Crash", connection=orchestrator)
    first_pid = _pid_of(orchestrator, "Crash", "crasher")
    os.kill(first_pid, signal.SIGKILL)
    assert clients.c.fetch_json("/")["name"] == "crasher"
    second_pid = _pid_of(orchestrator, "Crash", "crasher")
    assert second_pid != first_pid and pid_alive(second_pid)
    # A crash from inside (the process exits after answering) is survived too.
    assert clients.c.fetch_json("/crash", method="POST")["pid"] == second_pid
    assert clients.c.fetch_json("/")["pid"] not in (first_pid, second_pid)


def test_same_backend_other_config_replaces_the_instance(orchestrator: Connection) -> None:
    events: list[Event] = []
    ywmagics.install("node_echo", partition="Replace", connection=orchestrator)
    first = _pid_of(orchestrator, "Replace", "node_echo")
    ywmagics.install(
        {"modules": ["node_echo"], "configurations": {"node_echo": {"build": {"greeting": "hi"}}}},
        partition="Replace",
        on_event=events.append,
        connection=orchestrator,
    )
    assert EventKind.REPLACED in [e.kind for e in events]
    assert _pid_of(orchestrator, "Replace", "node_echo") != first
    assert not pid_alive(first)


def test_partitions_are_isolated(orchestrator: Connection) -> None:
    a = ywmagics.install("node_echo as e", partition="IsoA", connection=orchestrator).e
    b = ywmagics.install("node_echo as e", partition="IsoB", connection=orchestrator).e
    assert a.fetch_json("/echo", method="POST", json={})["partition"] == "IsoA"
    assert b.fetch_json("/echo", method="POST", json={})["partition"] == "IsoB"
    assert _pid_of(orchestrator, "IsoA", "node_echo") != _pid_of(orchestrator, "IsoB", "node_echo")


def test_request_for_installed_backend_not_running_starts_it(orchestrator: Connection) -> None:
    ywmagics.install("node_echo", partition="Lazy1", connection=orchestrator)
    with httpx.Client(headers={**orchestrator.headers, "X-Backends-Partition": "Lazy2"}) as http:
        answer = http.post(f"{orchestrator.url}/backends/node_echo/^1/echo", json={"x": 1})
        missing = http.get(f"{orchestrator.url}/backends/versions_demo/^5/")
    assert answer.json() == {"x": 1, "partition": "Lazy2"}
    assert missing.status_code == 404 and "not installed" in missing.json()["error"]["message"]


def test_logs_stop_and_list(orchestrator: Connection) -> None:
    client = OrchestratorClient(orchestrator)
    ywmagics.install("node_echo", partition="Admin", connection=orchestrator)
    listing = client.listing()
    mine = [i for i in listing["instances"] if i["partition"] == "Admin"]
    assert mine and mine[0]["name"] == "node_echo" and mine[0]["state"] == "ready"
    assert "--- start" in client.logs("node_echo", partition="Admin")
    stopped = client.stop(partition="Admin")
    assert stopped == [{"partition": "Admin", "name": "node_echo", "version": "1.0.0"}]
    assert not pid_alive(mine[0]["pid"])


def test_concurrent_installs_of_one_key_build_once(orchestrator: Connection) -> None:
    # Two clients (as two kernels would) ask for the same new environment at the same time.
    events: list[Event] = []
    lock = threading.Lock()

    def on_event(event: Event) -> None:
        with lock:
            events.append(event)

    request = {
        "modules": ["node_echo"],
        "configurations": {"node_echo": {"build": {"greeting": f"c{time.time_ns()}"}}},
    }

    def install(partition: str) -> None:
        ywmagics.install(request, partition=partition, on_event=on_event, connection=orchestrator)

    assert run_concurrently(install, ["Twin1", "Twin2"]) == []
    kinds = [e.kind for e in events]
    assert kinds.count(EventKind.BUILT) == 1
    assert kinds.count(EventKind.REUSED) == 1


def test_cli_install_list_logs_stop(orchestrator: Connection, orchestrator_home: Path) -> None:

    done = run_cli("install", "node_echo#^1.0.0", "--partition", "Cli")
    assert done.returncode == 0, done.stderr
    assert "ready" in done.stdout and "/backends/node_echo/1.0.0" in done.stdout
    listing = run_cli("list")
    assert listing.returncode == 0, listing.stderr
    mine = [line.split() for line in listing.stdout.splitlines() if line.startswith("Cli ")]
    assert mine and mine[0][1:4] == ["node_echo", "1.0.0", "ready"]
    logs = run_cli("logs", "node_echo", "--partition", "Cli")
    assert logs.returncode == 0 and "--- start" in logs.stdout
    stop = run_cli("stop", "--partition", "Cli")
    assert stop.returncode == 0 and "stopped node_echo 1.0.0 in partition Cli" in stop.stdout
    bad = run_cli("install", "nope#^1")
    assert bad.returncode == 2 and "unknown backend 'nope'" in bad.stderr
    status = run_cli("status")
    assert status.returncode == 0, status.stderr
    versions = f"{ywmagics.__version__} (protocol {PROTOCOL_VERSION})"
    assert status.stdout.startswith(f"orchestrator {versions} at {orchestrator.url} ")
    assert f"this environment: ywmagics {versions}" in status.stdout
    assert f"(pid {orchestrator.pid}," in status.stdout
    # A spec with an alias, typed as users type it on a line.
    aliased = run_cli("install", "node_echo#^1.0.0", "as", "echo", "--partition", "Cli")
    assert aliased.returncode == 0, aliased.stderr
    assert "echo: node_echo 1.0.0 in partition Cli" in aliased.stdout
    wrong = run_cli("stop", "--all", "--partition", "Cli")
    assert wrong.returncode == 2 and "give it alone" in wrong.stderr


def test_orchestrator_killed_leaves_no_backend_behind(tmp_path: Path) -> None:
    process, connection = start_orchestrator(tmp_path / "home")
    try:
        ywmagics.install("node_echo", partition="Orphans", connection=connection)
        ywmagics.install("crasher", partition="Orphans", connection=connection)
        pids = [i["pid"] for i in OrchestratorClient(connection).listing()["instances"]]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        process.kill()
        process.wait()
        deadline = time.monotonic() + 5
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(p) for p in pids)
        # Its discovery file is now stale: a client starts a new orchestrator in its place.
        env = {**os.environ, "YW_HOME": str(tmp_path / "home")}
        status = run_cli("status", env=env)
        assert status.returncode == 1 and "no orchestrator is running" in status.stdout
        listing = run_cli("list", env=env)
        assert listing.returncode == 0, listing.stderr
        assert "Installed environments" in listing.stdout and "node_echo" in listing.stdout
        restarted = read_discovery(tmp_path / "home" / "run" / "orchestrator.json")
        assert restarted is not None and restarted.pid != connection.pid
        OrchestratorClient(restarted).shutdown()
    finally:
        stop_orchestrator(process)


def test_orchestrator_stopped_stops_its_backends(tmp_path: Path) -> None:
    process, connection = start_orchestrator(tmp_path / "home")
    ywmagics.install("node_echo", partition="Stop", connection=connection)
    pid = OrchestratorClient(connection).listing()["instances"][0]["pid"]
    stop_orchestrator(process)
    assert process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert not _running(pid)
    assert not (tmp_path / "home" / "run" / "orchestrator.json").exists()


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pid_of(connection: Connection, partition: str, name: str) -> int:
    for instance in OrchestratorClient(connection).listing()["instances"]:
        if instance["partition"] == partition and instance["name"] == name:
            return int(instance["pid"])
    raise AssertionError(f"no {name} in {partition}")


def test_live_event_stream_sees_installs(orchestrator: Connection) -> None:
    seen: list[Event] = []
    subscribed = threading.Event()

    def listen() -> None:
        for event in OrchestratorClient(orchestrator).events(on_subscribed=subscribed.set):
            seen.append(event)
            if event.kind is EventKind.READY and event.partition == "Live":
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert subscribed.wait(10)
    ywmagics.install("node_echo", partition="Live", connection=orchestrator)
    listener.join(30)
    live = [e.kind for e in seen if e.partition == "Live"]
    assert live[0] is EventKind.RESOLVED and live[-1] is EventKind.READY


def test_uninstall_removes_environments_and_stops_instances(tmp_path: Path) -> None:
    process, connection = start_orchestrator(tmp_path / "home")
    try:
        client = OrchestratorClient(connection)
        ywmagics.install("versions_demo#0.1.0", partition="U1", connection=connection)
        ywmagics.install("versions_demo#0.2.0", partition="U2", connection=connection)
        pid = _pid_of(connection, "U1", "versions_demo")
        done = client.uninstall("versions_demo#^0.1.0")
        assert [e["version"] for e in done["removed"]] == ["0.1.0"]
        assert done["stopped_partitions"] == ["U1"]
        assert not _running(pid)
        assert not Path(done["removed"][0]["path"]).exists()
        remaining = client.listing()
        assert [e["version"] for e in remaining["environments"]] == ["0.2.0"]
        assert [i["partition"] for i in remaining["instances"]] == ["U2"]
        with pytest.raises(BackendNotFound, match="no installed environment"):
            client.uninstall("versions_demo#0.1.0")
    finally:
        stop_orchestrator(process)


def test_proxy_strips_credentials_and_streams_big_bodies(orchestrator: Connection) -> None:
    echo = ywmagics.install("node_echo as e", partition="Stream", connection=orchestrator).e
    seen = echo.fetch_json("/headers", headers={"Cookie": "ywmagics_token=secret; theme=dark"})
    assert "authorization" not in seen
    assert seen["cookie"] == "theme=dark"
    assert seen["x-backends-partition"] == "Stream"
    assert seen["x-forwarded-prefix"] == "/backends/node_echo/1.0.0"

    def chunks():  # a body without a length: streamed, chunk by chunk
        for _ in range(40):
            yield b"y" * 100_000

    assert echo.fetch_json("/size", method="POST", content=chunks())["size"] == 4_000_000
    big = b"z" * 3_000_000  # above the size read whole before forwarding
    assert echo.fetch_json("/size", method="POST", content=big)["size"] == 3_000_000
    with echo.stream("/big", params={"pieces": 80}) as response:
        received = sum(len(chunk) for chunk in response.iter_bytes())
    assert received == 80 * 64 * 1024


def test_an_instance_that_keeps_crashing_is_given_up(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # The policy is the user's to set: 3 restarts in a row, short pauses (the test's time).
    (home / "config.toml").write_text("[supervisor]\nrestart_limit = 3\nrestart_backoff = 0.01\n")
    process, connection = start_orchestrator(home)
    try:
        crasher = ywmagics.install("crasher as c", partition="Flaky", connection=connection).c
        errors: list[StartError] = []
        restarted = 0
        for _ in range(12):  # each POST /crash is answered, then the process exits
            try:
                crasher.fetch_json("/crash", method="POST")
                crasher.fetch_json("/")  # restarts it, after a growing pause
                restarted += 1
            except StartError as error:
                # A request can also meet the process as it exits: a POST is not sent again.
                errors.append(error)
                if "keeps crashing" in error.message:
                    break
        assert "keeps crashing (4 times)" in errors[-1].message
        assert restarted <= 3
        assert "--- start" in errors[-1].log_tail
        # Given up for good: no more restarts until it is installed again.
        with pytest.raises(StartError, match="given up"):
            crasher.fetch_json("/")
        again = ywmagics.install("crasher as c", partition="Flaky", connection=connection)
        assert list(again) == ["c"] and again.c.partition == "Flaky"
        assert crasher.fetch_json("/crash", method="POST")["crashing"]
        assert crasher.fetch_json("/")["name"] == "crasher"  # restarted: its count began anew
    finally:
        stop_orchestrator(process)


def test_registries_from_the_config_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    extra = tmp_path / "mine"
    shutil.copytree(TEST_REGISTRY / "node_echo", extra / "my_echo")
    manifest = extra / "my_echo" / "ywbackend.toml"
    manifest.write_text(manifest.read_text().replace('name = "node_echo"', 'name = "my_echo"'))
    env = {**os.environ, "YW_HOME": str(home), "YW_BACKENDS_PATH": ""}

    def registries() -> subprocess.CompletedProcess[str]:
        return run_cli("registries", env=env)

    assert "my_echo" not in registries().stdout
    (home / "config.toml").write_text(f'registries = ["{extra}"]\n')
    listed = registries()
    assert f"3. from {home / 'config.toml'}: {extra}\n" in listed.stdout
    assert "   my_echo  1.0.0    my_echo\n" in listed.stdout
    (home / "config.toml").write_text("registries = 'not a list'\n")
    broken = registries()
    assert broken.returncode == 2 and "'registries' must be a list of folders" in broken.stderr


def _instance_token(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(
        v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"YW_INSTANCE_TOKEN=")
    )


def test_an_instance_token_reaches_backends_only(orchestrator: Connection) -> None:
    ywmagics.install("node_echo", partition="Scoped", connection=orchestrator)
    token = _instance_token(_pid_of(orchestrator, "Scoped", "node_echo"))
    as_backend = {"Authorization": f"Bearer {token}", "X-Backends-Partition": "Elsewhere"}
    with httpx.Client(base_url=orchestrator.url, headers=as_backend) as http:
        echoed = http.post("/backends/node_echo/^1/echo", json={"from": "backend"})
        assert echoed.json()["partition"] == "Scoped"  # pinned, whatever the header says
        for method, path in [
            ("POST", "/browser-link"),
            ("GET", "/list"),
            ("POST", "/shutdown"),
            ("POST", "/stop"),
            ("GET", "/logs/node_echo"),
        ]:
            refused = http.request(method, path, json={})
            assert refused.status_code == 403, path
            assert "instance token" in refused.json()["error"]["message"]


def test_browser_cookie_and_foreign_pages_cannot_drive_the_admin_routes(
    orchestrator: Connection,
) -> None:
    cookie = {"Cookie": f"ywmagics_token={orchestrator.token}"}
    with httpx.Client(base_url=orchestrator.url) as http:
        assert http.get("/list", headers=cookie).status_code == 401
        install = {"modules": ["node_echo"], "partition": "Evil"}
        forged = http.post(
            "/install",
            headers={**orchestrator.headers, "Origin": "http://127.0.0.1:8888"},
            json=install,
        )
        assert forged.status_code == 403
        plain = http.post(
            "/install",
            headers={**orchestrator.headers, "Content-Type": "text/plain"},
            content=json.dumps(install),
        )
        assert plain.status_code == 400 and "application/json" in plain.text
        own_origin = http.get(
            "/status", headers={**orchestrator.headers, "Origin": orchestrator.url}
        )
        assert own_origin.status_code == 200


def test_expect_continue_does_not_desynchronise_pooled_connections(
    orchestrator: Connection,
) -> None:
    echo = ywmagics.install("node_echo as e", partition="Expect", connection=orchestrator).e
    answer = echo.fetch_json(
        "/echo", method="POST", json={"n": 0}, headers={"Expect": "100-continue"}
    )
    assert answer == {"n": 0, "partition": "Expect"}
    for n in range(1, 4):  # each answer is its own request's, on the same pooled connection
        assert echo.fetch_json("/echo", method="POST", json={"n": n})["n"] == n


def test_racing_installs_with_two_configurations_leave_one_tracked_instance(
    orchestrator: Connection,
) -> None:
    def install(greeting: str) -> None:
        ywmagics.install(
            {
                "modules": ["node_echo"],
                "configurations": {"node_echo": {"build": {"greeting": greeting}}},
            },
            partition="Race",
            connection=orchestrator,
        )

    assert run_concurrently(install, ["race-a", "race-b"]) == []
    tracked = [
        i
        for i in OrchestratorClient(orchestrator).listing()["instances"]
        if i["partition"] == "Race"
    ]
    assert len(tracked) == 1
    # No untracked node_echo of this partition runs anywhere.
    running = [p for p in _node_pids() if _partition_of_pid(p, orchestrator) == "Race"]
    assert running == [tracked[0]["pid"]]


def _node_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                # (the launcher's connector of a private network is not a backend process)
                backend = b"node_echo" in cmdline and b"launcher.py" not in cmdline
                if backend and _running(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _partition_of_pid(pid: int, orchestrator: Connection) -> str | None:
    """The partition of a backend process of ``orchestrator`` (not another's: CI may run)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    variables = dict(v.decode(errors="replace").split("=", 1) for v in environ if b"=" in v)
    if variables.get("YW_ORCHESTRATOR_URL") != orchestrator.url:
        return None
    return variables.get("YW_PARTITION")


def test_shutdown_of_an_orchestrator_this_process_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a kernel does: the client starts the orchestrator as its own child. 'ywmagics shutdown'
    # from elsewhere must see it end (no zombie left looking alive).
    monkeypatch.setenv("YW_HOME", str(tmp_path / "home"))
    umask = os.umask(0o022)  # a usual one: the log must be private all the same
    try:
        connection = ywmagics.connect()
    finally:
        os.umask(umask)
    for made in ("orchestrator.log", "start.lock"):
        assert stat.S_IMODE((tmp_path / "home" / "run" / made).stat().st_mode) == 0o600
    started = time.monotonic()
    done = run_cli("shutdown")
    assert done.returncode == 0, done.stderr
    assert f"orchestrator (pid {connection.pid}) stopped" in done.stdout
    assert time.monotonic() - started < 10


def test_clients_follow_their_orchestrator_when_it_is_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a notebook: the client found its orchestrator itself (no connection given).
    monkeypatch.setenv("YW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("YW_BACKENDS_PATH", str(TEST_REGISTRY))
    echo = ywmagics.install("node_echo as e", partition="Follow").e
    admin = OrchestratorClient()
    first = echo.connection
    try:
        admin.shutdown()
        deadline = time.monotonic() + 15
        while pid_alive(first.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # A graceful restart: the next call finds the new orchestrator (another port and token)
        # and the backend, installed, is started there in the same partition.
        assert echo.fetch_json("/echo", method="POST", json={}) == {"partition": "Follow"}
        second = echo.connection
        assert (second.url, second.token) != (first.url, first.token)
        assert admin.listing()["instances"][0]["partition"] == "Follow"
        # A kill -9: the same, once the process is gone (a zombie is not taken for a live one).
        os.kill(second.pid, signal.SIGKILL)
        # Until its port refuses: its main thread is a zombie before its other threads have
        # ended, and its descriptors (the pooled connection too) close only with the last one;
        # a request sent in between would be reset, not refused, and is not sent again.
        port = int(second.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 10
        while _accepts(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pid_alive(second.pid)
        assert echo.fetch_json("/echo", method="POST", json={}) == {"partition": "Follow"}
        assert echo.connection.pid not in (first.pid, second.pid)
        # A client given a connection explicitly is never swapped for another orchestrator.
        pinned = ywmagics.BackendClient(second, "node_echo", "1.0.0", "Follow")
        with pytest.raises(ywmagics.OrchestratorUnavailable):
            pinned.fetch("/")
    finally:
        OrchestratorClient().shutdown()


def _accepts(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_idle_connections_cannot_lock_the_orchestrator_out(tmp_path: Path) -> None:
    # Any local user can open connections, token or not. With the usual 'ulimit -n 1024', 2,000
    # connections that never finish their headers would use up every descriptor.
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    home = tmp_path / "home"
    process, connection = start_orchestrator(home, nofile=1024)
    port = int(connection.url.rsplit(":", 1)[1])
    idle: list[socket.socket] = []
    try:
        for _ in range(2000):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end
            idle.append(sock)
        with httpx.Client(timeout=10) as http:
            for _ in range(5):
                answer = http.get(f"{connection.url}/status", headers=connection.headers)
                assert answer.status_code == 200
        descriptors = len(os.listdir(f"/proc/{process.pid}/fd"))
        assert descriptors < 600, descriptors  # the oldest waiting ones were closed
        # A refused request does not keep its connection either.
        refused = socket.create_connection(("127.0.0.1", port))
        refused.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        refused.settimeout(10)
        answer = b""
        while chunk := refused.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 401") and b"connection: close" in answer.lower()
        refused.close()
    finally:
        for sock in idle:
            sock.close()
        stop_orchestrator(process)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_kept_alive_connection_outlives_client_pools_and_a_flood(
    orchestrator: Connection,
) -> None:
    # A server that closes an idle connection as its client reuses it fails that request with
    # no answer, and httpx does not send it again: uvicorn's 5 s keep-alive equalled httpx's
    # own pool expiry, and one request in a thousand failed under load. New connections that
    # never send their headers must not push a served one out either.
    import http.client
    import socket

    from ywmagics.orchestrator.connections import MAX_WAITING

    port = int(orchestrator.url.rsplit(":", 1)[1])
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    kept.request("GET", "/status", headers=orchestrator.headers)
    assert kept.getresponse().read() and kept.sock is not None
    served_from = kept.sock.getsockname()
    flood = []
    try:
        for _ in range(MAX_WAITING + 50):
            flood.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(6)  # past httpx's 5 s: a pool of it would still send on this connection
        kept.request("GET", "/status", headers=orchestrator.headers)
        answer = kept.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["pid"]
        assert kept.sock.getsockname() == served_from  # the same connection, not a new one
    finally:
        kept.close()
        for sock in flood:
            sock.close()


@pytest.mark.parametrize("attack", ["one endless value", "many small headers", "endless path"])
def test_an_oversized_head_is_refused_without_stalling_anyone(
    orchestrator: Connection, attack: str
) -> None:
    # Parsers build a head by concatenation: one endless header used to spend the event loop's
    # time for the whole headers deadline, and small headers took gigabytes, token or not.
    import socket

    from ywmagics.orchestrator.connections import MAX_HEAD_BYTES

    port = int(orchestrator.url.rsplit(":", 1)[1])
    start = {
        "one endless value": b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: ",
        "many small headers": b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        "endless path": b"GET /",
    }[attack]
    piece = b"x-h: 1\r\n" if attack == "many small headers" else b"a" * 8
    attacker = socket.create_connection(("127.0.0.1", port))
    attacker.settimeout(10)
    attacker.sendall(start)
    began = time.monotonic()
    for _ in range(8 * MAX_HEAD_BYTES // (len(piece) * 1024)):
        attacker.sendall(piece * 1024)
    answer = b""
    while chunk := attacker.recv(65536):
        answer += chunk
    # Refused when the cap was passed, not at the headers deadline (10 s).
    assert time.monotonic() - began < 3
    attacker.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"x-ywmagics-error: 1" in answer and b"connection: close" in answer
    assert b"64 KiB" in answer
    with httpx.Client(timeout=10) as http:
        began = time.monotonic()
        assert http.get(f"{orchestrator.url}/status", headers=orchestrator.headers).is_success
        assert time.monotonic() - began < 1


def test_refused_heads_cannot_hold_many_connections(orchestrator: Connection) -> None:
    # A refused connection is drained for a moment (so that its client sees the 431): only a
    # few at once, or holding them would use up the descriptors.
    import socket

    from ywmagics.orchestrator.connections import MAX_HEAD_BYTES, MAX_LINGERING

    port = int(orchestrator.url.rsplit(":", 1)[1])
    before = len(os.listdir(f"/proc/{orchestrator.pid}/fd"))
    held = []
    try:
        for _ in range(4 * MAX_LINGERING):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /status HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10))
            held.append(sock)  # never read, never closed: as an attacker would
        time.sleep(0.3)
        during = len(os.listdir(f"/proc/{orchestrator.pid}/fd"))
        assert during <= before + MAX_LINGERING + 8, (before, during)
        with httpx.Client(timeout=10) as http:
            assert http.get(f"{orchestrator.url}/status", headers=orchestrator.headers).is_success
    finally:
        for sock in held:
            sock.close()


def test_trailers_are_dropped_and_capped(orchestrator: Connection) -> None:
    # A chunked body's trailers were added to the request's headers (after the application had
    # checked them), without a cap: gigabytes, with an instance token only.
    import socket

    from ywmagics.orchestrator.connections import MAX_HEAD_BYTES

    port = int(orchestrator.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)
    head = (
        "POST /install HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {orchestrator.token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode() + b"2\r\n{}\r\n0\r\n")
    answer = b""
    try:
        for _ in range(4 * MAX_HEAD_BYTES // 1024):
            sock.sendall(b"x-t: " + b"v" * 1000 + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]


def test_bad_connections_cannot_fill_the_log(tmp_path: Path) -> None:
    # uvicorn logs a line for each bad connection; anyone may open thousands.
    import socket

    process, connection = start_orchestrator(tmp_path / "home")
    port = int(connection.url.rsplit(":", 1)[1])
    try:
        for _ in range(300):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                sock.settimeout(5)
                with contextlib.suppress(OSError):
                    sock.recv(1000)
        with httpx.Client(timeout=10) as http:
            assert http.get(f"{connection.url}/status", headers=connection.headers).is_success
    finally:
        stop_orchestrator(process)
    lines = (tmp_path / "home" / "serve.log").read_text().splitlines()
    noise = [line for line in lines if "Invalid HTTP request" in line]
    assert 1 <= len(noise) <= 25, len(noise)
    assert "dropped for a minute" in noise[-1]


def test_heads_under_the_cap_and_large_bodies_pass(orchestrator: Connection) -> None:
    long = "v" * 60_000  # under the 64 KiB cap, with the rest of the request
    with httpx.Client(timeout=10) as http:
        headers = {**orchestrator.headers, "X-Long": long}
        assert http.get(f"{orchestrator.url}/status", headers=headers).is_success
    echo = ywmagics.install("node_echo as e", partition="Heads", connection=orchestrator).e
    long = "v" * 12_000  # Node's own cap is 16 KiB
    assert echo.fetch_json("/headers", headers={"X-Long": long})["x-long"] == long
    body = os.urandom(3 << 20)  # a body is not a head: no cap here
    assert echo.fetch_json("/size", method="POST", content=body) == {"size": len(body)}


def test_a_tcp_backend_in_its_private_network_still_calls_the_orchestrator(
    orchestrator: Connection, orchestrator_home: Path
) -> None:
    echo = ywmagics.install("node_echo as e", partition="Calls", connection=orchestrator).e
    ywmagics.install("node_unix", partition="Calls", connection=orchestrator)
    listing = OrchestratorClient(orchestrator).listing()["instances"]
    mine = next(i for i in listing if i["partition"] == "Calls" and i["name"] == "node_echo")
    assert mine["reachable_by"] == "this user"
    answer = echo.fetch_json("/call", params={"path": "/backends/node_unix/^1/"})
    assert answer["status"] == 200
    assert json.loads(answer["body"]) == {"name": "node_unix", "partition": "Calls"}
    # Each connection through the connector came without a fault in the orchestrator's log.
    assert "InvalidStateError" not in (orchestrator_home / "serve.log").read_text()


def test_server_sent_events_pass_unbuffered(orchestrator: Connection) -> None:
    echo = ywmagics.install("node_echo as e", partition="Sse", connection=orchestrator).e
    arrived: list[tuple[float, str]] = []
    with echo.stream("/events") as response:
        assert response.headers["content-type"] == "text/event-stream"
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrived.append((time.monotonic(), line[6:]))
    assert [data for _, data in arrived] == ["0", "1", "2"]
    # Each came as it was sent (300 ms apart), not all at the end.
    assert arrived[2][0] - arrived[0][0] > 0.4


def test_a_client_is_bound_to_the_configuration_it_installed(orchestrator: Connection) -> None:
    def install(alias: str, greeting: str) -> ywmagics.BackendClient:
        return ywmagics.install(
            {
                "modules": [f"node_echo as {alias}"],
                "configurations": {"node_echo": {"build": {"greeting": greeting}}},
            },
            partition="Bind",
            connection=orchestrator,
        )[alias]

    first = install("first", "one")
    assert first.fingerprint and first.fetch_json("/") == {"name": "node_echo"}
    second = install("second", "two")  # one configuration at a time per partition
    with pytest.raises(ywmagics.InstanceReplaced) as refused:
        first.fetch_json("/")
    message = refused.value.message
    assert "greeting='one'" in message and "greeting='two'" in message
    assert f"alias 'second' of process {os.getpid()}" in message
    assert "--partition" in refused.value.hint
    assert second.fetch_json("/") == {"name": "node_echo"}
    # A client made by hand, bound to nothing, takes what runs.
    unbound = ywmagics.BackendClient(orchestrator, "node_echo", "1.0.0", "Bind")
    assert unbound.fetch_json("/") == {"name": "node_echo"}
    listed = OrchestratorClient(orchestrator).listing()["instances"]
    assert [i["installed_by"] for i in listed if i["partition"] == "Bind"] == [
        f"alias 'second' of process {os.getpid()}"
    ]


def test_each_instance_has_its_own_data_folder_kept_across_restarts(
    orchestrator: Connection,
) -> None:
    a = ywmagics.install("data_keeper as d", partition="DataA", connection=orchestrator).d
    b = ywmagics.install("data_keeper as d", partition="DataB", connection=orchestrator).d
    seen = a.fetch_json("/")
    # Install steps saw the folder the backend runs from, not a temporary one.
    assert seen["recorded_exists"] and ".tmp-" not in seen["recorded_env"]
    assert seen["data"] == seen["data_env"] and Path(seen["data"]).is_dir()
    assert stat.S_IMODE(Path(seen["data"]).stat().st_mode) == 0o700
    assert b.fetch_json("/")["data"] != seen["data"]
    a.fetch_json("/add", method="POST", json={"line": "one"})
    b.fetch_json("/add", method="POST", json={"line": "other"})
    os.kill(_pid_of(orchestrator, "DataA", "data_keeper"), signal.SIGKILL)
    # A GET first: it is sent again if it meets the dying process (a POST is not: see upstream).
    assert a.fetch_json("/")["lines"] == ["one"]
    # Restarted after its crash, it finds what it wrote; the other partition's write is apart.
    assert a.fetch_json("/add", method="POST", json={"line": "two"})["lines"] == ["one", "two"]
    assert b.fetch_json("/")["lines"] == ["other"]
    listed = {
        i["partition"]: i["data"] for i in OrchestratorClient(orchestrator).listing()["instances"]
    }
    assert listed["DataA"] == seen["data"]
    # Stopping a partition deletes its data, unless asked to keep it.
    client = OrchestratorClient(orchestrator)
    client.stop(partition="DataA")
    assert not Path(seen["data"]).exists()
    kept = b.fetch_json("/")["data"]
    client.stop(partition="DataB", keep_data=True)
    assert (Path(kept) / "log").read_text() == "other\n"
    shutil.rmtree(kept)


def test_the_command_line_stop_keeps_data_when_asked(orchestrator: Connection) -> None:
    keeper = ywmagics.install("data_keeper as d", partition="CliData", connection=orchestrator).d
    keeper.fetch_json("/add", method="POST", json={"line": "x"})
    data = Path(keeper.fetch_json("/")["data"])
    done = run_cli("stop", "--partition", "CliData", "--keep-data")
    assert done.returncode == 0 and "stopped data_keeper" in done.stdout, done.stderr
    assert (data / "log").read_text() == "x\n"
    shutil.rmtree(data)
