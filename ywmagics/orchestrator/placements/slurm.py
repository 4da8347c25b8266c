"""On a Slurm cluster: the local child is ``srun``, which runs the node shim
(:mod:`~ywmagics.orchestrator.placements.node_shim`) in a job; the shim starts the backend on
the node, on a private socket, and is the only thing there that listens.

- **Certificates**: made for each start (one for the shim, one for us), pinned both ways, handed
  to the shim in a private file (0600) of a folder the nodes share, never on a command line.
- **No shared folder** (the cluster's ``node_dir``): the shim's source, then its configuration,
  go as two lines on srun's stdin (:data:`BOOTSTRAP` on the command line reads them), and the
  shim builds the environment on the node (:mod:`~ywmagics.orchestrator.placements.node_build`)
  before it starts the backend, each step said as an event. The pipe stays open: its end (this
  orchestrator gone) cancels a build that runs.
- **Where it is**: the shim says its address in its first line of output (``YW-SHIM {...}``),
  which ``srun`` relays to us; nothing is guessed. Until then the job may wait in the queue:
  each change of its state and of Slurm's reason is said (``queued``).
- **Lease**: a control connection on which we say ``PING`` every second; a shim that hears
  nothing for :data:`LEASE` seconds (this orchestrator was killed) ends the backend and its job.
- **Backend to orchestrator**: the backend's ``YW_ORCHESTRATOR_URL`` is a port of the shim on
  the node; its calls come back over connections we open when the shim asks (``NEED n``), and
  are relayed to our own Unix socket, where its instance token pins them to its partition.
- **Stop**: the child's process group gets SIGTERM (``srun`` passes it to the shim), then
  ``scancel`` ends what is left of the job, even after a ``srun`` killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ywmagics import paths
from ywmagics.errors import StartError
from ywmagics.events import EventKind
from ywmagics.orchestrator.config import ClusterSettings
from ywmagics.orchestrator.events import event_of
from ywmagics.orchestrator.manifest import Listen, Runtime, expand
from ywmagics.orchestrator.placements import Launch
from ywmagics.orchestrator.processes import signal_group, tail_of
from ywmagics.orchestrator.upstream import UpstreamPool

if TYPE_CHECKING:
    import ssl

    from ywmagics.orchestrator.events import Emit
    from ywmagics.orchestrator.supervisor import Instance

log = logging.getLogger("ywmagics.orchestrator")
SHIM = Path(__file__).with_name("node_shim.py")
NODE_BUILD = Path(__file__).with_name("node_build.py")
PORTABLE = Path(__file__).parents[2] / "portable.py"
READY = "YW-SHIM "
BUILD, BUILT, FAILED = "YW-BUILD ", "YW-BUILT ", "YW-FAILED "
# The command line of a shim that has no file on the node (Python 3.8+): stdin's first line holds
# the sources, which it runs; the shim then reads its configuration from the second ("-").
BOOTSTRAP = (
    "import json,sys,types\n"
    "if sys.version_info<(3,8):sys.exit('ywmagics node shim: needs Python 3.8 or later, not '"
    "+sys.version.split()[0]+' (the python of the cluster entry)')\n"
    "sources=json.loads(sys.stdin.buffer.readline())\n"
    "for name,source in sources['modules'].items():\n"
    " module=types.ModuleType(name);module.__file__=name+'.py';sys.modules[name]=module\n"
    " exec(compile(source,name+'.py','exec'),module.__dict__)\n"
    "sys.argv=['node_shim.py','-']\n"
    "exec(compile(sources['shim'],'node_shim.py','exec'))\n"
)
MAX_BUNDLE = 64 * 1024 * 1024  # bytes of a backend's files sent to a node that builds it
LEASE_ALPN, REVERSE_ALPN = "yw-lease", "yw-reverse"  # and "http/1.1": what a connection is
LEASE = 10.0  # seconds a shim runs on without hearing from us (the issue asks for 30 at most)
HEARTBEAT = 1.0
# Seconds srun has, after SIGTERM, when we end however we end: its SIGTERM ends the job step on
# the node (the shim then ends the backend or cancels a build); a SIGKILL would end srun here only.
SRUN_END_GRACE = 10.0
SILENCE = 5.0  # seconds without a PONG after which the shim is taken as gone
QUEUE_LOOK_EVERY = 1.0  # seconds to the first look at a job that has not started yet...
QUEUE_LOOK_MAX = 30.0  # ...then twice as long each time, up to this (slurmctld is shared)
# Reasons of a pending job that time does not cure (Slurm's JOB_REASON names): said as such.
NEVER_STARTS = {
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "AccountNotAllowed",
    "QOSNotAllowed",
    "ReqNodeNotAvail",
}
MAX_IDLE_REVERSE = 16  # reverse connections kept open for a shim (it asks for 2 spare)
# What Slurm is asked for, by the names of InstallRequest.resources.
OPTIONS = {
    "cpus": "--cpus-per-task",
    "mem": "--mem",
    "time": "--time",
    "gres": "--gres",
    "partition": "--partition",
    "account": "--account",
    "qos": "--qos",
    "constraint": "--constraint",
    "nodelist": "--nodelist",
}


@dataclass
class _Job:
    """What an instance holds on the cluster, for one start."""

    name: str
    config: Path | None  # None: it went on srun's stdin
    shim_cert: str
    client_cert: str
    client_key: str
    job_id: str | None = None
    state: str = ""
    reason: str = ""
    node: str | None = None
    host: str | None = None
    port: int | None = None
    tasks: list[asyncio.Future[Any]] = field(default_factory=list)
    lease: asyncio.StreamWriter | None = None
    cancelled: bool = False  # stopped while it waited in the queue
    failure: dict[str, Any] | None = None  # what the node said of a build that failed
    built_python: str | None = None  # the Python version of an environment built on the node
    idle_reverse: int = 0  # reverse connections open and not used yet
    contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def context(self, alpn: str) -> ssl.SSLContext:
        """One per kind of connection (loading a key writes it to a private file for a moment:
        not once per call from the backend)."""
        if alpn not in self.contexts:
            from ywmagics.orchestrator.placements import certificates

            self.contexts[alpn] = certificates.client_context(
                self.shim_cert, self.client_cert, self.client_key, [alpn]
            )
        return self.contexts[alpn]


class SlurmPlacement:
    kind = "slurm"

    def __init__(
        self,
        cluster: ClusterSettings,
        shared_dir: Path,
        orchestrator_socket: Path | None,
    ) -> None:
        self.cluster = cluster
        self.shared_dir = cluster.shared_dir or shared_dir
        self.orchestrator_socket = orchestrator_socket
        self._jobs: dict[str, _Job] = {}  # by instance label
        self._reach_address: str | None = None
        # Jobs of this user's orchestrators of this machine and this data folder (one at a
        # time): what a previous one left is found by the next, never what another runs (another
        # login node, another YW_HOME). The rest of a name is random: the instance's host name
        # for browsers is a secret, and every cluster user sees job names.
        where = f"{socket.gethostname()}:{os.getuid()}:{self.shared_dir.resolve()}"
        self._job_prefix = f"ywmagics-{hashlib.sha256(where.encode()).hexdigest()[:8]}-"

    # -- the child ----------------------------------------------------------------------------

    def _slurm_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("YW_")}
        if self.cluster.slurm_conf is not None:
            env["SLURM_CONF"] = str(self.cluster.slurm_conf)
        return env

    async def launch(
        self, instance: Instance, placeholders: dict[str, str], env: dict[str, str]
    ) -> Launch:
        if shutil.which("srun", path=self._slurm_env().get("PATH")) is None:
            raise StartError(
                f"cannot place {instance.where} on {self.cluster.name!r}: no 'srun' on PATH",
                hint="run the orchestrator where Slurm's commands are (a login node)",
            )
        conf = self.cluster.slurm_conf
        if conf is not None and not conf.is_file():  # else srun waits ~60 s, then says little
            raise StartError(
                f"cannot place {instance.where} on {self.cluster.name!r}: its slurm_conf {conf} "
                "is not a file",
                hint=f"fix slurm_conf in [clusters.{self.cluster.name}] of config.toml, or leave "
                "it out for Slurm's default",
            )
        from ywmagics.orchestrator.placements import certificates  # cryptography: only here

        manifest, on_node = instance.manifest, instance.environment.node is not None
        if on_node and self.cluster.node_dir is None:
            raise StartError(
                f"{instance.where} was installed to be built on the nodes of "
                f"{self.cluster.name!r}, whose entry no longer has a node_dir",
                hint=f"install it again with --on {self.cluster.name}",
            )
        shim_cert, shim_key = certificates.self_signed("ywmagics-node")
        client_cert, client_key = certificates.self_signed("ywmagics-orchestrator")
        kept = {**placeholders, "socket": "{socket}", "port": "{port}"}  # the shim's to fill
        backend_env = {k: v for k, v in env.items() if k.startswith("YW_") or k == "PYTHONPATH"}
        if on_node:  # paths of the node, known once it has built the environment
            kept.update(env="{env}", app="{app}", python="{python}", data="{data}")
            backend_env.update(PYTHONPATH="{app}", YW_DATA_DIR="{data}")
        backend_env.update({k: expand(v, kept) for k, v in manifest.env.items()})
        config = {
            "argv": [expand(arg, kept) for arg in manifest.start],
            "env": backend_env,
            "cwd": "{env}" if on_node else str(instance.environment.path),
            "listen": "unix" if manifest.listen is Listen.UNIX else "tcp",
            "reach": await self._reach(),
            "cert": shim_cert,
            "key": shim_key,
            "peer": client_cert,
            "lease": LEASE,
        }
        name = f"{self._job_prefix}{secrets.token_hex(6)}"
        srun = [
            "srun",
            f"--job-name={name}",
            "--nodes=1",
            "--ntasks=1",
            "--unbuffered",  # the shim's first line at once
            *self._options(instance.resources),
            *self.cluster.srun_options,
        ]
        if on_node:
            # In a thread: compressing a large folder would hold every other instance's lease.
            config["build"] = await asyncio.to_thread(self._build_spec, instance, kept)
            stdin = f"{shim_sources()}\n{json.dumps(config)}\n".encode()
            # No folder of ours is on the node: srun's own is not either.
            argv = [*srun, "--chdir=/", self.cluster.python, "-I", "-c", BOOTSTRAP]
            path = None
            launch = Launch(argv, self._slurm_env(), instance.environment.path, stdin=stdin)
        else:
            folder = paths.private_dir(self.shared_dir / "jobs")
            path = folder / f"{name}-{secrets.token_hex(4)}.json"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with os.fdopen(os.open(path, flags, 0o600), "w") as file:
                json.dump(config, file)
            argv = [*srun, self.cluster.python, "-I", str(SHIM), str(path)]
            launch = Launch(argv, self._slurm_env(), folder)
        launch.stdout_to_log = False
        launch.end_grace = SRUN_END_GRACE
        self._jobs[instance.browser_label] = _Job(name, path, shim_cert, client_cert, client_key)
        if manifest.listen is not Listen.UNIX:
            launch.warnings.append(
                "it listens on a TCP port of the node's loopback, which every user of that node "
                "can reach (a Unix socket backend is private to you there)"
            )
        return launch

    def _build_spec(self, instance: Instance, kept: dict[str, str]) -> dict[str, Any]:
        """What the node builds (see node_build.Builder): the environment's files, as prepared
        here, and the rest of what Installer would do."""
        environment, plan = instance.environment, instance.plan
        bundle = _Capped(MAX_BUNDLE)
        try:
            with tarfile.open(fileobj=bundle, mode="w:gz", compresslevel=6) as tar:
                tar.add(environment.app, arcname=".")
        except _TooLarge:
            raise StartError(
                f"{instance.where}: its files are more than the {MAX_BUNDLE // 2**20} MiB "
                "(compressed) sent to a node that builds it",
                hint="leave data out of the backend's folder (fetch it from the node instead), "
                "or use a cluster whose nodes share a folder (shared_dir)",
            ) from None
        python_runtime = plan.manifest.runtime is Runtime.PYTHON
        return {
            "dir": self.cluster.node_dir,
            "name": environment.name,
            "version": environment.version,
            "fingerprint": environment.fingerprint,
            "app": base64.b64encode(bundle.getvalue()).decode(),
            "python": plan.python_request if python_runtime else None,
            "requirements": list(plan.requirements) if python_runtime else [],
            "install": [[expand(arg, kept) for arg in argv] for argv in plan.manifest.install],
            "data": list(instance.data_path.parts[-2:]),
        }

    def _options(self, resources: dict[str, str]) -> list[str]:
        chosen = {
            "partition": self.cluster.partition,
            "account": self.cluster.account,
            "qos": self.cluster.qos,
            **resources,
        }
        return [f"{OPTIONS[k]}={v}" for k, v in chosen.items() if v]

    async def _reach(self) -> str:
        """An address of ours that the nodes reach: the one facing Slurm's controller, which
        the nodes talk to (the shim then binds its own address that faces this one)."""
        if self._reach_address is None:
            controller = await self._controller_address()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect((controller, 9))  # a UDP connect sends nothing
                    self._reach_address = str(probe.getsockname()[0])
                except OSError:
                    self._reach_address = "127.0.0.1"
        return self._reach_address

    async def _ask(self, *argv: str) -> str:
        """What one of Slurm's commands prints (at most 10 s)."""
        command = await asyncio.create_subprocess_exec(
            *argv,
            env=self._slurm_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(command.communicate(), 10)
        return out.decode(errors="replace")

    async def _controller_address(self) -> str:
        """``SlurmctldHost[0] = name(address)`` of ``scontrol show config``."""
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            out = await self._ask("scontrol", "show", "config")
            for line in out.splitlines():
                key, _, value = line.partition("=")
                if key.strip().startswith("SlurmctldHost"):
                    host = value.strip()
                    name, _, address = host.partition("(")
                    with contextlib.suppress(OSError):
                        return address.rstrip(")") or socket.gethostbyname(name)
        return "127.0.0.1"

    # -- once it runs ---------------------------------------------------------------------------

    async def connect(
        self, instance: Instance, process: asyncio.subprocess.Process, emit: Emit
    ) -> UpstreamPool:
        job = self._jobs[instance.browser_label]
        assert process.stdout is not None
        address = await self._address(instance, process, job, emit)
        job.host, job.port = address["host"], int(address["port"])
        job.tasks.append(asyncio.ensure_future(_copy_to_log(process.stdout, instance.log_path)))
        reader, writer = await asyncio.open_connection(
            job.host, job.port, ssl=job.context(LEASE_ALPN)
        )
        job.lease = writer
        job.tasks.append(
            asyncio.ensure_future(self._hold_lease(instance, process, job, reader, writer))
        )
        return UpstreamPool(host=job.host, port=job.port, tls=job.context("http/1.1"))

    async def _address(
        self, instance: Instance, process: asyncio.subprocess.Process, job: _Job, emit: Emit
    ) -> dict[str, Any]:
        """The shim's first line; meanwhile, what Slurm says of the job."""
        assert process.stdout is not None
        look_every = QUEUE_LOOK_EVERY
        with instance.log_path.open("ab") as log_file:
            while True:
                try:
                    line = await asyncio.wait_for(process.stdout.readline(), look_every)
                except asyncio.TimeoutError:
                    await self._look_at_queue(instance, job, emit)
                    look_every = min(QUEUE_LOOK_MAX, look_every * 2)
                    continue
                except ValueError:  # a line longer than the stream's limit: dropped, said
                    log_file.write(b"[a line of more than 64 KiB was left out]\n")
                    continue
                if not line:  # srun ended first: refused, or the job failed to start
                    await process.wait()
                    if job.failure is not None:
                        raise StartError(
                            f"{instance.where}: {job.failure.get('message', 'its build failed')}",
                            hint=f"the node's build output is in its log ({instance.log_path}); "
                            "fix what it says, then install again",
                            log_tail="\n".join(job.failure.get("tail") or []),
                        )
                    if job.cancelled:
                        waited = (
                            "waited in the queue"
                            if job.state in ("", "PENDING")
                            else (f"started on {job.node or 'its node'}")
                        )
                        raise StartError(
                            f"{instance.where} was stopped while its job {waited}",
                            hint="install it again to start it",
                        )
                    why = f": {job.reason}" if job.reason and job.reason != "None" else ""
                    raise StartError(
                        f"{instance.where} did not start on {self.cluster.name!r}"
                        + (f" (job {job.job_id}{why})" if job.job_id else "")
                        + f": srun exited with code {process.returncode}",
                        hint="Slurm's own words are in the log tail below; 'ywmagics logs' "
                        "has the rest",
                        log_tail=tail_of(instance.log_path),
                    )
                text = line.decode(errors="replace")
                if text.startswith(READY):
                    await self._look_at_queue(instance, job, emit, started=True)
                    return dict(json.loads(text[len(READY) :]))
                if text.startswith((BUILD, BUILT, FAILED)):
                    text = self._said_by_build(instance, job, emit, text)
                    line = f"{text}\n".encode()
                log_file.write(line)
                log_file.flush()

    def _said_by_build(self, instance: Instance, job: _Job, emit: Emit, text: str) -> str:
        """An event for a line of the node's build; the line, as the log keeps it."""
        word, _, rest = text.partition(" ")
        try:
            said = json.loads(rest)
        except ValueError:
            return text.rstrip()
        if not isinstance(said, dict):
            return text.rstrip()
        manifest, partition = instance.manifest, instance.partition
        if word == BUILD.strip():
            progress = said.get("progress")
            progress = float(progress) if isinstance(progress, (int, float)) else None
            emit(event_of(EventKind.BUILDING, manifest, partition, str(said.get("text")), progress))
            return f"[build on the node] {said.get('text')}"
        if word == BUILT.strip():
            node, env = said.get("node"), said.get("env")
            if said.get("built"):
                message = f"environment built on {node} in {said.get('seconds')} s ({env})"
                emit(event_of(EventKind.BUILT, manifest, partition, message, 0.85))
            else:
                message = f"environment {instance.environment.fingerprint} already built on {node}"
                emit(event_of(EventKind.REUSED, manifest, partition, message, 0.85))
            job.built_python = str(said.get("python_version") or "") or None
            return f"[build on the node] {message}"
        job.failure = said
        return f"[build on the node] failed: {said.get('message')}"

    async def _look_at_queue(
        self, instance: Instance, job: _Job, emit: Emit, started: bool = False
    ) -> None:
        """Say the job's id, state and reason when they change (``squeue`` by its name)."""
        try:
            out = await self._ask("squeue", "-h", f"--name={job.name}", "-o", "%i|%T|%r|%N")
        except (OSError, asyncio.TimeoutError):
            return
        fields = out.strip().splitlines()
        if not fields:
            return
        job_id, state, reason, node = [*fields[0].split("|"), "", "", ""][:4]
        changed = (job_id, state, reason) != (job.job_id, job.state, job.reason)
        job.job_id, job.state, job.reason, job.node = job_id, state, reason, node or None
        if changed and not started:
            text = queued_text(job_id, self.cluster.name, state, reason)
            emit(event_of(EventKind.QUEUED, instance.manifest, instance.partition, text))

    async def _hold_lease(
        self,
        instance: Instance,
        process: asyncio.subprocess.Process,
        job: _Job,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """``PING`` every :data:`HEARTBEAT`; reverse connections as the shim asks for them.
        A lease that ends, or that no ``PONG`` answers for :data:`SILENCE`, means the shim is
        gone (killed, its node or the network down): the instance is taken as crashed (its
        srun is ended, so the supervisor sees it and the next request starts it anew), rather
        than kept ready with nothing behind it."""
        last_pong = asyncio.get_running_loop().time()

        async def beat() -> None:
            while asyncio.get_running_loop().time() - last_pong < SILENCE:
                writer.write(b"PING\n")
                await writer.drain()
                await asyncio.sleep(HEARTBEAT)
            log.warning("%s: its node shim has not answered for %g s", instance.where, SILENCE)

        beating = asyncio.ensure_future(beat())
        reading = asyncio.ensure_future(reader.readline())
        try:
            while True:
                await asyncio.wait({beating, reading}, return_when=asyncio.FIRST_COMPLETED)
                if beating.done() or not (line := reading.result()):
                    break
                word, _, count = line.decode(errors="replace").strip().partition(" ")
                if word == "PONG":
                    last_pong = asyncio.get_running_loop().time()
                elif word == "NEED" and count.isdigit():
                    # At most MAX_IDLE_REVERSE waiting: another user of the node who connects
                    # to the shim's loopback port over and over makes it ask for more.
                    job.tasks = [task for task in job.tasks if not task.done()]
                    for _ in range(max(0, min(int(count), MAX_IDLE_REVERSE - job.idle_reverse))):
                        job.tasks.append(asyncio.ensure_future(self._reverse(job)))
                reading = asyncio.ensure_future(reader.readline())
        except OSError as error:  # ssl.SSLError too
            log.info("%s: the lease connection broke: %s", instance.where, error)
        finally:
            beating.cancel()
            reading.cancel()
        if self._jobs.get(instance.browser_label) is job and process.returncode is None:
            log.warning("%s: its lease ended: taken as crashed", instance.where)
            signal_group(process.pid, signal.SIGKILL)

    async def _reverse(self, job: _Job) -> None:
        """One reverse connection: the backend's call, relayed to our own Unix socket."""
        if self.orchestrator_socket is None or job.host is None:
            return
        job.idle_reverse += 1
        try:
            shim_reader, shim_writer = await asyncio.open_connection(
                job.host, job.port, ssl=job.context(REVERSE_ALPN)
            )
            try:
                first = await shim_reader.read(256 * 1024)  # the backend's call has begun
            except BaseException:
                shim_writer.close()
                raise
        except OSError:  # ssl.SSLError too
            return
        finally:
            job.idle_reverse -= 1
        try:
            if not first:
                return
            with contextlib.suppress(OSError):
                own_reader, own_writer = await asyncio.open_unix_connection(
                    str(self.orchestrator_socket)
                )
                try:
                    own_writer.write(first)
                    await asyncio.gather(
                        _pump(shim_reader, own_writer), _pump(own_reader, shim_writer)
                    )
                finally:
                    own_writer.close()
        finally:
            shim_writer.close()

    async def ask_to_stop(
        self, instance: Instance, process: asyncio.subprocess.Process, within: float
    ) -> None:
        """``STOP`` on the lease: the shim gives the backend SIGTERM and its grace, then ends,
        and srun with it. (srun itself would turn a SIGTERM into SIGKILL for the job.)"""
        job = self._jobs.get(instance.browser_label)
        if job is None or job.lease is None or process.returncode is not None:
            return
        with contextlib.suppress(OSError, RuntimeError, asyncio.TimeoutError):
            job.lease.write(b"STOP\n")
            await asyncio.wait_for(job.lease.drain(), 1)
            await asyncio.wait_for(asyncio.shield(process.wait()), within)

    async def cancel_start(self, instance: Instance) -> None:
        """A job still in the queue is cancelled: srun ends, and so does the start."""
        job = self._jobs.get(instance.browser_label)
        if job is not None and job.host is None:
            job.cancelled = True
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                user = pwd.getpwuid(os.getuid()).pw_name
                await self._ask("scancel", f"--name={job.name}", f"--user={user}")

    async def release(self, instance: Instance) -> None:
        job = self._jobs.pop(instance.browser_label, None)
        if job is None:
            return
        if job.lease is not None:
            with contextlib.suppress(OSError, RuntimeError):
                job.lease.write(b"STOP\n")
                await asyncio.wait_for(job.lease.drain(), 1)
        for task in job.tasks:
            task.cancel()
        await asyncio.gather(*job.tasks, return_exceptions=True)
        with contextlib.suppress(OSError):  # whatever srun's end left of the job
            scancel = await asyncio.create_subprocess_exec(
                "scancel",
                f"--name={job.name}",
                f"--user={pwd.getpwuid(os.getuid()).pw_name}",  # never another's of that name
                env=self._slurm_env(),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(scancel.wait(), 10)
        if job.config is not None:
            with contextlib.suppress(FileNotFoundError):
                job.config.unlink()  # the shim removes it as it reads it: a job that never ran

    async def sweep(self) -> list[str]:
        """Cancel the jobs a previous orchestrator of this machine left (killed with its srun:
        a job still waiting in the queue would start later for nobody), and remove the
        configuration files (a shim's key, an instance token) that no job of ours will read."""
        removed = self._remove_left_configs()
        if shutil.which("squeue", path=self._slurm_env().get("PATH")) is None:
            return removed
        user = pwd.getpwuid(os.getuid()).pw_name
        try:
            out = await self._ask("squeue", "-h", f"--user={user}", "-o", "%i %j")
        except (OSError, asyncio.TimeoutError):
            return removed
        ours = {job.name for job in self._jobs.values()}
        jobs = [line.split() for line in out.splitlines() if len(line.split()) == 2]
        left = [
            (job_id, name)
            for job_id, name in jobs
            if name.startswith(self._job_prefix) and name not in ours
        ]
        if left:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await self._ask("scancel", *(job_id for job_id, _ in left))
        return removed + [f"job {job_id} ({name}) on {self.cluster.name}" for job_id, name in left]

    def _remove_left_configs(self) -> list[str]:
        ours = {job.config for job in self._jobs.values()}
        removed = []
        for config in (self.shared_dir / "jobs").glob(f"{self._job_prefix}*.json"):
            if config not in ours:
                with contextlib.suppress(OSError):
                    config.unlink()
                    removed.append(f"the configuration file {config.name}")
        return removed

    def facts(self, instance: Instance) -> dict[str, object]:
        reachable_by = (
            "this user (through its node shim, TLS pinned both ways)"
            if instance.manifest.listen is Listen.UNIX
            else "every user of its node (TCP on the node's loopback)"
        )
        job = self._jobs.get(instance.browser_label)
        if job is None:
            return {"on": self.cluster.name, "reachable_by": reachable_by}
        return {
            "on": self.cluster.name,
            "reachable_by": reachable_by,
            "job": job.job_id,
            "job_state": job.state,
            "node": job.node,
            "address": f"{job.host}:{job.port}" if job.host else None,
            **({"python_on_node": job.built_python} if job.built_python else {}),
        }


def queued_text(job_id: str, cluster: str, state: str, reason: str) -> str:
    """What a ``queued`` event says of a job that has not started."""
    why = f" ({reason})" if reason and reason != "None" else ""
    if reason in NEVER_STARTS:
        why += (
            ": Slurm keeps it waiting until the cluster changes, as it was asked for what this "
            "cluster does not give; stop it and ask for other --resources"
        )
    return f"job {job_id} on {cluster}: {state.lower()}{why}"


@functools.cache
def shim_sources() -> str:
    """The first line BOOTSTRAP reads: the shim's source and the modules it needs (read once:
    they are part of this installed package)."""
    modules = {"portable": PORTABLE.read_text(), "node_build": NODE_BUILD.read_text()}
    return json.dumps({"modules": modules, "shim": SHIM.read_text()})


class _TooLarge(Exception):
    pass


class _Capped(io.BytesIO):
    """A buffer that refuses to grow past ``cap`` bytes (a tar of a huge folder stops early)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self.cap:
            raise _TooLarge
        return super().write(data)


async def _copy_to_log(stream: asyncio.StreamReader, log_path: Path) -> None:
    """What srun relays after the shim's first line (the backend's output), into its log."""
    with log_path.open("ab") as log_file:
        while chunk := await stream.read(64 * 1024):
            log_file.write(chunk)
            log_file.flush()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction, to its end, which is passed on (the other may go on)."""
    with contextlib.suppress(OSError, RuntimeError):  # ssl.SSLError is an OSError
        while chunk := await reader.read(256 * 1024):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:  # TLS (asyncio's cannot half-close): the answer is whole, the connection ends
            writer.close()
