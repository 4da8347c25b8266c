"""The local Slurm clusters the cluster placement is tested against (tests/slurm_cluster.py): that
they run jobs as a real cluster does, and what Slurm says and does in the cases the placement must
handle (a job that cannot start, a killed srun). Timings are printed, for benchmarks/ and for
choosing timeouts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from . import slurm_cluster
from .slurm_cluster import (
    CLUSTER_ENV,
    SlurmCluster,
    SlurmError,
    _environ,
    _netns_names,
    skip_unless_slurm,
    sweep_leftovers,
)

pytestmark = pytest.mark.slow

# pytest finds fixtures by name in the test module (or a conftest); assigned rather than imported
# so that the tests' parameters of these names do not read as redefined imports.
slurm = slurm_cluster.slurm
slurm2 = slurm_cluster.slurm2


def say(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Print past pytest's capture: the timings and Slurm's texts are what these tests report."""
    with capsys.disabled():
        print(f"\n[slurm] {text}", end="")


def submit(cluster: SlurmCluster, *args: str) -> str:
    """``sbatch --parsable ...``: the job id."""
    return cluster.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]


def pid_alive(pid: int) -> bool:
    """Running (a zombie is not: killed children of init stay zombies a while here)."""
    return slurm_cluster._alive(pid)


def wait_for_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} not written in {timeout} s")


def leftovers(folder: Path, netns: list[str]) -> list[str]:
    """What of a cluster under ``folder`` with namespaces ``netns`` still exists."""
    found = [
        f"process {pid}"
        for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
        if _environ(pid).get(CLUSTER_ENV) == str(folder.resolve()) and pid_alive(pid)
    ]
    found += [f"netns {name}" for name in netns if name in _netns_names()]
    return found


def test_no_slurm_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root or not installed: a skip saying why, but a failure when CI requires Slurm."""
    monkeypatch.setattr(slurm_cluster, "unavailable_reason", lambda nodes: "no Slurm here")
    monkeypatch.delenv(slurm_cluster.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Slurm here"):
        skip_unless_slurm(1)
    monkeypatch.setenv(slurm_cluster.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="YW_REQUIRE_SLURM is set but no Slurm here"):
        skip_unless_slurm(1)


# --- one node -----------------------------------------------------------------------------------


def test_srun_runs_on_the_node(slurm: SlurmCluster, capsys: pytest.CaptureFixture[str]) -> None:
    say(capsys, f"one node up in {slurm.up_seconds:.2f} s (session fixture)")
    started = time.monotonic()
    ran = slurm.run("srun", "-N1", "--mem=64", "hostname")
    elapsed = time.monotonic() - started
    assert ran.stdout.strip() == socket.gethostname()
    say(capsys, f"srun -N1 --mem=64 hostname: {elapsed:.3f} s")
    shown = slurm.run("srun", "--mem=64", "printenv", "SLURMD_NODENAME", "SLURM_JOB_PARTITION")
    assert shown.stdout.split() == ["n0", "debug"]


def test_partition_foo_is_a_second_partition_over_the_same_node(slurm: SlurmCluster) -> None:
    shown = slurm.run("srun", "--partition", "Foo", "--mem=64", "printenv", "SLURM_JOB_PARTITION")
    assert shown.stdout.strip() == "Foo"
    listed = slurm.run("sinfo", "-h", "-o", "%P %N").stdout.split()
    assert listed == ["debug*", "n0", "Foo", "n0"]


def test_sbatch_runs_to_completion_seen_by_scontrol(
    slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.txt"
    started = time.monotonic()
    job = submit(slurm, "--mem=64", f"--output={output}", "--wrap", "echo ran $SLURM_JOB_ID")
    shown = slurm.wait_job(job, ["COMPLETED", "FAILED", "CANCELLED"], timeout=30)
    elapsed = time.monotonic() - started
    assert shown["JobState"] == "COMPLETED", shown
    assert shown["ExitCode"] == "0:0"
    assert shown["NodeList"] == "n0"
    assert output.read_text().strip() == f"ran {job}"
    say(capsys, f"sbatch --wrap to COMPLETED in scontrol: {elapsed:.3f} s")


def test_impossible_resources_are_refused_with_slurms_reason(
    slurm: SlurmCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Slurm refuses at submission what no node of the partition could ever give: the placement
    shows this text (the second line is the one that says why)."""
    expected = {
        ("sbatch", "--mem=10T"): "Requested node configuration is not available",
        ("srun", "--mem=10T"): "Requested node configuration is not available",
        ("sbatch", "--gres=gpu:1"): "Invalid generic resource (gres) specification",
        ("srun", "--gres=gpu:1"): "Invalid generic resource (gres) specification",
        ("sbatch", "--constraint=bigmem"): "Invalid feature specification",
    }
    for (command, option), reason in expected.items():
        tail = ("--wrap", "true") if command == "sbatch" else ("true",)
        refused = slurm.run(command, option, *tail, check=False, timeout=30)
        assert refused.returncode != 0
        assert reason in refused.stderr, refused.stderr
        say(capsys, f"{command} {option}: exit {refused.returncode}: {refused.stderr.strip()!r}")
    assert slurm.run("squeue", "-h").stdout == ""


