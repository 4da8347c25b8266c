"""Backends on a real Slurm cluster (tests/slurm_cluster.py): the same install, ``--on slurm``,
and everything the user sees stays the same: routing, partitions, tokens, logs, events."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import ywmagics
from ywmagics.client import OrchestratorClient
from ywmagics.commands import format_listing
from ywmagics.discovery import Connection, pid_alive
from ywmagics.errors import StartError
from ywmagics.events import Event

from . import slurm_cluster
from .conftest import TEST_REGISTRY, run_in_ipython, start_orchestrator, stop_orchestrator
from .slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slow  # a Slurm cluster, an orchestrator, jobs
slurm = slurm_cluster.slurm


@pytest.fixture
def on_slurm(
    slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Connection, SlurmCluster]]:
    process, connection = _serving(slurm, tmp_path / "home", monkeypatch)
    yield connection, slurm
    stop_orchestrator(process)


def _serving(
    cluster: SlurmCluster, home: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[subprocess.Popen[bytes], Connection]:
    """An orchestrator that places on ``cluster`` (its SLURM_CONF, as a user's shell has)."""
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    return start_orchestrator(home)


def _jobs(slurm: SlurmCluster) -> list[str]:
    return slurm.run("squeue", "-h", "-o", "%i %j %T").stdout.split("\n")[:-1]


def _hold_the_node(slurm: SlurmCluster) -> str:
    """The id of a running job that holds all the node's memory: the next ones wait."""
    blocker = slurm.run(
        "sbatch", "--parsable", f"--mem={slurm.real_memory_mb}", "--wrap", "sleep 120"
    ).stdout.strip()
    slurm.wait_job(blocker, ["RUNNING"])
    return blocker


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
    assert facts["reachable_by"] == "every user of its node (TCP on the node's loopback)"
    assert facts["listen"] == "on its node, behind its shim"
    ((job_id, job_name, job_state),) = [line.split() for line in _jobs(slurm)]
    assert (job_id, job_state) == (facts["job"], "RUNNING") and job_name.startswith("ywmagics-")
    listed = format_listing(OrchestratorClient(connection).listing())
    assert f"slurm job {job_id} on n0" in listed  # what 'ywmagics list' prints
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
    process, connection = _serving(slurm, tmp_path / "home", monkeypatch)
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


slurm2 = slurm_cluster.slurm2


def test_on_the_second_node_a_runner_takes_values_in_and_out(
    slurm2: SlurmCluster, tmp_path: Path
) -> None:
    # n1 is in a network namespace of its own: the orchestrator reaches its shim across the
    # veth pair, at the address the shim said, as on a real cluster.
    home = tmp_path / "home"
    env = {**slurm2.env, "YW_HOME": str(home), "YW_BACKENDS_PATH": str(TEST_REGISTRY)}
    code = """
import numpy as np
ip = get_ipython()
ip.run_line_magic("load_ext", "ywmagics")
ip.run_line_magic("backends", "install pyrun_backend as big --on slurm --resources nodelist=n1 "
    "--config pyrun_backend.build.modules=numpy")
a = np.arange(12.0).reshape(3, 4)
ip.run_cell_magic("interpreter", "big --in a --out b node", (
    "import os\\nb = a.T * 2\\nnode = os.environ.get('SLURMD_NODENAME')"))
assert (b == a.T * 2).all() and b.dtype == a.dtype, b
print("ON", node)
"""
    assert "ON n1" in run_in_ipython(code, env)
    deadline = time.monotonic() + 20  # COMPLETING for a moment
    while slurm2.run("squeue", "-h").stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert slurm2.run("squeue", "-h").stdout.strip() == ""  # its job ended with it


def test_a_job_that_waits_says_so_with_slurms_reason_then_starts(
    on_slurm: tuple[Connection, SlurmCluster],
) -> None:
    import threading

    connection, slurm = on_slurm
    # Another job holds all the node's memory: ours waits for it (reason: Resources).
    blocker = _hold_the_node(slurm)
    events: list[Event] = []
    done: list[object] = []

    def install() -> None:
        try:
            done.append(
                ywmagics.install(
                    {"modules": ["node_echo as e"], "on": "slurm", "partition": "Waits"},
                    connection=connection,
                    on_event=events.append,
                ).e
            )
        except Exception as error:  # said by the assertion below
            done.append(error)

    installing = threading.Thread(target=install, daemon=True)
    installing.start()
    deadline = time.monotonic() + 30
    while not any(e.kind.value == "queued" for e in events) and time.monotonic() < deadline:
        time.sleep(0.1)
    queued = [e for e in events if e.kind.value == "queued"]
    assert queued and "pending" in queued[0].text and "(Resources)" in queued[0].text, events
    assert queued[0].text.startswith("job ")
    slurm.run("scancel", blocker)
    installing.join(60)
    (echo,) = done
    assert not isinstance(echo, Exception), echo
    assert echo.fetch_json("/echo", method="POST", json={}) == {"partition": "Waits"}  # type: ignore[attr-defined]
    steps = [(e.kind.value, e.text) for e in events]
    started = next(
        i for i, (kind, text) in enumerate(steps) if (kind, text) == ("starting", "starting")
    )
    queued_at = next(i for i, (kind, _) in enumerate(steps) if kind == "queued")
    ready_at = next(i for i, (kind, _) in enumerate(steps) if kind == "ready")
    assert queued_at < started < ready_at, steps
    # node_echo listens on TCP: on a node, every user of the node can reach that port; said.
    assert any("every user of that node" in text for _, text in steps)


def test_a_job_left_waiting_by_a_killed_orchestrator_is_cancelled_by_the_next(
    slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed with its srun while the job waited in the queue: the job would start later for
    # nobody (its lease would end it then, after it took the node for nothing).
    import threading

    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    blocker = _hold_the_node(slurm)
    try:
        process, connection = start_orchestrator(tmp_path / "home")
        try:
            queued = threading.Event()

            def install() -> None:
                with contextlib.suppress(Exception):  # its orchestrator is killed under it
                    ywmagics.install(
                        {"modules": ["node_echo"], "on": "slurm"},
                        connection=connection,
                        on_event=lambda e: queued.set() if e.kind.value == "queued" else None,
                    )

            threading.Thread(target=install, daemon=True).start()
            assert queued.wait(30)
            srun = int(_instance(connection, "Default")["pid"])  # type: ignore[call-overload]
            os.killpg(os.getpgid(srun), signal.SIGKILL)
            os.kill(process.pid, signal.SIGKILL)
            waiting = [line for line in _jobs(slurm) if "PENDING" in line]
            assert len(waiting) == 1  # left in the queue
            (jobs_folder,) = {p.parent for p in (tmp_path / "home").rglob("jobs/*.json")}
        finally:
            stop_orchestrator(process)
        process, connection = start_orchestrator(tmp_path / "home")
        try:
            deadline = time.monotonic() + 20
            while len(_jobs(slurm)) > 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert [line.split()[0] for line in _jobs(slurm)] == [blocker]
            # Its configuration file (a shim's key, an instance token) is gone too.
            deadline = time.monotonic() + 10
            while list(jobs_folder.glob("*.json")) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert list(jobs_folder.glob("*.json")) == []
        finally:
            stop_orchestrator(process)
    finally:
        slurm.run("scancel", blocker)


def test_a_websocket_reaches_a_backend_on_the_second_node_over_the_shims_tls(
    slurm2: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It went in plain text to 127.0.0.1:<the shim's port> on this machine, where any local
    # user could listen.
    from websockets.sync.client import connect

    process, connection = _serving(slurm2, tmp_path / "home", monkeypatch)
    try:
        ywmagics.install(
            {"modules": ["ws_echo"], "on": "slurm", "partition": "Ws", "resources": "nodelist=n1"},
            connection=connection,
        )
        assert str(_instance(connection, "Ws")["address"]).startswith(slurm2.addresses["n1"])
        base = connection.url.replace("http://", "ws://") + "/backends/ws_echo/^1"
        headers = {**connection.headers, "X-Backends-Partition": "Ws"}
        with connect(f"{base}/echo", additional_headers=headers) as ws:
            json.loads(ws.recv())  # its hello
            ws.send("text")
            assert ws.recv() == "text"
    finally:
        stop_orchestrator(process)


def _shim_of_job(job_id: str) -> int:
    """The pid of the node shim that runs in job ``job_id``."""
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"node_shim.py" in command and f"SLURM_JOB_ID={job_id}".encode() in environ:
            return pid
    raise AssertionError(f"no node shim in job {job_id}")


def test_a_shim_killed_takes_its_backend_and_the_next_request_starts_a_new_one(
    on_slurm: tuple[Connection, SlurmCluster],
) -> None:
    # SIGKILLed (an OOM kill), the shim left its backend running (with its token, in a session
    # of its own) and srun waiting on its output: the instance stayed 'ready' with nothing
    # behind it, and every request was refused.
    connection, _ = on_slurm
    echo = ywmagics.install(
        {"modules": ["node_echo as e"], "on": "slurm", "partition": "Killed"},
        connection=connection,
    ).e
    facts = _instance(connection, "Killed")
    shim = _shim_of_job(str(facts["job"]))
    backend = int(Path(f"/proc/{shim}/task/{shim}/children").read_text().split()[0])
    os.kill(shim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while pid_alive(backend) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(backend)  # it went with its shim
    while _instance(connection, "Killed")["state"] == "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _instance(connection, "Killed")["state"] == "crashed"
    assert echo.fetch_json("/echo", method="POST", json={}) == {"partition": "Killed"}
    assert _instance(connection, "Killed")["job"] != facts["job"]  # a new job


def test_a_stop_gives_the_backend_its_grace_and_leaves_nothing_on_the_node(
    on_slurm: tuple[Connection, SlurmCluster],
) -> None:
    # srun turns SIGTERM into SIGKILL for its job: the backend had no grace, and the shim,
    # killed too, left its private folder on the node at every stop.
    import glob
    import tempfile

    connection, _ = on_slurm
    pattern = os.path.join(tempfile.gettempdir(), "yw-shim-*")
    before = set(glob.glob(pattern))
    ywmagics.install(
        {"modules": ["slow_stop"], "on": "slurm", "partition": "Grace"}, connection=connection
    )
    assert set(glob.glob(pattern)) - before  # the shim's folder, while it runs
    log = Path(str(_instance(connection, "Grace")["log"]))
    started = time.monotonic()
    OrchestratorClient(connection).stop(partition="Grace")
    took = time.monotonic() - started
    assert took >= 0.9, f"stopped in {took:.2f} s: no grace (it ends 1 s after SIGTERM)"
    assert set(glob.glob(pattern)) <= before
    last_run = log.read_text().split("--- start")[-1]
    assert "forcing job termination" not in last_run and "Killed" not in last_run, last_run


def test_a_stop_while_the_job_waits_in_the_queue_cancels_it_at_once(
    on_slurm: tuple[Connection, SlurmCluster],
) -> None:
    # The stop waited for the start, which waited for the queue: the unwanted backend started
    # first, once the node was free.
    import threading

    connection, slurm = on_slurm
    blocker = _hold_the_node(slurm)
    try:
        queued = threading.Event()
        outcome: list[BaseException | None] = []

        def install() -> None:
            try:
                ywmagics.install(
                    {"modules": ["node_echo"], "on": "slurm", "partition": "Unwanted"},
                    connection=connection,
                    on_event=lambda e: queued.set() if e.kind.value == "queued" else None,
                )
                outcome.append(None)
            except BaseException as error:
                outcome.append(error)

        installing = threading.Thread(target=install, daemon=True)
        installing.start()
        assert queued.wait(30)
        started = time.monotonic()
        OrchestratorClient(connection).stop(partition="Unwanted")
        assert time.monotonic() - started < 10
        installing.join(20)
        (error,) = outcome
        assert isinstance(error, StartError)
        assert "was stopped while its job waited in the queue" in error.message
        assert [line.split()[0] for line in _jobs(slurm)] == [blocker]
    finally:
        slurm.run("scancel", blocker)


def test_a_cluster_whose_slurm_conf_is_missing_says_so_at_once(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'[clusters.gone]\nslurm_conf = "{tmp_path}/no.conf"\n')
    process, connection = start_orchestrator(home)
    try:
        started = time.monotonic()
        with pytest.raises(StartError) as refused:
            ywmagics.install({"modules": ["node_echo"], "on": "gone"}, connection=connection)
        assert time.monotonic() - started < 10  # srun would wait about a minute, then say little
        assert f"its slurm_conf {tmp_path}/no.conf is not a file" in refused.value.message
        assert "[clusters.gone] of config.toml" in refused.value.hint
    finally:
        stop_orchestrator(process)


def test_a_request_starts_a_stopped_backend_where_and_as_it_was_installed(
    on_slurm: tuple[Connection, SlurmCluster],
) -> None:
    connection, slurm = on_slurm
    echo = ywmagics.install(
        {
            "modules": ["node_echo as e"],
            "on": "slurm",
            "partition": "Again",
            "resources": {"time": "00:07:00"},
        },
        connection=connection,
    ).e
    OrchestratorClient(connection).stop(partition="Again")
    deadline = time.monotonic() + 20
    while _jobs(slurm) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _jobs(slurm) == []
    # A request starts it again: in a job, with the time limit it was installed with.
    assert echo.fetch_json("/echo", method="POST", json={"x": 2}) == {"x": 2, "partition": "Again"}
    ((job_id, _, _),) = [line.split() for line in _jobs(slurm)]
    assert slurm.job(job_id)["TimeLimit"] == "00:07:00"
    OrchestratorClient(connection).stop(partition="Again")
