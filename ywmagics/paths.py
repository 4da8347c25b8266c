"""Where ywmagics keeps its files, in one place.

Everything lives under platformdirs' per-user folders, or under ``$YW_HOME`` when it is set (tests
and people who want a second, separate orchestrator use it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import stat
import sys
import tempfile
from pathlib import Path

import platformdirs

from ywmagics.portable import changeable_by_others

_APP = "ywmagics"
log = logging.getLogger("ywmagics")


def _home() -> Path | None:
    home = os.environ.get("YW_HOME")
    return Path(home).expanduser().resolve() if home else None


def data_dir() -> Path:
    """Environments, install logs and the user's own registry (made private by the
    orchestrator when it starts, see :func:`ywmagics.orchestrator.server.serve`)."""
    home = _home()
    return home / "data" if home else Path(platformdirs.user_data_dir(_APP))


def runtime_dir() -> Path:
    """The discovery file and the orchestrator's own log: private to the user (mode 0700).

    In a shared folder (``/tmp`` when there is no ``XDG_RUNTIME_DIR``), another user may have
    made the name first, or planted a symbolic link there: such a folder is refused, never
    followed or changed."""
    home = _home()
    if home:
        return private_dir(home / "run")
    if sys.platform in ("darwin", "win32"):  # no XDG_RUNTIME_DIR there
        return private_dir(Path(platformdirs.user_runtime_dir(_APP)))
    # XDG_RUNTIME_DIR is checked here rather than by platformdirs, which warns of one it
    # refuses at every look-up, in words of its own, and falls back to a folder of its own.
    session = os.environ.get("XDG_RUNTIME_DIR", "")
    refused = session_folder_problem(Path(session)) if session else None
    if session and refused is None:
        return private_dir(Path(session) / _APP)
    # No session runtime folder (no systemd login, containers): a private folder in /tmp;
    # if another user took its name first, one in our cache folder (per machine: a home
    # may be shared by the nodes of a cluster), where nobody else can.
    path = Path(tempfile.gettempdir(), f"ywmagics-{os.getuid()}")
    squatted = Path(platformdirs.user_cache_dir(_APP), "run", socket.gethostname())
    chosen = private_dir(path, instead=squatted)
    if refused is not None:
        _warn_refused_once(session, refused, chosen)
    return chosen


def session_folder_problem(folder: Path) -> str | None:
    """Why ``XDG_RUNTIME_DIR`` cannot hold ywmagics' private files, or ``None``: as the XDG
    specification has it, a folder of the user's own, that only the user can enter (0700),
    reached through folders nobody else can change."""
    if not folder.is_absolute():
        return "it is not an absolute path"
    resolved, why = changeable_by_others(folder)
    if resolved is None:
        return why
    try:
        info = os.stat(resolved)
    except OSError as error:
        return error.strerror or str(error)
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    if info.st_uid != os.getuid():
        return "it belongs to another user"
    if info.st_mode & 0o077:
        return f"its mode is {stat.S_IMODE(info.st_mode):04o}, not 0700: others may enter it"
    return None


def private_dir(path: Path, *, instead: Path | None = None) -> Path:
    """``path``, made if needed, checked to be a real folder of ours that only we can enter.

    A ``path`` that is someone else's, a link or a file is refused; with ``instead``, that
    folder is used then (and checked alike)."""
    from ywmagics.errors import ConfigurationError

    fix = "set YW_HOME (or XDG_RUNTIME_DIR) to a folder of yours"
    # The folders above too: made or followed through one another user can change, ours can
    # be swapped for theirs.
    _, why = changeable_by_others(path.parent)
    if why is not None:
        if instead is not None:
            _warn_once(path, instead)
            return private_dir(instead)
        raise ConfigurationError(f"cannot use {path} for ywmagics' private files: {why}", hint=fix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        info = os.lstat(path)
    except OSError as error:
        raise ConfigurationError(
            f"cannot use {path} for ywmagics' private files: {error.strerror or error}", hint=fix
        ) from error
    planted = stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode)
    # Someone else made it first in a shared /tmp: what is in it can't be trusted.
    if (planted or info.st_uid != os.getuid()) and instead is not None:
        _warn_once(path, instead)
        return private_dir(instead)
    if planted:
        raise ConfigurationError(f"{path} is not a folder (a link, or a file): refused", hint=fix)
    if info.st_uid != os.getuid():
        raise ConfigurationError(f"{path} belongs to another user: refused", hint=fix)
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours and no link (checked above): only we can enter it
    return path


def config_file() -> Path:
    """The user's settings (``registries = [...]``); optional."""
    home = _home()
    return home / "config.toml" if home else Path(platformdirs.user_config_dir(_APP), "config.toml")


def discovery_file() -> Path:
    return runtime_dir() / "orchestrator.json"


def environments_dir() -> Path:
    return data_dir() / "environments"


def logs_dir() -> Path:
    return data_dir() / "logs"


def user_registry_dir() -> Path:
    """Backends a user writes go here (or anywhere listed in ``YW_BACKENDS_PATH``)."""
    return data_dir() / "backends"


def bundled_registry_dir() -> Path:
    return Path(__file__).parent / "backends"


@functools.cache
def _warn_once(path: Path, instead: Path) -> None:
    log.warning("%s is not ours (another user made it first): using %s", path, instead)


@functools.cache  # once per process: it is looked up by each command, each kernel's magic
def _warn_refused_once(session: str, why: str, instead: Path) -> None:
    log.warning(
        "ywmagics does not use XDG_RUNTIME_DIR=%s: %s. The orchestrator's discovery file, log "
        "and socket are in %s instead (set XDG_RUNTIME_DIR to a folder of yours with mode 0700, "
        "or YW_HOME, to choose)",
        session,
        why,
        instead,
    )
