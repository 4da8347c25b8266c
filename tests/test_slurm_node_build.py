"""A cluster whose nodes share no folder with the orchestrator's machine (``node_dir``): the
shim and its configuration go on srun's stdin, and the node builds the environment itself,
each step said as an event. The cluster's node runs in a mount namespace where the
orchestrator's data folder, this package and the node's own folder are hidden from each other
(tests/slurm_cluster.py, ``hidden``), so nothing here can pass by reading a shared file."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ywmagics
from ywmagics.client import BackendClient, OrchestratorClient
from ywmagics.discovery import Connection
from ywmagics.errors import StartError
from ywmagics.events import Event, EventKind

from . import slurm_cluster
from .conftest import (
    TEST_REGISTRY,
    python_or_skip,
    run_in_ipython,
    running,
    start_orchestrator,
    stop_orchestrator,
)
from .slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slow  # a Slurm cluster, an orchestrator, environments built in jobs
PACKAGE = Path(ywmagics.__file__).parent


class Unshared:
    def __init__(self, cluster: SlurmCluster, login_only: Path, node_local: Path) -> None:
        self.cluster, self.login_only, self.node_local = cluster, login_only, node_local

    def config(self, home: Path, registries: list[Path] | None = None) -> None:
        """The user's configuration: a cluster entry whose nodes build in their own folder."""
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f"registries = {[str(r) for r in registries or []]!r}\n"
            "[clusters.far]\n"
            f'slurm_conf = "{self.cluster.conf}"\n'
            f'node_dir = "{self.node_local}/$SLURM_JOB_USER/yw"\n'
            f'python = "{sys.executable}"\n'
        )


@pytest.fixture(scope="module")
def unshared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unshared]:
    slurm_cluster.skip_unless_slurm(1)
    login_only = tmp_path_factory.mktemp("login-only")  # the orchestrator's: unseen by the node
    node_local = tmp_path_factory.mktemp("node-local")  # the node's own disk: unseen here
    folder = tmp_path_factory.mktemp("slurm-unshared")
    hidden = [login_only, node_local, PACKAGE]
    with SlurmCluster.up(folder, nodes=1, hidden=hidden) as cluster:
        # The premise: the node's jobs see none of them (an empty folder in their place).
        seen = cluster.run("srun", "ls", "-A", str(login_only), str(PACKAGE)).stdout
        assert sorted(seen.split()) == sorted([f"{login_only}:", f"{PACKAGE}:"]), seen
        yield Unshared(cluster, login_only, node_local)


@pytest.fixture
def far(unshared: Unshared, tmp_path: Path) -> Iterator[tuple[Connection, Unshared]]:
    home = unshared.login_only / tmp_path.name
    unshared.config(home)
    process, connection = start_orchestrator(home)
    yield connection, unshared
    stop_orchestrator(process)


def _install_runner(
    connection: Connection, partition: str, python: str, events: list[Event]
) -> BackendClient:
    return ywmagics.install(
        {
            "modules": ["pyrun_backend as r"],
            "on": "far",
            "partition": partition,
            "configurations": {"pyrun_backend": {"build": {"python": python}}},
        },
        connection=connection,
        on_event=events.append,
    ).r


def test_the_node_builds_the_environment_and_says_each_step(
    far: tuple[Connection, Unshared],
) -> None:
    connection, unshared = far
    other = python_or_skip("3.11")
    events: list[Event] = []
    runner = _install_runner(connection, "Far", "3.11", events)
    said = [(e.kind, e.text) for e in events]
    building = [m for k, m in said if k is EventKind.BUILDING]
    assert any(m.startswith("unpacking pyrun_backend 0.1.0 on") for m in building), said
    assert any("creating a Python 3.11" in m for m in building), said
    assert any(k is EventKind.BUILT and "environment built on" in m for k, m in said), said
    kinds = [k for k, _ in said]
    assert kinds.index(EventKind.BUILDING) < kinds.index(EventKind.READY)
    answer = runner.fetch_json(
        "/run",
        method="POST",
        json={
            "cellId": "tests.node_build",
            "code": "import sys\nwhere = sys.executable\nv = sys.version",
            "capturedIn": {},
            "capturedOut": ["where", "v"],
        },
    )
    assert answer["exception"] is None, answer["exception"]
    where, version = answer["capturedOut"]["where"], answer["capturedOut"]["v"]
    assert version.startswith("3.11"), (version, other)
    # Built under the node's own folder, which this machine does not see.
    assert where.startswith(f"{unshared.node_local}/"), where
    assert not Path(where).exists()
    assert list(unshared.node_local.iterdir()) == []

    # Started again (another partition, a new job on the same node): found, not built again.
    events.clear()
    _install_runner(connection, "Again", "3.11", events)
    reused = [e.text for e in events if e.kind is EventKind.REUSED]
    assert any("already built on n0" in m for m in reused), [e.text for e in events]
    assert not [e for e in events if e.kind is EventKind.BUILDING and "creating" in e.text]
    OrchestratorClient(connection).stop(partition="Far")
    OrchestratorClient(connection).stop(partition="Again")


