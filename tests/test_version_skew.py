"""Several ywmagics installs of one user: the orchestrator publishes its version and protocol,
and a client never uses an orchestrator of another protocol silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import ywmagics
from ywmagics import __version__, paths
from ywmagics.client import OrchestratorClient
from ywmagics.client._connect import Spawned, _idle, connect, outdated, same_protocol
from ywmagics.discovery import Connection, read_discovery
from ywmagics.errors import BackendNotFound, ConfigurationError, OrchestratorError
from ywmagics.orchestrator.registry import Registry, client_bundled_folder
from ywmagics.protocol import ORCHESTRATOR_HEADER, PROTOCOL_VERSION
from ywmagics.spec import InstallRequest, VersionRange

from .conftest import TEST_REGISTRY, echo_named, start_orchestrator, stop_orchestrator


def test_an_orchestrator_of_another_protocol_is_refused_naming_both() -> None:
    ours = Connection("http://127.0.0.1:1", "t", 42, __version__, PROTOCOL_VERSION)
    assert same_protocol(ours) is ours
    for version, protocol in (("9.9.9", PROTOCOL_VERSION + 1), ("", 0)):
        with pytest.raises(OrchestratorError) as raised:
            same_protocol(Connection("http://127.0.0.1:1", "t", 42, version, protocol))
        message = str(raised.value)
        assert f"protocol {protocol}," in message and f"protocol {PROTOCOL_VERSION})" in message
        assert (version or "an older version") in message and __version__ in message
        assert "ywmagics shutdown" in raised.value.hint


def test_an_orchestrator_is_outdated_when_of_an_older_protocol_or_an_older_version() -> None:
    def of(version: str, protocol: int) -> Connection:
        return Connection("http://127.0.0.1:1", "t", 42, version, protocol)

    assert outdated(of("9.9.9", PROTOCOL_VERSION - 1))  # any version: the protocol decides
    assert outdated(of("", 0))  # one that published no protocol
    assert not outdated(of("0.0.1", PROTOCOL_VERSION + 1))  # newer: never stopped by us
    assert outdated(of("0.0.1", PROTOCOL_VERSION))  # an environment upgraded while it ran
    assert outdated(of(f"{__version__}rc1", PROTOCOL_VERSION))  # a pre-release is older
    assert not outdated(of(__version__, PROTOCOL_VERSION))
    assert not outdated(of(f"{__version__}.post1", PROTOCOL_VERSION))
    assert not outdated(of("not a version", PROTOCOL_VERSION))  # not stopped on a guess


@pytest.mark.slow  # an orchestrator
def test_the_orchestrator_says_its_versions_and_a_client_of_another_protocol_stops_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("YW_HOME", str(home))
    process, connection = start_orchestrator(home)
    try:
        found = read_discovery(paths.discovery_file())
        assert found is not None
        assert (found.version, found.protocol) == (__version__, PROTOCOL_VERSION)
        status = OrchestratorClient(connection).status()
        assert (status["version"], status["protocol"]) == (__version__, PROTOCOL_VERSION)
        assert connect(start=False) == found
        # As an orchestrator of another install would publish itself.
        data = json.loads(paths.discovery_file().read_text())
        paths.discovery_file().write_text(json.dumps({**data, "version": "9.9.9", "protocol": 99}))
        with pytest.raises(OrchestratorError, match=r"9\.9\.9, protocol 99"):
            connect(start=False)
        with pytest.raises(OrchestratorError, match="protocol 99"):
            connect()  # nor is a second one started beside it, into the same folders
        answer = httpx.get(f"{connection.url}/status", headers=connection.headers)
        assert answer.status_code == 200  # it runs on, untouched
        # What its answers say, for a client that reached it by its URL alone.
        said = f"{__version__}; protocol={PROTOCOL_VERSION}"
        assert answer.headers[ORCHESTRATOR_HEADER] == said
        # The CLI of this install says what meets, and can stop it.
        cli = [sys.executable, "-m", "ywmagics"]
        said = subprocess.run([*cli, "status"], capture_output=True, text=True, check=False)
        assert said.returncode == 0, said.stderr
        assert (
            f"this environment: ywmagics {__version__} (protocol {PROTOCOL_VERSION})" in said.stdout
        )
        assert "speaks another protocol" in said.stdout
        stopped = subprocess.run([*cli, "shutdown"], capture_output=True, text=True, check=False)
        assert stopped.returncode == 0, stopped.stderr
        assert process.wait(20) is not None
    finally:
        stop_orchestrator(process)


@pytest.mark.slow  # orchestrators, a backend
@pytest.mark.parametrize("protocol", [PROTOCOL_VERSION - 1, PROTOCOL_VERSION])
def test_an_older_orchestrator_is_replaced_once_nothing_uses_it(
    protocol: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("YW_HOME", str(home))
    process, connection = start_orchestrator(home)
    replacement = None
    try:
        data = json.loads(paths.discovery_file().read_text())
        # As an older install publishes: another protocol, or the same (an upgrade since).
        older = {**data, "version": "0.0.1", "protocol": protocol}
        paths.discovery_file().write_text(json.dumps(older))
        # Busy (an instance runs on it): left alone; refused if it speaks another protocol,
        # else used, and said.
        ywmagics.install("node_echo", partition="Busy", connection=connection)
        if protocol != PROTOCOL_VERSION:
            with pytest.raises(OrchestratorError, match=r"0\.0\.1"):
                connect()
        else:
            assert connect().pid == connection.pid
            said = capsys.readouterr().err
            assert f"ywmagics 0.0.1 (pid {connection.pid}), older than" in said
            assert f"replaced by one of {__version__} once nothing runs on it" in said
        assert process.poll() is None
        OrchestratorClient(connection).stop(partition="Busy")
        # Idle: stopped, and one of this version started in its place, said.
        replacement = connect()
        assert process.wait(20) is not None  # the older one ended
        assert replacement.pid != connection.pid
        assert (replacement.version, replacement.protocol) == (__version__, PROTOCOL_VERSION)
        said = capsys.readouterr().err
        assert f"ywmagics 0.0.1 (protocol {protocol}) and nothing used it" in said
        assert f"one of ywmagics {__version__}" in said
        assert OrchestratorClient(replacement).status()["protocol"] == PROTOCOL_VERSION
    finally:
        stop_orchestrator(process)
        if replacement is not None:
            OrchestratorClient(replacement).shutdown()


def _other_install(root: Path, backends: dict[str, str]) -> Path:
    """The bundled backends' folder of another ywmagics install (``{name: version}``, each a
    copy of the test registry's node_echo): as a site-packages of another environment has."""
    package = root / "site-packages" / "ywmagics"
    (package / "backends").mkdir(parents=True)
    (package / "_version.py").write_text('__version__ = "9.9.9"\n')
    for name, version in backends.items():
        echo_named(package / "backends" / name, name, version)
    return package / "backends"


