"""On this machine: the backend is the child itself, on a Unix socket in the orchestrator's
private folder, or on a TCP port (in a network namespace of its own where the machine allows)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ywmagics.orchestrator.manifest import Listen, Network, expand
from ywmagics.orchestrator.placements import Launch
from ywmagics.orchestrator.processes import PrivateNetwork, private_network_available
from ywmagics.orchestrator.upstream import UpstreamPool

if TYPE_CHECKING:
    from ywmagics.orchestrator.events import Emit
    from ywmagics.orchestrator.supervisor import Instance


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalPlacement:
    kind = "local"

    def __init__(
        self, sockets_dir: Path, orchestrator_url: str, orchestrator_socket: Path | None
    ) -> None:
        self.sockets_dir = sockets_dir
        self.orchestrator_url = orchestrator_url
        self.orchestrator_socket = orchestrator_socket

    async def launch(
        self, instance: Instance, placeholders: dict[str, str], env: dict[str, str]
    ) -> Launch:
        manifest = instance.manifest
        if manifest.listen is not Listen.UNIX and manifest.network is Network.PRIVATE:
            # Learnt once (a process), off the loop; a Unix socket needs no network of its own.
            await asyncio.to_thread(private_network_available)
        instance.socket_path = instance.port = instance.connector_path = None
        if manifest.listen is Listen.UNIX:
            instance.socket_path = self.sockets_dir / f"{secrets.token_hex(6)}.sock"
            placeholders = {**placeholders, "socket": str(instance.socket_path), "port": ""}
        else:
            instance.port = free_port()
            if manifest.network is Network.PRIVATE and private_network_available():
                instance.connector_path = self.sockets_dir / f"{secrets.token_hex(6)}.conn"
            placeholders = {**placeholders, "socket": "", "port": str(instance.port)}
        env = {**env, **{k: expand(v, placeholders) for k, v in manifest.env.items()}}
        if instance.port is not None:
            env["PORT"] = str(instance.port)
        launch = Launch(
            [expand(arg, placeholders) for arg in manifest.start], env, instance.environment.path
        )
        if instance.connector_path is not None and instance.port is not None:
            launch.private_network = PrivateNetwork(
                instance.connector_path,
                instance.port,
                urlsplit(self.orchestrator_url).port,
                self.orchestrator_socket,
            )
        elif instance.port is not None:
            why = (
                "its manifest asks for the machine's network"
                if manifest.network is Network.SHARED
                else "this machine gives no private network namespace (user namespaces are off)"
            )
            launch.warnings.append(
                f"it listens on TCP port {instance.port}, which every local user can reach: {why}"
            )
        return launch

    async def connect(
        self, instance: Instance, process: asyncio.subprocess.Process, emit: Emit
    ) -> UpstreamPool:
        return UpstreamPool(
            uds=str(instance.socket_path) if instance.socket_path else None,
            port=instance.port,
            connector=str(instance.connector_path) if instance.connector_path else None,
        )

    async def ask_to_stop(
        self, instance: Instance, process: asyncio.subprocess.Process, within: float
    ) -> None:
        pass  # SIGTERM to its group is the way: its launcher passes it on

    async def cancel_start(self, instance: Instance) -> None:
        pass  # a local start waits for readiness only, within the manifest's time limit

    async def release(self, instance: Instance) -> None:
        for path in (instance.socket_path, instance.connector_path):
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def facts(self, instance: Instance) -> dict[str, object]:
        return {"on": self.kind}

    async def sweep(self) -> list[str]:
        return []  # a local child never outlives its orchestrator (the launcher sees to it)
