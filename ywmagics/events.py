"""Typed install and start events, as sent over the wire (one JSON object per line).

I/O-free and shared: the orchestrator emits them, the client parses them, the kernel renders them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class EventKind(str, Enum):
    RESOLVED = "resolved"
    BUILDING = "building"
    BUILT = "built"
    REUSED = "reused"
    QUEUED = "queued"  # waiting for a cluster's job to start (its id and Slurm's reason)
    STARTING = "starting"
    READY = "ready"
    REPLACED = "replaced"
    STOPPED = "stopped"
    RESTARTED = "restarted"
    FAILED = "failed"


@dataclass(frozen=True)
class Event:
    """One step of an install or a start.

    ``progress`` is the fraction (0 to 1) of the whole install of this backend when it is known.
    """

    kind: EventKind
    name: str
    version: str
    partition: str
    text: str
    progress: float | None = None
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(
            kind=EventKind(data["kind"]),
            name=str(data.get("name", "")),
            version=str(data.get("version", "")),
            partition=str(data.get("partition", "")),
            text=str(data.get("text", "")),
            progress=data.get("progress"),
            time=float(data.get("time", 0.0)),
        )

    def __str__(self) -> str:
        where = f"{self.name}#{self.version}" if self.version else self.name
        return f"[{where} @ {self.partition}] {self.kind.value}: {self.text}"