def test_jobs_that_cannot_start_stay_pending_with_a_reason(
    slurm: SlurmCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """What is accepted but does not start: more nodes than the partition has (never starts),
    and all of the node's memory taken (starts once it is free). ``squeue -h -o %r`` and
    ``scontrol show job``'s ``Reason`` give the reason the placement shows as ``queued``."""
    never = submit(slurm, "-N3", "--mem=64", "--wrap", "true")
    try:
        reason = pending_reason(slurm, never, "PartitionConfig")
        shown = slurm.job(never)
        say(capsys, f"-N3 on one node: squeue %r {reason!r}, scontrol Reason={shown['Reason']}")
        assert reason == "PartitionConfig"
    finally:
        slurm.run("scancel", never)
    slurm.wait_job(never, ["CANCELLED"])

    hog = submit(slurm, f"--mem={slurm.real_memory_mb}", "--wrap", "sleep 60")
    try:
        slurm.wait_job(hog, ["RUNNING"])
        waiting = submit(slurm, "--mem=64", "--wrap", "true")
        try:
            reason = pending_reason(slurm, waiting, "Resources")
            say(capsys, f"node's memory taken: squeue %r {reason!r}")
            assert reason == "Resources"
        finally:
            slurm.run("scancel", waiting)
    finally:
        slurm.run("scancel", hog)
    slurm.wait_job(waiting, ["CANCELLED"])
    slurm.wait_job(hog, ["CANCELLED"])


def pending_reason(cluster: SlurmCluster, job: str, expected: str) -> str:
    """The job's pending reason once it is ``expected`` (the scheduler sets it on its first pass
    over the job), or what it is after 10 s; checked to be the same in ``scontrol show job``."""
    deadline = time.monotonic() + 10
    while True:
        reason = cluster.run("squeue", "-h", "-o", "%r", "-j", job).stdout.strip()
        if reason == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    shown = cluster.job(job)
    assert shown["JobState"] == "PENDING", shown
    assert shown["Reason"] == reason, shown
    return reason


@pytest.mark.parametrize("whole_group", [False, True], ids=["srun-only", "srun-and-shepherd"])
def test_srun_killed_with_sigkill(
    slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], whole_group: bool
) -> None:
    """What a job does when its ``srun`` gets SIGKILL. ``srun`` that makes its own allocation
    forks a "shepherd" child (same process group) that cancels the job when ``srun`` dies: killing
    ``srun`` alone ends the job. Killing the process group (the shepherd too) leaves the job
    running, with Slurm's default ``InactiveLimit=0`` for ever, until ``scancel``: as does an
    orchestrator killed with -9 while its ``srun`` lives on. Hence the node shim's own lease."""
    pid_file = tmp_path / "task.pid"
    name = f"killed-{tmp_path.name}"
    srun = subprocess.Popen(
        ["srun", "--mem=64", "-J", name, "sh", "-c", f"echo $$ > {pid_file}; exec sleep 300"],
        env=slurm.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: srun and its shepherd
    )
    try:
        task_pid = int(wait_for_file(pid_file))
        job = slurm.run("squeue", "-h", "-n", name, "-o", "%i").stdout.strip()
        assert slurm.wait_job(job, ["RUNNING"])["BatchFlag"] == "0"
        time.sleep(0.5)  # past the step's launch: the state a long-running backend is in
        shepherd = [pid for pid in children(srun.pid) if "srun" in command_of(pid)]
        assert len(shepherd) == 1, "srun's shepherd child"
        if whole_group:
            os.killpg(srun.pid, signal.SIGKILL)
        else:
            srun.send_signal(signal.SIGKILL)
        srun.wait()
        time.sleep(3)
        shown = slurm.job(job)
        say(
            capsys,
            f"3 s after SIGKILL ({'group' if whole_group else 'srun only'}): "
            f"JobState={shown['JobState']} Reason={shown['Reason']}, "
            f"task {'alive' if pid_alive(task_pid) else 'gone'}",
        )
        if not whole_group:
            # The shepherd's doing: the job is cancelled, its task ended (after KillWait).
            assert shown["JobState"] in ("CANCELLED", "COMPLETING"), shown
            slurm.wait_job(job, ["CANCELLED"])
            assert wait_until_dead(task_pid, 10)
            return
        assert shown["JobState"] == "RUNNING"
        assert pid_alive(task_pid)
        started = time.monotonic()
        slurm.run("scancel", job)
        slurm.wait_job(job, ["CANCELLED"], timeout=20)
        assert wait_until_dead(task_pid, 20)
        say(capsys, f"scancel to job CANCELLED and task gone: {time.monotonic() - started:.2f} s")
    finally:
        if srun.poll() is None:
            os.killpg(srun.pid, signal.SIGKILL)
            srun.wait()


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def wait_until_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


