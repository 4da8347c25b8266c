"""The backend manifest (``ywbackend.toml``): loading and validation.

See ``docs/backends.md`` for the reference a backend author reads.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ywmagics.errors import ConfigurationError, ManifestError, YwMagicsError
from ywmagics.orchestrator import toml
from ywmagics.spec import is_semver, validate_name

MANIFEST_NAME = "ywbackend.toml"


class Runtime(str, Enum):
    PYTHON = "python"
    COMMAND = "command"


class Listen(str, Enum):
    UNIX = "unix"
    TCP = "tcp"


class Network(str, Enum):
    """For a TCP backend: a network namespace of its own (no other user reaches it, and it
    reaches nothing but the orchestrator), or the machine's network (open to every user)."""

    PRIVATE = "private"
    SHARED = "shared"


@dataclass(frozen=True)
class BuildOption:
    name: str
    default: str
    help: str


@dataclass(frozen=True)
class Source:
    """Where a published backend came from (see :mod:`~ywmagics.orchestrator.published`):
    the index, the package and version, the file it was made from (a wheel, which the
    environment installs; an npm tarball), and that file's digest (``sha256:HEX``, or npm's
    ``sha512-BASE64`` integrity)."""

    index: str
    package: str
    version: str
    file: str
    digest: str


@dataclass(frozen=True)
class Manifest:
    folder: Path
    name: str
    version: str
    description: str
    runtime: Runtime
    start: tuple[str, ...]
    requirements: tuple[str, ...] = ()
    install: tuple[tuple[str, ...], ...] = ()
    listen: Listen = Listen.UNIX
    network: Network = Network.PRIVATE
    host: str = ""  # the Host header it is sent; empty: the one the client used
    readiness: str = "/"
    home: str = ""  # the page '%backends docs' opens; empty: /docs if it has one, else /
    ready_timeout: float = 30.0
    env: dict[str, str] = field(default_factory=dict)
    build: dict[str, BuildOption] = field(default_factory=dict)
    digest: str = ""
    source: Source | None = None  # None: from a local registry folder

    def build_config(self, requested: dict[str, Any] | None) -> dict[str, str]:
        """The effective build options: defaults overridden by ``requested``, all checked."""
        requested = dict(requested or {})
        unknown = sorted(set(requested) - set(self.build))
        if unknown:
            known = ", ".join(f"{self.name}.build.{o}" for o in sorted(self.build)) or "none"
            raise ConfigurationError(
                f"{self.name} {self.version} has no build option {', '.join(map(repr, unknown))}",
                hint=f"its options are: {known}",
            )
        config = {name: option.default for name, option in self.build.items()}
        for key, value in requested.items():
            if isinstance(value, (list, tuple)):
                value = " ".join(str(v) for v in value)
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ConfigurationError(
                    f"build option {self.name}.build.{key} must be a string, got {value!r}"
                )
            config[key] = str(value)
        return config