def test_a_client_of_another_install_gets_the_backends_bundled_with_it(tmp_path: Path) -> None:
    ours = paths.bundled_registry_dir()
    registry = Registry([ours, TEST_REGISTRY])
    theirs = _other_install(tmp_path, {"demo_yw_backend": "0.1.9", "their_echo": "2.0.0"})
    mine = registry.resolve("demo_yw_backend", VersionRange.parse("^0.1.0"))
    assert mine.folder.parent == ours and mine.version != "0.1.9"
    # Their own version's bundled backends, in place of this install's; the other folders stay.
    assert registry.resolve("demo_yw_backend", VersionRange.parse("^0.1.0"), theirs).version == (
        "0.1.9"
    )
    assert registry.resolve("their_echo", VersionRange.parse("*"), theirs).folder.parent == theirs
    assert registry.resolve("node_echo", VersionRange.parse("*"), theirs).folder.parent == (
        TEST_REGISTRY
    )
    with pytest.raises(BackendNotFound, match="unknown backend 'their_echo'"):
        registry.resolve("their_echo", VersionRange.parse("*"))  # only for their clients
    with pytest.raises(BackendNotFound, match="pyrun_backend") as raised:
        registry.resolve("pyrun_backend", VersionRange.parse("*"), theirs)  # theirs has none
    assert str(theirs) in raised.value.hint and str(ours) not in raised.value.hint
    # Found again when an instance of it must start once more, with no request at hand.
    assert registry.known("their_echo", "2.0.0") is not None
    assert client_bundled_folder(str(theirs)) == theirs


