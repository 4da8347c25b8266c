"""The admin routes in-process, through the real client over an ASGI transport: the install
stream's lines, bad requests, and errors that keep their class across HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ywmagics.client import OrchestratorClient
from ywmagics.discovery import Connection
from ywmagics.errors import (
    BackendNotFound,
    ConfigurationError,
    InstanceNotFound,
    OrchestratorError,
    SpecError,
)
from ywmagics.events import Event, EventKind
from ywmagics.orchestrator.service import Orchestrator
from ywmagics.spec import InstallRequest

from .inprocess import BASE, TOKEN, LoopThread, make_app, sync_client


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[OrchestratorClient, Orchestrator]]:
    loop = LoopThread()
    app, orchestrator = make_app(tmp_path)
    yield OrchestratorClient(Connection(BASE, TOKEN), http=sync_client(app, loop)), orchestrator
    loop.close()


def test_install_errors_come_back_as_their_class_with_the_events_before_them(
    served: tuple[OrchestratorClient, Orchestrator],
) -> None:
    client, _ = served
    with pytest.raises(BackendNotFound, match="unknown backend 'nope'") as unknown:
        client.install(InstallRequest.from_object("nope"))
    assert "node_echo" in unknown.value.hint
    events: list[Event] = []
    request = InstallRequest.from_object(
        {"modules": ["node_echo"], "configurations": {"node_echo": {"build": {"colour": "red"}}}}
    )
    with pytest.raises(ConfigurationError, match="has no build option 'colour'"):
        client.install(request, events.append)
    with pytest.raises(BackendNotFound, match="no version of 'versions_demo' matches '\\^9'"):
        client.install(InstallRequest.from_object("versions_demo#^9"), events.append)
    assert events == []  # nothing was resolved: nothing was said to be


def test_a_fault_in_the_install_stream_is_the_orchestrators_error(
    served: tuple[OrchestratorClient, Orchestrator],
) -> None:
    client, orchestrator = served

    async def failing(request: InstallRequest) -> AsyncIterator[Any]:
        yield Event(EventKind.RESOLVED, "node_echo", "1.0.0", "P", "resolved", 0.05)
        raise RuntimeError("a bug of ours, mid-stream")

    orchestrator.install = failing  # type: ignore[method-assign]
    events: list[Event] = []
    with pytest.raises(OrchestratorError, match="internal error in the orchestrator") as raised:
        client.install(InstallRequest.from_object("node_echo"), events.append)
    assert "RuntimeError: a bug of ours, mid-stream" in raised.value.message
    assert [e.kind for e in events] == [EventKind.RESOLVED]  # what came before is kept


def test_bad_admin_requests_are_clear(served: tuple[OrchestratorClient, Orchestrator]) -> None:
    client, _ = served
    with pytest.raises(SpecError, match="say what to stop"):
        client.stop()
    with pytest.raises(SpecError, match="not a valid partition id"):
        client.stop(partition="../etc")
    with pytest.raises(SpecError, match="'lines' must be a whole number of at least 1"):
        client.logs("node_echo", lines=0)
    with pytest.raises(InstanceNotFound, match="no instance of 'node_echo' in partition 'P'"):
        client.logs("node_echo", partition="P")
    with pytest.raises(SpecError, match="not a valid backend name"):
        client.logs("..", partition="P")
    with pytest.raises(BackendNotFound, match="no installed environment matches 'node_echo'"):
        client.uninstall("node_echo")
    assert client.stop(all=True) == []
    assert client.listing()["instances"] == []


def test_the_routers_own_refusals_are_the_orchestrators(
    served: tuple[OrchestratorClient, Orchestrator],
) -> None:
    client, _ = served
    http = client._http
    for method, path, status in [("GET", "/nope", 404), ("GET", "/stop", 405)]:
        answer = http.request(method, path, headers=client.connection.headers)
        assert answer.status_code == status
        error = answer.json()["error"]
        assert error["type"] == "OrchestratorError" and path in error["message"]
        assert "/install" in error["hint"]
