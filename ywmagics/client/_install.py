"""``ywmagics.install``: the tutorial's ``webpm.install({backends: ...})`` for plain Python."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

from ywmagics.client._backend import BackendClient
from ywmagics.client._orchestrator import EventHandler, OrchestratorClient
from ywmagics.discovery import Connection
from ywmagics.spec import Configurations, InstallRequest


class Clients(Mapping[str, BackendClient]):
    """The installed backends' clients, by alias: ``clients.demo`` or ``clients["demo"]``."""

    def __init__(self, clients: dict[str, BackendClient]) -> None:
        self._clients = clients

    def __getattr__(self, alias: str) -> BackendClient:
        try:
            return self._clients[alias]
        except KeyError:
            raise AttributeError(
                f"no backend installed as {alias!r}; aliases: {', '.join(self._clients)}"
            ) from None

    def __getitem__(self, alias: str) -> BackendClient:
        return self._clients[alias]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self._clients]

    def __repr__(self) -> str:
        return f"Clients({', '.join(self._clients)})"


def install(
    backends: Mapping[str, Any] | Iterable[str] | str,
    *,
    partition: str | None = None,
    configurations: Configurations | None = None,
    on_event: EventHandler | None = None,
    connection: Connection | None = None,
    http: httpx.Client | None = None,
) -> Clients:
    """Install backends (building their environments if needed), start them, return clients.

    ``backends`` is a spec (``"demo_yw_backend#^0.1.1 as demo"``), a list of specs, or the
    tutorial's object ``{"modules": [...], "configurations": {...}, "partition": "Foo"}``.
    ``http`` is the ``httpx.Client`` the install and the clients send with.
    """
    request = InstallRequest.from_object(backends, partition)
    if configurations:
        for name, conf in configurations.items():
            request.configurations.setdefault(name, {"build": {}})["build"].update(
                conf.get("build", {})
            )
    orchestrator = OrchestratorClient(connection, http=http)
    results = orchestrator.install(request, on_event)
    return Clients(
        {
            r["alias"]: BackendClient(
                orchestrator.connection,
                r["name"],
                r["version"],
                r["partition"],
                http=http,
                follow=orchestrator.follow,
                fingerprint=r.get("fingerprint"),
            )
            for r in results
        }
    )
