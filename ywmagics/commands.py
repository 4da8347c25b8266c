"""What the ``ywmagics`` command and the ``%backends`` magic share: building requests from what a
user typed, and the text of listings and results. No I/O, no IPython.

The two front ends are thin adapters over this (as IPython's ``%%script`` is over subprocess):
they parse their own arguments, call the orchestrator client and print what these functions
return.
"""

from __future__ import annotations

import argparse
import ast
import copy
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ywmagics.errors import ConfigurationError, SpecError
from ywmagics.spec import (
    Configurations,
    InstallRequest,
    parse_config_option,
    parse_resources,
    validate_name,
    validate_partition,
)

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
    on: str | None = None,
    resources: str | None = None,
) -> InstallRequest:
    """The install request for specs typed on a line (``a#^1 as x b``), ``--config`` options,
    ``--partition``, ``--on`` and ``--resources`` (``cpus=16,mem=64G``), and the object form's
    ``body``: the line adds to the body's modules and options, an explicit ``partition`` wins
    over the body's, which wins over the default; so do ``on`` and ``resources``."""
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
    if on is not None:
        data["on"] = on
    if resources is not None:
        data["resources"] = parse_resources(resources)
    return InstallRequest.from_object(
        {**data, "modules": modules, "configurations": configurations}, chosen
    )