def test_a_python_the_node_lacks_is_a_clear_error_from_the_node(
    far: tuple[Connection, Unshared],
) -> None:
    connection, unshared = far
    with pytest.raises(StartError) as refused:
        _install_runner(connection, "Default", "3.99", [])
    assert "no Python 3.99 on node" in refused.value.message, refused.value.message
    assert "the node's build output is in its log" in refused.value.hint
    deadline = time.monotonic() + 20
    while unshared.cluster.run("squeue", "-h").stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert unshared.cluster.run("squeue", "-h").stdout.strip() == ""


def test_a_runner_built_on_the_node_takes_values_in_and_out_from_a_kernel(
    unshared: Unshared, tmp_path: Path
) -> None:
    home = unshared.login_only / f"kernel-{tmp_path.name}"
    unshared.config(home)
    env = {**unshared.cluster.env, "YW_HOME": str(home), "YW_BACKENDS_PATH": str(TEST_REGISTRY)}
    code = """
ip = get_ipython()
ip.run_line_magic("load_ext", "ywmagics")
ip.run_line_magic("backends", "install pyrun_backend as far --on far")
a = [1, 2.5, "x", {"k": None}]
ip.run_cell_magic("interpreter", "far --in a --out b", "b = a[::-1]")
assert b == [{"k": None}, "x", 2.5, 1], b
print("BACK", b)
"""
    assert "BACK" in run_in_ipython(code, env)


def test_an_orchestrator_killed_during_the_node_build_ends_the_build_and_its_job(
    unshared: Unshared, tmp_path: Path
) -> None:
    process, connection = _serving_with(unshared, tmp_path, "long_build", "sleep 97")
    building = threading.Event()

    def install() -> None:
        def on_event(event: Event) -> None:
            if event.kind is EventKind.BUILDING and event.text.startswith("install step 1/1"):
                building.set()

        with contextlib.suppress(Exception):  # its orchestrator is killed under it
            ywmagics.install(
                {"modules": ["long_build"], "on": "far"}, connection=connection, on_event=on_event
            )

    installing = threading.Thread(target=install, daemon=True)
    installing.start()
    try:
        assert building.wait(60), "the node's build never said its install step"
        assert running("sleep", "97"), "the install step is not running"
        os.kill(process.pid, signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + 30  # what the issue asks of a killed orchestrator's jobs
        while (running("sleep", "97") or _jobs(unshared)) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"build and job gone {time.monotonic() - killed:.1f} s after the kill")
        assert not running("sleep", "97"), "the node's build outlived its orchestrator"
        assert _jobs(unshared) == [], "its job outlived its orchestrator"
        # What was half built is gone from the node (only its lock file is left).
        listed = unshared.cluster.run(
            "srun", "sh", "-c", f"ls -A {unshared.node_local}/*/yw/envs/long_build/1.0.0"
        )
        assert [n for n in listed.stdout.split() if not n.endswith(".lock")] == []
    finally:
        stop_orchestrator(process)
        installing.join(30)


def _serving_with(
    unshared: Unshared, tmp_path: Path, name: str, install_step: str
) -> tuple[subprocess.Popen[bytes], Connection]:
    """An orchestrator whose registry has ``name``: the slow_build test backend with another
    install step (a shell command)."""
    registry = unshared.login_only / f"registry-{tmp_path.name}"
    shutil.copytree(TEST_REGISTRY / "slow_build", registry / name)
    manifest = registry / name / "ywbackend.toml"
    text = manifest.read_text().replace('"slow_build"', f'"{name}"')
    manifest.write_text(text.replace("sleep 0.4", install_step))
    home = unshared.login_only / tmp_path.name
    unshared.config(home, registries=[registry])
    return start_orchestrator(home)


def _jobs(unshared: Unshared) -> list[str]:
    return unshared.cluster.run("squeue", "-h", "-o", "%i").stdout.split()


def test_a_build_step_with_a_huge_line_of_output_still_installs(
    unshared: Unshared, tmp_path: Path
) -> None:
    registry = unshared.login_only / f"registry-{tmp_path.name}"
    shutil.copytree(TEST_REGISTRY / "slow_build", registry / "chatty_build")
    manifest = registry / "chatty_build" / "ywbackend.toml"
    text = manifest.read_text().replace('"slow_build"', '"chatty_build"')
    manifest.write_text(text.replace("sleep 0.4", "head -c 100000 /dev/zero | tr '\\\\0' x; echo"))
    home = unshared.login_only / tmp_path.name
    unshared.config(home, registries=[registry])
    process, connection = start_orchestrator(home)
    try:
        events: list[Event] = []
        ywmagics.install(
            {"modules": ["chatty_build"], "on": "far"},
            connection=connection,
            on_event=events.append,
        )
        long_lines = [e.text for e in events if e.text.startswith("xxxx")]
        assert long_lines and all(len(line) <= 2048 for line in long_lines)  # said, cut
    finally:
        stop_orchestrator(process)
