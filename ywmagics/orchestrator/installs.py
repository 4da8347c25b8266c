"""Installs under way and just ended, as the dashboard shows them: their steps, their progress,
and for a failed one what went wrong with the tail of its log. Memory only: an install is
shown while it runs and for a while after, not kept across restarts."""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from ywmagics.errors import YwMagicsError
from ywmagics.events import Event

KEPT_ENDED = 20  # installs that have ended, newest first, shown after the running ones
KEPT_STEPS = 50  # the last steps of an install (each line a build prints is one)


@dataclass
class InstallRecord:
    partition: str
    name: str
    version: str  # the resolved version, or the range asked for when resolving failed
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    state: str = "running"  # "done", "failed"
    progress: float | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    steps: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=KEPT_STEPS))
    steps_before: int = 0  # steps no longer kept: a build that prints much stays small here
    error: str | None = None
    hint: str | None = None
    log_tail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": list(self.steps)}


class InstallTracker:
    """The installs of every client, for everyone who looks (one orchestrator, one user)."""

    def __init__(self) -> None:
        self._running: dict[str, InstallRecord] = {}
        self._ended: deque[InstallRecord] = deque(maxlen=KEPT_ENDED)

    def begin(self, partition: str, name: str, version: str) -> InstallRecord:
        record = InstallRecord(partition, name, version)
        self._running[record.id] = record
        return record

    @staticmethod
    def step(record: InstallRecord, event: Event) -> None:
        if len(record.steps) == KEPT_STEPS:
            record.steps_before += 1
        record.steps.append(
            {
                "kind": event.kind.value,
                "text": event.text,
                "time": event.time,
                "progress": event.progress,
            }
        )
        if event.progress is not None:
            record.progress = event.progress

    def finish(self, record: InstallRecord) -> None:
        record.state, record.progress = "done", 1.0
        self._end(record)

    def fail(self, record: InstallRecord, error: BaseException) -> None:
        record.state = "failed"
        if isinstance(error, YwMagicsError):
            record.error = error.message
            record.hint, record.log_tail = error.hint or None, error.log_tail or None
        else:
            record.error = f"{type(error).__name__}: {error}"
        self._end(record)

    def _end(self, record: InstallRecord) -> None:
        if self._running.pop(record.id, None) is not None:
            record.ended = time.time()
            self._ended.appendleft(record)

    def to_list(self) -> list[dict[str, Any]]:
        """Running installs (oldest first), then the ones that ended (newest first)."""
        return [r.to_dict() for r in (*self._running.values(), *self._ended)]
