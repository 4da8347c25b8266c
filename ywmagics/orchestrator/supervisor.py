"""Instances: running processes of environments, keyed by (partition, name, version).

The supervisor starts them on a private Unix socket (or a TCP port when the manifest asks), waits
until their readiness path answers, restarts a crashed one on its next request with capped backoff,
and stops them with TERM to the process group, a wait, then KILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ywmagics.errors import StartError
from ywmagics.events import Event, EventKind
from ywmagics.orchestrator.environments import Environment, Installer, Plan
from ywmagics.orchestrator.events import Emit
from ywmagics.orchestrator.manifest import Listen, Manifest, expand
from ywmagics.orchestrator.processes import child_popen_kwargs, tail_of, terminate_group
from ywmagics.orchestrator.upstream import UpstreamError, UpstreamPool

InstanceKey = tuple[str, str, str]
MAX_RESTARTS = 5
BACKOFF_CAP = 5.0
STABLE_AFTER = 60.0


class InstanceState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    CRASHED = "crashed"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class Instance:
    partition: str
    manifest: Manifest
    plan: Plan
    environment: Environment
    token: str
    log_path: Path
    socket_path: Path | None = None
    port: int | None = None
    process: asyncio.subprocess.Process | None = None
    state: InstanceState = InstanceState.STARTING
    started_at: float = 0.0
    crashes: int = 0
    upstream: UpstreamPool | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def key(self) -> InstanceKey:
        return (self.partition, self.manifest.name, self.manifest.version)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def to_json(self) -> dict[str, object]:
        return {
            "partition": self.partition,
            "name": self.manifest.name,
            "version": self.manifest.version,
            "state": self.state.value,
            "pid": self.process.pid if self.process else None,
            "uptime": round(time.monotonic() - self.started_at, 1) if self.alive else 0.0,
            "config": self.environment.config,
            "fingerprint": self.environment.fingerprint,
            "restarts": self.crashes,
            "log": str(self.log_path),
            "listen": str(self.socket_path) if self.socket_path else f"127.0.0.1:{self.port}",
        }


def _replacement_reason(old: Environment, new: Environment) -> str:
    if old.config != new.config:
        changed = {k: v for k, v in new.config.items() if old.config.get(k) != v}
        return f"replacing the running instance: configuration changed ({changed})"
    return "replacing the running instance: its environment was rebuilt (the backend changed)"


def _free_port() -> int:
    # Only for manifests that insist on TCP: the backend binds it itself, so a short race remains;
    # Unix sockets (the default) have none.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Supervisor:
    def __init__(
        self,
        installer: Installer,
        sockets_dir: Path,
        logs_dir: Path,
        orchestrator_url: str,
        emit: Emit,
    ) -> None:
        self.installer = installer
        self.sockets_dir = sockets_dir
        self.logs_dir = logs_dir
        self.orchestrator_url = orchestrator_url
        self.emit = emit
        self.instances: dict[InstanceKey, Instance] = {}
        self._key_locks: dict[InstanceKey, asyncio.Lock] = {}
        self.by_token: dict[str, Instance] = {}

    # -- queries -----------------------------------------------------------------------------

    def find(self, partition: str, name: str, version: str) -> Instance | None:
        return self.instances.get((partition, name, version))

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

    # -- lifecycle ---------------------------------------------------------------------------

    async def ensure(
        self, partition: str, plan: Plan, environment: Environment, emit: Emit
    ) -> Instance:
        """A ready instance of ``environment`` in ``partition``; replaces one of another config.

        Serialised per key: two installs racing with different configurations must not both
        replace the old instance (one replacement would go untracked)."""
        key = (partition, plan.manifest.name, plan.manifest.version)
        async with self._key_locks.setdefault(key, asyncio.Lock()):
            return await self._ensure(key, plan, environment, emit)

    async def _ensure(
        self, key: InstanceKey, plan: Plan, environment: Environment, emit: Emit
    ) -> Instance:
        partition, manifest = key[0], plan.manifest
        current = self.instances.get(key)
        if current is not None:
            async with current.lock:
                if (
                    current.environment.fingerprint == environment.fingerprint
                    and current.alive
                    and current.state is InstanceState.READY
                ):
                    return current
            if current.environment.fingerprint != environment.fingerprint:
                await self.stop(current)
                emit(
                    self._event(
                        current,
                        EventKind.REPLACED,
                        _replacement_reason(current.environment, environment),
                    )
                )
        instance = self.instances.get(key)
        if instance is None:
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
            )
            self.instances[key] = instance
            self.by_token[instance.token] = instance
        async with instance.lock:
            if not (instance.alive and instance.state is InstanceState.READY):
                instance.crashes = 0  # asked for on purpose: a given-up instance gets a new go
                await self._start(instance, emit)
        return instance

    async def revive(self, instance: Instance) -> Instance:
        """Called on each request: restart a crashed instance, with capped backoff."""
        if instance.alive and instance.state is InstanceState.READY:
            return instance
        async with instance.lock:
            if instance.alive and instance.state is InstanceState.READY:
                return instance
            if instance.state is InstanceState.FAILED:
                raise StartError(
                    f"{instance.manifest.name} {instance.manifest.version} in partition "
                    f"{instance.partition!r} crashed {instance.crashes} times and was given up",
                    hint="look at its log ('ywmagics logs'), then install it again to retry",
                    log_tail=tail_of(instance.log_path),
                )
            if instance.state is not InstanceState.STOPPED:
                self._note_crash(instance)
                delay = (
                    min(BACKOFF_CAP, 0.25 * 2 ** (instance.crashes - 1))
                    if instance.crashes > 1
                    else 0
                )
                await asyncio.sleep(delay)
            await self._start(instance, self.emit, restart=True)
        return instance

    def _note_crash(self, instance: Instance) -> None:
        if time.monotonic() - instance.started_at > STABLE_AFTER:
            instance.crashes = 0
        instance.crashes += 1
        if instance.crashes > MAX_RESTARTS:
            instance.state = InstanceState.FAILED
            self.emit(
                self._event(
                    instance, EventKind.FAILED, f"crashed {instance.crashes} times: given up"
                )
            )
            raise StartError(
                f"{instance.manifest.name} {instance.manifest.version} keeps crashing "
                f"({instance.crashes} times); it will not be restarted",
                hint="look at its log ('ywmagics logs'), then install it again to retry",
                log_tail=tail_of(instance.log_path),
            )

    async def _start(self, instance: Instance, emit: Emit, restart: bool = False) -> None:
        manifest, environment = instance.manifest, instance.environment
        await self._kill(instance)  # what a crashed run left in its process group
        emit(
            self._event(
                instance,
                EventKind.RESTARTED if restart else EventKind.STARTING,
                "restarting after a crash" if restart else "starting",
            )
        )
        instance.log_path.parent.mkdir(parents=True, exist_ok=True)
        placeholders = self.installer.placeholders(instance.plan, environment.path)
        if manifest.listen is Listen.UNIX:
            instance.socket_path = self.sockets_dir / f"{secrets.token_hex(6)}.sock"
            placeholders["socket"] = str(instance.socket_path)
            placeholders["port"] = ""
        else:
            instance.port = _free_port()
            placeholders["port"] = str(instance.port)
            placeholders["socket"] = ""
        base_path = f"/backends/{manifest.name}/{manifest.version}"
        placeholders.update(base_path=base_path, orchestrator_url=self.orchestrator_url)
        argv = [expand(arg, placeholders) for arg in manifest.start]
        extra_env = {k: expand(v, placeholders) for k, v in manifest.env.items()}
        env = {
            **os.environ,
            "YW_ORCHESTRATOR_URL": self.orchestrator_url,
            "YW_INSTANCE_TOKEN": instance.token,
            "YW_PARTITION": instance.partition,
            "YW_BASE_PATH": base_path,
            "PYTHONPATH": str(environment.app),
            **{f"YW_BUILD_{k.upper()}": v for k, v in environment.config.items()},
            **extra_env,
        }
        if instance.port is not None:
            env["PORT"] = str(instance.port)
        # YW_HOME is the orchestrator's, not the backend's; bytecode writes are wanted (see
        # Installer.compile_environment).
        for private in ("YW_HOME", "PYTHONDONTWRITEBYTECODE"):
            env.pop(private, None)
        with instance.log_path.open("ab") as log:
            log.write(f"--- start {time.ctime()}: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                instance.process = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=environment.path,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    **child_popen_kwargs(),  # type: ignore[arg-type]
                )
            except OSError as error:
                instance.state = InstanceState.STOPPED
                raise StartError(
                    f"cannot start {manifest.name} {manifest.version}: {argv[0]!r}: "
                    f"{error.strerror or error}",
                    hint="is the program on PATH? Check the manifest's 'start' command",
                ) from None
        instance.started_at = time.monotonic()
        instance.state = InstanceState.STARTING
        if instance.upstream is not None:
            await instance.upstream.aclose()
        instance.upstream = UpstreamPool(
            uds=str(instance.socket_path) if instance.socket_path else None, port=instance.port
        )
        try:
            await self._wait_ready(instance)
        except BaseException as error:  # a failure, or the install was cancelled: no half-start
            await asyncio.shield(self._kill(instance))
            # A failed restart is one more crash (so backoff and giving up apply); a failed
            # first start is reported to the install that asked for it.
            instance.state = InstanceState.CRASHED if restart else InstanceState.STOPPED
            if isinstance(error, StartError):
                emit(self._event(instance, EventKind.FAILED, error.message))
            raise
        instance.state = InstanceState.READY
        emit(
            self._event(
                instance,
                EventKind.READY,
                f"ready in {time.monotonic() - instance.started_at:.2f} s",
                1.0,
            )
        )

    async def _wait_ready(self, instance: Instance) -> None:
        assert instance.upstream is not None and instance.process is not None
        manifest = instance.manifest
        deadline = time.monotonic() + manifest.ready_timeout
        delay = 0.005
        while True:
            if instance.process.returncode is not None:
                raise StartError(
                    f"{manifest.name} {manifest.version} exited with code "
                    f"{instance.process.returncode} while starting",
                    hint=f"its log is {instance.log_path}",
                    log_tail=tail_of(instance.log_path),
                )
            with contextlib.suppress(UpstreamError, asyncio.TimeoutError):
                response = await asyncio.wait_for(
                    instance.upstream.request("GET", manifest.readiness, []), 2.0
                )
                await response.read()
                await response.release()
                if response.status < 500:
                    return
            if time.monotonic() > deadline:
                raise StartError(
                    f"{manifest.name} {manifest.version} did not answer {manifest.readiness} "
                    f"within {manifest.ready_timeout:g} s",
                    hint=f"its log is {instance.log_path}",
                    log_tail=tail_of(instance.log_path),
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(instance.process.wait()), delay)
            delay = min(delay * 1.5, 0.1)

    async def stop(self, instance: Instance, *, forget: bool = True) -> None:
        async with instance.lock:
            await self._kill(instance)
            instance.state = InstanceState.STOPPED
        if forget:
            if self.instances.get(instance.key) is instance:
                del self.instances[instance.key]
            self.by_token.pop(instance.token, None)
        if instance.upstream is not None:
            await instance.upstream.aclose()
            instance.upstream = None
        self.emit(self._event(instance, EventKind.STOPPED, "stopped"))

    async def _kill(self, instance: Instance) -> None:
        """Stop the instance's whole process group: even when its leader has died already,
        what it started may live on in the group."""
        process = instance.process
        if process is None:
            return
        await asyncio.to_thread(
            terminate_group, process.pid, is_alive=lambda: process.returncode is None
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), 5)
        if instance.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                instance.socket_path.unlink()

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(i) for i in list(self.instances.values())))

    def _event(
        self, instance: Instance, kind: EventKind, text: str, progress: float | None = None
    ) -> Event:
        return Event(
            kind,
            instance.manifest.name,
            instance.manifest.version,
            instance.partition,
            text,
            progress,
        )
