"""Install progress as text lines, and what every progress view shares: the tracker of events.

Used where there is no widget frontend: the ``ywmagics`` command, terminal IPython, nbconvert or
papermill (through :mod:`ywmagics.kernel.progress`, which adds the widget view). Events are printed
as they come, what build tools print about each package summed up in a line per step. Imports
no IPython: the command line uses it too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, Protocol

from ywmagics.events import Event, EventKind

# Build tools color their output when the kernel's FORCE_COLOR reaches them; a Textarea can't.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

# Where each kind of event puts one backend's install, as a fraction; building steps report
# their own progress, mapped into [_BUILD_START, _BUILD_END].
_BUILD_START, _BUILD_END = 0.05, 0.8
_STEP_PROGRESS = {
    EventKind.RESOLVED: _BUILD_START,
    EventKind.BUILT: _BUILD_END,
    EventKind.REUSED: _BUILD_END,
    EventKind.REPLACED: _BUILD_END,
    EventKind.STARTING: 0.85,
    EventKind.RESTARTED: 0.85,
    EventKind.READY: 1.0,
}


class Tracker:
    """Overall progress, current step and log of an install of ``expected`` backends."""

    def __init__(self, expected: int) -> None:
        self.expected = max(expected, 1)
        self.progress: dict[str, float] = {}
        self.step = "resolving"
        self.lines: list[str] = []
        self.failed = False

    def update(self, event: Event) -> None:
        key = f"{event.name}@{event.partition}"
        current = self.progress.get(key, 0.0)
        if event.kind is EventKind.BUILDING and event.progress is not None:
            value = _BUILD_START + (_BUILD_END - _BUILD_START) * min(max(event.progress, 0.0), 1)
        else:
            value = _STEP_PROGRESS.get(event.kind, current)
        self.progress[key] = max(current, value)
        self.failed = self.failed or event.kind is EventKind.FAILED
        version = f" {event.version}" if event.version else ""
        text = _ANSI.sub("", event.text)
        self.step = f"{event.name}{version}: {event.kind.value}: {text}"
        self.lines.append(_ANSI.sub("", str(event)))

    @property
    def fraction(self) -> float:
        return min(sum(self.progress.values()) / self.expected, 1.0)


def summary_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    return [
        f"{r['alias']}: {r['name']} {r['version']} in partition {r['partition']}" for r in results
    ]


class ProgressView(Protocol):
    """What the install magic calls: one ``event`` per event, then ``done`` or ``failed``."""

    def event(self, event: Event) -> None: ...

    def done(self, results: Sequence[dict[str, Any]]) -> None: ...

    def failed(self, error: BaseException) -> None: ...


# What build tools print about each package, which the text view sums up: uv's " + numpy==2.0"
# and pip's "Successfully installed numpy-2.0 ...", uv's "Downloading numpy (16.1MiB)" and
# " Downloaded numpy". Warnings and errors are printed as they come.
_UV_INSTALLED = re.compile(r"\s*\+ (?P<name>[^=\s]+)==")
_PIP_INSTALLED = re.compile(r"Successfully installed (?P<names>.+)")
_DOWNLOADING = re.compile(r"\s*Downloading (?P<name>\S+) \(")
_DOWNLOADED = re.compile(r"\s*Downloaded (?P<name>\S+)\s*")
_NOTEWORTHY = re.compile(r"\s*(warning|error)\b", re.IGNORECASE)
_SHOWN_AS_THEY_ARE = 3  # a step's output of a few lines with no package in them


def _is_tool_output(event: Event) -> bool:
    """A line a build step's program printed (its steps come with their progress)."""
    return event.kind is EventKind.BUILDING and event.progress is None


def summarize_tool_output(lines: Sequence[Event], started: float, ended: float) -> list[str]:
    """What the program of a step printed, between ``started`` and ``ended``, in one line:
    ``installed 23 packages in 1.2 s, slowest download: numpy 0.6 s``; a few lines that name no
    package are kept as they are."""
    installed: list[str] = []
    downloading: dict[str, float] = {}
    downloads: dict[str, float] = {}
    for line in lines:
        if match := _UV_INSTALLED.match(line.text):
            installed.append(match["name"])
        elif match := _PIP_INSTALLED.fullmatch(line.text.strip()):
            installed += [n.rsplit("-", 1)[0] for n in match["names"].split()]
        elif match := _DOWNLOADING.match(line.text):
            downloading[match["name"]] = line.time
        elif (match := _DOWNLOADED.fullmatch(line.text)) and match["name"] in downloading:
            downloads[match["name"]] = line.time - downloading[match["name"]]
    elapsed = max(ended - started, 0.0)
    if not installed:
        if len(lines) <= _SHOWN_AS_THEY_ARE:
            return [line.text for line in lines]
        return [f"{len(lines)} lines of output in {elapsed:.1f} s, the last: {lines[-1].text}"]
    text = f"installed {len(installed)} package{'s' if len(installed) > 1 else ''}"
    text += f" in {elapsed:.1f} s"
    if downloads:
        slowest = max(downloads, key=lambda name: downloads[name])
        text += f", slowest download: {slowest} {downloads[slowest]:.1f} s"
    return [text]


class _StepOutput:
    """The lines the program of one backend's current build step printed so far."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.lines: list[Event] = []


class TextProgress:
    """Prints each step of the install on its own line as it comes (terminal IPython,
    ``ywmagics install``); what the build tools print, a line per package, is summed up in one
    line at the end of their step."""

    def __init__(self, title: str, expected: int) -> None:
        self.tracker = Tracker(expected)
        self._steps: dict[str, _StepOutput] = {}  # by backend: installs may run side by side
        self._print(title)

    @staticmethod
    def _print(text: str) -> None:
        print(text, flush=True)

    def event(self, event: Event) -> None:
        self.tracker.update(event)
        key = f"{event.name}@{event.partition}"
        if not _is_tool_output(event):
            self._end_step(key, event.time)
            self._steps[key] = _StepOutput(event.time)
            self._print(str(event))
        elif _NOTEWORTHY.match(event.text):
            self._print(str(event))
        else:
            self._steps.setdefault(key, _StepOutput(event.time)).lines.append(event)

    def _end_step(self, key: str, ended: float) -> None:
        step = self._steps.pop(key, None)
        if step is None or not step.lines:
            return
        first = step.lines[0]
        for text in summarize_tool_output(step.lines, step.started, ended):
            self._print(str(dataclasses.replace(first, text=text)))

    def finish(self) -> None:
        """Print what is left of the steps' output (the install has ended)."""
        for key, step in list(self._steps.items()):
            self._end_step(key, step.lines[-1].time if step.lines else step.started)

    def done(self, results: Sequence[dict[str, Any]]) -> None:
        self.finish()
        for line in summary_lines(results):
            self._print(line)

    def failed(self, error: BaseException) -> None:
        # The error itself is raised to the user; only say that the install stopped here.
        self.finish()
        self._print(
            "install failed" if not isinstance(error, KeyboardInterrupt) else "install interrupted"
        )
