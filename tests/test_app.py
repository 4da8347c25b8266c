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
    OrchestratorStopping,
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

    async def failing(request: InstallRequest, *_: Any) -> AsyncIterator[Any]:
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
        if status == 405:
            assert answer.headers["allow"] == "POST"


def _post(client: OrchestratorClient, path: str, body: bytes) -> Any:
    headers = {**client.connection.headers, "Content-Type": "application/json"}
    return client._http.post(path, headers=headers, content=body)


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/install", b'{"modules": NaN}', "not JSON"),
        ("/install", b'{"modules": 5}', "Expected `array`, got `int` - at `$.modules`"),
        ("/install", b"[" * 100_000, "Expected `object`, got `array`"),
        ("/install", b'{"modules": ["a"], "partition": ["x"]}', "at `$.partition`"),
        ("/install", b'{"modules": ["a\\u0000b"]}', "not a valid backend name"),
        (
            "/install",
            b'{"modules": ["a"], "partition": "NL\\n"}',
            "'NL\\n' is not a valid partition",
        ),
        (
            "/install",
            b'{"modules": ["a"], "configurations": {"a": {"build": {"x": [1]}}}}',
            "$.configurations",
        ),
        ("/install", b'{"modules": ["a"], "surprise": 1}', "unknown field `surprise`"),
        ("/stop", b'{"all": "no"}', "Expected `bool`, got `str` - at `$.all`"),
        ("/stop", b'{"partition": []}', "at `$.partition`"),
        ("/stop", b'{"partition": {}}', "at `$.partition`"),
        ("/stop", b'{"partition": true}', "at `$.partition`"),
        ("/stop", b"{}", "say what to stop"),
        ("/stop", b'{"all": true, "partition": "P"}', "or all"),
        ("/stop", b'{"name": "echo\\n"}', "is not a valid backend name"),
        ("/uninstall", b'{"spec": 3}', "Expected `str`, got `int` - at `$.spec`"),
        ("/uninstall", b"{}", "missing required field `spec`"),
        ("/uninstall", b"\xff\xfe", "not JSON"),
    ],
)
def test_every_wrong_body_is_a_400_saying_what_is_wrong(
    served: tuple[OrchestratorClient, Orchestrator], path: str, body: bytes, message: str
) -> None:
    client, _ = served
    answer = _post(client, path, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] in ("SpecError", "ConfigurationError")
    assert message in error["message"], error["message"]


def test_big_bodies_and_long_specs_are_refused_before_any_work(
    served: tuple[OrchestratorClient, Orchestrator],
) -> None:
    client, orchestrator = served
    huge = b'{"modules": ["' + b" " * 300_000 + b'"]}'
    answer = _post(client, "/install", huge)
    assert answer.status_code == 413 and "larger than 256 KiB" in answer.json()["error"]["message"]
    spaces = b'{"modules": ["node_echo#1' + b" " * 40_000 + b'x"]}'
    answer = _post(client, "/install", spaces)
    assert answer.status_code == 400 and "at `$.modules[0]`" in answer.json()["error"]["message"]
    many = b'{"modules": [' + b",".join(b'"a as a%d"' % n for n in range(5_000)) + b"]}"
    answer = _post(client, "/install", many)
    assert answer.status_code == 400 and "at `$.modules`" in answer.json()["error"]["message"]
    assert orchestrator.supervisor.instances == {}


def test_an_install_on_an_unknown_cluster_is_refused_not_run_here(
    served: tuple[OrchestratorClient, Orchestrator],
) -> None:
    client, orchestrator = served
    with pytest.raises(ConfigurationError, match="no cluster 'big' to place instances on"):
        client.install(InstallRequest.from_object({"modules": ["node_echo"], "on": "big"}))
    assert not orchestrator.supervisor.instances


def test_a_shutdown_if_idle_is_decided_by_the_orchestrator_and_then_it_takes_no_new_install(
    served: tuple[OrchestratorClient, Orchestrator],
) -> None:
    client, orchestrator = served
    http, headers = client._http, client.connection.headers

    def shutdown_if_idle() -> Any:
        return http.post("/shutdown", json={"if_idle": True}, headers=headers)

    orchestrator.installs_under_way = 1  # a client between finding it and its first result
    busy = shutdown_if_idle()
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["type"] == "OrchestratorBusy"
    assert "1 install(s) under way" in busy.json()["error"]["message"]
    assert not orchestrator.stopping
    orchestrator.installs_under_way = 0
    assert shutdown_if_idle().json() == {"stopping": True}
    # An install that comes after would be killed with it: refused, so that its client goes
    # to the next orchestrator.
    with pytest.raises(OrchestratorStopping, match="takes no new install"):
        client.install(InstallRequest.from_object("node_echo"))


def test_a_stopping_orchestrator_whose_successor_cannot_be_used_says_why(
    served: tuple[OrchestratorClient, Orchestrator], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ywmagics.client import _orchestrator

    client, orchestrator = served
    client.follow = True  # as a kernel's, which found it through the discovery file
    orchestrator.stopping = True

    def the_next_one() -> Connection:  # a newer install's, say, started as this one stopped
        raise OrchestratorError("the orchestrator that runs speaks protocol 2, not 1")

    monkeypatch.setattr(_orchestrator, "connect", the_next_one)
    with pytest.raises(OrchestratorError, match="speaks protocol 2, not 1"):
        client.install(InstallRequest.from_object("node_echo"))
