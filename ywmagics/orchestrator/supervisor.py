"""Instances: running processes of environments, keyed by (partition, name, version).

The supervisor is the one owner of an instance's life: it starts it on a private Unix socket (or
a TCP port when the manifest asks), waits until its readiness path answers, watches its process
(one task awaiting it), restarts it on its next request after a crash with capped backoff, gives
it up after too many crashes in a row, and stops it with TERM to its process group, a wait, then
KILL. Others (the proxy) only ask it: :meth:`Supervisor.ensure_ready`, :meth:`~Supervisor.has_ended`
and :meth:`~Supervisor.wait_ended`.

::

    STARTING ──ready──► READY ──process ended──► CRASHED ──next request──► STARTING
        │                 │                         └──too many in a row──► FAILED
        └─first start     └─stop, replace──► STOPPING ──► STOPPED
          failed ► STOPPED
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ywmagics.errors import StartError
from ywmagics.events import Event, EventKind
from ywmagics.orchestrator.browser import new_label
from ywmagics.orchestrator.config import SupervisorSettings
from ywmagics.orchestrator.environments import Environment, Installer, Plan
from ywmagics.orchestrator.events import Emit, event_of
from ywmagics.orchestrator.manifest import Manifest
from ywmagics.orchestrator.placements import Launch, Placement
from ywmagics.orchestrator.placements.local import LocalPlacement
from ywmagics.orchestrator.processes import (
    END_GRACE,
    child_argv,
    end_all,
    has_exited,
    program_pid,
    signal_group,
    tail_of,
)
from ywmagics.orchestrator.upstream import UpstreamError, UpstreamPool

InstanceKey = tuple[str, str, str]
log = logging.getLogger("ywmagics.orchestrator")


class InstanceGone(Exception):
    """The instance was stopped, and forgotten, while the caller waited for it: the caller looks
    for the backend again (it may start a new instance) rather than restart a forgotten one."""


class InstanceState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    CRASHED = "crashed"  # its process ended on its own: the next request restarts it
    FAILED = "failed"  # crashed too often in a row: given up until installed again
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class Instance:
    partition: str
    manifest: Manifest
    plan: Plan
    environment: Environment
    token: str
    log_path: Path
    # its own folder ({data}, YW_DATA_DIR): kept across its restarts, removed with its partition
    data_path: Path
    socket_path: Path | None = None
    # TCP only: the connector of its private network namespace, if this machine gives one
    connector_path: Path | None = None
    port: int | None = None
    process: asyncio.subprocess.Process | None = None
    state: InstanceState = InstanceState.STARTING
    started_at: float = 0.0
    crashes_in_a_row: int = 0
    restarts: int = 0  # after crashes, or asked for
    upstream: UpstreamPool | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    watcher: asyncio.Future[None] | None = None
    # Its pages' own host name for browsers (b-<hex>.localhost); a new instance, a new name.
    browser_label: str = field(default_factory=new_label)
    installed_by: str = ""  # who asked for it: "alias 'py310' of kernel 1234"
    placement: str = "local"  # where it runs: a key of Supervisor.placements
    resources: dict[str, str] = field(default_factory=dict)  # what it asks of a cluster

    @property
    def key(self) -> InstanceKey:
        return (self.partition, self.manifest.name, self.manifest.version)

    @property
    def ready(self) -> bool:
        return self.state is InstanceState.READY

    @property
    def reachable_by(self) -> str:
        """Who can reach its process without the orchestrator."""
        if self.socket_path is not None or self.connector_path is not None:
            return "this user"  # a socket in a private folder, or a private network
        return "every local user (TCP on the machine's network)"

    @property
    def base_path(self) -> str:
        return f"/backends/{self.manifest.name}/{self.manifest.version}"

    @property
    def where(self) -> str:
        return f"{self.manifest.name} {self.manifest.version} in partition {self.partition!r}"

    def to_dict(self) -> dict[str, object]:
        running = self.state in (InstanceState.STARTING, InstanceState.READY)
        return {
            "partition": self.partition,
            "name": self.manifest.name,
            "version": self.manifest.version,
            "state": self.state.value,
            "pid": program_pid(self.process.pid) if self.process else None,
            "uptime": round(time.monotonic() - self.started_at, 1) if running else 0.0,
            "config": self.environment.config,
            "fingerprint": self.environment.fingerprint,
            "installed_by": self.installed_by,
            "restarts": self.restarts,
            "crashes_in_a_row": self.crashes_in_a_row,
            "log": str(self.log_path),
            "listen": (
                str(self.socket_path)
                if self.socket_path
                else f"127.0.0.1:{self.port}"
                if self.port
                else "on its node, behind its shim"
            ),
            "home": self.manifest.home,
            "data": str(self.data_path),
            "reachable_by": self.reachable_by,
        }


def _replacement_reason(old: Environment, new: Environment) -> str:
    if old.config != new.config:
        changed = {k: v for k, v in new.config.items() if old.config.get(k) != v}
        return f"replacing the running instance: configuration changed ({changed})"
    return "replacing the running instance: its environment was rebuilt (the backend changed)"


# Readiness is asked for every POLL_FIRST seconds at first, then POLL_GROWTH of the time waited
# later (so a start is noticed at most 5 % late), and at most every POLL_MAX seconds: a backend
# ready in 40 ms is seen within 4 ms, one that takes a minute costs ten looks a second.
POLL_FIRST = 0.002
POLL_GROWTH = 0.05
POLL_MAX = 0.1


def _next_poll(waited: float) -> float:
    """Seconds until readiness is asked for again, after ``waited`` seconds of a start."""
    return min(POLL_FIRST + POLL_GROWTH * waited, POLL_MAX)


class Supervisor:
    def __init__(
        self,
        installer: Installer,
        sockets_dir: Path,
        logs_dir: Path,
        orchestrator_url: str,
        emit: Emit,
        settings: SupervisorSettings | None = None,
        orchestrator_socket: Path | None = None,
        data_dir: Path | None = None,  # instances' own folders: next to the logs by default
        placements: Mapping[str, Placement] | None = None,  # by kind; "local" by default
    ) -> None:
        self.installer = installer
        self.sockets_dir = sockets_dir
        self.logs_dir = logs_dir
        self.orchestrator_url = orchestrator_url
        self.emit = emit
        self.settings = settings or SupervisorSettings()
        self.orchestrator_socket = orchestrator_socket
        self.data_dir = data_dir or logs_dir.parent / "instance-data"
        self.instances: dict[InstanceKey, Instance] = {}
        self._key_locks: dict[InstanceKey, asyncio.Lock] = {}
        self.by_token: dict[str, Instance] = {}
        self.by_label: dict[str, Instance] = {}
        self.placements: dict[str, Placement] = {
            "local": LocalPlacement(sockets_dir, orchestrator_url, orchestrator_socket),
            **(placements or {}),
        }

    # -- queries -----------------------------------------------------------------------------

    def matching(
        self, partition: str | None = None, name: str | None = None, version: str | None = None
    ) -> list[Instance]:
        return [
            i
            for i in self.instances.values()
            if (partition is None or i.partition == partition)
            and (name is None or i.manifest.name == name)
            and (version is None or i.manifest.version == version)
        ]

    def is_current_and_ready(self, instance: Instance) -> bool:
        """Ready, and still the instance of its key (not stopped or replaced since)."""
        return instance.ready and self.instances.get(instance.key) is instance

    def has_ended(self, instance: Instance) -> bool:
        """Whether the instance's process has ended, as the kernel knows it: also when the event
        loop has not reaped it yet (its sockets may already say so). An end seen here is noted
        at once, so that the next request restarts it rather than meeting its dead sockets."""
        process = instance.process
        if process is None:
            return True
        if process.returncode is None and not has_exited(process.pid):
            return False
        self._note_ended(instance, process)
        return True

    async def wait_ended(self, instance: Instance, patience: float) -> bool:
        """After a request failed: whether the process has ended, giving an ending process up to
        ``patience`` seconds to be seen so."""
        process = instance.process
        if process is None or self.has_ended(instance):
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(process.wait()), patience)
        return self.has_ended(instance)

    # -- lifecycle ---------------------------------------------------------------------------

    async def ensure(
        self,
        partition: str,
        plan: Plan,
        environment: Environment,
        emit: Emit,
        installed_by: str = "",
        placement: str = "local",
        resources: dict[str, str] | None = None,
    ) -> Instance:
        """A ready instance of ``environment`` in ``partition``; replaces one of another config,
        or placed elsewhere (``placement``, a key of :attr:`placements`, with ``resources``).
        ``installed_by`` says who asked, for a new instance (told to the clients it leaves).

        Serialised per key: two installs racing with different configurations must not both
        replace the old instance (one replacement would go untracked)."""
        key = (partition, plan.manifest.name, plan.manifest.version)
        where = (placement, resources or {})
        async with self._key_locks.setdefault(key, asyncio.Lock()):
            return await self._ensure(key, plan, environment, emit, installed_by, where)

    async def _ensure(
        self,
        key: InstanceKey,
        plan: Plan,
        environment: Environment,
        emit: Emit,
        installed_by: str,
        where: tuple[str, dict[str, str]],
    ) -> Instance:
        while True:
            current = self.instances.get(key)
            moved = current is not None and (current.placement, current.resources) != where
            if current is not None and (
                moved or current.environment.fingerprint != environment.fingerprint
            ):
                await self.stop(current)
                reason = (
                    f"replacing the running instance: it runs on {current.placement!r} "
                    f"{current.resources or ''}, {where[0]!r} {where[1] or ''} was asked for"
                    if moved
                    else _replacement_reason(current.environment, environment)
                )
                emit(self._event(current, EventKind.REPLACED, reason))
                continue
            if current is None:
                instance = self._new_instance(key, plan, environment)
                instance.installed_by = installed_by
                instance.placement, instance.resources = where
            else:
                instance = current
            async with instance.lock:
                if self.instances.get(key) is not instance:
                    continue  # stopped while we waited for it: never start a forgotten one
                if not instance.ready or self.has_ended(instance):
                    instance.crashes_in_a_row = 0  # asked for on purpose: a given-up one too
                    await self._start(instance, emit)
            return instance

    def _new_instance(self, key: InstanceKey, plan: Plan, environment: Environment) -> Instance:
        partition, manifest = key[0], plan.manifest
        instance = Instance(
            partition=partition,
            manifest=manifest,
            plan=plan,
            environment=environment,
            token=secrets.token_urlsafe(32),
            log_path=self.logs_dir
            / "instances"
            / partition
            / f"{manifest.name}-{manifest.version}.log",
            data_path=self.data_dir / partition / f"{manifest.name}-{manifest.version}",
        )
        self.instances[key] = instance
        self.by_token[instance.token] = instance
        self.by_label[instance.browser_label] = instance
        return instance

    async def ensure_ready(self, instance: Instance) -> Instance:
        """Called on each request: the instance, restarted first if it crashed (with capped
        backoff); :class:`StartError` once it has been given up."""
        if instance.ready:
            return instance
        async with instance.lock:
            if self.instances.get(instance.key) is not instance:
                raise InstanceGone(instance.where)  # stopped while we waited: look again
            if instance.ready:  # restarted by another request meanwhile
                return instance
            if instance.state is InstanceState.FAILED:
                raise StartError(
                    f"{instance.where} crashed {instance.crashes_in_a_row} times and was given up",
                    hint="look at its log ('ywmagics logs'), then install it again to retry",
                    log_tail=tail_of(instance.log_path),
                )
            if instance.state is InstanceState.CRASHED:
                self._count_crash(instance)
                await asyncio.sleep(self.settings.backoff(instance.crashes_in_a_row))
            await self._start(instance, self.emit, restart="restarting after a crash")
        return instance

    async def restart(self, instance: Instance) -> Instance:
        """Stop it and start it again, as asked (by the dashboard): the same instance, its
        data folder, token and host name kept; a given-up one is given another chance."""
        async with instance.lock:
            if self.instances.get(instance.key) is not instance:
                raise InstanceGone(instance.where)
            instance.crashes_in_a_row = 0
            await self._start(instance, self.emit, restart="restarting, as asked")
        return instance

    def _note_ended(self, instance: Instance, process: asyncio.subprocess.Process) -> None:
        """The one place where a running instance becomes CRASHED: its process ended, and it was
        neither being stopped nor replaced by a newer process."""
        running = (InstanceState.STARTING, InstanceState.READY)
        if instance.process is process and instance.state in running:
            log.warning(
                "%s ended (pid %d, exit code %s)", instance.where, process.pid, process.returncode
            )
            self._crashed(instance)

    @staticmethod
    def _crashed(instance: Instance) -> None:
        instance.state = InstanceState.CRASHED
        if instance.upstream is not None:
            instance.upstream.close_idle()  # connections to a dead process

    def _count_crash(self, instance: Instance) -> None:
        """One more crash in a row (a long run starts the count anew); past the limit, the
        instance is given up."""
        if time.monotonic() - instance.started_at > self.settings.stable_after:
            instance.crashes_in_a_row = 0
        instance.crashes_in_a_row += 1
        if instance.crashes_in_a_row > self.settings.restart_limit:
            instance.state = InstanceState.FAILED
            self.emit(
                self._event(
                    instance,
                    EventKind.FAILED,
                    f"crashed {instance.crashes_in_a_row} times: given up",
                )
            )
            raise StartError(
                f"{instance.manifest.name} {instance.manifest.version} keeps crashing "
                f"({instance.crashes_in_a_row} times); it will not be restarted",
                hint="look at its log ('ywmagics logs'), then install it again to retry",
                log_tail=tail_of(instance.log_path),
            )

    def placement(self, instance: Instance) -> Placement:
        return self.placements[instance.placement]

    async def _launch(self, instance: Instance) -> Launch:
        """The child that runs ``instance``, as its placement makes it, with what every
        backend is given."""
        environment = instance.environment
        placeholders = self.installer.placeholders(instance.plan, environment.path)
        placeholders.update(
            base_path=instance.base_path,
            orchestrator_url=self.orchestrator_url,
            data=str(instance.data_path),
        )
        env = {
            **os.environ,
            "YW_ORCHESTRATOR_URL": self.orchestrator_url,
            "YW_INSTANCE_TOKEN": instance.token,
            "YW_PARTITION": instance.partition,
            "YW_BASE_PATH": instance.base_path,
            "YW_DATA_DIR": str(instance.data_path),
            "PYTHONPATH": str(environment.app),
            **{f"YW_BUILD_{k.upper()}": v for k, v in environment.config.items()},
        }
        # YW_HOME is the orchestrator's, not the backend's; bytecode writes are wanted (see
        # Installer.compile_environment).
        for private in ("YW_HOME", "PYTHONDONTWRITEBYTECODE"):
            env.pop(private, None)
        return await self.placement(instance).launch(instance, placeholders, env)

    async def _start(self, instance: Instance, emit: Emit, restart: str = "") -> None:
        """Start its process and wait until it is ready; ``restart`` says why it starts again
        (empty for a first start)."""
        manifest, environment = instance.manifest, instance.environment
        await self._kill(instance)  # what a crashed run left in its process group (or it runs)
        if restart:
            instance.restarts += 1
            emit(self._event(instance, EventKind.RESTARTED, restart))
        instance.log_path.parent.mkdir(parents=True, exist_ok=True)
        instance.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
        launch = await self._launch(instance)
        argv = launch.argv
        for warning in launch.warnings:
            emit(self._event(instance, EventKind.STARTING, warning))
        with instance.log_path.open("ab") as log_file:
            log_file.write(f"--- start {time.ctime()}: {' '.join(argv)}\n".encode())
            log_file.flush()
            try:
                process = await asyncio.create_subprocess_exec(
                    *child_argv(
                        argv,
                        cwd=launch.cwd,
                        env=launch.env,
                        private_network=launch.private_network,
                        end_grace=launch.end_grace,
                    ),
                    cwd=launch.cwd,
                    env=launch.env,
                    stdin=asyncio.subprocess.DEVNULL
                    if launch.stdin is None
                    else asyncio.subprocess.PIPE,
                    stdout=log_file if launch.stdout_to_log else asyncio.subprocess.PIPE,
                    stderr=log_file,
                    start_new_session=True,  # its own process group, signalled as a whole
                    close_fds=True,
                )
            except OSError as error:
                instance.state = InstanceState.STOPPED
                raise StartError(
                    f"cannot start {manifest.name} {manifest.version}: {argv[0]!r}: "
                    f"{error.strerror or error}",
                    hint="is the program on PATH? Check the manifest's 'start' command",
                ) from error
        if launch.stdin is not None and process.stdin is not None:
            process.stdin.write(launch.stdin)  # not closed: its end says that we are gone
        instance.process = process
        instance.started_at = time.monotonic()
        instance.state = InstanceState.STARTING
        instance.watcher = asyncio.ensure_future(self._watch(instance, process))
        if instance.upstream is not None:
            instance.upstream.close_idle()
        instance.upstream = None
        try:
            # On a cluster the job may wait first (said as 'queued'); then it starts.
            instance.upstream = await self.placement(instance).connect(instance, process, emit)
            if not restart:
                emit(self._event(instance, EventKind.STARTING, "starting"))
            await self._wait_ready(instance, process)
        except BaseException as error:  # a failure, or the install was cancelled: no half-start
            await asyncio.shield(self._kill(instance))
            # A failed restart is one more crash (so backoff and giving up apply); a failed
            # first start is reported to the install that asked for it.
            if restart:
                self._crashed(instance)
            else:
                instance.state = InstanceState.STOPPED
            if isinstance(error, StartError):
                emit(self._event(instance, EventKind.FAILED, error.message))
            raise
        instance.state = InstanceState.READY
        self.installer.mark_used(environment)
        emit(
            self._event(
                instance,
                EventKind.READY,
                f"ready in {time.monotonic() - instance.started_at:.2f} s",
                1.0,
            )
        )

    async def _watch(self, instance: Instance, process: asyncio.subprocess.Process) -> None:
        await process.wait()
        self._note_ended(instance, process)

    async def _wait_ready(self, instance: Instance, process: asyncio.subprocess.Process) -> None:
        """Until its readiness path answers (any status below 500), its process ends, or its
        time is up. Asked often at first, then less and less (:func:`_next_poll`); a Unix
        socket is only asked once its file exists (looking costs a stat, asking a connect)."""
        assert instance.upstream is not None
        manifest = instance.manifest
        started = time.monotonic()
        deadline = started + manifest.ready_timeout
        ended = asyncio.ensure_future(process.wait())
        try:
            while True:
                if process.returncode is not None:
                    raise StartError(
                        f"{manifest.name} {manifest.version} exited with code "
                        f"{process.returncode} while starting",
                        hint=f"its log is {instance.log_path}",
                        log_tail=tail_of(instance.log_path),
                    )
                if instance.socket_path is None or instance.socket_path.exists():
                    with contextlib.suppress(UpstreamError, asyncio.TimeoutError):
                        response = await asyncio.wait_for(
                            instance.upstream.request("GET", manifest.readiness, []), 2.0
                        )
                        await response.read()
                        await response.release()
                        if response.status < 500:
                            return
                now = time.monotonic()
                if now > deadline:
                    raise StartError(
                        f"{manifest.name} {manifest.version} did not answer "
                        f"{manifest.readiness} within {manifest.ready_timeout:g} s",
                        hint=f"its log is {instance.log_path}",
                        log_tail=tail_of(instance.log_path),
                    )
                await asyncio.wait({ended}, timeout=_next_poll(now - started))
        finally:
            ended.cancel()

    async def stop(self, instance: Instance, *, forget: bool = True) -> None:
        if instance.lock.locked() and instance.state is InstanceState.STARTING:
            await self.placement(instance).cancel_start(instance)  # not wait for a queue
        async with instance.lock:
            await self._kill(instance)
            instance.state = InstanceState.STOPPED
        if forget:
            if self.instances.get(instance.key) is instance:
                del self.instances[instance.key]
            self.by_token.pop(instance.token, None)
            self.by_label.pop(instance.browser_label, None)
        if instance.upstream is not None:
            instance.upstream.close_idle()
            instance.upstream = None
        self.emit(self._event(instance, EventKind.STOPPED, "stopped"))

    async def _kill(self, instance: Instance) -> None:
        """Stop the instance and all it started: TERM, a wait for the process, then the end of
        everything left (:func:`end_all`), even when the program has ended already."""
        process = instance.process
        if process is None:
            return
        if instance.state in (InstanceState.STARTING, InstanceState.READY):
            instance.state = InstanceState.STOPPING  # its end is not a crash

        async def ended(within: float) -> bool:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.wait()), within)
            return process.returncode is not None

        await self.placement(instance).ask_to_stop(instance, process, self.settings.stop_timeout)
        signal_group(process.pid, signal.SIGTERM)  # its launcher passes it on to the program
        if not await ended(self.settings.stop_timeout):
            end_all(process.pid)
            if not await ended(END_GRACE):
                signal_group(process.pid, signal.SIGKILL)
                await ended(self.settings.stop_timeout)  # reaped; unless stuck in the kernel
        await self.placement(instance).release(instance)

    async def remove_data(self, instance: Instance) -> None:
        """Delete a stopped instance's data folder, and its partition's folder once empty;
        under its key's lock, and only if no instance of its key was started again meanwhile
        (that one's folder is the same)."""
        async with self._key_locks.setdefault(instance.key, asyncio.Lock()):
            if self.instances.get(instance.key) is None:
                await asyncio.to_thread(_remove_folder_and_empty_parent, instance.data_path)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(i) for i in list(self.instances.values())))

    @staticmethod
    def _event(
        instance: Instance, kind: EventKind, text: str, progress: float | None = None
    ) -> Event:
        return event_of(kind, instance.manifest, instance.partition, text, progress)


def _remove_folder_and_empty_parent(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()
