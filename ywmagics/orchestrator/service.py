"""The orchestrator's work, independent of HTTP: install, route, stop, uninstall, report."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ywmagics import bulk, paths, wire
from ywmagics._version import __version__
from ywmagics.errors import (
    BackendNotFound,
    ConfigurationError,
    InstallError,
    InstanceNotFound,
    InstanceReplaced,
)
from ywmagics.events import Event, EventKind
from ywmagics.orchestrator.config import ClusterSettings, SupervisorSettings
from ywmagics.orchestrator.environments import Environment, Installer, Plan
from ywmagics.orchestrator.events import Emit, EventBus, event_of
from ywmagics.orchestrator.installs import InstallRecord, InstallTracker
from ywmagics.orchestrator.inventory import ResourceMeter, SizeCache
from ywmagics.orchestrator.manifest import Manifest, Runtime
from ywmagics.orchestrator.owners import POLL_INTERVAL, PartitionOwners
from ywmagics.orchestrator.placements.slurm import SlurmPlacement
from ywmagics.orchestrator.processes import program_pid, tail_of
from ywmagics.orchestrator.registry import Registry
from ywmagics.orchestrator.supervisor import Instance, InstanceGone, InstanceState, Supervisor
from ywmagics.protocol import PROTOCOL_VERSION
from ywmagics.spec import (
    BackendSpec,
    InstallRequest,
    VersionRange,
    is_published,
    validate_name,
    version_key,
)

log = logging.getLogger("ywmagics.orchestrator")


def _bundled_here(manifest: Manifest, client: ClientInstall) -> str:
    """What a resolved event adds when a backend bundled with this install serves a client
    whose own bundled backends this machine does not see (they may be of another version)."""
    if not client.unseen or manifest.folder.parent != paths.bundled_registry_dir():
        return ""
    return (
        f", bundled with this orchestrator's ywmagics {__version__}: the bundled backends "
        f"of the client's ({client.unseen}) are not on this machine"
    )


def _rebuilt(other: Environment) -> str:
    """Why an environment like ``other`` is built again: ``other`` is another ywmagics's."""
    codec = (
        f"codec {other.codec}, this one speaks {wire.CODEC_VERSION}"
        if other.codec != wire.CODEC_VERSION
        else f"the same codec, {wire.CODEC_VERSION}, in other files"
    )
    return (
        f"environment {other.fingerprint} with these options was built by ywmagics "
        f"{other.built_by or 'an older version'} ({codec}): building one for ywmagics "
        f"{__version__}, the other is kept for its own"
    )


@dataclass(frozen=True)
class ClientInstall:
    """The ywmagics install of a client, as it says: its version, and the folder of the
    backends it bundles (``None``: this install's); ``unseen``, the folder it named if this
    machine does not see it (this install's bundled backends serve it, and it is told)."""

    version: str = ""
    bundled: Path | None = None
    unseen: str = ""


@dataclass
class Settings:
    environments_dir: Path
    logs_dir: Path
    sockets_dir: Path
    registries: Sequence[Path]
    url: str = ""
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    # the orchestrator's own Unix socket, which TCP backends in private networks call it on
    unix_socket: Path | None = None
    idle_timeout: float = 0.0  # seconds idle after which it exits (0: never)
    # each instance's own data folder is under it ({data}); by default next to the logs
    instances_data_dir: Path | None = None
    # clusters of the user's configuration ('--on NAME'); 'slurm' is there without one
    clusters: dict[str, ClusterSettings] = field(default_factory=dict)


