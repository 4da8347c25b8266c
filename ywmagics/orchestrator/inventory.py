"""Facts about what runs and what is installed that cost a look at the system: the CPU and
memory an instance uses (with all it started), and the disk an environment takes."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

SIZE_FRESH_FOR = 600.0  # seconds a measured size is reused (an environment changes little)


class ResourceMeter:
    """CPU % and resident memory of a process tree. CPU % is over the time since the previous
    look (psutil's way), so the process objects are kept between looks; the first look at a
    process says 0 %."""

    def __init__(self) -> None:
        self._seen: dict[int, psutil.Process] = {}

    def measure(self, pids: Iterable[int]) -> dict[int, tuple[float | None, int | None]]:
        """``(cpu_percent, rss_bytes)`` of each of ``pids`` with its descendants; ``(None,
        None)`` for one that has ended. One look at every process for all the trees (psutil's
        ``children()`` looks at every process for each)."""
        import psutil  # here: not among what an orchestrator loads before its first answer

        children: dict[int, list[int]] = {}
        for process in psutil.process_iter(["ppid"]):
            children.setdefault(process.info["ppid"], []).append(process.pid)
        usage: dict[int, tuple[float | None, int | None]] = {}
        for pid in pids:
            try:
                self._process(pid)
            except psutil.Error:
                usage[pid] = (None, None)
                continue
            cpu, rss, tree = 0.0, 0, [pid]
            while tree:
                member = tree.pop()
                tree.extend(children.get(member, ()))
                # one that ended in between counts no more
                with contextlib.suppress(psutil.Error):
                    process = self._process(member)
                    with process.oneshot():
                        cpu += process.cpu_percent(None)
                        rss += process.memory_info().rss
            usage[pid] = (round(cpu, 1), rss)
        return usage

    def _process(self, pid: int) -> psutil.Process:
        import psutil

        known = self._seen.get(pid)
        if known is None or not known.is_running():  # is_running also tells a reused pid
            known = self._seen[pid] = psutil.Process(pid)
        return known

    def forget_ended(self) -> None:
        self._seen = {pid: p for pid, p in self._seen.items() if p.is_running()}


def disk_usage(folder: Path) -> int:
    """Bytes that ``folder`` takes on disk (allocated blocks), each hard-linked file once: uv
    links files from its cache, so what an environment adds to the disk is less."""
    total, seen = 0, set()
    stack = [str(folder)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    if (info.st_dev, info.st_ino) not in seen:
                        seen.add((info.st_dev, info.st_ino))
                        total += info.st_blocks * 512
    return total


class SizeCache:
    """Sizes of environment folders, measured off the event loop and reused for a while."""

    def __init__(self) -> None:
        self._sizes: dict[Path, tuple[float, int]] = {}

    def get(self, folder: Path) -> int | None:
        known = self._sizes.get(folder)
        return known[1] if known is not None else None

    def stale(self, folders: list[Path]) -> list[Path]:
        """Which of ``folders`` to measure (again)."""
        now = time.monotonic()
        return [
            f
            for f in folders
            if now - self._sizes.get(f, (-SIZE_FRESH_FOR, 0))[0] >= SIZE_FRESH_FOR
        ]

    def measure(self, folder: Path) -> None:
        """In a thread: it reads every file's metadata."""
        self._sizes[folder] = (time.monotonic(), disk_usage(folder))

    def keep_only(self, folders: list[Path]) -> None:
        self._sizes = {f: s for f, s in self._sizes.items() if f in folders}
