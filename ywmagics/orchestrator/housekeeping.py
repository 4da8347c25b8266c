"""What the orchestrator puts in order when it starts: private state, limits, leftovers.

- Everything it creates is the user's alone (umask 077: folders 0700, files 0600), and the
  folders an older version made readable are closed: logs hold what backends print.
- Its soft limit of open files is raised to the hard one: every connection and every pooled
  connection to a backend is a file descriptor.
- What a killed orchestrator left behind is removed: its sockets folder, and (later, in the
  background) half-built or half-removed environments and stale lock files.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from ywmagics import paths
from ywmagics.orchestrator.processes import has_exited

SOCKETS_PREFIX = "yw-"
_SOCKETS_NAME = re.compile(rf"{SOCKETS_PREFIX}(\d+)-\w+")


def make_state_private() -> None:
    os.umask(0o077)
    for folder in (paths.data_dir(), paths.logs_dir(), paths.environments_dir()):
        paths.private_dir(folder)
    for root, folders, files in os.walk(paths.logs_dir()):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o700)
        for name in files:
            os.chmod(os.path.join(root, name), 0o600)


def raise_open_files_limit() -> None:
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def new_sockets_dir() -> Path:
    """A private folder for the backends' sockets, short (socket paths are limited to about 100
    bytes), named after this process so that a later orchestrator can tell it is left over."""
    return Path(tempfile.mkdtemp(prefix=f"{SOCKETS_PREFIX}{os.getpid()}-"))


def sweep_sockets_dirs() -> list[Path]:
    """Remove the sockets folders of orchestrators of this user that are gone."""
    removed = []
    for entry in Path(tempfile.gettempdir()).iterdir():
        match = _SOCKETS_NAME.fullmatch(entry.name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            info = os.lstat(entry)
            ours = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            if ours and has_exited(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed
