"""Standard library only, Python 3.8 or later: what runs both here and on cluster nodes, where
it is sent with the node shim (see :mod:`~ywmagics.orchestrator.placements.slurm`), so that a
fix reaches both.

- :func:`changeable_by_others`: whether another user could have put or changed what a path
  names (every folder and link on the way);
- :func:`lines_until_ended`: a build step's output, line by line, that does not wait forever
  for what the step left running.
"""

from __future__ import annotations

import functools
import os
import select
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def changeable_by_others(path: Path) -> tuple[Path | None, str | None]:
    """Whether another user could have put or changed what ``path`` names: ``(resolved, None)``
    when not, else ``(None, why)``.

    The path is resolved one link at a time, as the kernel does: every folder on the way, every
    link and what it leads to must be yours or root's, and not writable by others (a sticky
    folder such as /tmp aside: nobody replaces what is yours there; group-writable only with a
    group of your own, as umask 002 setups make). ``resolved`` is the path with no link left:
    use it, not ``path``, so that no later use goes through a link that was not checked."""
    if not hasattr(os, "getuid"):
        return Path(os.path.abspath(path)), None
    pending = list(Path(os.path.abspath(path)).parts[1:])
    current = Path(Path(os.path.abspath(path)).anchor)
    checked = [current]
    links = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent  # ``current`` has no link left: its parent is real
            continue
        candidate = current / name
        checked.append(candidate)
        why = _unsafe(candidate)
        if why is not None:
            return None, why
        if candidate.is_symlink():
            links += 1
            if links > 40:
                return None, f"{path}: too many links"
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path(target.anchor)
                pending = list(target.parts[1:]) + pending
            else:
                pending = list(target.parts) + pending
        else:
            current = candidate
    why = _unsafe(Path(current.anchor))
    return (current, None) if why is None else (None, why)


def _unsafe(part: Path) -> str | None:
    try:
        info = os.lstat(part)
    except FileNotFoundError:
        return None  # not there (yet): nothing to change, nothing to run
    except OSError as error:
        return f"{part}: {error.strerror}"
    if info.st_uid not in (os.getuid(), 0):
        return f"{part} belongs to another user"
    if stat.S_ISLNK(info.st_mode):
        return None  # a link's own mode means nothing; who may replace it is its folder's
    sticky_folder = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
    group_writes = info.st_mode & stat.S_IWGRP and not _group_of_our_own(info.st_gid)
    if (info.st_mode & stat.S_IWOTH or group_writes) and not sticky_folder:
        return f"others may write to {part}"
    return None


@functools.lru_cache(maxsize=None)  # noqa: UP033 (Python 3.8 on nodes)
def _group_of_our_own(gid: int) -> bool:
    """Root's, or our primary group with no other member (a user private group)."""
    if gid == 0:
        return True
    if gid != os.getgid():
        return False
    import grp
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name if _has_passwd_entry() else ""
    try:
        members = set(grp.getgrgid(gid).gr_mem) - {me}
    except KeyError:
        return False
    if members:
        return False
    return not any(u.pw_gid == gid and u.pw_uid != os.getuid() for u in pwd.getpwall())


def _has_passwd_entry() -> bool:
    import pwd

    try:
        pwd.getpwuid(os.getuid())
    except KeyError:
        return False
    return True


def lines_until_ended(process: subprocess.Popen[bytes], pipe: int) -> Iterator[str]:
    """The lines of a step's output, as they come, until the pipe closes, or the step has ended
    and nothing more comes for a moment: what still holds the pipe then is not the step (if
    anything escaped its launcher, a shutdown must not wait for it forever)."""
    pending = b""
    ended_at: float | None = None
    while ended_at is None or time.monotonic() - ended_at < 5:  # then it is not the step's
        if ended_at is None and process.poll() is not None:
            ended_at = time.monotonic()
        if select.select([pipe], [], [], 0.5)[0]:
            chunk = os.read(pipe, 65536)
            if not chunk:
                break
            pending += chunk
            *whole, pending = pending.split(b"\n")
            for line in whole:
                yield line.decode(errors="replace") + "\n"
        elif process.poll() is not None:
            break
    if pending:
        yield pending.decode(errors="replace") + "\n"
