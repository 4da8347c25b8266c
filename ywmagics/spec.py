"""Parsing of what users type: backend specs, npm-like version ranges, configuration options.

I/O-free and shared by every part. ``name#^0.1.1 as alias`` resolves like npm, with npm's own
rules (through ``node-semver``, a port of npm's semver): ``^0.1.1`` means ``>=0.1.1,<0.2.0``;
``~1.2.3`` means ``>=1.2.3,<1.3.0``; ``1.2.3`` is exact; ``*``, ``latest`` or nothing take the
highest release; x-ranges (``1.x``), comparators (``>=1.0 <2``), hyphen ranges
(``1.0.0 - 1.4.0``) and ``||`` work too.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ywmagics.errors import ConfigurationError, SpecError

# Matched whole (fullmatch): '$' would also match before a final newline.
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
ALIAS_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
PARTITION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_PARTITION = "Default"
MAX_SPEC_LENGTH = 400
# A backend published on a package index: 'pypi:' and its normalized name (PEP 503), or 'npm:'
# and its package name, with a scope's '/' as '+' (a backend's name is one path segment and one
# folder); no local backend's name can be one (they have no ':').
PYPI_PREFIX = "pypi:"
NPM_PREFIX = "npm:"
_PACKAGE_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")
_NPM_PART = r"[a-z0-9][a-z0-9._~-]{0,100}"
_NPM_PATTERN = re.compile(rf"(?:@({_NPM_PART})[/+])?({_NPM_PART})")


def is_published(name: str) -> bool:
    """Whether ``name`` is a backend of a package index (``pypi:``, ``npm:``)."""
    return name.startswith((PYPI_PREFIX, NPM_PREFIX))


def npm_package(name: str) -> str:
    """The npm package that a backend's name stands for: ``npm:@acme+tiles`` is
    ``@acme/tiles``."""
    return name[len(NPM_PREFIX) :].replace("+", "/", 1)


MAX_MODULES = 64


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_name(name: object) -> str:
    """Return ``name`` if it can name a backend (and so a folder); raise :class:`SpecError`.
    ``pypi:NAME`` names a published one, and is returned with NAME normalized."""
    if isinstance(name, str) and name.startswith(PYPI_PREFIX):
        package = name[len(PYPI_PREFIX) :]
        if not _PACKAGE_PATTERN.fullmatch(package):
            raise SpecError(
                f"{_shown(name)} is not a valid package name",
                hint="after 'pypi:', a distribution's name: letters, digits, '-', '_' or '.', "
                "e.g. 'pypi:yw-weather'",
            )
        return PYPI_PREFIX + normalize_package(package)
    if isinstance(name, str) and name.startswith(NPM_PREFIX):
        match = _NPM_PATTERN.fullmatch(name[len(NPM_PREFIX) :])
        if not match:
            raise SpecError(
                f"{_shown(name)} is not a valid npm package name",
                hint="after 'npm:', a package's name, lowercase, scoped or not: "
                "'npm:yw-tiles', 'npm:@acme/yw-tiles'",
            )
        scope, package = match.groups()
        return NPM_PREFIX + (f"@{scope}+{package}" if scope else package)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SpecError(
            f"{_shown(name)} is not a valid backend name",
            hint="names start with a letter and use at most 64 letters, digits, '_', '-' or '.'"
            "; one published on a package index is 'pypi:NAME' or 'npm:NAME'",
        )
    return name


def normalize_package(name: str) -> str:
    """A distribution's name as indexes compare them (PEP 503): ``Yw_Weather`` is
    ``yw-weather``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def default_alias(name: str) -> str:
    """The alias of a spec that gives none: its name, a published one's as an identifier."""
    if name.startswith(PYPI_PREFIX):
        return name[len(PYPI_PREFIX) :].replace("-", "_")
    if name.startswith(NPM_PREFIX):
        return re.sub(r"[^A-Za-z0-9_]", "_", npm_package(name).rsplit("/", 1)[-1])
    return name


def validate_partition(partition: object) -> str:
    """Return ``partition`` if it is a valid partition id; raise :class:`SpecError`."""
    if not isinstance(partition, str) or not PARTITION_PATTERN.fullmatch(partition):
        raise SpecError(
            f"{_shown(partition)} is not a valid partition id",
            hint="use at most 64 letters, digits, '_', '-' or '.', starting with a letter or digit",
        )
    return partition


# npm's semver (7.8) refuses an x-range with a number after its x ("x.1", "1.x.3"); the port we
# use still takes them.
_NUMBER_AFTER_X = re.compile(r"(?<![\w.+-])[xX*]\.\d|(?<![\w.+-])\d+\.[xX*]\.\d")
_MAX_SAFE_INTEGER = 2**53 - 1  # npm refuses larger version numbers


