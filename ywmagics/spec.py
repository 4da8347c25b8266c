"""Parsing of what users type: backend specs, npm-like version ranges, configuration options.

I/O-free and shared by every part. ``name#^0.1.1 as alias`` resolves like npm: ``^0.1.1`` means
``>=0.1.1,<0.2.0``; ``~1.2.3`` means ``>=1.2.3,<1.3.0``; ``1.2.3`` is exact; ``*``, ``latest`` or
nothing take the highest version; ``1.x`` and comparator lists such as ``>=1.0 <2`` work too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version

from ywmagics.errors import ConfigurationError, SpecError

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
ALIAS_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PARTITION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_PARTITION = "Default"

_SPEC_PATTERN = re.compile(
    r"^\s*(?P<name>[^\s#]+)\s*(?:#\s*(?P<range>[^\s]*(?:\s+[<>=~^][^\s]*)*))?"
    r"\s*(?:\s+as\s+(?P<alias>\S+))?\s*$"
)


def validate_name(name: str) -> str:
    """Return ``name`` if it can name a backend (and so a folder); raise :class:`SpecError`."""
    if not NAME_PATTERN.match(name):
        raise SpecError(
            f"{name!r} is not a valid backend name",
            hint="names start with a letter and use letters, digits, '_', '-' or '.'",
        )
    return name


def validate_partition(partition: str) -> str:
    """Return ``partition`` if it is a valid partition id; raise :class:`SpecError`."""
    if not PARTITION_PATTERN.match(partition):
        raise SpecError(
            f"{partition!r} is not a valid partition id",
            hint="use at most 64 letters, digits, '_', '-' or '.', starting with a letter or digit",
        )
    return partition


@dataclass(frozen=True)
class _Comparator:
    op: str
    version: Version

    def matches(self, version: Version) -> bool:
        if self.op == ">=":
            return version >= self.version
        if self.op == ">":
            return version > self.version
        if self.op == "<=":
            return version <= self.version
        if self.op == "<":
            return version < self.version
        return version == self.version


def _parse_partial(text: str) -> tuple[list[int], int]:
    """``1.2`` -> ([1, 2, 0], 2): the numbers padded to three, and how many were given."""
    parts = text.split(".")
    numbers: list[int] = []
    for part in parts:
        if part in ("x", "X", "*"):
            break
        if not part.isdigit():
            raise ValueError(text)
        numbers.append(int(part))
    given = len(numbers)
    if given == 0 and parts[0] not in ("x", "X", "*"):
        raise ValueError(text)
    if given > 3:
        raise ValueError(text)
    return numbers + [0] * (3 - given), given


def _version(numbers: list[int]) -> Version:
    return Version(".".join(str(n) for n in numbers))


def _comparators_for(token: str) -> list[_Comparator]:
    if token in ("*", "latest", "x", "X", ""):
        return []
    if token[0] in "^~" and not token[1:].lstrip(">")[:1].isdigit():
        raise ValueError(token)
    if token[0] == "^":
        numbers, given = _parse_partial(token[1:])
        lower = _version(numbers)
        if numbers[0] > 0 or given == 1:
            upper = [numbers[0] + 1, 0, 0]
        elif numbers[1] > 0 or given == 2:
            upper = [0, numbers[1] + 1, 0]
        else:
            upper = [0, 0, numbers[2] + 1]
        return [_Comparator(">=", lower), _Comparator("<", _version(upper))]
    if token[0] == "~":
        numbers, given = _parse_partial(token[1:].lstrip(">"))
        lower = _version(numbers)
        upper = [numbers[0] + 1, 0, 0] if given == 1 else [numbers[0], numbers[1] + 1, 0]
        return [_Comparator(">=", lower), _Comparator("<", _version(upper))]
    match = re.match(r"^(>=|<=|>|<|=)?(.+)$", token)
    assert match is not None
    op, rest = match.group(1) or "", match.group(2)
    if op in ("", "="):
        numbers, given = _parse_partial(rest)
        if given == 3:
            try:
                return [_Comparator("==", Version(rest))]
            except InvalidVersion:
                raise ValueError(token) from None
        if given == 0:
            return []
        upper = numbers[:given]
        upper[-1] += 1
        return [
            _Comparator(">=", _version(numbers)),
            _Comparator("<", _version(upper + [0] * (3 - given))),
        ]
    try:
        return [_Comparator(op, Version(rest))]
    except InvalidVersion:
        raise ValueError(token) from None


@dataclass(frozen=True)
class VersionRange:
    """An npm-like version range; ``str()`` gives back what the user wrote."""

    text: str
    comparators: tuple[_Comparator, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        text = text.strip()
        comparators: list[_Comparator] = []
        try:
            for token in text.split():
                comparators.extend(_comparators_for(token))
        except (ValueError, IndexError):
            raise SpecError(
                f"{text!r} is not a version range",
                hint="use e.g. '^0.1.1', '~1.2.0', '1.2.3', '1.x', '>=1.0 <2' or 'latest'",
            ) from None
        return cls(text or "*", tuple(comparators))

    def matches(self, version: str | Version) -> bool:
        parsed = Version(version) if isinstance(version, str) else version
        if parsed.is_prerelease and not any(c.version.is_prerelease for c in self.comparators):
            return False
        return all(c.matches(parsed) for c in self.comparators)

    def best(self, versions: Iterable[str]) -> str | None:
        """The highest of ``versions`` in the range, or ``None``."""
        candidates = [v for v in versions if self.matches(v)]
        return max(candidates, key=Version) if candidates else None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class BackendSpec:
    """One parsed ``name#range as alias``."""

    name: str
    range: VersionRange
    alias: str

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        match = _SPEC_PATTERN.match(text)
        if not match:
            raise SpecError(
                f"{text!r} is not a backend spec",
                hint="write it as 'name#range as alias', e.g. 'demo_yw_backend#^0.1.1 as demo'",
            )
        name = validate_name(match.group("name"))
        alias = match.group("alias") or name
        if not ALIAS_PATTERN.match(alias):
            raise SpecError(
                f"{alias!r} cannot be used as an alias",
                hint="an alias must be a Python identifier, e.g. 'pyRunner'",
            )
        return cls(name, VersionRange.parse(match.group("range") or "*"), alias)

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
    validate_name(name)
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

    @classmethod
    def from_object(
        cls, data: Mapping[str, Any] | Iterable[str] | str, partition: str | None = None
    ) -> InstallRequest:
        """Accept a spec, a list of specs, or ``{"modules", "configurations", "partition"}``."""
        if isinstance(data, str):
            data = {"modules": [data]}
        elif not isinstance(data, Mapping):
            data = {"modules": list(data)}
        unknown = set(data) - {"modules", "configurations", "partition"}
        if unknown:
            raise SpecError(
                f"unknown install field(s): {', '.join(sorted(unknown))}",
                hint="the install object takes 'modules', 'configurations' and 'partition'",
            )
        modules = data.get("modules") or []
        if isinstance(modules, str) or not all(isinstance(m, str) for m in modules):
            raise SpecError("'modules' must be a list of spec strings")
        if not modules:
            raise SpecError("nothing to install", hint="name at least one backend spec")
        specs = [BackendSpec.parse(m) for m in modules]
        aliases = [s.alias for s in specs]
        duplicated = {a for a in aliases if aliases.count(a) > 1}
        if duplicated:
            raise SpecError(f"alias used twice: {', '.join(sorted(duplicated))}")
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
        return cls(
            modules=specs,
            configurations={
                str(k): {"build": dict(v.get("build", {}))} for k, v in configurations.items()
            },
            partition=validate_partition(str(chosen)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "modules": [str(s) for s in self.modules],
            "configurations": self.configurations,
            "partition": self.partition,
        }
