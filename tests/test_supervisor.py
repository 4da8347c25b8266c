"""The supervisor with real processes, driven in-process: races between stops and requests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from ywmagics.orchestrator.processes import has_exited
from ywmagics.orchestrator.service import Orchestrator
from ywmagics.spec import InstallRequest

from .inprocess import LoopThread, make_orchestrator

pytestmark = pytest.mark.slow  # starts backends


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Orchestrator, LoopThread]]:
    loop = LoopThread()
    orchestrator = make_orchestrator(tmp_path)
    yield orchestrator, loop
    loop.run(orchestrator.shutdown())
    loop.close()


async def _install(orchestrator: Orchestrator, partition: str) -> None:
    async for _ in orchestrator.install(InstallRequest.from_object("slow_stop", partition)):
        pass


def _pids(orchestrator: Orchestrator) -> set[int]:
    return {i.process.pid for i in orchestrator.supervisor.instances.values() if i.process}


def test_a_request_during_a_stop_never_leaves_an_untracked_process(
    running: tuple[Orchestrator, LoopThread],
) -> None:
    orchestrator, loop = running

    async def race() -> tuple[int, object]:
        await _install(orchestrator, "Race")
        (old,) = orchestrator.supervisor.matching(partition="Race")
        assert old.process is not None
        stopping = asyncio.ensure_future(orchestrator.stop("Race", None, None))
        await asyncio.sleep(0.1)  # the old process is ending (it takes a second)
        found = await orchestrator.instance_for("Race", "slow_stop", "1.0.0")
        await stopping
        return old.process.pid, found

    old_pid, found = loop.run(race())
    assert has_exited(old_pid)
    tracked = orchestrator.supervisor.matching(partition="Race")
    # The request got an instance the supervisor knows, running a new process.
    assert tracked == [found] and found.process is not None and not has_exited(found.process.pid)
    live = _pids(orchestrator)
    loop.run(orchestrator.shutdown())
    assert all(has_exited(pid) for pid in live | {found.process.pid})


def test_an_install_during_a_stop_is_tracked(running: tuple[Orchestrator, LoopThread]) -> None:
    orchestrator, loop = running

    async def race() -> None:
        await _install(orchestrator, "Race2")
        stopping = asyncio.ensure_future(orchestrator.stop("Race2", None, None))
        await asyncio.sleep(0.1)
        await _install(orchestrator, "Race2")
        await stopping

    loop.run(race())
    (instance,) = orchestrator.supervisor.matching(partition="Race2")
    assert instance.ready and instance.process is not None
    assert not has_exited(instance.process.pid)
