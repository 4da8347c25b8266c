"""A real Slurm cluster (Debian's ``slurm-wlm`` and ``munge``) brought up by the tests, as root.

Everything lives under one folder (keys, sockets, state, spool, logs, ``slurm.conf``); nothing under
``/etc`` is read or changed. One node runs on loopback; with two, node ``n1`` runs in a network
namespace of its own joined to the root one by a veth pair, so a backend on ``n1`` must bind a
routable address and is reached across an interface, as on a real cluster (the file system stays
shared, as on HPC).

The daemons run in the foreground as children of the test process, so their PIDs are known without
PID files, and each carries two markers in its environment (``YW_SLURM_OWNER``: which test process
started it; ``YW_SLURM_CLUSTER``: which folder), so that ``down()`` and the next session's
``sweep_leftovers()`` find everything a cluster started, even after a crash, without touching the
clusters of other sessions running on the same machine.

Fixtures: ``slurm`` (one node) and ``slurm2`` (two nodes), both session-scoped, skipped only when
not root or Slurm is not installed, and failed instead when ``YW_REQUIRE_SLURM`` is set (CI). To use
them, import them into ``conftest.py`` (``from .slurm_cluster import slurm, slurm2  # noqa: F401``)
or assign them in a test module (``slurm = slurm_cluster.slurm``: an import would make ruff read
the tests' parameters of the same name as redefinitions).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest

# When set (to anything but "" or "0"), a machine without Slurm fails the cluster tests instead of
# skipping them: CI sets it, so that a skipped cluster test can never pass for a tested one.
REQUIRE_ENV = "YW_REQUIRE_SLURM"
# Markers put in each daemon's environment (and so inherited by slurmstepd), see the module text;
# the owner one is in ``SlurmCluster.env`` too, so clients started with it are swept as well.
OWNER_ENV = "YW_SLURM_OWNER"
CLUSTER_ENV = "YW_SLURM_CLUSTER"

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "srun", "sbatch", "squeue", "scontrol", "scancel")
# Needed only for two nodes: namespaces and veth pairs (iproute2), entering one (util-linux).
NETWORK_TOOLS = ("ip", "nsenter")
# util-linux, to have the daemons ended by the kernel if the test process dies without down().
SETPRIV = "setpriv"

# Our naming scheme, so leftovers of a crashed run can be recognised (and only those):
# namespace "ywslurm-<pid>-<starttime>-<n>" of the test process that made it, veth pair
# "yws<X>a"/"yws<X>b" for the subnet 10.254.<X>.0/24 (interface names have at most 15 characters).
NETNS_PREFIX = "ywslurm"
NETNS_PATTERN = re.compile(rf"^{NETNS_PREFIX}-(\d+)-(\d+)-\d+$")
SUBNET_BASE = "10.254"

# Each node is given the machine's CPUs (OverSubscribe lets jobs share them) and a share of half
# its memory: slurmd drains a node whose configuration claims more than the machine has.
CPUS = os.cpu_count() or 1
DEFAULT_MEM_PER_CPU_MB = 256

_clusters_made = 0  # numbers the namespaces made by this process


class SlurmError(RuntimeError):
    """The cluster did not come up (the message has the tail of the daemons' logs), or did not
    go down cleanly."""


# --- what this machine has ----------------------------------------------------------------------


def missing_binaries(nodes: int = 1) -> list[str]:
    """The programs a cluster of ``nodes`` needs that are not on PATH (daemons are in /usr/sbin,
    which a non-login root shell may not have on PATH: looked for there too)."""
    wanted = [*DAEMONS, *CLIENTS, SETPRIV, *(NETWORK_TOOLS if nodes > 1 else ())]
    return [name for name in wanted if _which(name) is None]


def unavailable_reason(nodes: int = 1) -> str | None:
    """Why no cluster of ``nodes`` can be brought up here, or None. Only these two reasons may
    skip a test: anything else going wrong is a failure."""
    if os.geteuid() != 0:
        return "a local Slurm cluster needs root (slurmd runs jobs as their users)"
    missing = missing_binaries(nodes)
    if missing:
        return (
            f"Slurm is not installed here (missing: {', '.join(missing)}); "
            "apt-get install -y --no-install-recommends slurm-wlm munge (as .ci/run does)"
        )
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


# --- processes ----------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat): with the PID, names one
    process for good, where a PID alone may have been reused since."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields are counted after it.
    return stat.rsplit(")", 1)[1].split()[19]


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or a kernel thread
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _with_descendants(roots: set[int]) -> set[int]:
    """``roots`` and every process below them (the tasks of a job are children of its
    slurmstepd, and carry the environment the job was given, not our markers)."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        parent = _parent_of(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def _owner_token(pid: int) -> str:
    return f"{pid}:{_start_time(pid)}"


def _owner_alive(pid: int, start_time: str) -> bool:
    return _start_time(pid) == start_time


def _kill_all(pids: set[int], timeout: float = 5.0) -> set[int]:
    """SIGTERM, then SIGKILL what is left after ``timeout``; return what is still alive after
    that (should be nothing)."""
    pids = {pid for pid in pids if pid != os.getpid()}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if _alive(pid)}
            time.sleep(0.05)
    return pids


