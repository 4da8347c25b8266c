"""Environments: one folder per (name, version, fingerprint of the build configuration).

A build happens in its final folder, under a file lock per key, and the folder counts as an
environment only once its meta file is written, last: install steps see the paths the backend will
run from, concurrent installs of the same thing build once, and a killed build leaves a folder
without a meta file that is never used and is removed by the next build or the orchestrator's start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from ywmagics._version import __version__
from ywmagics.errors import ConfigurationError, InstallError
from ywmagics.orchestrator.interpreters import (
    Interpreter,
    check_request,
    find_python,
    uv_binary,
)
from ywmagics.orchestrator.manifest import NOT_THE_BACKEND, Manifest, Runtime, expand
from ywmagics.orchestrator.processes import RunningSteps, run_logged
from ywmagics.orchestrator.published import pypi as published_pypi
from ywmagics.orchestrator.requirements import parse_requirements

META_FILE = "ywmeta.json"
# Settings of uv and pip that add indexes or file sources: not for a published backend's build.
_OTHER_INDEXES = (
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
)
USED_MARKER = ".last-used"  # its time: when an instance of the environment last started
_PACKAGE = Path(__file__).parents[1]
# The stdlib-only modules that the kernel side and the python runner share, copied verbatim into
# every Python backend's app folder (their name there: their source): one source of truth.
SHARED_MODULES = {
    "ywmagics_wire.py": _PACKAGE / "wire.py",  # the value codec
    "ywmagics_bulk.py": _PACKAGE / "bulk.py",  # how bulk buffers travel: shared memory, frames
}
# A new codec or transport makes new environments: kernel and runner must not speak two.
_SHARED_DIGEST = hashlib.sha256(
    b"".join(source.read_bytes() for source in SHARED_MODULES.values())
).hexdigest()[:16]
Report = Callable[[str, "float | None"], None]


class _Step(Protocol):
    """Runs one build step, reported as ``text`` at ``progress``; raises InstallError if it
    fails."""

    def __call__(
        self, argv: list[str], text: str, progress: float, env: dict[str, str] | None = None
    ) -> None: ...


@dataclass(frozen=True)
class Environment:
    """A complete environment on disk."""

    name: str
    version: str
    fingerprint: str
    path: Path
    config: dict[str, str]
    python: str | None
    python_version: str | None
    created: float
    # The cluster whose nodes build it as an instance starts (no folder is shared with them):
    # here it holds the backend's files only.
    node: str | None = None
    source: dict[str, str] | None = None  # a published backend's Source
    built_by: str | None = None  # the ywmagics version that built it (None: one that did not say)
    codec: int | None = None  # the wire codec version of the modules it shares with kernels

    @property
    def app(self) -> Path:
        return self.path / "app"

    @property
    def python_bin(self) -> Path | None:
        return self.path / "venv" / "bin" / "python" if self.python else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


@dataclass(frozen=True)
class Plan:
    """What to build: resolved before any work starts, so bad input fails fast."""

    manifest: Manifest
    config: dict[str, str]
    interpreter: Interpreter | None
    requirements: tuple[str, ...]
    modules: tuple[str, ...]
    fingerprint: str
    node: str | None = None  # see Environment.node
    python_request: str = ""  # what config asks for (found on the node, for a node build)


class Installer:
    def __init__(self, root: Path, logs: Path) -> None:
        self.root = root
        self.logs = logs
        self.uv = uv_binary()
        self.running = RunningSteps()

    def plan(
        self,
        manifest: Manifest,
        config: dict[str, str],
        node: str | None = None,
        node_python: str = "",
    ) -> Plan:
        """What to build for ``manifest`` with ``config``; with ``node`` (a cluster's name), an
        environment that the nodes of that cluster build, with an interpreter of theirs (an
        empty ``python`` is ``node_python``, the one the cluster runs its shim with)."""
        interpreter = None
        modules: tuple[str, ...] = ()
        python_request = config.get("python", "").strip()
        if node is not None and manifest.source is not None:
            raise ConfigurationError(
                f"{manifest.name} is a published backend, which the nodes of {node!r} cannot "
                "build yet (they share no folder with this machine)",
                hint="install it on a cluster whose nodes share a folder (shared_dir), or here",
            )
        if manifest.runtime is Runtime.PYTHON:
            if node is None:
                interpreter = find_python(python_request)
            else:
                check_request(python_request)
            modules = parse_requirements(config.get("modules", ""))
        requirements = manifest.requirements + modules
        # For a Python runtime, python and modules count as what they resolve to: an
        # interpreter and requirements (so 'six  idna' and 'six idna' are one environment).
        resolved = ("python", "modules") if manifest.runtime is Runtime.PYTHON else ()
        identity: dict[str, Any] = {
            "config": {k: v for k, v in sorted(config.items()) if k not in resolved},
            "python": [str(interpreter.path), interpreter.version] if interpreter else None,
            "requirements": requirements,
            "digest": manifest.digest,
        }
        if manifest.runtime is Runtime.PYTHON:  # their copies are part of the environment
            identity["shared"] = _SHARED_DIGEST
        if manifest.source is not None:  # the wheel installed, and the index of the rest
            identity["source"] = [manifest.source.digest, manifest.source.index]
        if node is not None:
            identity["node"] = [node, python_request or node_python]
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return Plan(
            manifest,
            config,
            interpreter,
            requirements,
            modules,
            fingerprint[:12],
            node,
            python_request,
        )

    def final_path(self, plan: Plan) -> Path:
        # A published backend's ':' would split PATH-like variables that name the folder.
        name = plan.manifest.name.replace(":", "+")
        return self.root / name / plan.manifest.version / plan.fingerprint

    def find(self, plan: Plan) -> Environment | None:
        return self._load(self.final_path(plan))

    def build(self, plan: Plan, report: Report) -> tuple[Environment, bool]:
        """The environment of ``plan``, built if needed; returns it and whether it was built.

        Blocking: the orchestrator runs it in a worker thread.
        """
        final = self.final_path(plan)
        existing = self._load(final)
        if existing is not None:
            return existing, False
        final.parent.mkdir(parents=True, exist_ok=True)
        import filelock  # at the first build, not at the orchestrator's start

        lock = filelock.FileLock(str(final) + ".lock")
        with lock:
            existing = self._load(final)
            if existing is not None:  # another builder finished while we waited
                return existing, False
            for stale in final.parent.glob(f".tmp-{plan.fingerprint}-*"):  # older releases
                shutil.rmtree(stale, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)  # a folder without its meta file is not ours
            try:
                environment = self._build_into(plan, final, report)
            except OSError as error:  # the disk is full, say: what and where, not a fault of ours
                shutil.rmtree(final, ignore_errors=True)
                where = f" ({error.filename})" if error.filename else ""
                raise InstallError(
                    f"installing {plan.manifest.name} {plan.manifest.version} failed: "
                    f"{(error.strerror or str(error)).lower()}{where}",
                    hint=f"environments are built in {self.root}; free some space there "
                    "(or set YW_HOME elsewhere), then install again",
                ) from error
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
        return environment, True

    def _build_into(self, plan: Plan, folder: Path, report: Report) -> Environment:
        manifest = plan.manifest
        folder.mkdir(parents=True)
        log = self.install_log(manifest.name, manifest.version, plan.fingerprint)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"# install of {manifest.name} {manifest.version} at {time.ctime()}\n")
        shutil.copytree(
            manifest.folder, folder / "app", ignore=shutil.ignore_patterns(*NOT_THE_BACKEND)
        )
        if manifest.runtime is Runtime.PYTHON:
            for name, source in SHARED_MODULES.items():
                shutil.copyfile(source, folder / "app" / name)
        if plan.node is not None:  # the rest is made on the node (placements.node_build)
            return self._write_meta(plan, folder)

        def step(
            argv: list[str], text: str, progress: float, env: dict[str, str] | None = None
        ) -> None:
            report(text, progress)
            code, tail = run_logged(
                argv,
                log=log,
                cwd=folder,
                env=env,
                on_line=lambda line: report(line, None) if line.strip() else None,
                running=self.running,
                key=str(folder),
            )
            if code != 0:
                raise InstallError(
                    f"installing {manifest.name} {manifest.version} failed: {text} (exit {code})",
                    hint=f"the whole install log is in {log}",
                    log_tail=tail,
                )

        if manifest.runtime is Runtime.PYTHON:
            self._build_python(plan, folder, log, step)
        for index, argv in enumerate(manifest.install):
            placeholders = self.placeholders(plan, folder)
            step(
                [expand(arg, placeholders) for arg in argv],
                f"install step {index + 1}/{len(manifest.install)}",
                0.7,
            )
        return self._write_meta(plan, folder)

    @staticmethod
    def _write_meta(plan: Plan, folder: Path) -> Environment:
        from ywmagics import wire  # its version only, at the end of a build

        interpreter = plan.interpreter
        environment = Environment(
            name=plan.manifest.name,
            version=plan.manifest.version,
            fingerprint=plan.fingerprint,
            path=folder,
            config=plan.config,
            python=str(interpreter.path) if interpreter else None,
            python_version=interpreter.version if interpreter else None,
            created=time.time(),
            node=plan.node,
            source=dataclasses.asdict(plan.manifest.source) if plan.manifest.source else None,
            built_by=__version__,
            codec=wire.CODEC_VERSION if plan.manifest.runtime is Runtime.PYTHON else None,
        )
        # Written last, atomically: the meta file is what makes the folder an environment.
        meta = folder / f".{META_FILE}.partial"
        meta.write_text(json.dumps(environment.to_dict(), indent=2))
        os.rename(meta, folder / META_FILE)
        return environment

    def _build_python(self, plan: Plan, folder: Path, log: Path, step: _Step) -> None:
        """The virtual environment of a Python backend, with its requirements and modules, and
        the modules it shares with the kernel side next to its code."""
        interpreter = plan.interpreter
        assert interpreter is not None
        venv = folder / "venv"
        python = str(venv / "bin" / "python")
        # Not the user's VIRTUAL_ENV, nor their UV_COMPILE_BYTECODE (their uv.toml is ignored
        # too, --no-config): the bytecode is compiled later, where it delays nothing.
        uv_env = {
            k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_COMPILE_BYTECODE")
        }
        uv_env.update(UV_PYTHON_DOWNLOADS="never", NO_COLOR="1")

        pip_env: dict[str, str] | None = None
        wheel = self._published_wheel(plan, folder)
        if wheel is not None and plan.manifest.source is not None:
            # Everything from the index it came from, and from no other (the user's extra
            # indexes and find-links would come first for uv); given in the environment, not on
            # the command line, where every local user would read a token in it.
            index = published_pypi.index_for(plan.manifest.source)
            for name in _OTHER_INDEXES:
                uv_env.pop(name, None)
            uv_env["UV_DEFAULT_INDEX"] = index
            pip_env = {k: v for k, v in os.environ.items() if k not in _OTHER_INDEXES}
            pip_env["PIP_INDEX_URL"] = index

        def install(requirements: tuple[str, ...], progress: float, text: str = "") -> None:
            text = text or f"installing {' '.join(requirements)}"
            if self.uv:
                argv = [self.uv, "pip", "install", "--no-config", "--python", python]
                step([*argv, *requirements], text, progress, uv_env)
            else:
                argv = [python, "-m", "pip", "install", "--disable-pip-version-check"]
                step([*argv, *requirements], text, progress, pip_env)

        creating = f"creating a Python {interpreter.version} environment"
        if self.uv:
            argv = [self.uv, "venv", "--no-config", "--quiet", "--relocatable", "--python"]
            step([*argv, str(interpreter.path), str(venv)], creating + " (uv)", 0.1, uv_env)
        else:
            step([str(interpreter.path), "-m", "venv", str(venv)], creating + " (venv)", 0.1)
        if wheel is not None:
            source = plan.manifest.source
            assert source is not None
            # One resolution with the modules: one of them cannot replace the wheel unseen.
            said = f"installing {source.package} {source.version} from {source.index}"
            install((str(wheel), *plan.manifest.requirements, *plan.modules), 0.3, said)
            return
        if plan.manifest.requirements:
            install(plan.manifest.requirements, 0.3)
        # No bytecode is compiled here, where it would delay the first answer (a process, and a
        # walk of the environment): the backend's first start writes the bytecode of what it
        # imports (its environment lets it), and compile_environment the rest once it runs.
        if plan.modules:
            install(plan.modules, 0.6)

    @staticmethod
    def _published_wheel(plan: Plan, folder: Path) -> Path | None:
        """A published backend's wheel, copied into the environment and checked to be the file
        its source records (the cache is only where it was fetched to)."""
        source = plan.manifest.source
        if source is None or not source.file.endswith(".whl"):
            return None
        kept = plan.manifest.folder.parent / source.file
        copy = folder / "wheel" / source.file
        copy.parent.mkdir()
        shutil.copyfile(kept, copy)
        sha256 = hashlib.sha256()
        with copy.open("rb") as file:  # a wheel may be large: not read whole into memory
            while chunk := file.read(1 << 20):
                sha256.update(chunk)
        digest = "sha256:" + sha256.hexdigest()
        if digest != source.digest:
            raise InstallError(
                f"{source.file} in the cache is not the file fetched ({digest}, not "
                f"{source.digest})",
                hint=f"remove {kept.parent} and install again",
            )
        return copy

    def placeholders(self, plan: Plan, folder: Path) -> dict[str, str]:
        values = {
            "env": str(folder),
            "app": str(folder / "app"),
            "python": str(folder / "venv" / "bin" / "python")
            if plan.interpreter
            else sys.executable,
        }
        values.update({f"build.{k}": v for k, v in plan.config.items()})
        return values

    def compile_environment(self, environment: Environment) -> None:
        """Compile every module of the environment, at low priority; idempotent.

        Called once the backend runs: what it imports meanwhile gets its bytecode written by the
        backend itself (its process runs without PYTHONDONTWRITEBYTECODE, which users' machines
        often set)."""
        python = environment.python_bin
        marker = environment.path / ".compiled"
        if python is None or marker.exists() or not (environment.path / META_FILE).exists():
            return
        # One process (no -j): pool workers would be grandchildren, which the parent-death
        # signal does not reach if the orchestrator is killed.
        argv = ["nice", "-n", "10", str(python), "-m", "compileall", "-q", str(environment.path)]
        code, _ = run_logged(
            argv,
            log=self.install_log(environment.name, environment.version, environment.fingerprint),
            running=self.running,
            key=str(environment.path),
        )
        if code == 0 and (environment.path / META_FILE).exists():
            marker.touch()

    def install_log(self, name: str, version: str, fingerprint: str) -> Path:
        return self.logs / f"install-{name}-{version}-{fingerprint}.log"

    def _load(self, path: Path) -> Environment | None:
        if path.name.startswith("."):  # a build not done yet, or an environment being removed
            return None
        try:
            data = json.loads((path / META_FILE).read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        data["path"] = path
        # A meta file of another ywmagics version may say more (or less) than this one knows.
        known = {f.name for f in dataclasses.fields(Environment)}
        try:
            return Environment(**{k: v for k, v in data.items() if k in known})
        except TypeError:  # a field this version needs is missing: not an environment of ours
            return None

    def built_by_others(self, plan: Plan) -> list[Environment]:
        """The environments of ``plan``'s backend, version and options that another ywmagics
        built: they share no codec or runner modules with this one's kernels, so ``plan``
        gets its own (see the ``shared`` part of the fingerprint)."""
        final = self.final_path(plan)
        found = []
        for meta in sorted(final.parent.glob(f"*/{META_FILE}")):
            environment = self._load(meta.parent)
            if (
                environment is not None
                and environment.path != final
                and environment.config == plan.config
                and environment.node == plan.node
                and environment.built_by != __version__
            ):
                found.append(environment)
        return found

    def environments(self) -> list[Environment]:
        found = []
        for meta in sorted(self.root.glob(f"*/*/*/{META_FILE}")):
            environment = self._load(meta.parent)
            if environment is not None:
                found.append(environment)
        return found

    @staticmethod
    def mark_used(environment: Environment) -> None:
        with contextlib.suppress(OSError):  # removed meanwhile: nothing to mark
            (environment.path / USED_MARKER).touch()

    @staticmethod
    def last_used(environment: Environment) -> float:
        """When an instance of it last started (its creation if none has)."""
        try:
            return (environment.path / USED_MARKER).stat().st_mtime
        except OSError:
            return environment.created

    def remove(self, environment: Environment) -> None:
        """Delete an environment. First it is made unusable at once (its meta file goes: a folder
        without one is never used), then what still works in it is ended, then it is renamed
        away and deleted: killed at any point, nothing half-deleted is ever used, and what is
        left is swept (:meth:`sweep`)."""
        path = environment.path
        lock = str(path) + ".lock"
        import filelock

        with filelock.FileLock(lock):
            self.retire(environment)
            self.running.end(str(path))  # its background compile, which would write in it
            trash = path.parent / f".trash-{uuid.uuid4().hex[:8]}"
            os.rename(path, trash)
            self.running.release(str(path))  # a build there now is of a new environment
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)

    @staticmethod
    def retire(environment: Environment) -> None:
        """Make ``environment`` unusable at once (its meta file goes): it is no longer found,
        listed or started; what runs from it goes on until stopped."""
        with contextlib.suppress(FileNotFoundError):
            os.rename(environment.path / META_FILE, environment.path / f".{META_FILE}.removed")

    def sweep(self) -> list[Path]:
        """Remove what interrupted builds and removals left (at the orchestrator's start, when
        no build of ours runs): ``.tmp-*`` and ``.trash-*`` folders, folders without a meta file,
        and lock files of environments that are gone. Returns what was removed."""
        removed: list[Path] = []
        for version_dir in self.root.glob("*/*"):
            if not version_dir.is_dir() or version_dir.name.startswith("."):
                continue
            for entry in version_dir.iterdir():
                if entry.name.endswith(".lock"):
                    if not Path(str(entry)[: -len(".lock")]).exists():
                        entry.unlink(missing_ok=True)
                        removed.append(entry)
                elif entry.is_dir() and (
                    entry.name.startswith((".tmp-", ".trash-")) or not (entry / META_FILE).exists()
                ):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
        return removed
