"""Builds an instance's environment on the cluster node itself, for clusters where no folder is
shared with the orchestrator's machine (``node_dir`` of a cluster entry). The node shim runs it
before it starts the backend; it makes what :class:`~ywmagics.orchestrator.environments.Installer`
makes locally, from the same inputs: the backend's files (sent to the shim), a virtual
environment of the requested Python with the requirements (a Python backend), then the
manifest's install steps.

Standard library only, Python 3.8 or later, like the shim it is sent with. The layout under the
node's folder (0700, this user's, refused otherwise)::

    NODE_DIR/envs/NAME/VERSION/FINGERPRINT/   app/, venv/, ywmeta.json (written last)
    NODE_DIR/data/PARTITION/NAME/             each instance's own folder ({data})

A folder without ``ywmeta.json`` is a build cut short: it is never used, and the next build
removes it. Builds of one environment on one node take turns (a lock file), so two jobs that
land on the same node build it once.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import fcntl
import glob
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    from ywmagics import portable
except ImportError:  # on a node: sent with the shim, as a module of its own
    import portable  # type: ignore[no-redef,import-not-found]

if TYPE_CHECKING:
    from collections.abc import Callable

    Report = Callable[[str, float | None], None]

META_FILE = "ywmeta.json"
_VERSION_REQUEST = re.compile(r"^(?:python)?(\d+(?:\.\d+){0,2})$")
_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # one path component, never '..'
TAIL_LINES = 20
MAX_LINE = 2048  # characters of a step's output line said (each is one line of srun's output)


class BuildFailed(Exception):
    """The environment could not be built: ``message`` says what, ``tail`` the step's last
    lines of output."""

    def __init__(self, message: str, tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tail = tail or []


class Builder:
    """One build, from the shim's ``build`` configuration; :meth:`cancel` (from another thread:
    the orchestrator went away) ends the step that runs and fails the build."""

    def __init__(self, spec: dict[str, Any], report: Report) -> None:
        self.report = report
        self.cancelled = threading.Event()
        self._current: subprocess.Popen | None = None  # type: ignore[type-arg]
        self._lock = threading.Lock()
        try:
            self.name = _component(spec, "name")
            self.version = _component(spec, "version")
            self.fingerprint = _component(spec, "fingerprint")
            self.node_dir = str(spec["dir"])
            self.bundle = base64.b64decode(str(spec["app"]))
            self.python_request: str | None = spec.get("python")
            self.requirements: list[str] = [str(r) for r in spec.get("requirements", [])]
            self.install: list[list[str]] = [[str(a) for a in argv] for argv in spec["install"]]
            self.data = [_component({"part": part}, "part") for part in spec["data"]]
        except (KeyError, TypeError, ValueError) as error:
            raise BuildFailed(
                f"the build configuration is not one this shim reads: {error}"
            ) from None

    # -- the build -------------------------------------------------------------------------------

    def run(self) -> dict[str, str]:
        """The placeholders of the built (or already built) environment: env, app, python,
        data, python_version, and whether it was ``built`` now ("1") or found ("")."""
        try:
            return self._run()
        except OSError as error:  # the node's disk: full, read-only, a file in the way
            where = f" ({error.filename})" if error.filename else ""
            message = f"the build on {node_name()} failed: {error.strerror or error}{where}"
            raise BuildFailed(message) from None

    def _run(self) -> dict[str, str]:
        root = private_folder(self.node_dir)
        env = os.path.join(root, "envs", self.name, self.version, self.fingerprint)
        os.makedirs(os.path.dirname(env), mode=0o700, exist_ok=True)
        data = os.path.join(root, "data", *self.data)
        os.makedirs(data, mode=0o700, exist_ok=True)
        with open(env + ".lock", "a") as lock:
            self._take_turn(lock)
            meta = _read_meta(env)
            missing = self._missing(env, meta) if meta is not None else None
            if missing:
                self.report(f"found on {node_name()} without {missing}: building it again", 0.12)
            built = meta is None or missing is not None
            if built:
                _remove(env)  # without its meta file, or incomplete: not to be used
                try:
                    meta = self._build_into(env)
                except BaseException:
                    _remove(env, failing=False)
                    raise
        assert meta is not None
        return {
            "env": env,
            "app": os.path.join(env, "app"),
            "python": os.path.join(env, "venv", "bin", "python")
            if meta.get("python")
            else sys.executable,
            "data": data,
            "python_version": meta.get("python_version") or "",
            "built": "1" if built else "",
        }

    def _take_turn(self, lock: Any) -> None:
        """The environment's lock: another job on this node may be building it (said, and a
        cancel still ends the wait)."""
        said = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not said:
                    self.report(f"waiting for another job's build of it on {node_name()}", None)
                    said = True
            if self.cancelled.wait(0.5):
                raise BuildFailed("the build was cancelled while it waited for another")

    def _missing(self, env: str, meta: dict[str, Any]) -> str | None:
        """What a built environment lacks (a scratch purge removes files one by one): its
        interpreter, or a file of the backend; None if nothing."""
        python = meta.get("python")
        if python and not os.path.exists(os.path.join(env, "venv", "bin", "python")):
            return "its Python"
        if python and not os.path.exists(python):
            return f"the interpreter it was made from ({python})"
        with tarfile.open(fileobj=io.BytesIO(self.bundle), mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and not os.path.isfile(os.path.join(env, "app", member.name)):
                    return os.path.normpath(os.path.join("app", member.name))
        return None

    def _build_into(self, env: str) -> dict[str, Any]:
        started = time.monotonic()
        os.makedirs(env, mode=0o700)
        app = os.path.join(env, "app")
        self.report(f"unpacking {self.name} {self.version} on {node_name()}", 0.15)
        _unpack(self.bundle, app)
        meta: dict[str, Any] = {"python": None, "python_version": None}
        if self.python_request is not None:
            python, version = find_python(self.python_request)
            meta.update(python=python, python_version=version)
            self._make_venv(env, python, version)
        placeholders = {
            "{env}": env,
            "{app}": app,
            "{python}": os.path.join(env, "venv", "bin", "python")
            if meta["python"]
            else sys.executable,
        }
        for index, argv in enumerate(self.install):
            self.step(
                [_fill(arg, placeholders) for arg in argv],
                f"install step {index + 1}/{len(self.install)}",
                0.7,
                cwd=env,
            )
        meta.update(
            name=self.name,
            version=self.version,
            fingerprint=self.fingerprint,
            node=node_name(),
            created=time.time(),
            seconds=round(time.monotonic() - started, 2),
        )
        partial = os.path.join(env, "." + META_FILE + ".partial")
        with open(partial, "w") as file:
            json.dump(meta, file, indent=2)
        os.rename(partial, os.path.join(env, META_FILE))  # last: now it is an environment
        return meta

    def _make_venv(self, env: str, python: str, version: str) -> None:
        venv = os.path.join(env, "venv")
        venv_python = os.path.join(venv, "bin", "python")
        uv = shutil.which("uv")
        creating = f"creating a Python {version} environment on {node_name()}"
        if uv:
            uv_env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", NO_COLOR="1")
            uv_env.pop("VIRTUAL_ENV", None)
            argv = [uv, "venv", "--no-config", "--quiet", "--python", python, venv]
            self.step(argv, creating + " (uv)", 0.2, cwd=env, env=uv_env)
            if self.requirements:
                install = [uv, "pip", "install", "--no-config", "--python", venv_python]
                text = f"installing {' '.join(self.requirements)}"
                self.step([*install, *self.requirements], text, 0.4, cwd=env, env=uv_env)
            return
        # As uv makes it: no pip in it unless something is to be installed with it.
        without_pip = [] if self.requirements else ["--without-pip"]
        self.step([python, "-m", "venv", *without_pip, venv], creating + " (venv)", 0.2, cwd=env)
        if self.requirements:
            install = [venv_python, "-m", "pip", "install", "--disable-pip-version-check"]
            text = f"installing {' '.join(self.requirements)}"
            self.step([*install, *self.requirements], text, 0.4, cwd=env)

    def step(
        self,
        argv: list[str],
        text: str,
        progress: float,
        cwd: str,
        env: dict[str, str] | None = None,
    ) -> None:
        """Run one step, its output said line by line; a step that fails fails the build."""
        self.report(text, progress)
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        with self._lock:
            if self.cancelled.is_set():
                raise BuildFailed(f"the build was cancelled before: {text}")
            try:
                process = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: a cancel ends all of it
                )
            except OSError as error:
                message = f"{text} failed: {argv[0]!r}: {error.strerror or error}"
                raise BuildFailed(message) from None
            self._current = process
        assert process.stdout is not None
        with process.stdout:
            for output in portable.lines_until_ended(process, process.stdout.fileno()):
                line = output.rstrip()[:MAX_LINE]
                if line.strip():
                    tail.append(line)
                    self.report(line, None)
        code = process.wait()
        with self._lock, contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what it left running holds no build up
        with self._lock:
            self._current = None
        if self.cancelled.is_set():
            raise BuildFailed(f"the build was cancelled during: {text}", list(tail))
        if code != 0:
            raise BuildFailed(f"{text} failed on {node_name()} (exit {code})", list(tail))

    def cancel(self) -> None:
        with self._lock:
            self.cancelled.set()
            if self._current is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._current.pid, signal.SIGKILL)


# -- the parts -----------------------------------------------------------------------------------


def node_name() -> str:
    """The node's name as Slurm knows it (users see it in squeue), else the host's."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def private_folder(path: str) -> str:
    """``path`` (``~`` and ``$VAR`` expanded here, on the node), made if missing, with no link
    left in it; refused unless every folder on the way is this user's or root's and only they
    can change it (a sticky folder such as /tmp aside), and the folder itself is this user's
    alone: another user of the node must not be able to put programs in what we run."""
    expanded = os.path.expandvars(os.path.expanduser(path))
    if "$" in expanded:
        raise BuildFailed(f"node_dir {path!r} names a variable this node does not have")
    if not os.path.isabs(expanded):
        raise BuildFailed(f"the cluster's node_dir {path!r} is not an absolute path on the node")
    resolved, why = portable.changeable_by_others(Path(expanded))
    if resolved is None:
        raise BuildFailed(f"node_dir {expanded} is refused: {why}")
    try:
        os.makedirs(resolved, mode=0o700, exist_ok=True)
        info = os.lstat(resolved)
    except OSError as error:
        message = f"cannot make node_dir {resolved}: {error.strerror or error}"
        raise BuildFailed(message) from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise BuildFailed(
            f"node_dir {resolved} is not a folder of this user (uid {os.getuid()}): refused"
        )
    if info.st_mode & 0o022:
        raise BuildFailed(
            f"node_dir {resolved} can be written by group or others (mode "
            f"{stat.S_IMODE(info.st_mode):o}): refused, anyone could change what runs there"
        )
    return str(resolved)