class Orchestrator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = time.time()
        self.bus = EventBus()
        self.registry = Registry(
            settings.registries, settings.environments_dir.parent / "published"
        )
        self.installer = Installer(settings.environments_dir, settings.logs_dir)
        self.supervisor = Supervisor(
            self.installer,
            settings.sockets_dir,
            settings.logs_dir,
            settings.url,
            self.bus.publish,
            settings.supervisor,
            settings.unix_socket,
            settings.instances_data_dir,
            {
                name: SlurmPlacement(
                    cluster, settings.environments_dir.parent, settings.unix_socket
                )
                for name, cluster in {"slurm": ClusterSettings(), **settings.clusters}.items()
            },
        )
        self.owners = PartitionOwners()
        self._watching_owners: asyncio.Future[None] | None = None
        self._build_locks: dict[str, asyncio.Lock] = {}
        self._index_threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="ywmagics-index"
        )
        # Which environment to start when a request reaches a backend that is installed but not
        # running: the last one installed or started for that name and version.
        self._last_used: dict[tuple[str, str], tuple[Plan, Environment]] = {}
        # Where an install placed each (partition, name, version), with what it asked for: a
        # request that starts it again starts it there.
        self._placed: dict[tuple[str, str, str], tuple[str, dict[str, str]]] = {}
        # The proxy's fast path: (partition, name, range as written) -> the instance it chose.
        self._routes: dict[tuple[str, str, str], Instance] = {}
        self._background: set[asyncio.Future[None]] = set()
        self.installs = InstallTracker()
        self._meter = ResourceMeter()
        self._sizes = SizeCache()
        self._measuring: asyncio.Future[None] | None = None
        self.installs_under_way = 0  # install requests being served (status: 'installing')
        self.stopping = False  # a shutdown was asked: no new install is taken
        # environments a request is starting an instance of (see _find_instance), by folder
        self._starting: collections.Counter[Path] = collections.Counter()

    # -- install -----------------------------------------------------------------------------

    async def install(
        self,
        request: InstallRequest,
        requested_by: str = "",
        owner: int | None = None,
        client: ClientInstall | None = None,
    ) -> AsyncIterator[Event | dict[str, Any]]:
        """Yield events as they happen, then the result ``{"backends": [...]}``.
        ``requested_by`` names the client (``kernel 1234``), for the clients a new instance
        leaves behind; ``owner`` is the pid of a process that owns the partition (a kernel its
        own): the partition is stopped when its owners have all ended; ``client``, the
        ywmagics install of the client, when it says (its version, its bundled backends)."""
        client = client or ClientInstall()
        self.installs_under_way += 1  # from the request on: a resolve may take a while
        try:
            async for item in self._install(request, requested_by, owner, client):
                yield item
        finally:
            self.installs_under_way -= 1

    async def _install(
        self, request: InstallRequest, requested_by: str, owner: int | None, client: ClientInstall
    ) -> AsyncIterator[Event | dict[str, Any]]:
        if owner is not None:
            await self._claim(request.partition, owner, client.version)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        records: dict[str, InstallRecord] = {}  # by backend name: what the dashboard shows

        def emit(event: Event) -> None:
            record = records.get(event.name)
            if record is None:
                record = records[event.name] = self.installs.begin(
                    request.partition, event.name, event.version
                )
            self.installs.step(record, event)
            queue.put_nowait(event)
            self.bus.publish(event)

        task: asyncio.Future[list[dict[str, Any]]] | None = None
        ended = False
        try:
            plans = await self._plan(request, emit, client)
            task = asyncio.ensure_future(
                _all_or_nothing(
                    [
                        self._install_one(request, spec, plan, emit, requested_by)
                        for spec, plan in plans
                    ]
                )
            )
            while not task.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            result = task.result()
            for record in records.values():
                self.installs.finish(record)
            ended = True
            yield {"backends": result}
        except BaseException as error:
            if not ended:  # not a client that leaves once it has the result
                self._install_failed(request, records, error)
            raise
        finally:
            if task is not None and not task.done():
                task.cancel()

    def _install_failed(
        self, request: InstallRequest, records: dict[str, InstallRecord], error: BaseException
    ) -> None:
        """Shown as failed, every backend of the request (one failure ends them all), and
        said on the event stream when nothing said it yet (a build that failed)."""
        if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            error = InstallError("the install was cancelled: its client went away")
        for spec in request.modules:  # a spec that did not resolve has no record yet
            if spec.name not in records:
                records[spec.name] = self.installs.begin(
                    request.partition, spec.name, str(spec.range)
                )
        for record in records.values():
            if record.state != "running":
                continue
            said = bool(record.steps) and record.steps[-1]["kind"] == EventKind.FAILED.value
            self.installs.fail(record, error)
            if not said:
                self.bus.publish(
                    event_of(EventKind.FAILED, record, record.partition, record.error or "failed")
                )

    async def _plan(
        self, request: InstallRequest, emit: Emit, client: ClientInstall
    ) -> list[tuple[BackendSpec, Plan]]:
        """Resolve every spec and check every option before any work starts (against the
        client's bundled backends, when it names them)."""
        if request.on is not None and request.on not in self.supervisor.placements:
            # Never run elsewhere than where the user asked.
            raise ConfigurationError(
                f"no cluster {request.on!r} to place instances on",
                hint="clusters are [clusters.NAME] tables of config.toml; without --on, "
                "instances run on this machine",
            )
        names = {spec.name for spec in request.modules}
        stray = sorted(set(request.configurations) - names)
        if stray:
            raise ConfigurationError(
                f"configuration given for {', '.join(stray)}, which is not being installed",
                hint=f"configurations are keyed by backend name: {', '.join(sorted(names))}",
            )
        plans = []
        for spec in request.modules:
            if is_published(spec.name):  # the index is asked: not in the loop...
                # ...nor in the loop's default threads, which builds use: a slow index must
                # not hold installs of anything else.
                manifest = await asyncio.get_running_loop().run_in_executor(
                    self._index_threads, self.registry.resolve, spec.name, spec.range
                )
            else:
                manifest = self.registry.resolve(spec.name, spec.range, client.bundled)
            build = request.configurations.get(spec.name, {}).get("build", {})
            config = manifest.build_config(build)
            plan = await asyncio.to_thread(
                self.installer.plan, manifest, config, *self._built_on_nodes_of(request.on)
            )
            emit(
                event_of(
                    EventKind.RESOLVED,
                    manifest,
                    request.partition,
                    f"{spec.name}#{spec.range} resolved to {manifest.version}"
                    + (f" on {manifest.source.index}" if manifest.source else "")
                    + _bundled_here(manifest, client),
                    0.05,
                )
            )
            plans.append((spec, plan))
        return plans

    def _built_on_nodes_of(self, cluster: str | None) -> tuple[str | None, str]:
        """``cluster`` if its nodes build environments themselves (they share no folder), and
        the Python its shim runs with there (that of an empty ``build.python``)."""
        settings = self.settings.clusters.get(cluster or "")
        if settings is None or not settings.node_dir:
            return None, ""
        return cluster, settings.python

    async def _install_one(
        self,
        request: InstallRequest,
        spec: BackendSpec,
        plan: Plan,
        emit: Emit,
        requested_by: str,
    ) -> dict[str, Any]:
        manifest, partition = plan.manifest, request.partition
        environment = await self._environment(plan, partition, emit)
        by = f"alias {spec.alias!r}" + (f" of {requested_by}" if requested_by else "")
        before = self.supervisor.instances.get((partition, manifest.name, manifest.version))
        replaced = before.environment.fingerprint if before is not None else None
        instance = await self.supervisor.ensure(
            partition, plan, environment, emit, by, request.on or "local", request.resources
        )
        # Once it runs, not before: a compile competing for the CPU would slow its start.
        self._in_background(asyncio.to_thread(self.installer.compile_environment, environment))
        self._routes.clear()  # a range may now resolve to this instance
        self._last_used[(manifest.name, manifest.version)] = (plan, environment)
        self._placed[(partition, manifest.name, manifest.version)] = (
            request.on or "local",
            dict(request.resources),
        )
        return {
            "alias": spec.alias,
            "name": manifest.name,
            "version": manifest.version,
            "partition": partition,
            "path": f"/backends/{manifest.name}/{manifest.version}",
            "config": environment.config,
            "fingerprint": environment.fingerprint,
            # the configuration of the instance it replaced: its clients now refuse to run
            "replaced": replaced if replaced != environment.fingerprint else None,
            "python": environment.python_version,
            "pid": program_pid(instance.process.pid) if instance.process else None,
        }

    async def _environment(self, plan: Plan, partition: str, emit: Emit) -> Environment:
        manifest = plan.manifest
        loop = asyncio.get_running_loop()

        def report(text: str, progress: float | None) -> None:
            event = event_of(EventKind.BUILDING, manifest, partition, text, progress)
            loop.call_soon_threadsafe(emit, event)

        lock = self._build_locks.setdefault(
            self.installer.final_path(plan).as_posix(), asyncio.Lock()
        )
        async with lock:
            existing = self.installer.find(plan)
            if existing is not None:
                said, progress = f"environment {existing.fingerprint} already installed", 0.8
                if plan.node is not None:
                    said, progress = f"{said} here; its node has it or builds it", 0.1
                emit(event_of(EventKind.REUSED, manifest, partition, said, progress))
                return existing
            if manifest.runtime is Runtime.PYTHON:
                for other in await asyncio.to_thread(self.installer.built_by_others, plan):
                    emit(event_of(EventKind.BUILDING, manifest, partition, _rebuilt(other), 0.1))
            started = time.monotonic()
            environment, _ = await asyncio.to_thread(self.installer.build, plan, report)
        if plan.node is not None:
            said = f"environment {environment.fingerprint} prepared: its node builds the rest"
            emit(event_of(EventKind.BUILT, manifest, partition, said, 0.1))
            return environment
        emit(
            event_of(
                EventKind.BUILT,
                manifest,
                partition,
                f"environment {environment.fingerprint} built in "
                f"{time.monotonic() - started:.1f} s",
                0.9,
            )
        )
        return environment

    async def _claim(self, partition: str, owner: int, version: str = "") -> None:
        if self.owners.claim(partition, owner, version):
            log.info("partition %r: its kernel ended; stopping what it ran", partition)
            await self.stop(partition, None, None)
        if self._watching_owners is None or self._watching_owners.done():
            self._watching_owners = asyncio.ensure_future(self._watch_owners())

    async def _watch_owners(self) -> None:
        """Stop each partition whose owners have all ended, soon after; until none is owned.
        Meanwhile, remove the shared-memory segments of kernels and runners that died in the
        middle of a transfer (see :mod:`ywmagics.bulk`): nobody else would. Once no partition
        is owned, it sweeps on until what the last kernel left is old enough to go."""
        last_owner_seen = time.monotonic()
        while self.owners or time.monotonic() - last_owner_seen < bulk.SWEEP_AGE + POLL_INTERVAL:
            if self.owners:
                last_owner_seen = time.monotonic()
            await asyncio.sleep(POLL_INTERVAL)
            await self._sweep_segments()
            for partition in self.owners.orphaned():
                log.info("partition %r: its kernel ended; stopping what it ran", partition)
                await self.stop(partition, None, None)

    async def _sweep_segments(self) -> None:
        try:  # in a thread: the loop serves on, however many entries the folder has
            removed = await asyncio.to_thread(bulk.sweep)
        except Exception:  # never the end of the watch over partitions
            log.exception("the sweep of shared-memory segments failed")
            return
        for name in removed:
            log.info("removed the segment %s (a transfer cut short)", name)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(work)
        self._background.add(task)  # a task only weakly referenced by the loop may vanish
        task.add_done_callback(self._background.discard)
        return task

    # -- routing -----------------------------------------------------------------------------

    async def instance_for(
        self, partition: str, name: str, version_range: str, fingerprint: str | None = None
    ) -> Instance:
        """The instance a proxied request goes to, started or revived when needed. With the
        ``fingerprint`` of the configuration a client installed, one of another configuration
        is refused (:class:`InstanceReplaced`), never used in its place."""
        cached = self._routes.get((partition, name, version_range))
        if cached is not None and self.supervisor.is_current_and_ready(cached):
            if fingerprint and cached.environment.fingerprint != fingerprint:
                raise self._replaced(cached, fingerprint)
            return cached
        try:
            instance = await self._find_instance(partition, name, version_range)
        except InstanceGone:  # stopped while this request waited for it: once more
            try:
                instance = await self._find_instance(partition, name, version_range)
            except InstanceGone as again:
                raise InstanceNotFound(
                    f"{again} was stopped while this request waited for it",
                    hint="send the request again",
                ) from again
        self._routes[(partition, name, version_range)] = instance
        if fingerprint and instance.environment.fingerprint != fingerprint:
            raise self._replaced(instance, fingerprint)
        return instance

    def _replaced(self, instance: Instance, fingerprint: str) -> InstanceReplaced:
        """What a client bound to ``fingerprint`` is told: what it had, what runs, who put it
        there, and how to keep both."""
        had = next(
            (
                e.config
                for e in self.installer.environments()
                if e.name == instance.manifest.name and e.fingerprint == fingerprint
            ),
            None,
        )
        running = instance.environment.config
        if had is not None:
            differ = sorted(k for k in {*had, *running} if had.get(k) != running.get(k))
            was = ", ".join(f"{k}={had.get(k, '')!r}" for k in differ) or "another build"
            now = ", ".join(f"{k}={running.get(k, '')!r}" for k in differ) or "a rebuilt one"
        else:
            was, now = "another configuration", ", ".join(f"{k}={v!r}" for k, v in running.items())
        by = f", installed by {instance.installed_by}" if instance.installed_by else ""
        return InstanceReplaced(
            f"this client installed {instance.manifest.name} {instance.manifest.version} with "
            f"{was}; in partition {instance.partition!r} it now runs with {now}{by}. "
            "Its state (variables, files it held) went with the instance it replaced",
            hint="to keep both, install them in different partitions (--partition NAME); to use "
            "what runs now, install this alias again",
        )

    async def _find_instance(self, partition: str, name: str, version_range: str) -> Instance:
        name = validate_name(name)
        wanted = VersionRange.parse(version_range)
        running = [
            i
            for i in self.supervisor.matching(partition=partition, name=name)
            if wanted.matches(i.manifest.version)
        ]
        if running:
            best = max(running, key=lambda i: version_key(i.manifest.version))
            return await self.supervisor.ensure_ready(best)
        # The environment last installed or started for a version is preferred; other
        # installed versions count too.
        candidates = {v: p for (n, v), p in self._last_used.items() if n == name}
        for environment in self.installer.environments():
            if (
                environment.name == name
                and environment.version not in candidates
                and wanted.matches(environment.version)
            ):
                manifest = self._manifest_of(environment)
                if manifest is not None:
                    plan = await asyncio.to_thread(
                        self.installer.plan,
                        manifest,
                        environment.config,
                        *self._built_on_nodes_of(environment.node),
                    )
                    if plan.fingerprint == environment.fingerprint:
                        candidates.setdefault(environment.version, (plan, environment))
        version = wanted.best(candidates)
        if version is None:
            raise BackendNotFound(
                f"{name}#{version_range} is not running in partition {partition!r} and not "
                "installed",
                hint=f"install it first, e.g. 'ywmagics install {name}#{version_range} "
                f"--partition {partition}'",
            )
        plan, environment = candidates[version]
        # No await from this look to the count: gc, which keeps what is counted, either sees
        # it counted or has retired it already (then this says so, rather than failing to run
        # a program whose folder is gone).
        if self.installer.find(plan) is None:
            raise BackendNotFound(
                f"{name} {version} was uninstalled while this request was starting it",
                hint=f"install it again: 'ywmagics install {name}#{version}'",
            )
        self._starting[environment.path] += 1
        try:
            # Where it was last installed to run, with the resources asked for then; an
            # environment that a cluster's nodes build runs there, and nowhere else.
            placement, resources = self._placed.get(
                (partition, name, version), (environment.node or "local", {})
            )
            return await self.supervisor.ensure(
                partition,
                plan,
                environment,
                self.bus.publish,
                placement=placement,
                resources=resources,
            )
        finally:
            self._starting[environment.path] -= 1
            if not self._starting[environment.path]:
                del self._starting[environment.path]

    def _manifest_of(self, environment: Environment) -> Manifest | None:
        index = (environment.source or {}).get("index")
        return self.registry.known(environment.name, environment.version, index)

    # -- administration ----------------------------------------------------------------------

    def status(self, environments: list[Environment] | None = None) -> dict[str, Any]:
        if environments is None:
            environments = self.installer.environments()
        attached = self.owners.versions()  # one look at each kernel's process
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "codec": wire.CODEC_VERSION,
            "pid": os.getpid(),
            "url": self.settings.url,
            "uptime": round(time.time() - self.started, 1),
            "started": self.started,
            "instances": len(self.supervisor.instances),
            "environments": len(environments),
            "kernels": len(attached),
            "installing": self.installs_under_way,
            # The versions in play: each attached kernel's ywmagics, each runner's codec.
            "attached": [
                {"pid": pid, "version": version} for pid, version in sorted(attached.items())
            ],
            "runners": [
                {
                    "partition": instance.partition,
                    "name": instance.manifest.name,
                    "version": instance.manifest.version,
                    "codec": instance.environment.codec,
                    "built_by": instance.environment.built_by,
                }
                for instance in self.supervisor.instances.values()
                if instance.manifest.runtime is Runtime.PYTHON
            ],
            "registries": [str(f) for f in self.registry.folders],
            "client_registries": [str(f) for f in self.registry.client_bundled],
        }

    def in_use(self) -> str:
        """What uses it (``""``: nothing): running instances, attached kernels, installs
        (from their request on, before anything is resolved)."""
        counts = (
            (len(self.supervisor.instances), "running instance(s)"),
            (len(self.owners.living()), "attached kernel(s)"),
            (self.installs_under_way, "install(s) under way"),
        )
        return ", ".join(f"{count} {what}" for count, what in counts if count)

    def _usage(self) -> dict[int, tuple[float | None, int | None]]:
        """CPU and memory of every local instance's process tree (other placements' children
        are only what starts them elsewhere)."""
        return self._meter.measure(
            i.process.pid
            for i in self.supervisor.instances.values()
            if i.process is not None and i.placement == "local"
        )

    def instance_facts(
        self,
        instance: Instance,
        usage: dict[int, tuple[float | None, int | None]] | None = None,
    ) -> dict[str, Any]:
        """What ``ywmagics list`` and the dashboard say of an instance; ``usage`` is
        :meth:`_usage`, looked at once for all of them."""
        facts: dict[str, Any] = instance.to_dict()
        state = instance.state
        if state is InstanceState.STARTING and instance.restarts:
            facts["state"] = "restarting"
        facts["given_up"] = state is InstanceState.FAILED
        running = state in (InstanceState.STARTING, InstanceState.READY)
        facts["started"] = time.time() - facts["uptime"] if running else None
        if usage is None:
            usage = self._usage()
        pid = instance.process.pid if instance.process is not None else None
        facts["cpu_percent"], facts["rss"] = (
            usage.get(pid, (None, None)) if running and pid is not None else (None, None)
        )
        facts.update(self.supervisor.placement(instance).facts(instance))
        facts["python_version"] = instance.environment.python_version
        return facts

    def environment_facts(self, environment: Environment) -> dict[str, Any]:
        """What ``ywmagics list`` and the dashboard say of an environment; its size once it
        has been measured (in the background: see :meth:`measure_sizes`)."""
        in_use = sorted(
            i.partition
            for i in self.supervisor.instances.values()
            if i.environment.path == environment.path
        )
        return {
            **environment.to_dict(),
            "last_used": self.installer.last_used(environment),
            "size": self._sizes.get(environment.path),
            "in_use": in_use,
        }

    def measure_sizes(self, environments: list[Environment]) -> None:
        """Measure, in a thread, the environments whose size is unknown or old (one run at a
        time)."""
        if self._measuring is not None and not self._measuring.done():
            return
        folders = [e.path for e in environments]
        self._sizes.keep_only(folders)
        stale = self._sizes.stale(folders)
        if stale:

            async def measure() -> None:
                for folder in stale:
                    await asyncio.to_thread(self._sizes.measure, folder)

            self._measuring = self._in_background(measure())

    def listing(self) -> dict[str, Any]:
        environments = self.installer.environments()
        self.measure_sizes(environments)
        usage = self._usage()
        return {
            "instances": [
                self.instance_facts(i, usage) for i in self.supervisor.instances.values()
            ],
            "environments": [self.environment_facts(e) for e in environments],
            "backends": [
                {
                    "name": m.name,
                    "version": m.version,
                    "description": m.description,
                    "folder": str(m.folder),
                    "build": {
                        o.name: {"default": o.default, "help": o.help} for o in m.build.values()
                    },
                }
                for versions in self.registry.manifests().values()
                for m in versions.values()
            ],
        }

    def overview(self) -> dict[str, Any]:
        """Everything the dashboard shows, at this moment."""
        found = self.installer.environments()
        self.measure_sizes(found)
        self._meter.forget_ended()
        usage = self._usage()
        instances = [self.instance_facts(i, usage) for i in self.supervisor.instances.values()]
        environments = [self.environment_facts(e) for e in found]
        partitions = sorted({i["partition"] for i in instances})
        return {
            "orchestrator": self.status(found),
            "partitions": [
                {
                    "name": partition,
                    "owners": self.owners.of(partition),
                    "instances": [i for i in instances if i["partition"] == partition],
                }
                for partition in partitions
            ],
            "environments": environments,
            "disk": {"environments": sum(e["size"] or 0 for e in environments)},
            "installs": self.installs.to_list(),
        }

    async def stop(
        self,
        partition: str | None,
        name: str | None,
        version: str | None,
        *,
        keep_data: bool = False,
    ) -> list[dict[str, Any]]:
        """Stop what matches; each instance's data folder goes with it unless ``keep_data``."""
        chosen = self.supervisor.matching(partition, name, version)
        await asyncio.gather(*(self.supervisor.stop(i) for i in chosen))
        if not keep_data:
            for instance in chosen:
                await self.supervisor.remove_data(instance)
        return [
            {"partition": i.partition, "name": i.manifest.name, "version": i.manifest.version}
            for i in chosen
        ]

    def logs(self, name: str, partition: str, lines: int) -> str:
        matches = self.supervisor.matching(partition=partition, name=validate_name(name))
        if not matches:
            known = (
                ", ".join(
                    f"{i.manifest.name}@{i.partition}" for i in self.supervisor.instances.values()
                )
                or "none"
            )
            raise InstanceNotFound(
                f"no instance of {name!r} in partition {partition!r}",
                hint=f"running instances: {known}",
            )
        instance = max(matches, key=lambda i: version_key(i.manifest.version))
        return tail_of(instance.log_path, lines)

    async def restart(self, partition: str, name: str, version: str) -> dict[str, Any]:
        """Stop an instance and start it again (the dashboard's Restart)."""
        instance = self.supervisor.instances.get((partition, validate_name(name), version))
        if instance is None:
            raise InstanceNotFound(
                f"no instance of {name} {version} in partition {partition!r}",
                hint="it may have been stopped meanwhile: 'ywmagics list' shows what runs",
            )
        try:
            await self.supervisor.restart(instance)
        except InstanceGone as gone:
            raise InstanceNotFound(f"{gone} was stopped while it was being restarted") from gone
        return self.instance_facts(instance)

    async def uninstall(self, spec: str, fingerprint: str | None = None) -> dict[str, Any]:
        """Remove the environments that match ``spec`` (only the one of ``fingerprint`` if
        given), stopping what runs from them."""
        parsed = BackendSpec.parse(spec)
        environments = [
            e
            for e in self.installer.environments()
            if e.name == parsed.name
            and parsed.range.matches(e.version)
            and fingerprint in (None, e.fingerprint)
        ]
        if not environments:
            what = f"{spec!r}" + (f" with fingerprint {fingerprint}" if fingerprint else "")
            raise BackendNotFound(f"no installed environment matches {what}")
        removed, stopped = await self._remove_environments(environments)
        return {"removed": removed, "stopped_partitions": stopped}

    async def gc(
        self, older_than_days: float, dry_run: bool = False, only: list[str] | None = None
    ) -> dict[str, Any]:
        """Remove the environments that no instance runs from and that none has started from
        for more than ``older_than_days``; with ``dry_run``, only say which; with ``only``
        (``NAME/VERSION/FINGERPRINT``: what a dry run listed and the user confirmed), none but
        those."""
        cutoff = time.time() - older_than_days * 86400
        in_use = {i.environment.path for i in self.supervisor.instances.values()}
        in_use.update(self._starting)  # chosen by a request, not running yet
        old, kept = [], []
        for environment in self.installer.environments():
            unused = environment.path not in in_use
            key = f"{environment.name}/{environment.version}/{environment.fingerprint}"
            chosen = only is None or key in only
            if unused and chosen and self.installer.last_used(environment) < cutoff:
                old.append(environment)
            else:
                kept.append(environment)
        removed = [self.environment_facts(e) for e in old]
        if old and not dry_run:
            await self._remove_environments(old)
        return {
            "removed": removed,
            "kept": [self.environment_facts(e) for e in kept],
            "dry_run": dry_run,
        }

    async def _remove_environments(
        self, environments: list[Environment]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Their facts, and the partitions where something that ran from them was stopped."""
        facts = [self.environment_facts(e) for e in environments]
        paths = {e.path for e in environments}
        # Unusable first, so that no request starts them again while their instances stop.
        for environment in environments:
            last = self._last_used.get((environment.name, environment.version))
            if last is not None and last[1].path == environment.path:
                del self._last_used[(environment.name, environment.version)]
            self.installer.retire(environment)
        self._routes.clear()
        stopped = []
        for instance in list(self.supervisor.instances.values()):
            if instance.environment.path in paths:
                await self.supervisor.stop(instance)
                await self.supervisor.remove_data(instance)
                stopped.append(instance.partition)
        for environment in environments:
            await asyncio.to_thread(self.installer.remove, environment)
        return facts, stopped

    def start(self, exit_when_idle: Callable[[str], None] | None = None) -> None:
        """Once it serves: in the background, end what a previous orchestrator left running on
        clusters (placements' sweeps); with ``exit_when_idle``, call it (with why) once idle for
        ``idle_timeout`` seconds."""
        self._in_background(self._sweep_placements())
        if exit_when_idle is not None and self.settings.idle_timeout > 0:
            self._in_background(self._watch_idle(exit_when_idle))

    def idle(self) -> bool:
        """Nothing to stay up for: see :meth:`in_use`."""
        return not self.in_use()

    async def _watch_idle(self, exit_when_idle: Callable[[str], None]) -> None:
        timeout = self.settings.idle_timeout
        every = min(30.0, max(0.2, timeout / 5))
        idle_since: float | None = None
        while True:
            await asyncio.sleep(every)
            if not self.idle():
                idle_since = None
                continue
            now = time.monotonic()
            idle_since = now if idle_since is None else idle_since
            if now - idle_since >= timeout:
                return exit_when_idle(
                    f"idle for {now - idle_since:.0f} s (no kernel attached, no instance "
                    f"running): idle_timeout is {timeout:g} s (config.toml; 0 = never)"
                )

    async def _sweep_placements(self) -> None:
        placements = {id(p): p for p in self.supervisor.placements.values()}.values()
        for placement in placements:
            try:
                for ended in await placement.sweep():
                    log.info("ended %s, left by a previous orchestrator", ended)
            except Exception:  # never the orchestrator's end
                log.exception("the sweep of %s placements failed", placement.kind)

    async def shutdown(self) -> None:
        if self._watching_owners is not None:
            self._watching_owners.cancel()
        self._index_threads.shutdown(wait=False, cancel_futures=True)
        # Build steps first: a half-done build is swept at the next start, but must not run on.
        await asyncio.to_thread(self.installer.running.end)
        await self.supervisor.stop_all()


async def _all_or_nothing(work: list[Coroutine[Any, Any, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run ``work`` concurrently; at the first failure, cancel the rest (``gather`` would let
    them go on building and starting after the error was reported) and raise it."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            failure = task.exception() if task.done() else None
            if failure is not None:
                raise failure
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
