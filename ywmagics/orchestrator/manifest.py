"""The backend manifest (``ywbackend.toml``): loading and validation.

See ``docs/backends.md`` for the reference a backend author reads.
"""

from __future__ import annotations

import hashlib
import string
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from ywmagics.errors import ConfigurationError, YwMagicsError
from ywmagics.spec import validate_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MANIFEST_NAME = "ywbackend.toml"


class Runtime(str, Enum):
    PYTHON = "python"
    COMMAND = "command"


class Listen(str, Enum):
    UNIX = "unix"
    TCP = "tcp"


class ManifestError(YwMagicsError):
    """A ``ywbackend.toml`` that is missing a key or holds a wrong value."""


@dataclass(frozen=True)
class BuildOption:
    name: str
    default: str
    help: str


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
    readiness: str = "/"
    ready_timeout: float = 30.0
    env: dict[str, str] = field(default_factory=dict)
    build: dict[str, BuildOption] = field(default_factory=dict)
    digest: str = ""

    @property
    def parsed_version(self) -> Version:
        return Version(self.version)

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


def _require(data: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    if key not in data:
        raise ManifestError(f"{path}: missing required key {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        raise ManifestError(f"{path}: {key!r} must be a {kind.__name__}")
    return value


def _argv(value: Any, key: str, path: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise ManifestError(f"{path}: {key!r} must be a non-empty list of strings")
    return tuple(value)


def load_manifest(path: Path) -> Manifest:
    """Read and validate one manifest file; raise :class:`ManifestError` with the file's path."""
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not valid TOML: {error}") from None
    name = _require(data, "name", str, path)
    try:
        validate_name(name)
    except YwMagicsError as error:
        raise ManifestError(f"{path}: {error.message}") from None
    version = _require(data, "version", str, path)
    try:
        Version(version)
    except InvalidVersion:
        raise ManifestError(f"{path}: version {version!r} is not a semantic version") from None
    try:
        runtime = Runtime(data.get("runtime", "command"))
        listen = Listen(data.get("listen", "unix"))
    except ValueError as error:
        raise ManifestError(f"{path}: {error}") from None
    build: dict[str, BuildOption] = {}
    for option, spec in (data.get("build") or {}).items():
        if not isinstance(spec, dict):
            raise ManifestError(f"{path}: [build.{option}] must be a table with default and help")
        build[option] = BuildOption(option, str(spec.get("default", "")), str(spec.get("help", "")))
    requirements = data.get("requirements", [])
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise ManifestError(f"{path}: 'requirements' must be a list of strings")
    env = data.get("env", {})
    if not isinstance(env, dict):
        raise ManifestError(f"{path}: [env] must be a table")
    readiness = str(data.get("readiness", "/"))
    if not readiness.startswith("/"):
        raise ManifestError(f"{path}: 'readiness' must be a path starting with '/'")
    known = dict.fromkeys(
        ["python", "app", "env", "socket", "port", "base_path", "orchestrator_url"]
        + [f"build.{o}" for o in build],
        "",
    )
    for template in [*data.get("start", []), *env.values()] + [
        a for step in data.get("install", []) for a in step
    ]:
        try:
            expand(str(template), known)
        except ManifestError as error:
            raise ManifestError(f"{path}: {error.message}", hint=error.hint) from None
    return Manifest(
        folder=path.parent,
        name=name,
        version=version,
        description=_require(data, "description", str, path),
        runtime=runtime,
        start=_argv(data.get("start"), "start", path),
        requirements=tuple(requirements),
        install=tuple(_argv(step, "install", path) for step in data.get("install", [])),
        listen=listen,
        readiness=readiness,
        ready_timeout=float(data.get("ready_timeout", 30)),
        env={str(k): str(v) for k, v in env.items()},
        build=build,
        digest=_folder_digest(path.parent),
    )


def _backend_files(folder: Path) -> list[Path]:
    """The files that make a backend (not caches or installed dependencies), in order."""
    return sorted(
        file
        for file in folder.rglob("*")
        if file.is_file() and "__pycache__" not in file.parts and "node_modules" not in file.parts
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