def _alive(pid: int) -> bool:
    """Alive and not a zombie (a killed daemon stays a zombie until its parent, maybe us, reaps
    it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [_which("ip") or "ip", *args], capture_output=True, text=True, check=False, timeout=30
    )
    if check and done.returncode != 0:
        raise SlurmError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _netns_names() -> list[str]:
    listed = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def _netns_pids(name: str) -> set[int]:
    listed = _ip("netns", "pids", name, check=False).stdout
    return {int(word) for word in listed.split() if word.isdigit()}


def sweep_leftovers() -> list[str]:
    """End what crashed runs of these tests left (daemons, jobs' processes, namespaces), and only
    that: things of our naming scheme whose test process is gone. Returns what was removed."""
    removed: list[str] = []
    stale: set[int] = set()
    # Never this process or its parents, whatever environment they were started with.
    spared, pid = set(), os.getpid()
    while pid and pid not in spared:
        spared.add(pid)
        pid = _parent_of(pid) or 0
    for pid in set(_all_pids()) - spared:
        token = _environ(pid).get(OWNER_ENV)
        if token and ":" in token:
            owner, started = token.split(":", 1)
            if owner.isdigit() and not _owner_alive(int(owner), started):
                stale.add(pid)
    names = _netns_names() if _which("ip") else []
    stale_netns = []
    for name in names:
        match = NETNS_PATTERN.match(name)
        if match and not _owner_alive(int(match.group(1)), match.group(2)):
            stale_netns.append(name)
            stale |= _netns_pids(name)
    if stale:
        everything = _with_descendants(stale) - spared
        _kill_all(everything)
        removed += [f"process {pid}" for pid in sorted(everything)]
    for name in stale_netns:
        # Deleting the namespace destroys the veth end inside it, hence the pair.
        _ip("netns", "del", name, check=False)
        removed.append(f"netns {name}")
    return removed


# --- the cluster --------------------------------------------------------------------------------


def _free_port(taken: Sequence[int] = ()) -> int:
    """A port free right now, below the ephemeral range (so no client's outgoing connection
    takes it between our choice and the daemon's bind), drawn at random (so two sessions rarely
    try the same one; a daemon that still loses the race makes ``up()`` retry with new ports)."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        if port in taken:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise SlurmError("no free port found between 20000 and 32000")


def _subnets_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine has an address or a route in (but the default route)."""
    found = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        words = line.split()
        if "inet" in words:
            found.append(ipaddress.IPv4Network(words[words.index("inet") + 1], strict=False))
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "unicast", "multicast", "anycast"):
            words = words[1:]
        if words and words[0] != "default":
            with contextlib.suppress(ValueError):  # a route type we do not know of
                found.append(ipaddress.IPv4Network(words[0], strict=False))
    return found


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"--- {path.name}: (none)"
    return "\n".join([f"--- {path.name} (last {lines} lines)", *text[-lines:]])


class SlurmCluster:
    """A running private Slurm cluster; ``SlurmCluster.up(folder, nodes)`` starts one and
    ``down()`` (or leaving a ``with`` block) removes every daemon, job, namespace and veth.

    Attributes: ``folder``; ``conf`` (the ``slurm.conf``, to be given as ``SLURM_CONF``); ``env``
    (``os.environ`` without inherited ``SLURM_*`` variables, plus ``SLURM_CONF`` and the owner
    marker; computed on each access, so later changes to ``os.environ`` are in it); ``nodes``
    (``["n0"]`` or ``["n0", "n1"]``); ``addresses`` (node -> IPv4 address its slurmd and jobs
    use: 127.0.0.1, or 10.254.X.1 and 10.254.X.2); ``controller_address``;
    ``partitions`` (``["debug", "Foo"]``, the first the default, both over every node);
    ``netns`` (node -> network namespace name, for n1) and ``netns_path(node)``;
    ``ports`` (``{"slurmctld": ..., "slurmd": ...}``); ``real_memory_mb`` and ``cpus`` per node;
    ``log_dir``; ``up_seconds`` (how long ``up()`` took)."""

    def __init__(self, folder: Path, nodes: int) -> None:
        if nodes not in (1, 2):
            raise ValueError("a local cluster has 1 or 2 nodes")
        self.folder = folder.resolve()
        self.conf = self.folder / "slurm.conf"
        self.log_dir = self.folder / "log"
        self.nodes = [f"n{i}" for i in range(nodes)]
        self.partitions = ["debug", "Foo"]
        self.addresses: dict[str, str] = {}
        self.controller_address = "127.0.0.1"
        self.netns: dict[str, str] = {}
        self.hidden: list[Path] = []
        self.ports: dict[str, int] = {}
        self.cpus = CPUS
        # Half of the machine, shared by the nodes, so that slurmd never finds less memory than
        # configured (it would drain the node) and other users of the machine keep theirs.
        self.real_memory_mb = _mem_total_mb() // 2 // nodes
        self.up_seconds = 0.0
        self._veth: str | None = None
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._owner = _owner_token(os.getpid())

    # --- public API -----------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        folder: Path,
        nodes: int = 1,
        *,
        timeout: float = 30.0,
        inactive_limit: int = 0,
        extra_conf: str = "",
        hidden: Sequence[Path] = (),
    ) -> SlurmCluster:
        """Start a cluster of ``nodes`` (1 or 2) under ``folder`` and wait until every node is
        idle (at most ``timeout`` s; then raise ``SlurmError`` with the daemons' log tails).
        ``inactive_limit`` is Slurm's ``InactiveLimit``: 0 (Slurm's default, and that of many
        sites), so a job whose ``srun`` was killed keeps running until something else ends it;
        a limit of 30 s or less would hide a missing node-side lease. ``extra_conf`` is appended
        to ``slurm.conf``. ``hidden`` folders are not seen by the nodes (nor by their jobs): each
        is an empty tmpfs in the nodes' own mount namespace, as on a cluster that shares no
        folder with the login node. On any failure everything started is removed before
        raising."""
        sweep_leftovers()
        cluster = cls(folder, nodes)
        cluster.hidden = [Path(h) for h in hidden]
        started = time.monotonic()
        try:
            for attempt in range(3):
                try:
                    cluster._start(timeout, inactive_limit, extra_conf)
                    break
                except _PortTaken:
                    # Another session took a port between our choice and the daemon's bind.
                    cluster._stop_daemons()
                    # Keep the logs to read, but not their "Address already in use".
                    for log in cluster.log_dir.glob("*"):
                        log.rename(log.with_name(f"{log.name}.{attempt}"))
                    if attempt == 2:
                        raise SlurmError(
                            "ports kept being taken:\n" + cluster.logs_tail()
                        ) from None
        except BaseException:
            cluster.down()
            raise
        cluster.up_seconds = time.monotonic() - started
        return cluster

    @property
    def env(self) -> dict[str, str]:
        # Inherited SLURM_* variables (tests run inside a job on a real cluster) would make srun
        # and sbatch act on that job and cluster instead of this one. The owner marker lets the
        # next session's sweep end the clients (an srun) of a session that crashed.
        base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        return {**base, "SLURM_CONF": str(self.conf), OWNER_ENV: self._owner}

    def netns_path(self, node: str) -> str | None:
        """The path ``nsenter --net=`` takes for ``node``'s namespace (None: the root one)."""
        name = self.netns.get(node)
        return f"/run/netns/{name}" if name else None

    def run(
        self, *args: str, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client (``sinfo``, ``srun``, ...) against this cluster."""
        return subprocess.run(
            [_which(args[0]) or args[0], *args[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            cwd=self.folder,
        )

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (empty when Slurm no longer knows the job: it forgets
        ended ones ``MinJobAge`` s after their end)."""
        shown = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        if shown.returncode != 0:
            return {}
        return parse_scontrol(shown.stdout)

    def wait_job(self, job_id: str, states: Sequence[str], timeout: float = 30.0) -> dict[str, str]:
        """Poll ``scontrol show job`` until its ``JobState`` is one of ``states``; return it."""
        deadline = time.monotonic() + timeout
        shown: dict[str, str] = {}
        while time.monotonic() < deadline:
            shown = self.job(job_id)
            if shown.get("JobState") in states:
                return shown
            time.sleep(0.05)
        raise SlurmError(f"job {job_id} not in {list(states)} after {timeout} s: {shown}")

    def daemon_pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self._processes.items()}

    def logs_tail(self, lines: int = 25) -> str:
        return "\n".join(_tail(path, lines) for path in sorted(self.log_dir.glob("*")))

    def down(self, timeout: float = 15.0) -> None:
        """Cancel every job, end every daemon and process the cluster started, remove its
        namespace (hence its veth pair). Safe to call more than once and after a failed
        ``up()``; raises ``SlurmError`` afterwards if something could not be removed."""
        problems: list[str] = []
        ctld = self._processes.get("slurmctld")
        if ctld is not None and ctld.poll() is None and self.conf.exists():
            # Jobs first, through Slurm: slurmstepd then ends the tasks the way Slurm does.
            self.run("scancel", "--quiet", "--full", "--user=root", check=False, timeout=20)
            deadline = time.monotonic() + timeout / 2
            while time.monotonic() < deadline:
                queue = self.run("squeue", "-h", "-o", "%i", check=False, timeout=20)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.1)
        self._stop_daemons()
        # What survives the daemons: slurmstepd (it outlives slurmd by design) and its tasks,
        # and anything left in the namespace.
        ours = {pid for pid in _all_pids() if _environ(pid).get(CLUSTER_ENV) == str(self.folder)}
        for name in self.netns.values():
            ours |= _netns_pids(name)
        left = _kill_all(_with_descendants(ours))
        if left:
            problems.append(f"processes still alive: {sorted(left)}")
        for name in self.netns.values():
            deleted = _ip("netns", "del", name, check=False)
            if deleted.returncode != 0 and name in _netns_names():
                problems.append(f"netns {name}: {deleted.stderr.strip()}")
        if self._veth is not None and Path(f"/sys/class/net/{self._veth}").exists():
            _ip("link", "del", self._veth, check=False)
            if Path(f"/sys/class/net/{self._veth}").exists():
                problems.append(f"veth {self._veth} still there")
        self.netns = {}
        self._veth = None
        if problems:
            raise SlurmError("; ".join(problems))

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.down()

    # --- bringing it up -------------------------------------------------------------------------

    def _start(self, timeout: float, inactive_limit: int, extra_conf: str) -> None:
        folder = self.folder
        for sub in ("state", "spool", "log", "run"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        munge = folder / "munge"
        munge.mkdir(mode=0o700, exist_ok=True)
        socket_path = munge / "munge.socket"
        # sun_path has 108 bytes; slurmstepd's sockets in the spool folder are ~20 longer.
        if len(str(folder / "spool")) > 80:
            raise SlurmError(f"folder path too long for Unix sockets: {folder}")
        if len(self.nodes) > 1 and not self.netns:
            self._make_network()
        elif not self.addresses:
            self.addresses = {"n0": "127.0.0.1"}
        self.ports = {"slurmctld": _free_port()}
        self.ports["slurmd"] = _free_port([self.ports["slurmctld"]])

        if "munged" not in self._processes:
            key = munge / "munge.key"
            if not key.exists():
                key.write_bytes(os.urandom(1024))
                key.chmod(0o400)
            self._spawn(
                "munged",
                [
                    "munged",
                    "--foreground",
                    # The folder is under /tmp (world-writable, sticky): munged refuses such
                    # parents unless forced; the key itself stays private (0400 in a 0700 folder).
                    "--force",
                    f"--socket={socket_path}",
                    f"--key-file={key}",
                    f"--pid-file={folder / 'run' / 'munged.pid'}",
                    f"--log-file={self.log_dir / 'munged.log'}",
                    f"--seed-file={munge / 'munged.seed'}",
                ],
            )
            self._wait_for(lambda: socket_path.exists(), 10, "munged's socket")

        self.conf.write_text(self._conf_text(socket_path, inactive_limit, extra_conf))
        # An empty plugin stack: the default one is /etc/slurm/plugstack.conf.
        (folder / "plugstack.conf").write_text("")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        for node in self.nodes:
            command = ["slurmd", "-D", "-f", str(self.conf), "-N", node]
            if self.hidden:
                # A mount namespace of its own (private: nothing reaches the machine's), with
                # an empty tmpfs over each hidden folder; slurmd and its jobs live in it.
                mounts = " && ".join(
                    f"mount -t tmpfs -o mode=0755 yw-hidden {shlex.quote(str(h))}"
                    for h in self.hidden
                )
                script = f"{mounts} && exec {shlex.join(command)}"
                command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
            path = self.netns_path(node)
            if path:
                # nsenter, not `ip netns exec`: the latter also remounts /sys, which hides
                # /sys/fs/cgroup, and slurmd then fails to start.
                command = ["nsenter", f"--net={path}", *command]
            self._spawn(f"slurmd-{node}", command)
        self._wait_idle(timeout)

    def _conf_text(self, munge_socket: Path, inactive_limit: int, extra_conf: str) -> str:
        folder = self.folder
        node_lines = "\n".join(
            f"NodeName={node} NodeAddr={self.addresses[node]} CPUs={self.cpus} "
            f"RealMemory={self.real_memory_mb} State=UNKNOWN"
            for node in self.nodes
        )
        partitions = "\n".join(
            f"PartitionName={name} Nodes=ALL Default={'YES' if i == 0 else 'NO'} "
            # FORCE:8: several small jobs (backends) share a core, as tests start many at once.
            "MaxTime=INFINITE State=UP OverSubscribe=FORCE:8"
            for i, name in enumerate(self.partitions)
        )
        return f"""\
# Written by tests/slurm_cluster.py: a private cluster under {folder}
ClusterName=ywtest
# "localhost" is accepted by slurmctld as its own name whatever the machine's hostname is.
SlurmctldHost=localhost({self.controller_address})
SlurmctldPort={self.ports["slurmctld"]}
SlurmdPort={self.ports["slurmd"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/run/slurmctld.pid
SlurmdPidFile={folder}/run/slurmd-%n.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd-%n.log
PlugStackConfig={folder}/plugstack.conf
# No cgroups: they are the machine's, shared with other users, and namespaces hide them.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job that gives no --mem is given the whole node's memory, and the next waits.
DefMemPerCPU={DEFAULT_MEM_PER_CPU_MB}
SchedulerType=sched/backfill
# The default delay adds ~3 s to each sbatch.
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
# Seconds between SIGTERM and SIGKILL when a job is cancelled: tests wait for that.
KillWait=2
# Ended jobs stay visible to `scontrol show job` this long (s), then Slurm forgets them.
MinJobAge=30
# 0: a job whose srun is gone keeps running (see SlurmCluster.up).
InactiveLimit={inactive_limit}
{node_lines}
{partitions}
{extra_conf}
"""

    def _make_network(self) -> None:
        """A namespace for n1, joined to the root namespace by a veth pair on a /24 that no
        address or route of this machine is in."""
        global _clusters_made
        _clusters_made += 1
        pid = os.getpid()
        name = f"{NETNS_PREFIX}-{pid}-{_start_time(pid)}-{_clusters_made}"
        _ip("netns", "add", name)
        self.netns = {"n1": name}  # from now on down() removes it
        in_use = _subnets_in_use()
        candidates = list(range(1, 255))
        random.shuffle(candidates)
        for third in candidates:
            subnet = ipaddress.IPv4Network(f"{SUBNET_BASE}.{third}.0/24")
            if any(subnet.overlaps(other) for other in in_use):
                continue
            outer, inner = f"yws{third}a", f"yws{third}b"
            # One command creates the pair with its inner end already in the namespace, so no
            # crash leaves a pair in the root namespace; the outer name (per subnet) is also the
            # lock between two sessions choosing at the same time: it fails if it exists.
            veth = f"link add {outer} type veth peer name {inner} netns {name}"
            made = _ip(*veth.split(), check=False)
            if made.returncode != 0:
                continue
            self._veth = outer
            root_address, node_address = f"{SUBNET_BASE}.{third}.1", f"{SUBNET_BASE}.{third}.2"
            _ip("addr", "add", f"{root_address}/24", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("-n", name, "addr", "add", f"{node_address}/24", "dev", inner)
            _ip("-n", name, "link", "set", inner, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            self.addresses = {"n0": root_address, "n1": node_address}
            self.controller_address = root_address
            return
        raise SlurmError(f"no free /24 in {SUBNET_BASE}.0.0/16 for the veth pair")

    def _spawn(self, name: str, command: list[str]) -> None:
        env = {
            **self.env,
            OWNER_ENV: self._owner,
            CLUSTER_ENV: str(self.folder),
            "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
        }
        with open(self.log_dir / f"{name}.out", "ab") as out:
            self._processes[name] = subprocess.Popen(
                # --pdeathsig: the kernel ends the daemon when the thread that started it dies
                # (the test process killed), so no cluster outlives its session. Start clusters
                # from a thread that lives as long as they do (the main one, as fixtures do).
                [_which(SETPRIV) or SETPRIV, "--pdeathsig", "TERM", "--", *command],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal goes to pytest, which then runs down().
                start_new_session=True,
                cwd=self.folder,
            )

    def _wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self._check_daemons()
            if time.monotonic() > deadline:
                raise SlurmError(f"{what} not ready after {timeout} s\n{self.logs_tail()}")
            time.sleep(0.02)

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while True:
            self._check_daemons()
            shown = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=10)
            states = dict(line.split() for line in shown.stdout.splitlines() if " " in line)
            if all(states.get(node) == "idle" for node in self.nodes):
                return
            if time.monotonic() > deadline:
                raise SlurmError(
                    f"nodes not idle after {timeout} s: {states or shown.stderr.strip()}\n"
                    + self.logs_tail()
                )
            time.sleep(0.05)

    def _check_daemons(self) -> None:
        for name, process in self._processes.items():
            if process.poll() is not None:
                logs = self.logs_tail()
                if "Address already in use" in logs:
                    raise _PortTaken(name)
                raise SlurmError(f"{name} exited with {process.returncode}\n{logs}")

    def _stop_daemons(self) -> None:
        """End the daemons, nodes first (so that none re-registers), munged last; reap them."""
        order = [n for n in self._processes if n.startswith("slurmd")]
        order += [n for n in ("slurmctld", "munged") if n in self._processes]
        for name in order:
            process = self._processes[name]
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self._processes = {}


class _PortTaken(SlurmError):
    pass


def parse_scontrol(text: str) -> dict[str, str]:
    """``Key=Value Key=Value`` (as ``scontrol show job -o`` prints) to a dict; values with
    spaces (``Command``, a ``Reason``'s text) keep the words up to the next ``Key=``."""
    fields: dict[str, str] = {}
    key = None
    for word in text.split():
        name, equals, value = word.partition("=")
        if equals and re.fullmatch(r"[A-Za-z][A-Za-z0-9_:/]*", name):
            key = name
            fields[key] = value
        elif key is not None:
            fields[key] += " " + word
    return fields


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmError("no MemTotal in /proc/meminfo")


# --- fixtures -----------------------------------------------------------------------------------


def slurm_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def skip_unless_slurm(nodes: int = 1) -> None:
    """Skip (saying why) when this machine cannot run a cluster of ``nodes``: not root, or
    Slurm not installed. With ``YW_REQUIRE_SLURM`` set that is a failure instead."""
    reason = unavailable_reason(nodes)
    if reason is None:
        return
    if slurm_required():
        pytest.fail(f"{REQUIRE_ENV} is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A one-node Slurm cluster (node n0 on 127.0.0.1) for the whole session."""
    skip_unless_slurm(1)
    with SlurmCluster.up(tmp_path_factory.mktemp("slurm"), nodes=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def slurm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A two-node Slurm cluster: n0 in the root network namespace, n1 in its own, joined by a
    veth pair (``cluster.addresses``), for the whole session."""
    skip_unless_slurm(2)
    with SlurmCluster.up(tmp_path_factory.mktemp("slurm2"), nodes=2) as cluster:
        yield cluster