def add_placement_options(parser: argparse.ArgumentParser) -> None:
    """``--on`` and ``--resources``, as the CLI and the magic take them."""
    parser.add_argument(
        "--on",
        metavar="CLUSTER",
        help="run on a cluster: 'slurm', or a [clusters.NAME] of config.toml",
    )
    parser.add_argument(
        "--resources",
        metavar="NAME=VALUE,...",
        help="what to ask the cluster for: cpus=16,mem=64G,time=2:00:00,gres=gpu:1 "
        "(also partition, account, qos, constraint)",
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
        name=validate_name(name) if name else None,
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


def placement_text(instance: Mapping[str, Any]) -> str:
    """Where an instance runs: ``here``, or ``slurm job 12 on n1`` (``(pending)`` until then)."""
    on = instance.get("on") or "local"
    if on == "local":
        return "here"
    text = on + (f" job {instance['job']}" if instance.get("job") else "")
    text += f" on {instance['node']}" if instance.get("node") else ""
    state = instance.get("job_state") or ""
    return text + (f" ({state.lower()})" if state and state != "RUNNING" else "")


def _elsewhere(instances: Sequence[Mapping[str, Any]]) -> bool:
    return any((i.get("on") or "local") != "local" for i in instances)


def format_listing(listing: Mapping[str, Any]) -> str:
    """The text of ``ywmagics list`` and ``%backends list``; a column of where each instance
    runs when one runs on a cluster."""
    instances = [
        {
            **i,
            "config": _config_text(i["config"]),
            "uptime": f"{i['uptime']:.0f}s",
            "where": placement_text(i),
        }
        for i in listing["instances"]
    ]
    environments = [
        {
            **e,
            "config": _config_text(e["config"]),
            "python": _python_text(e),
            "source": source_text(e.get("source")),
            "built_by": _built_by_text(e),
        }
        for e in listing["environments"]
    ]
    columns = ["partition", "name", "version", "state", "config", "pid", "uptime"]
    if _elsewhere(listing["instances"]):
        columns.append("where")
    environment_columns = ["name", "version", "fingerprint", "python", "config", "built_by"]
    if any(e.get("source") for e in listing["environments"]):
        environment_columns.append("source")
    return (
        "Running instances:\n"
        + table(instances, columns)
        + "\n\nInstalled environments:\n"
        + table(environments, environment_columns)
    )


def source_text(source: Mapping[str, Any] | None) -> str:
    """Where a published backend's environment came from: what, which index, which file."""
    if not source:
        return "-"
    return (
        f"{source['package']} {source['version']} from {source['index']} "
        f"({str(source['digest'])[:19]}...)"
    )


def _python_text(environment: Mapping[str, Any]) -> str:
    """An environment's Python; one that a cluster's nodes build has the node's, found there."""
    if environment.get("python_version"):
        return str(environment["python_version"])
    if environment.get("node"):
        return f"built on {environment['node']}'s nodes"
    return "-"


def _built_by_text(environment: Mapping[str, Any]) -> str:
    """The ywmagics version that built it, and its codec when it shares one with kernels."""
    built_by = environment.get("built_by") or "?"
    codec = environment.get("codec")
    return f"{built_by} (codec {codec})" if codec is not None else built_by


def format_listing_html(
    listing: Mapping[str, Any],
    *,
    now: float,
    bound: Sequence[Mapping[str, Any]] = (),
    partition: str | None = None,
) -> str:
    """``%backends list`` as HTML tables, for notebooks, with the facts of the dashboard: who
    installed each instance, its restarts (its CPU and memory, each environment's size and last
    use, when the listing has them); then the aliases ``bound`` in the notebook (alias, name,
    version, partition) and the kernel's own ``partition``. Every value is escaped: names and
    configurations come from users."""
    instances = [
        {
            **i,
            "state": f"{i.get('state', '')}{' (given up)' if i.get('given_up') else ''}",
            "config": _config_text(i.get("config") or {}),
            "pid": "-" if i.get("pid") is None else i["pid"],
            "uptime": format_elapsed(i["uptime"]) if i.get("uptime") else "-",
            "restarts": i.get("restarts", 0),
            "installed_by": i.get("installed_by") or "-",
            "cpu": "-" if i.get("cpu_percent") is None else f"{i['cpu_percent']:.0f} %",
            "rss": "-" if i.get("rss") is None else format_size(i["rss"]),
            "where": placement_text(i),
        }
        for i in listing["instances"]
    ]
    environments = [
        {
            **e,
            "config": _config_text(e.get("config") or {}),
            "python": _python_text(e),
            "size": "not known yet" if e.get("size") is None else format_size(e["size"]),
            "last_used": "-" if not e.get("last_used") else format_ago(now - e["last_used"]),
        }
        for e in listing["environments"]
    ]
    instance_columns = [
        ("partition", "partition"),
        ("name", "name"),
        ("version", "version"),
        ("state", "state"),
        ("config", "configuration"),
        ("pid", "pid"),
        ("uptime", "uptime"),
        ("restarts", "restarts"),
        ("installed_by", "installed by"),
    ]
    if any("cpu_percent" in i for i in listing["instances"]):  # an orchestrator with psutil
        instance_columns += [("cpu", "CPU"), ("rss", "memory")]
    if _elsewhere(listing["instances"]):
        instance_columns.append(("where", "where"))
    environment_columns = [
        ("name", "name"),
        ("version", "version"),
        ("fingerprint", "fingerprint"),
        ("python", "python"),
        ("config", "configuration"),
    ]
    if any("size" in e for e in listing["environments"]):
        environment_columns.append(("size", "size"))
    if any("last_used" in e for e in listing["environments"]):
        environment_columns.append(("last_used", "last used"))
    parts = [
        "<div>",
        "<strong>Running instances</strong>",
        html_table(instances, instance_columns),
        "<strong>Installed environments</strong>",
        html_table(environments, environment_columns),
    ]
    sizes = [e["size"] for e in listing["environments"] if isinstance(e.get("size"), int)]
    if sizes:
        parts.append(f"<p>{html.escape(format_size(sum(sizes)))} on disk</p>")
    if bound:
        parts.append("<strong>Bound in this notebook</strong>")
        columns = [("alias", "alias"), ("name", "name"), ("version", "version")]
        parts.append(html_table(bound, [*columns, ("partition", "partition")]))
    if partition is not None:
        parts.append(f"<p>This kernel's partition: <code>{html.escape(partition)}</code></p>")
    parts.append("</div>")
    return "\n".join(parts)


_LEFT = ' style="text-align: left"'  # Jupyter aligns table cells right, as for numbers


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as an HTML table of ``columns`` (key, title), every cell escaped; or *none*."""
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th{_LEFT}>{html.escape(title)}</th>" for _, title in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td{_LEFT}>{html.escape(str(row.get(key, '')))}</td>" for key, _ in columns)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def format_status(status: Mapping[str, Any]) -> str:
    """The text of ``ywmagics status`` and ``%backends status`` (each adds its own lines):
    the orchestrator, and the versions that meet on it (its kernels', its runners' codecs)."""
    version = status.get("version", "?")
    lines = [
        f"orchestrator {version} (protocol {status.get('protocol', 0)}) at "
        f"{status.get('url', '?')} "
        f"(pid {status.get('pid', '?')}, up {float(status.get('uptime', 0)):.0f}s)",
        f"{status.get('instances', 0)} running instance(s), "
        f"{status.get('environments', 0)} installed environment(s)",
    ]
    attached = status.get("attached") or []
    if attached:
        kernels = ", ".join(
            f"{k.get('pid')} (ywmagics {k.get('version') or '?'})" for k in attached
        )
        lines.append(f"kernels attached: {kernels}")
    codec = status.get("codec")
    for runner in status.get("runners") or []:
        other = codec is not None and runner.get("codec") != codec
        lines.append(
            f"runner {runner.get('name')} {runner.get('version')} in {runner.get('partition')}: "
            f"codec {runner.get('codec') or '?'}, built by ywmagics "
            f"{runner.get('built_by') or '?'}"
            + (f" (the orchestrator's codec is {codec})" if other else "")
        )
    return "\n".join(lines)


def format_removed(done: Mapping[str, Any]) -> str:
    """What an uninstall removed (the orchestrator refuses one that matches nothing)."""
    return "\n".join(
        f"removed {e['name']} {e['version']} ({e['fingerprint']}) from {e['path']}"
        + (
            f"; the copies its nodes built stay in the node_dir of {e['node']!r}"
            if e.get("node")
            else ""
        )
        for e in done["removed"]
    )


# -- durations and sizes -----------------------------------------------------------------------

_DAYS_IN = {"minute": 1 / 1440, "hour": 1 / 24, "day": 1.0, "week": 7.0}
_UNIT_OF = {"m": "minute", "h": "hour", "d": "day", "w": "week"}
# No bare "m": on a command that removes things, 6m must not be read as minutes by us and as
# months by the user. ASCII digits only (\d takes every script's).
_AGE = re.compile(
    r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+) ?(mins?|minutes?|h|hrs?|hours?|d|days?|w|weeks?)?",
    re.IGNORECASE,
)
MAX_AGE_DAYS = 100_000  # what the orchestrator takes


@dataclass(frozen=True)
class Age:
    """A duration as a user typed it (``30d``, ``12h``, ``90min``, ``2w``): said back in its own
    unit ("30 days"), sent to the orchestrator in days."""

    amount: float
    unit: str  # minute, hour, day or week

    @property
    def days(self) -> float:
        return self.amount * _DAYS_IN[self.unit]

    def __str__(self) -> str:
        number = str(int(self.amount)) if self.amount == int(self.amount) else str(self.amount)
        return f"{number} {self.unit}{'' if self.amount == 1 else 's'}"


def parse_age(text: str) -> Age:
    """``30d``, ``12h``, ``90min``, ``2w`` (also ``30 days``, ``1.5h``); a bare number is days."""
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise SpecError(
            f"{text!r} is not a duration",
            hint="a number and a unit: 30d (days), 12h (hours), 90min (minutes), 2w (weeks); "
            "a bare number is days",
        )
    unit = _UNIT_OF[(match.group(2) or "d")[0].lower()]
    age = Age(float(match.group(1)), unit)
    if age.days > MAX_AGE_DAYS:
        raise SpecError(f"{text!r} is more than {MAX_AGE_DAYS} days", hint="say fewer days")
    return age


def format_size(size: float) -> str:
    """Bytes in units of 1024, as ``du -h`` counts them: ``512 B``, ``1.5 KiB``, ``45.2 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def format_elapsed(seconds: float) -> str:
    """A duration for people: ``42 s``, ``5 min``, ``3 h 12 min``, ``2 days 3 h``."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    text = f"{days} day{'' if days == 1 else 's'}"
    return f"{text} {hours} h" if hours else text


def format_ago(seconds: float) -> str:
    return "just now" if seconds < 60 else f"{format_elapsed(seconds)} ago"


# -- gc ----------------------------------------------------------------------------------------


def format_gc(done: Mapping[str, Any], age: Age, *, dry_run: bool, now: float) -> str:
    """What a gc removed (or, ``dry_run``, would remove), one environment a line, then the disk
    space that freed; or that nothing was unused for longer than ``age``."""
    removed = list(done["removed"])
    if not removed:
        return f"nothing unused for more than {age}"
    lines = []
    for e in removed:
        facts = [f"{e['name']} {e['version']} ({e['fingerprint']})"]
        if e.get("last_used"):
            facts.append(f"last used {format_ago(now - e['last_used'])}")
        facts.append("size not known yet" if e.get("size") is None else format_size(e["size"]))
        lines.append(f"{'would remove' if dry_run else 'removed'} {', '.join(facts)}: {e['path']}")
    known = [e["size"] for e in removed if e.get("size") is not None]
    freed = format_size(sum(known)) if known else "an unknown amount"
    if known and len(known) < len(removed):
        freed = f"at least {freed}"  # the sizes of the others were not measured yet
    count = f"{len(removed)} environment{'' if len(removed) == 1 else 's'}"
    lines.append(f"{'would free' if dry_run else 'freed'} {freed} ({count})")
    return "\n".join(lines)