def _semver() -> Any:
    import nodesemver  # a port of npm's semver; loaded on first use (it costs ~15 ms)

    return nodesemver


def is_semver(version: str) -> bool:
    """Whether ``version`` is a strict semantic version, ``MAJOR.MINOR.PATCH[-PRERELEASE]``, as a
    manifest must give it (no ``v``, no build metadata, no leading zeros)."""
    parsed = _semver().valid(version, False) if len(version) <= 256 else None
    return (
        parsed is not None
        and parsed.version == version
        and max(parsed.major, parsed.minor, parsed.patch) <= _MAX_SAFE_INTEGER
    )


def version_key(version: str) -> Any:
    """A sort key that orders semantic versions as npm does (``1.10.0`` after ``1.9.0``, a
    prerelease before its release)."""
    return functools.cmp_to_key(lambda a, b: int(_semver().compare(a, b, False)))(version)


@dataclass(frozen=True)
class VersionRange:
    """An npm version range (npm's own rules: ``^``, ``~``, x-ranges, comparators, hyphen ranges
    ``1.0.0 - 1.4.0``, ``||``, prereleases only when the range names one of the same version),
    plus ``latest``: the highest release. ``str()`` gives back what the user wrote."""

    text: str
    normalized: str = "*"

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        text = text.strip()
        if text in ("", "*", "latest"):
            return cls(text or "*")
        normalized = None
        if len(text) <= 256 and not _NUMBER_AFTER_X.search(text):
            normalized = _semver().valid_range(text, False)
        if normalized is None:
            raise SpecError(
                f"{text!r} is not a version range",
                hint="use e.g. '^0.1.1', '~1.2.0', '1.2.3', '1.x', '>=1.0 <2', "
                "'1.0.0 - 1.4.0', '^1 || ^2' or 'latest'",
            )
        return cls(text, normalized)

    def matches(self, version: str) -> bool:
        return is_semver(version) and bool(
            _semver().satisfies(version, self.normalized, loose=False)
        )

    def best(self, versions: Iterable[str]) -> str | None:
        """The highest of ``versions`` in the range, or ``None``."""
        valid = [v for v in versions if is_semver(v)]
        best: str | None = _semver().max_satisfying(valid, self.normalized, loose=False)
        return best

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class BackendSpec:
    """One parsed ``name#range as alias``."""

    name: str
    range: VersionRange
    alias: str

    @classmethod
    def parse(cls, text: object) -> BackendSpec:
        """``name#range as alias``; the range may hold spaces (``>=1.0 <2``, ``1.0.0 - 1.4.0``,
        ``^1 || ^2``). Parsed in linear time: no regular expression backtracks over the text."""
        if not isinstance(text, str) or len(text) > MAX_SPEC_LENGTH:
            raise SpecError(
                f"{_shown(text)} is not a backend spec",
                hint=f"a spec is a string of at most {MAX_SPEC_LENGTH} characters, "
                "e.g. 'demo_yw_backend#^0.1.1 as demo'",
            )
        words = text.split()
        alias = None
        if len(words) >= 3 and words[-2] == "as":
            alias, words = words[-1], words[:-2]
        name, _, version_range = " ".join(words).partition("#")
        if not name.strip():
            raise SpecError(
                f"{text!r} is not a backend spec",
                hint="write it as 'name#range as alias', e.g. 'demo_yw_backend#^0.1.1 as demo'",
            )
        name = validate_name(name.strip())
        alias = alias or default_alias(name)
        if not ALIAS_PATTERN.fullmatch(alias) or alias == "as":
            raise SpecError(
                f"{alias!r} cannot be used as an alias",
                hint="an alias must be a Python identifier, e.g. 'pyRunner'",
            )
        return cls(name, VersionRange.parse(version_range or "*"), alias)

    def __str__(self) -> str:
        return f"{self.name}#{self.range} as {self.alias}"


Configurations = dict[str, dict[str, Any]]
"""``{backend name: {"build": {option: value}}}``, as in the tutorial's object form."""


def parse_config_option(text: str, into: Configurations | None = None) -> Configurations:
    """Add one ``name.build.option=value`` to ``into`` (a new dict when ``None``) and return it."""
    into = {} if into is None else into
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 3 or not all(parts):
        raise ConfigurationError(
            f"{text!r} is not a configuration option",
            hint="write it as 'backend.build.option=value', e.g. 'pyrun_backend.build.python=3.10'",
        )
    name, section, option = parts
    name = validate_name(name)
    if section != "build":
        raise ConfigurationError(
            f"unknown configuration section {section!r} in {text!r}",
            hint="only 'build' options exist, e.g. 'pyrun_backend.build.modules=numpy'",
        )
    into.setdefault(name, {}).setdefault("build", {})[option] = value.strip()
    return into


