"""Which processes own a partition (a kernel owns its own), so that the partition is stopped
when they have all ended, however they ended: a kernel killed by SIGKILL, restarted with
``now=True``, or ended by ipykernel's parent-death exit runs no exit hook, and its runners
would run on forever.

A process is known by its pid and its start time, so that a pid used again by another process
is not taken for the owner. I/O: /proc only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

POLL_INTERVAL = 2.0  # seconds between looks at the owners (a partition stops within ~2 s)


@dataclass(frozen=True)
class Owner:
    pid: int
    started: str  # the kernel's start time of the process (clock ticks since boot), or ""


def owner_of(pid: int) -> Owner | None:
    """The process ``pid`` now, or ``None`` if it has ended (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (not Linux): whether the pid exists, at least
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return Owner(pid, "")
    if fields[0] in (b"Z", b"X"):
        return None
    return Owner(pid, fields[19].decode())  # field 22 of stat: starttime


class PartitionOwners:
    """The owners of each partition that has some."""

    def __init__(self) -> None:
        self._owners: dict[str, set[Owner]] = {}
        self._versions: dict[Owner, str] = {}  # the ywmagics each says it runs, when it says

    def claim(self, partition: str, pid: int, version: str = "") -> bool:
        """Make ``pid`` an owner of ``partition`` (of ywmagics ``version``, if known). ``True``
        when the partition had owners and all of them have ended: what runs there is theirs
        (a restarted kernel's old runners), to be stopped before anything of the new owner
        starts."""
        owners = self._owners.get(partition, set())
        living = {o for o in owners if owner_of(o.pid) == o}
        orphaned = bool(owners) and not living
        new = owner_of(pid)
        if new is not None:
            living.add(new)
            if version:
                self._versions[new] = version
        self._owners[partition] = living
        every = {o for owners in self._owners.values() for o in owners}
        self._versions = {o: v for o, v in self._versions.items() if o in every}
        return orphaned

    def orphaned(self) -> list[str]:
        """The partitions whose owners have all ended, forgotten as they are returned."""
        ended = [
            partition
            for partition, owners in self._owners.items()
            if not any(owner_of(o.pid) == o for o in owners)
        ]
        for partition in ended:
            del self._owners[partition]
        every = {o for owners in self._owners.values() for o in owners}
        self._versions = {o: v for o, v in self._versions.items() if o in every}
        return ended

    def of(self, partition: str) -> list[int]:
        """The pids of ``partition``'s owners, as last claimed (some may have ended since)."""
        return sorted(o.pid for o in self._owners.get(partition, ()))

    def living(self) -> set[int]:
        """The pids of every owner that still runs: the kernels attached."""
        return set(self.versions())

    def versions(self) -> dict[int, str]:
        """The ywmagics version of every owner that still runs (``""``: it did not say)."""
        return {
            o.pid: self._versions.get(o, "")
            for owners in self._owners.values()
            for o in owners
            if owner_of(o.pid) == o
        }

    def __bool__(self) -> bool:
        return bool(self._owners)
