"""Waiting for a backend to be ready: noticed promptly, without a busy loop, and a Unix socket is
only asked once its file exists."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ywmagics.events import Event, EventKind
from ywmagics.orchestrator import supervisor
from ywmagics.orchestrator.service import Orchestrator
from ywmagics.orchestrator.supervisor import POLL_FIRST, POLL_MAX, _next_poll
from ywmagics.orchestrator.upstream import UpstreamPool
from ywmagics.spec import InstallRequest

from .inprocess import LoopThread, make_orchestrator


def _polls_until(seconds: float) -> list[float]:
    """When readiness is asked for, from a start until ``seconds`` have passed."""
    times, waited = [0.0], 0.0
    while waited < seconds:
        waited += _next_poll(waited)
        times.append(waited)
    return times


@pytest.mark.parametrize("ready_at", [0.001, 0.01, 0.04, 0.056, 0.084, 0.3, 2.0, 20.0])
def test_readiness_is_noticed_at_most_five_percent_late(ready_at: float) -> None:
    # The back-off it replaces (5 ms, then x 1.5) asked at 40.6 ms, then at 66 ms and 104 ms:
    # a backend ready at 42 ms was seen at 66 ms, one ready at 67 ms at 104 ms.
    seen = next(t for t in _polls_until(ready_at + POLL_MAX) if t >= ready_at)
    assert seen - ready_at <= max(0.05 * ready_at + POLL_FIRST, POLL_FIRST) + 1e-9


def test_readiness_is_not_asked_in_a_busy_loop() -> None:
    assert _next_poll(0.0) == POLL_FIRST >= 0.001
    assert all(_next_poll(t) <= _next_poll(t + 0.1) for t in (0.0, 0.05, 0.5, 1.0, 10.0))
    assert _next_poll(3600.0) == POLL_MAX
    # A start of a minute (as a heavy backend's) is asked about at most ten times a second.
    assert len(_polls_until(1.0)) < 100 and len(_polls_until(60.0)) < 100 + 10 * 60


_LATE_SERVER = """\
import socket, sys, time
time.sleep(0.3)  # starting: no socket yet
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen()
while True:
    connection, _ = listener.accept()
    with connection:
        connection.recv(65536)
        connection.sendall(
            b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"
        )
"""


@pytest.fixture
def late_backend(tmp_path: Path) -> Path:
    """A registry with one backend that binds its Unix socket 0.3 s after it starts."""
    folder = tmp_path / "registry" / "late_socket"
    folder.mkdir(parents=True)
    (folder / "server.py").write_text(_LATE_SERVER)
    (folder / "ywbackend.toml").write_text(
        'name = "late_socket"\nversion = "1.0.0"\ndescription = "binds its socket late"\n'
        'runtime = "command"\nlisten = "unix"\n'
        f'start = ["{sys.executable}", "{{app}}/server.py", "{{socket}}"]\nready_timeout = 10\n'
    )
    return tmp_path / "registry"


@pytest.fixture
def running(tmp_path: Path, late_backend: Path) -> Iterator[tuple[Orchestrator, LoopThread]]:
    loop = LoopThread()
    orchestrator = make_orchestrator(tmp_path, registries=[late_backend])
    yield orchestrator, loop
    loop.run(orchestrator.shutdown())
    loop.close()


@pytest.mark.slow  # starts a backend
def test_a_unix_socket_is_only_asked_once_it_exists(
    running: tuple[Orchestrator, LoopThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    orchestrator, loop = running
    asked: list[bool] = []  # for each readiness request: whether the socket existed
    original = UpstreamPool.request

    async def request(self: UpstreamPool, *args: Any, **kwargs: Any) -> Any:
        asked.append(self.uds is not None and Path(self.uds).exists())
        return await original(self, *args, **kwargs)

    looks: list[float] = []

    def next_poll(waited: float) -> float:
        looks.append(waited)
        return _next_poll(waited)

    monkeypatch.setattr(UpstreamPool, "request", request)
    monkeypatch.setattr(supervisor, "_next_poll", next_poll)

    async def install() -> list[EventKind]:
        request = InstallRequest.from_object("late_socket", "P")
        return [
            item.kind async for item in orchestrator.install(request) if isinstance(item, Event)
        ]

    assert EventKind.READY in loop.run(install())
    (instance,) = orchestrator.supervisor.matching(partition="P")
    assert instance.ready
    # Asked only once its socket existed; looked at often meanwhile, but not in a busy loop.
    assert asked and all(asked)
    assert looks[-1] >= 0.29 and 10 < len(looks) < 100