def _remove(folder: str, failing: bool = True) -> None:
    """Remove ``folder`` whole, read-only parts too (a step may leave them, as Go's module
    cache does); one that stays is said, else the next build would fail on it."""

    def writable_then_again(function: Any, name: str, _: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            os.chmod(name, 0o700)
        with contextlib.suppress(FileNotFoundError):
            function(name)

    handler = {"onexc" if sys.version_info >= (3, 12) else "onerror": writable_then_again}
    try:
        shutil.rmtree(folder, **handler)  # type: ignore[arg-type]
    except FileNotFoundError:
        return
    except OSError as error:
        if failing:
            raise BuildFailed(
                f"cannot remove the unfinished build {folder} on {node_name()}: {error}"
            ) from None


def find_python(request: str) -> tuple[str, str]:
    """An interpreter of this node for ``request`` (empty: the one running this) and its version:
    ``pythonX.Y`` on PATH, then pyenv's versions, then uv's Pythons, each checked by running
    it."""
    request = request.strip()
    if not request:
        return sys.executable, ".".join(str(n) for n in sys.version_info[:3])
    if os.sep in request:
        path = os.path.expanduser(request)
        version = _probe(path)
        if version is None:
            raise BuildFailed(f"{request!r} is not a working Python interpreter on this node")
        return path, version
    match = _VERSION_REQUEST.match(request)
    if not match:
        raise BuildFailed(f"{request!r} is not a Python version")
    wanted = match.group(1)
    short = ".".join(wanted.split(".")[:2])
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = [shutil.which(f"python{short}")]
    candidates += sorted(
        glob.glob(os.path.join(pyenv_root, "versions", wanted + "*", "bin", f"python{short}")),
        reverse=True,
    )
    uv = shutil.which("uv")
    if uv:
        found = _output([uv, "python", "find", "--no-config", wanted])
        candidates.append(found.strip() if found else None)
    for candidate in candidates:
        if candidate:
            version = _probe(candidate)
            if version is not None and (version == wanted or version.startswith(wanted + ".")):
                return candidate, version
    raise BuildFailed(
        f"no Python {wanted} on node {node_name()}: looked for python{short} on PATH, "
        f"in {pyenv_root}/versions" + (" and among uv's Pythons" if uv else "")
    )


def _probe(path: str) -> str | None:
    out = _output([path, "-I", "-c", _PROBE])
    return out.strip() if out else None


def _output(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode(errors="replace") if done.returncode == 0 else None


def _unpack(bundle: bytes, into: str) -> None:
    """The backend's files, sent as a gzip'd tar: plain files and folders only, all inside."""
    try:
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                parts = member.name.split("/")
                if (
                    member.name.startswith("/")
                    or ".." in parts
                    or not (member.isfile() or member.isdir())
                ):
                    raise BuildFailed(f"the backend's files hold {member.name!r}: refused")
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(into, members=members, **extra)  # type: ignore[arg-type]
    except (tarfile.TarError, OSError) as error:
        raise BuildFailed(f"cannot unpack the backend's files: {error}") from None


def _read_meta(env: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(env, META_FILE)) as file:
            meta = json.load(file)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _component(spec: dict[str, Any], key: str) -> str:
    value = spec[key]
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{key} {value!r} is not a plain name")
    return value


def _fill(text: str, placeholders: dict[str, str]) -> str:
    for placeholder, value in placeholders.items():
        text = text.replace(placeholder, value)
    return text
