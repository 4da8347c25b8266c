"""Several ywmagics installs of one user: the orchestrator publishes its version and protocol,
and a client never uses an orchestrator of another protocol silently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import ywmagics
from ywmagics import __version__, paths
from ywmagics.client import OrchestratorClient
from ywmagics.client._connect import connect, same_protocol
from ywmagics.discovery import Connection, read_discovery
from ywmagics.errors import OrchestratorError
from ywmagics.protocol import PROTOCOL_VERSION

from .conftest import start_orchestrator, stop_orchestrator


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
        assert httpx.get(f"{connection.url}/status", headers=connection.headers).status_code == 200
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
def test_an_older_orchestrator_is_replaced_once_nothing_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("YW_HOME", str(home))
    process, connection = start_orchestrator(home)
    replacement = None
    try:
        data = json.loads(paths.discovery_file().read_text())
        older = {**data, "version": "0.0.1", "protocol": PROTOCOL_VERSION - 1}
        paths.discovery_file().write_text(json.dumps(older))  # as an older install publishes
        # Busy (an instance runs on it): refused, and left alone.
        ywmagics.install("node_echo", partition="Busy", connection=connection)
        with pytest.raises(OrchestratorError, match=r"0\.0\.1"):
            connect()
        assert process.poll() is None
        OrchestratorClient(connection).stop(partition="Busy")
        # Idle: stopped, and one of this version started in its place, said.
        replacement = connect()
        assert process.wait(20) is not None  # the older one ended
        assert replacement.pid != connection.pid
        assert (replacement.version, replacement.protocol) == (__version__, PROTOCOL_VERSION)
        said = capsys.readouterr().err
        assert "ywmagics 0.0.1" in said and f"one of ywmagics {__version__}" in said
        assert OrchestratorClient(replacement).status()["protocol"] == PROTOCOL_VERSION
    finally:
        stop_orchestrator(process)
        if replacement is not None:
            OrchestratorClient(replacement).shutdown()
