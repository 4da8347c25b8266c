"""The discovery file through which clients find the orchestrator (URL, token, pid; mode 0600)."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ywmagics import paths


@dataclass(frozen=True)
class Connection:
    """Where the orchestrator listens and the token it wants."""

    url: str
    token: str
    pid: int = 0
    version: str = ""  # the orchestrator's ywmagics version, as its discovery file says
    protocol: int = 0  # its protocol.PROTOCOL_VERSION (0: it published none)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def write_discovery(data: dict[str, object], path: Path | None = None) -> None:
    """Write ``data`` atomically, readable by the user only."""
    path = path or paths.discovery_file()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(data, file)
    os.replace(temporary, path)


def read_discovery(path: Path | None = None) -> Connection | None:
    """The connection in the discovery file, or ``None`` if it is absent, broken or stale."""
    try:
        data = json.loads((path or paths.discovery_file()).read_text())
        connection = Connection(
            str(data["url"]),
            str(data["token"]),
            int(data["pid"]),
            str(data.get("version", "")),
            int(data.get("protocol", 0)),
        )
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return connection if pid_alive(connection.pid) else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: a zombie (ended, not reaped yet by its parent) does not."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel whether it exists at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def answers(connection: Connection, timeout: float = 5.0) -> bool:
    """Whether an orchestrator really answers at ``connection`` with that token: a stale file's
    pid may have been reused by another process. Stdlib only, so that neither the orchestrator
    nor a kernel that has not used the client yet loads an HTTP library for it."""
    url = urlsplit(connection.url)
    if url.scheme != "http" or url.hostname is None or url.port is None:
        return False
    request = (
        f"GET /status HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {connection.token}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((url.hostname, url.port), timeout=timeout) as probe:
            probe.sendall(request)
            head = probe.recv(64)
    except OSError:
        return False
    return head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))