class _Placeholders(string.Formatter):
    """``{name}`` substitution where names may contain dots (``{build.python}``)."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        return kwargs[field_name], field_name


def expand(template: str, values: dict[str, str]) -> str:
    """Fill a manifest string's placeholders; a placeholder that does not exist raises
    :class:`ManifestError` naming it."""
    try:
        return _Placeholders().vformat(template, (), values)
    except KeyError as error:
        raise ManifestError(
            f"unknown placeholder {{{error.args[0]}}} in {template!r}",
            hint=f"placeholders: {', '.join('{' + k + '}' for k in sorted(values))}",
        ) from None
    except ValueError as error:
        raise ManifestError(f"bad placeholder in {template!r}: {error}") from None


# A path of the backend (a query and fragment allowed), in URL characters only: it is linked to
# from the notebook's output.
_HOME_PAGE = re.compile(r"/(?!/)(?:[A-Za-z0-9._~!$&'()*+,;=:@%?#-]|/(?!/))*")

_KEYS = {
    "name",
    "version",
    "description",
    "runtime",
    "requirements",
    "install",
    "start",
    "listen",
    "network",
    "host",
    "readiness",
    "home",
    "ready_timeout",
    "env",
    "build",
}


class _Reader:
    """Reads one manifest's keys, each error naming the file and the key."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    def fail(self, message: str, hint: str = "") -> ManifestError:
        return ManifestError(f"{self.path}: {message}", hint=hint)

    def string(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise self.fail(f"missing required key {key!r}")
        if not isinstance(value, str):
            raise self.fail(f"{key!r} must be a string, got {value!r}")
        return value

    def choice(self, key: str, kind: type[Enum], default: str) -> Any:
        value = self.string(key, default)
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(repr(k.value) for k in kind)
            raise self.fail(f"{key!r} must be one of {choices}, got {value!r}") from None

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{key!r} must be a list of strings")
        return tuple(value)

    def argv(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
            raise self.fail(f"{key!r} must be a non-empty list of strings (an argv, no shell)")
        return tuple(value)

    def table(self, key: str) -> dict[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(f"[{key}] must be a table")
        return value


def load_manifest(path: Path) -> Manifest:
    """Read and validate one manifest file; raise :class:`ManifestError` naming the file."""
    try:
        data = toml.loads(path.read_bytes().decode())
    except (toml.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not valid TOML: {error}") from error
    return manifest_of(data, path, path.parent)


def manifest_of(data: dict[str, Any], where: Path, folder: Path) -> Manifest:
    """Validate a manifest's keys (``data``, read from ``where``: a manifest file, or the
    package.json of an npm package) for the backend whose files are in ``folder``."""
    read = _Reader(where, data)
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise read.fail(
            f"unknown key(s): {', '.join(unknown)}", hint=f"keys: {', '.join(sorted(_KEYS))}"
        )
    name = read.string("name")
    try:
        validate_name(name)
    except YwMagicsError as error:
        raise read.fail(error.message, error.hint) from error
    version = read.string("version")
    if not is_semver(version):
        raise read.fail(
            f"version {version!r} is not a semantic version",
            hint="write MAJOR.MINOR.PATCH, e.g. '0.1.0', or with a prerelease, '1.0.0-rc.1'",
        )
    build: dict[str, BuildOption] = {}
    for option, spec in read.table("build").items():
        if not isinstance(spec, dict) or set(spec) - {"default", "help"}:
            raise read.fail(f"[build.{option}] must be a table with 'default' and 'help'")
        default, help_text = spec.get("default", ""), spec.get("help", "")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            default = str(default)  # as a user's --config value would be
        if not isinstance(default, str) or not isinstance(help_text, str):
            raise read.fail(
                f"[build.{option}] 'default' must be a string or a number, 'help' a string"
            )
        build[option] = BuildOption(option, default, help_text)
    env = read.table("env")
    if not all(isinstance(v, str) for v in env.values()):
        raise read.fail("[env] values must be strings")
    readiness = read.string("readiness", "/")
    if not readiness.startswith("/"):
        raise read.fail(f"'readiness' must be a path starting with '/', got {readiness!r}")
    home = read.string("home", "")
    if home and not _HOME_PAGE.fullmatch(home):
        raise read.fail(
            f"'home' must be a path of the backend, e.g. '/ui/', got {home!r}",
            hint="one '/' first, no '//' or '\\', and only the characters of a URL",
        )
    ready_timeout = data.get("ready_timeout", 30)
    if isinstance(ready_timeout, bool) or not isinstance(ready_timeout, (int, float)):
        raise read.fail(f"'ready_timeout' must be a number of seconds, got {ready_timeout!r}")
    if ready_timeout <= 0:
        raise read.fail(f"'ready_timeout' must be more than 0 seconds, got {ready_timeout!r}")
    steps = data.get("install", [])
    if not isinstance(steps, list):
        raise read.fail("'install' must be a list of commands, each a list of strings")
    install = tuple(read.argv(step, "install") for step in steps)
    start = read.argv(data.get("start"), "start")
    # Install steps run before any instance exists: they have no socket, port or data folder.
    at_install = dict.fromkeys(["python", "app", "env", *(f"build.{o}" for o in build)], "")
    at_start = {
        **at_install,
        **dict.fromkeys(["socket", "port", "base_path", "orchestrator_url", "data"], ""),
    }
    checks = [(t, at_start) for t in (*start, *env.values())]
    checks += [(a, at_install) for step in install for a in step]
    for template, known in checks:
        try:
            expand(template, known)
        except ManifestError as error:
            raise read.fail(error.message, error.hint) from error
    return Manifest(
        folder=folder,
        name=name,
        version=version,
        description=read.string("description"),
        runtime=read.choice("runtime", Runtime, "command"),
        start=start,
        requirements=read.strings("requirements"),
        install=install,
        listen=read.choice("listen", Listen, "unix"),
        network=read.choice("network", Network, "private"),
        host=read.string("host", ""),
        readiness=readiness,
        home=home,
        ready_timeout=float(ready_timeout),
        env=dict(env),
        build=build,
        digest=_folder_digest(folder),
    )


# What a backend's folder may hold that is not the backend: never part of its fingerprint, never
# copied into an environment (a tool's cache rewritten would otherwise force a rebuild).
NOT_THE_BACKEND = ("__pycache__", "node_modules", ".git", ".mypy_cache", ".ruff_cache")


def _backend_files(folder: Path) -> list[Path]:
    """The files that make a backend (not caches or installed dependencies), in order."""
    return sorted(
        file
        for file in folder.rglob("*")
        if file.is_file() and not set(file.relative_to(folder).parts) & set(NOT_THE_BACKEND)
    )


def folder_signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap to compute (no reading): changes when a file of the backend changes."""
    signature = []
    for file in _backend_files(folder):
        stat = file.stat()
        signature.append((str(file.relative_to(folder)), stat.st_mtime_ns, stat.st_size))
    return tuple(signature)


def _folder_digest(folder: Path) -> str:
    """A hash of the backend's files, so that editing a backend under development rebuilds it."""
    digest = hashlib.sha256()
    for file in _backend_files(folder):
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