@dataclass
class InstallRequest:
    """What to install: the tutorial's object form, normalised."""

    modules: list[BackendSpec]
    configurations: Configurations = field(default_factory=dict)
    partition: str = DEFAULT_PARTITION
    # where the instances run: a cluster of the user's configuration ("slurm" works without
    # one), with what to ask of it; None: this machine
    on: str | None = None
    resources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_object(
        cls, data: Mapping[str, Any] | Iterable[str] | str, partition: str | None = None
    ) -> InstallRequest:
        """Accept a spec, a list of specs, or ``{"modules", "configurations", "partition"}``."""
        if isinstance(data, str):
            data = {"modules": [data]}
        elif not isinstance(data, Mapping):
            data = {"modules": list(data)}
        unknown = set(data) - {"modules", "configurations", "partition", "on", "resources"}
        if unknown:
            raise SpecError(
                f"unknown install field(s): {', '.join(sorted(unknown))}",
                hint="the install object takes 'modules', 'configurations', 'partition', and "
                "'on' and 'resources' for a cluster",
            )
        modules = data.get("modules") or []
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise SpecError("'modules' must be a list of spec strings")
        if not modules:
            raise SpecError("nothing to install", hint="name at least one backend spec")
        if len(modules) > MAX_MODULES:
            raise SpecError(f"at most {MAX_MODULES} backends can be installed at once")
        specs = [BackendSpec.parse(m) for m in modules]
        counts = collections.Counter(s.alias for s in specs)
        duplicated = sorted(a for a, n in counts.items() if n > 1)
        if duplicated:
            raise SpecError(f"alias used twice: {', '.join(duplicated)}")
        configurations = data.get("configurations") or {}
        if not isinstance(configurations, Mapping):
            raise ConfigurationError("'configurations' must be an object")
        for name, conf in configurations.items():
            if not isinstance(conf, Mapping) or set(conf) - {"build"}:
                raise ConfigurationError(
                    f"configuration of {name!r} must look like {{'build': {{option: value}}}}"
                )
            if not isinstance(conf.get("build", {}), Mapping):
                raise ConfigurationError(f"'build' of {name!r} must be an object")
        chosen = partition or data.get("partition") or DEFAULT_PARTITION
        on = None if data.get("on") is None else validate_cluster(data.get("on"))
        return cls(
            modules=specs,
            configurations={
                str(k): {"build": dict(v.get("build", {}))} for k, v in configurations.items()
            },
            partition=validate_partition(chosen),
            on=on,
            resources=validate_resources(data.get("resources") or {}, on),
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "modules": [str(s) for s in self.modules],
            "configurations": self.configurations,
            "partition": self.partition,
        }
        if self.on is not None:
            data.update(on=self.on, resources=self.resources)
        return data


# What a cluster can be asked for, as Slurm names it: cpus -> --cpus-per-task, mem -> --mem,
# time -> --time, gres -> --gres, partition/account/qos/constraint/nodelist -> the same options.
RESOURCES = (
    "cpus",
    "mem",
    "time",
    "gres",
    "partition",
    "account",
    "qos",
    "constraint",
    "nodelist",
)
_RESOURCE_VALUE = re.compile(r"[A-Za-z0-9_.:/+\[][A-Za-z0-9_.:/+\[\]-]{0,127}")  # n[1-3] too


def validate_cluster(name: object) -> str:
    """A cluster's name in the user's configuration (``[clusters.NAME]``), or ``slurm``."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SpecError(
            f"invalid cluster name {name!r}",
            hint="a name of [clusters.NAME] in your config.toml, or 'slurm'",
        )
    return name


def validate_resources(resources: object, on: str | None) -> dict[str, str]:
    """``{"cpus": "16", "mem": "64G", ...}``: known names, values that are one word of a
    command line (never an option of its own)."""
    if isinstance(resources, str):
        resources = parse_resources(resources)
    if not isinstance(resources, Mapping):
        raise SpecError("'resources' must be an object such as {'cpus': '16', 'mem': '64G'}")
    if resources and on is None:
        raise SpecError(
            "resources are asked of a cluster: give --on too",
            hint="e.g. --on slurm --resources cpus=16,mem=64G",
        )
    checked = {}
    for key, value in resources.items():
        if key not in RESOURCES:
            raise SpecError(f"unknown resource {key!r}", hint=f"resources: {', '.join(RESOURCES)}")
        text = str(value)
        if not _RESOURCE_VALUE.fullmatch(text):
            raise SpecError(f"resource {key}={text!r} is not a value a cluster takes")
        checked[str(key)] = text
    return checked


def parse_resources(text: str) -> dict[str, str]:
    """``cpus=16,mem=64G,time=2:00:00,gres=gpu:1`` as a dict."""
    resources = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SpecError(
                f"{item!r} is not NAME=VALUE", hint="e.g. --resources cpus=16,mem=64G,time=2:00:00"
            )
        resources[key.strip()] = value.strip()
    return resources