# --- two nodes ----------------------------------------------------------------------------------


def test_second_node_runs_in_its_own_network_namespace(
    slurm2: SlurmCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    say(capsys, f"two nodes up in {slurm2.up_seconds:.2f} s (session fixture): {slurm2.addresses}")
    n0, n1 = slurm2.addresses["n0"], slurm2.addresses["n1"]
    shown = slurm2.run("srun", "-w", "n1", "--mem=64", "ip", "-4", "-o", "addr", "show").stdout
    assert f"inet {n1}/24" in shown
    assert n0 not in shown
    assert "eth0" not in shown  # not the machine's interfaces: only lo and the veth
    assert slurm2.run("srun", "-w", "n1", "printenv", "SLURMD_NODENAME").stdout.strip() == "n1"
    on_n0 = slurm2.run("srun", "-w", "n0", "--mem=64", "ip", "-4", "-o", "addr", "show").stdout
    assert f"inet {n0}/24" in on_n0
    # A node is 'completing' for a moment after a step ends there.
    deadline = time.monotonic() + 20
    while "completing" in (states := slurm2.run("sinfo", "-h", "-N", "-o", "%N %T").stdout):
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    assert states.split() == [
        *("n0", "idle", "n0", "idle", "n1", "idle", "n1", "idle")  # one line per partition
    ]


def test_server_started_on_the_second_node_is_reached_at_its_address(
    slurm2: SlurmCluster, tmp_path: Path
) -> None:
    """As a backend would be: bound on n1 (all addresses), its port written to the shared file
    system, reached from the root namespace across the veth at n1's address."""
    port_file = tmp_path / "port"
    server = textwrap.dedent(
        f"""
        import os, socket
        listener = socket.socket()
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        with open({str(port_file)!r}, "w") as f:
            f.write(f"{{listener.getsockname()[1]}}\\n")
        connection, peer = listener.accept()
        connection.sendall(f"{{os.environ['SLURMD_NODENAME']}} {{peer[0]}}".encode())
        connection.close()
        """
    )
    srun = subprocess.Popen(
        ["srun", "-w", "n1", "--mem=64", sys.executable, "-c", server],
        env=slurm2.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        port = int(wait_for_file(port_file))
        with socket.create_connection((slurm2.addresses["n1"], port), timeout=10) as connection:
            answer = connection.recv(100).decode()
        assert answer == f"n1 {slurm2.addresses['n0']}"  # came in over the veth
        _, err = srun.communicate(timeout=20)
        assert srun.returncode == 0, err
    finally:
        if srun.poll() is None:
            srun.kill()
            srun.wait()


# --- bringing clusters up and down --------------------------------------------------------------


def test_up_and_down_are_timed_and_leave_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    skip_unless_slurm(2)
    for nodes in (1, 2):
        folder = tmp_path / f"c{nodes}"
        cluster = SlurmCluster.up(folder, nodes=nodes)
        netns = list(cluster.netns.values())
        assert len(netns) == nodes - 1
        try:
            assert leftovers(folder, netns)  # the check below does see a running cluster
            job = submit(cluster, "--mem=64", "--wrap", "sleep 300")  # down() must end it
            cluster.wait_job(job, ["RUNNING"])
        finally:
            started = time.monotonic()
            cluster.down()
            down = time.monotonic() - started
        say(capsys, f"{nodes} node(s): up {cluster.up_seconds:.2f} s, down {down:.2f} s")
        assert leftovers(folder, netns) == []
        cluster.down()  # again: nothing to do, no error


def test_failed_up_leaves_nothing_and_says_why(tmp_path: Path) -> None:
    skip_unless_slurm(2)
    folder = tmp_path / "bad"
    before = set(_netns_names())
    with pytest.raises(SlurmError) as raised:
        SlurmCluster.up(folder, nodes=2, extra_conf="NoSuchOption=1")
    assert "slurmctld" in str(raised.value) and "NoSuchOption" in str(raised.value)
    made = sorted(set(_netns_names()) - before)
    assert leftovers(folder, made) == [] and made == []


def test_a_crashed_sessions_cluster_is_ended_and_swept(tmp_path: Path) -> None:
    """A test process killed without down(): its daemons end with it (setpriv --pdeathsig); a
    job's slurmstepd and task, an srun it started and the namespace stay, and the next up() (its
    sweep_leftovers()) ends them, by the markers in their environment."""
    skip_unless_slurm(2)
    folder, marker = tmp_path / "crashed", tmp_path / "crashed.json"
    task_pid_file = tmp_path / "task.pid"
    crash = textwrap.dedent(
        f"""
        import json, os, subprocess, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from tests.slurm_cluster import SlurmCluster
        cluster = SlurmCluster.up(Path({str(folder)!r}), nodes=2)
        job = cluster.run("sbatch", "--parsable", "-w", "n1", "--mem=64", "--wrap",
                          "echo $$ > {task_pid_file}; exec sleep 300").stdout.strip()
        cluster.wait_job(job, ["RUNNING"])
        srun = subprocess.Popen(["srun", "-w", "n1", "--mem=64", "sleep", "300"], env=cluster.env)
        while "RUNNING" not in cluster.run("squeue", "-h", "-o", "%T", "-j", str(int(job) + 1),
                                           check=False).stdout:
            time.sleep(0.05)
        Path({str(marker)!r}).write_text(json.dumps(
            {{"netns": list(cluster.netns.values()), "daemons": cluster.daemon_pids(),
              "srun": srun.pid}}))
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", crash], check=True, timeout=120)
    left = json.loads(marker.read_text())
    task_pid = int(wait_for_file(task_pid_file))
    deadline = time.monotonic() + 10
    while any(map(pid_alive, left["daemons"].values())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(pid_alive, left["daemons"].values())), "daemons outlived their session"
    assert pid_alive(task_pid)  # the job's task outlives slurmd, as on a real node
    assert pid_alive(left["srun"])  # and a client, orphaned
    assert leftovers(folder, left["netns"])
    removed = sweep_leftovers()
    assert f"netns {left['netns'][0]}" in removed
    assert f"process {left['srun']}" in removed
    assert leftovers(folder, left["netns"]) == []
    assert not pid_alive(task_pid)
    assert not pid_alive(left["srun"])