@pytest.mark.parametrize(
    "folder",
    [
        "relative/ywmagics/backends",
        "/etc",
        "{tmp}/site-packages/ywmagics",
        "{tmp}/nothing/backends",
        "/" + "x" * 300 + "/backends",  # too long a name for the system
    ],
)
def test_a_bundled_folder_that_is_not_one_here_is_not_used(tmp_path: Path, folder: str) -> None:
    # A client in a container, or through a tunnel: this machine's bundled backends serve it.
    _other_install(tmp_path, {})
    assert client_bundled_folder(folder.format(tmp=tmp_path)) is None


def test_a_bundled_folder_that_another_user_could_change_is_refused(tmp_path: Path) -> None:
    theirs = _other_install(tmp_path, {"their_echo": "2.0.0"})
    theirs.chmod(0o777)  # anyone could put a backend there, whose commands would run as you
    with pytest.raises(ConfigurationError, match="could be changed by another user"):
        client_bundled_folder(str(theirs))


@pytest.mark.slow  # an orchestrator, a backend
def test_a_kernel_installs_its_own_bundled_backends_from_an_orchestrator_of_another_install(
    orchestrator: Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = _other_install(tmp_path, {"their_echo": "2.0.0"})
    client = OrchestratorClient(orchestrator)
    request = InstallRequest.from_object("their_echo", partition="OtherInstall")
    with pytest.raises(BackendNotFound, match="their_echo"):
        client.install(request)  # this install bundles no such backend
    # A kernel of the other install names its own bundled folder (its paths say where).
    monkeypatch.setattr(paths, "bundled_registry_dir", lambda: theirs)
    try:
        clients = ywmagics.install(
            ["their_echo#^2 as echo"], partition="OtherInstall", connection=orchestrator
        )
        assert clients.echo.version == "2.0.0"
        answer = clients.echo.fetch_json("/echo", method="POST", json={"x": 1})
        assert answer == {"x": 1, "partition": "OtherInstall"}
        assert str(theirs) in client.status()["client_registries"]
        # A client whose folder this machine does not see (a container, a tunnel): served
        # from the orchestrator's own bundled backends, and told so.
        unseen = tmp_path / "in-a-container" / "ywmagics" / "backends"
        monkeypatch.setattr(paths, "bundled_registry_dir", lambda: unseen)
        events: list[str] = []
        ywmagics.install(
            "demo_yw_backend",
            partition="OtherInstall",
            connection=orchestrator,
            on_event=lambda event: events.append(event.text),
        )
        resolved = next(text for text in events if "resolved to" in text)
        assert f"the bundled backends of the client's ({unseen}) are not on this machine" in (
            resolved
        )
    finally:
        client.stop(partition="OtherInstall")


@pytest.mark.slow  # an orchestrator
def test_a_kernel_in_a_folder_with_another_ywmagics_starts_an_orchestrator_of_its_own(
    tmp_path: Path,
) -> None:
    # A kernel whose folder is a checkout of another ywmagics ('python -m' looks there first),
    # with YW_HOME named relative to it.
    checkout = tmp_path / "checkout"
    (checkout / "ywmagics").mkdir(parents=True)
    for module in ("__init__.py", "__main__.py"):
        (checkout / "ywmagics" / module).write_text("raise SystemExit('the checkout ran')\n")
    kernel = tmp_path / "kernel.py"
    kernel.write_text(
        "from ywmagics.client import OrchestratorClient, connect\n"
        "connection = connect(timeout=20)\n"
        "print(connection.version, OrchestratorClient(connection).status()['version'])\n"
        "OrchestratorClient(connection).shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "YW_HOME"}
    ran = subprocess.run(
        [sys.executable, str(kernel)],
        cwd=checkout,
        env={**env, "YW_HOME": "home"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.split() == [__version__, __version__]
    assert (checkout / "home" / "run").is_dir()  # where the kernel looks for it


@pytest.mark.slow  # an orchestrator, a build
def test_an_install_under_way_keeps_an_orchestrator_from_being_taken_for_idle(
    tmp_path: Path,
) -> None:
    process, orchestrator = start_orchestrator(tmp_path / "home")  # of its own: nothing runs
    client = OrchestratorClient(orchestrator)
    request = InstallRequest.from_object(
        {
            "modules": ["slow_build"],
            "partition": "UnderWay",
            "configurations": {"slow_build": {"build": {"flavour": f"idle-{time.time()}"}}},
        }
    )
    installing = threading.Thread(target=client.install, args=(request,))
    installing.start()
    try:
        seen = []
        deadline = time.monotonic() + 10
        while installing.is_alive() and time.monotonic() < deadline:
            status = client.status()
            if status["installing"] == 1 and status["instances"] == 0:
                # Nothing runs yet, and no kernel is attached: only the install says it is used.
                seen.append(_idle(orchestrator))
                break
            time.sleep(0.01)
        assert seen == [False], "the install was not seen under way"
        installing.join(30)
        assert client.status()["installing"] == 0
    finally:
        installing.join(30)
        stop_orchestrator(process)


def test_an_orchestrator_started_of_another_ywmagics_is_ended_and_said() -> None:
    spawned = Spawned.__new__(Spawned)  # its process only: as if another ywmagics answered
    spawned.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    other = Connection("http://127.0.0.1:1", "t", spawned.process.pid, "9.9.9", PROTOCOL_VERSION)
    try:
        with pytest.raises(OrchestratorError, match=r"is ywmagics 9\.9\.9 .*not this one's"):
            spawned._of_this_version(other)
        assert spawned.process.wait(10) is not None  # ended: it would be replaced forever
        mine = Connection("http://127.0.0.1:1", "t", 1, __version__, PROTOCOL_VERSION)
        assert spawned._of_this_version(mine) is mine
    finally:
        spawned.process.kill()
        spawned.process.wait()


@pytest.mark.slow  # orchestrators, a backend
def test_an_install_sent_as_the_orchestrator_stops_goes_to_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("YW_HOME", str(home))
    monkeypatch.setenv("YW_BACKENDS_PATH", str(TEST_REGISTRY))  # for the next one too
    process, connection = start_orchestrator(home)
    client = OrchestratorClient(connection, follow=True)  # as a kernel's, found by discovery
    try:
        # Another client (a newer kernel) stops it as it is idle, just before this install.
        stopped = httpx.post(
            f"{connection.url}/shutdown", json={"if_idle": True}, headers=connection.headers
        )
        assert stopped.json() == {"stopping": True}
        [installed] = client.install(InstallRequest.from_object("node_echo", partition="Next"))
        assert process.wait(20) is not None  # the first one ended...
        assert client.connection.pid != connection.pid  # ...and the install went to the next
        assert installed["name"] == "node_echo"
        assert OrchestratorClient(client.connection).status()["instances"] == 1
    finally:
        stop_orchestrator(process)
        if client.connection.pid != connection.pid:
            OrchestratorClient(client.connection).shutdown()
