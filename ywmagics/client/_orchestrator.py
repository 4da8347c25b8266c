"""The orchestrator's admin client (sync): install, list, stop, logs, uninstall, status."""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from ywmagics.client._connect import connect
from ywmagics.client._http import check, translate_transport_error
from ywmagics.client._pool import shared_http
from ywmagics.discovery import Connection
from ywmagics.errors import OrchestratorError, error_from_dict
from ywmagics.events import Event
from ywmagics.spec import InstallRequest

EventHandler = Callable[[Event], None]


class OrchestratorClient:
    """Talks to the user's orchestrator; finds or starts it unless given a ``connection``."""

    def __init__(self, connection: Connection | None = None, *, timeout: float = 600.0) -> None:
        self.connection = connection or connect()
        self._http = shared_http()
        self._timeout = httpx.Timeout(timeout, connect=5.0)

    def close(self) -> None:
        """Nothing to release: the connection pool is shared (see ``_pool``)."""

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return check(
                self._http.request(
                    method,
                    self.connection.url + path,
                    headers=self.connection.headers,
                    timeout=kwargs.pop("timeout", self._timeout),
                    **kwargs,
                )
            )
        except httpx.TransportError as error:
            raise translate_transport_error(error, self.connection.url) from None

    def status(self) -> dict[str, Any]:
        return dict(self._call("GET", "/status").json())

    def list(self) -> dict[str, Any]:
        """``{"instances": [...], "environments": [...], "backends": [...]}``."""
        return dict(self._call("GET", "/list").json())

    def install(
        self, request: InstallRequest, on_event: EventHandler | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Install and start; ``on_event`` sees each event as it happens. Returns one dict per
        backend (alias, name, version, partition, path, config)."""
        try:
            with self._http.stream(
                "POST",
                self.connection.url + "/install",
                json=request.to_dict(),
                headers=self.connection.headers,
                timeout=self._timeout,
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    check(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if "event" in item:
                        if on_event is not None:
                            on_event(Event.from_dict(item["event"]))
                    elif "result" in item:
                        return list(item["result"]["backends"])
                    elif "error" in item:
                        raise error_from_dict(item["error"])
        except httpx.TransportError as error:
            raise translate_transport_error(error, self.connection.url) from None
        raise OrchestratorError(
            "the install stream ended without a result", hint="see the orchestrator's log"
        )

    def stop(
        self,
        *,
        partition: str | None = None,
        name: str | None = None,
        version: str | None = None,
        all: bool = False,
    ) -> builtins.list[dict[str, Any]]:
        body = {"partition": partition, "name": name, "version": version, "all": all}
        return list(self._call("POST", "/stop", json=body).json()["stopped"])

    def logs(self, name: str, *, partition: str = "Default", lines: int = 200) -> str:
        return self._call(
            "GET", f"/logs/{name}", params={"partition": partition, "lines": lines}
        ).text

    def uninstall(self, spec: str) -> dict[str, Any]:
        return dict(self._call("POST", "/uninstall", json={"spec": spec}).json())

    def shutdown(self) -> None:
        self._call("POST", "/shutdown")

    def events(self) -> Iterator[Event]:
        """The live stream of every event, until the caller stops iterating."""
        with self._http.stream(
            "GET", self.connection.url + "/events", headers=self.connection.headers, timeout=None
        ) as response:
            if response.status_code >= 400:
                response.read()
                check(response)
            for line in response.iter_lines():
                item = json.loads(line) if line.strip() else {}
                if "event" in item:
                    yield Event.from_dict(item["event"])
