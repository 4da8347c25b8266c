"""What the ``ywmagics`` command and the ``%backends`` magic share: building requests from what a
user typed, and the text of listings and results. No I/O, no IPython.

The two front ends are thin adapters over this (as IPython's ``%%script`` is over subprocess):
they parse their own arguments, call the orchestrator client and print what these functions
return.
"""

from __future__ import annotations

import ast
import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ywmagics.errors import ConfigurationError, SpecError
from ywmagics.spec import Configurations, InstallRequest, parse_config_option, validate_partition

# -- install -----------------------------------------------------------------------------------


def group_specs(tokens: Sequence[str]) -> list[str]:
    """``["a#^1", "as", "x", "b"]`` -> ``["a#^1 as x", "b"]``: specs typed on one line."""
    specs: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "as":
            raise SpecError("'as' must follow a backend spec, e.g. demo_yw_backend#^0.1.1 as demo")
        if index + 1 < len(tokens) and tokens[index + 1] == "as":
            if index + 2 >= len(tokens):
                raise SpecError(f"'{token} as' needs an alias after 'as'")
            specs.append(f"{token} as {tokens[index + 2]}")
            index += 3
        else:
            specs.append(token)
            index += 1
    return specs


def parse_install_object(text: str) -> dict[str, Any]:
    """The tutorial's install object, as JSON or a Python literal (never evaluated code)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as json_error:
        try:
            data = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise SpecError(
                f"the cell must hold a JSON object such as "
                f'{{"modules": ["pyrun_backend#^0.1.0 as pyRunner"], "partition": "Foo"}}: '
                f"{json_error}"
            ) from json_error
    if isinstance(data, (list, str)):
        data = {"modules": data if isinstance(data, list) else [data]}
    if not isinstance(data, dict):
        raise SpecError(
            "the cell must hold an object with 'modules', 'configurations', 'partition'"
        )
    return data


def build_install_request(
    tokens: Sequence[str],
    config_options: Iterable[str] = (),
    partition: str | None = None,
    body: Mapping[str, Any] | None = None,
    default_partition: str | None = None,
) -> InstallRequest:
    """The install request for specs typed on a line (``a#^1 as x b``), ``--config`` options,
    ``--partition``, and the object form's ``body``: the line adds to the body's modules and
    options, an explicit ``partition`` wins over the body's, which wins over the default."""
    data = dict(body or {})
    modules = data.get("modules") or []
    if isinstance(modules, str):
        modules = [modules]
    modules = [*modules, *group_specs(tokens)]
    if not modules:
        raise SpecError(
            "name at least one backend to install",
            hint="e.g. 'demo_yw_backend#^0.1.1 as ywDemoClient'",
        )
    configurations: Configurations = copy.deepcopy(data.get("configurations") or {})
    if not isinstance(configurations, dict):
        raise ConfigurationError("'configurations' must be an object")
    for option in config_options:
        parse_config_option(option, configurations)
    chosen = partition or data.get("partition") or default_partition
    return InstallRequest.from_object(
        {**data, "modules": modules, "configurations": configurations}, chosen
    )


def format_installed(results: Iterable[Mapping[str, Any]], url: str) -> str:
    return "\n".join(
        f"{r['alias']}: {r['name']} {r['version']} in partition {r['partition']} at "
        f"{url}{r['path']}"
        for r in results
    )


# -- stop --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StopTarget:
    """What a stop asks for: every instance, a partition, or a name (in a partition or all)."""

    partition: str | None = None
    name: str | None = None
    version: str | None = None
    all: bool = False
    keep_data: bool = False

    def as_arguments(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "name": self.name,
            "version": self.version,
            "all": self.all,
            "keep_data": self.keep_data,
        }


def stop_target(
    name: str | None,
    partition: str | None,
    every: bool,
    *,
    version: str | None = None,
    keep_data: bool = False,
) -> StopTarget:
    """Check a stop's arguments: ``--all`` alone, else a name and/or a partition."""
    if every:
        if name or partition:
            raise SpecError(
                "--all stops every instance: give it alone, or a NAME or --partition instead"
            )
        return StopTarget(all=True, keep_data=keep_data)
    if not (name or partition):
        raise SpecError("say what to stop", hint="give a NAME, --partition P, or --all")
    return StopTarget(
        partition=validate_partition(partition) if partition else None,
        name=name,
        version=version,
        keep_data=keep_data,
    )


def format_stopped(stopped: Sequence[Mapping[str, Any]], target: StopTarget) -> str:
    if not stopped:
        what = f"{target.name} " if target.name else ""
        where = f"in partition {target.partition}" if target.partition else "in any partition"
        return f"nothing was running there (no instance {what}{where})"
    return "\n".join(
        f"stopped {s['name']} {s['version']} in partition {s['partition']}" for s in stopped
    )


# -- listings ----------------------------------------------------------------------------------


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned columns under upper-case titles, or ``(none)``."""
    if not rows:
        return "(none)"
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _config_text(config: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items() if v) or "-"


def format_listing(listing: Mapping[str, Any]) -> str:
    """The text of ``ywmagics list`` and ``%backends list``."""
    instances = [
        {**i, "config": _config_text(i["config"]), "uptime": f"{i['uptime']:.0f}s"}
        for i in listing["instances"]
    ]
    environments = [
        {**e, "config": _config_text(e["config"]), "python": e.get("python_version") or "-"}
        for e in listing["environments"]
    ]
    return (
        "Running instances:\n"
        + table(instances, ["partition", "name", "version", "state", "config", "pid", "uptime"])
        + "\n\nInstalled environments:\n"
        + table(environments, ["name", "version", "fingerprint", "python", "config"])
    )


def format_status(status: Mapping[str, Any]) -> str:
    """The text of ``ywmagics status`` and ``%backends status`` (each adds its own lines)."""
    return (
        f"orchestrator {status.get('version', '?')} at {status.get('url', '?')} "
        f"(pid {status.get('pid', '?')}, up {float(status.get('uptime', 0)):.0f}s)\n"
        f"{status.get('instances', 0)} running instance(s), "
        f"{status.get('environments', 0)} installed environment(s)"
    )


def format_removed(done: Mapping[str, Any]) -> str:
    """What an uninstall removed (the orchestrator refuses one that matches nothing)."""
    return "\n".join(
        f"removed {e['name']} {e['version']} ({e['fingerprint']}) from {e['path']}"
        for e in done["removed"]
    )
