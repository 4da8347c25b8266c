"""Where ywmagics keeps its files, in one place.

Everything lives under platformdirs' per-user folders, or under ``$YW_HOME`` when it is set (tests
and people who want a second, separate orchestrator use it).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import platformdirs

_APP = "ywmagics"


def _home() -> Path | None:
    home = os.environ.get("YW_HOME")
    return Path(home).expanduser().resolve() if home else None


def data_dir() -> Path:
    """Environments, install logs and the user's own registry."""
    home = _home()
    return home / "data" if home else Path(platformdirs.user_data_dir(_APP))


def runtime_dir() -> Path:
    """The discovery file and the orchestrator's own log: private to the user (mode 0700)."""
    home = _home()
    if home:
        path = home / "run"
    elif os.environ.get("XDG_RUNTIME_DIR") or sys.platform != "linux":
        path = Path(platformdirs.user_runtime_dir(_APP))
    else:
        # No session runtime folder (no systemd login, containers): a private folder in /tmp.
        path = Path(tempfile.gettempdir(), f"ywmagics-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid != os.getuid():
        # Someone else made it first in a shared /tmp: its discovery file can't be trusted.
        raise PermissionError(f"{path} belongs to another user; set YW_HOME to a folder of yours")
    os.chmod(path, 0o700)
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
