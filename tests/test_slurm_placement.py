"""Backends on a real Slurm cluster (tests/slurm_cluster.py): the same install, ``--on slurm``,
and everything the user sees stays the same: routing, partitions, tokens, logs, events."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import ywmagics
from ywmagics.client import OrchestratorClient
from ywmagics.discovery import Connection
from ywmagics.errors import StartError
from ywmagics.events import Event

from . import slurm_cluster
from .conftest import start_orchestrator, stop_orchestrator
from .slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slow  # a Slurm cluster, an orchestrator, jobs
slurm = slurm_cluster.slurm


@pytest.fixture
def on_slurm(
    slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Connection, SlurmCluster]]:
    """An orchestrator that places on the test cluster (its SLURM_CONF, as a user's shell has)."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    process, connection = start_orchestrator(tmp_path / "home")
    yield connection, slurm
    stop_orchestrator(process)


def _jobs(slurm: SlurmCluster) -> list[str]:
    return slurm.run("squeue", "-h", "-o", "%i %j %T").stdout.split("\n")[:-1]


def _instance(connection: Connection, partition: str) -> dict[str, object]:
    listing = OrchestratorClient(connection).listing()["instances"]
    return next(i for i in listing if i["partition"] == partition)


def test_a_backend_runs_in_a_job_and_answers_through_the_proxy(
    on_slurm: tuple[Connection, SlurmCluster],
) -> None:
    connection, slurm = on_slurm
    events: list[Event] = []
    echo = ywmagics.install(
        {"modules": ["node_echo as e"], "on": "slurm", "partition": "Job"},
        connection=connection,
        on_event=events.append,
    ).e
    assert echo.fetch_json("/echo", method="POST", json={"x": 1}) == {"x": 1, "partition": "Job"}
    facts = _instance(connection, "Job")
    assert (facts["on"], facts["node"], facts["state"]) == ("slurm", "n0", "ready")
    ((job_id, job_name, job_state),) = [line.split() for line in _jobs(slurm)]
    assert (job_id, job_state) == (facts["job"], "RUNNING") and job_name.startswith("ywmagics-b-")
    # Its calls to other backends come back through the shim, with its token: in its partition.
    ywmagics.install("node_unix", partition="Job", connection=connection)
    answer = echo.fetch_json("/call", params={"path": "/backends/node_unix/^1/"})
    assert answer["status"] == 200
    assert json.loads(answer["body"]) == {"name": "node_unix", "partition": "Job"}
    # Stopped: the job is gone.
    OrchestratorClient(connection).stop(partition="Job")
    deadline = time.monotonic() + 20
    while _jobs(slurm) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _jobs(slurm) == []


def test_impossible_resources_are_a_clear_error_with_slurms_reason(
    on_slurm: tuple[Connection, SlurmCluster],
) -> None:
    connection, slurm = on_slurm
    with pytest.raises(StartError) as refused:
        ywmagics.install(
            {"modules": ["node_echo"], "on": "slurm", "resources": {"mem": "10T"}},
            connection=connection,
        )
    assert "did not start on 'slurm'" in refused.value.message
    assert "Requested node configuration is not available" in refused.value.log_tail
    assert _jobs(slurm) == []


def test_an_orchestrator_killed_with_sigkill_leaves_no_job_behind(
    slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    process, connection = start_orchestrator(tmp_path / "home")
    try:
        ywmagics.install({"modules": ["node_echo"], "on": "slurm"}, connection=connection)
        assert len(_jobs(slurm)) == 1
        # srun's whole group too, as a kill of the orchestrator's session would: else srun's
        # own end would cancel the job, and the lease would not be what ends it.
        srun = int(_instance(connection, "Default")["pid"])  # type: ignore[call-overload]
        os.killpg(os.getpgid(srun), signal.SIGKILL)
        os.kill(process.pid, signal.SIGKILL)
        started = time.monotonic()
        while _jobs(slurm) and time.monotonic() - started < 30:
            time.sleep(0.5)
        assert _jobs(slurm) == [], "the job outlived its orchestrator by 30 s"
    finally:
        stop_orchestrator(process)


def test_a_cluster_refused_for_a_bad_resource_value_never_reaches_srun(
    on_slurm: tuple[Connection, SlurmCluster],
) -> None:
    connection, _ = on_slurm
    with httpx.Client(timeout=10) as http:
        answer = http.post(
            f"{connection.url}/install",
            headers=connection.headers,
            json={"modules": ["node_echo"], "on": "slurm", "resources": {"mem": "1G --uid=0"}},
        )
    assert answer.status_code == 400 and "is not a value a cluster takes" in answer.text
