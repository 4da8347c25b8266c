"""Partition owners: a partition is orphaned once every process that owns it has ended."""

from __future__ import annotations

import subprocess
import sys

from ywmagics.orchestrator.owners import Owner, PartitionOwners, owner_of


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_partition_is_orphaned_when_all_its_owners_have_ended() -> None:
    owners = PartitionOwners()
    first, second = _sleeper(), _sleeper()
    try:
        assert owners.claim("kernel-1", first.pid) is False  # nobody owned it before
        assert owners.claim("kernel-1", second.pid) is False
        assert owners.orphaned() == []
        first.kill()
        first.wait()
        assert owners.orphaned() == []  # one owner is left
        second.kill()
        second.wait()
        assert owners.orphaned() == ["kernel-1"]
        assert owners.orphaned() == [] and not owners  # said once, then forgotten
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def test_a_new_owner_of_a_partition_whose_owners_ended_is_told_to_stop_it_first() -> None:
    # A kernel restarted with now=True keeps its partition's name: the old runners are not
    # the new kernel's, and must not be used by it.
    owners = PartitionOwners()
    old, new = _sleeper(), _sleeper()
    try:
        owners.claim("kernel-2", old.pid)
        old.kill()
        old.wait()
        assert owners.claim("kernel-2", new.pid) is True
        assert owners.claim("kernel-2", new.pid) is False  # now its own
    finally:
        for process in (old, new):
            process.kill()
            process.wait()


def test_a_pid_used_again_is_not_taken_for_the_owner() -> None:
    alive = _sleeper()
    try:
        now = owner_of(alive.pid)
        assert now is not None and now.started
        assert owner_of(alive.pid) == now
        assert Owner(alive.pid, "1") != now  # another process that had this pid before
        owners = PartitionOwners()
        owners._owners["kernel-3"] = {Owner(alive.pid, "1")}
        assert owners.orphaned() == ["kernel-3"]
    finally:
        alive.kill()
        alive.wait()
    assert owner_of(alive.pid) is None
