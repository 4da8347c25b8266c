"""The orchestrator's admin client (sync): install, list, stop, restart, logs, uninstall, gc,
status, events, dashboard links."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from ywmagics import __version__, paths
from ywmagics.client._connect import connect
from ywmagics.client._http import ndjson_items, raise_for_error, translated
from ywmagics.client._pool import shared_http
from ywmagics.discovery import Connection, pid_alive
from ywmagics.errors import OrchestratorError, YwMagicsError, error_from_dict
from ywmagics.events import Event
from ywmagics.protocol import (
    CLIENT_HEADER,
    CLIENT_VERSION_HEADER,
    ERROR_HEADER,
    JUPYTER_BASE_URL_ENV,
    OWNER_HEADER,
    jupyter_dashboard_link,
)
from ywmagics.spec import InstallRequest, validate_name

EventHandler = Callable[[Event], None]
STOPPING_WAIT = 20.0  # seconds for a stopping orchestrator to end (it stops its backends)
Listing = dict[str, Any]


class OrchestratorClient:
    """Talks to the user's orchestrator; finds or starts it unless given a ``connection``.

    ``timeout`` is how long a call may wait for an answer (an install: for its next event);
    ``http`` is the ``httpx.Client`` to send with (default: one pool shared by the process, so
    there is nothing to close). A client that found its orchestrator itself (no
    ``connection`` given, or ``follow``) follows it when it is restarted or stopping, as
    :class:`BackendClient` does."""

    def __init__(
        self,
        connection: Connection | None = None,
        *,
        timeout: float | None = 600.0,
        http: httpx.Client | None = None,
        follow: bool | None = None,
    ) -> None:
        # Whether a restarted orchestrator is followed: by default, when it was found here.
        self.follow = connection is None if follow is None else follow
        self.connection = connection or connect()
        self._http = http or shared_http()
        self._timeout = httpx.Timeout(timeout, connect=5.0)

    def _send(self, method: str, path: str, stream: bool, **kwargs: Any) -> httpx.Response:
        def request() -> httpx.Request:
            return self._http.build_request(
                method,
                self.connection.url + path,
                headers={**self.connection.headers, **kwargs.get("headers", {})},
                timeout=kwargs.get("timeout", self._timeout),
                **{k: v for k, v in kwargs.items() if k not in ("timeout", "headers")},
            )

        try:
            response = self._http.send(request(), stream=stream)
        except httpx.ConnectError:
            if not self._moved():
                raise
        else:
            refused = response.status_code == 401 and response.headers.get(ERROR_HEADER) == "1"
            stopping = self._stopping(response)
            # The one that stopped is gone for good: why the next cannot be used (another
            # protocol, say) is the answer, not "stopping".
            if not ((refused or stopping) and self._moved(say_why=stopping)):
                return response
            response.close()
        return self._http.send(request(), stream=stream)

    def _stopping(self, response: httpx.Response) -> bool:
        """Whether ``response`` says the orchestrator is stopping (another client stopped it
        as it was idle, say); if so, once it has ended, the next one is followed."""
        if not (self.follow and response.status_code == 503 and response.headers.get(ERROR_HEADER)):
            return False
        try:
            said = json.loads(response.read()).get("error", {}).get("type")
        except (ValueError, AttributeError, httpx.HTTPError):
            return False
        if said != "OrchestratorStopping":
            return False
        deadline = time.monotonic() + STOPPING_WAIT
        while pid_alive(self.connection.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    def _moved(self, say_why: bool = False) -> bool:
        """Whether the orchestrator was restarted elsewhere (then followed), see ``follow``;
        with ``say_why``, what keeps it from being found or started is raised."""
        if not self.follow:
            return False
        try:
            current = connect()
        except YwMagicsError:
            if say_why:
                raise
            return False
        moved, self.connection = current != self.connection, current
        return moved

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with translated(self.connection.url):
            return raise_for_error(self._send(method, path, stream=False, **kwargs))

    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """The objects of an NDJSON answer, as they come."""
        with translated(self.connection.url):
            response = self._send(method, path, stream=True, **kwargs)
            try:
                if response.status_code >= 400:
                    response.read()
                    raise_for_error(response)
                yield from ndjson_items(response.iter_lines())
            finally:
                response.close()

    def status(self) -> dict[str, Any]:
        return dict(self._call("GET", "/status").json())

    def listing(self) -> Listing:
        """``{"instances": [...], "environments": [...], "backends": [...]}``."""
        return dict(self._call("GET", "/list").json())

    def install(
        self,
        request: InstallRequest,
        on_event: EventHandler | None = None,
        requested_by: str = "",
        owner: int | None = None,
    ) -> list[dict[str, Any]]:
        """Install and start; ``on_event`` sees each event as it happens. Returns one dict per
        backend (alias, name, version, partition, path, config, fingerprint). ``requested_by``
        names the caller (default: this process) to the clients a new instance leaves;
        ``owner``, a pid that owns the partition: it is stopped when its owners have ended."""
        headers = {
            CLIENT_HEADER: requested_by or f"process {os.getpid()}",
            CLIENT_VERSION_HEADER: __version__,
        }
        if owner is not None:
            headers[OWNER_HEADER] = str(owner)
        # The backends bundled with this install are the ones to find, whichever ywmagics
        # runs the orchestrator.
        body = {**request.to_dict(), "bundled": str(paths.bundled_registry_dir())}
        for item in self._stream("POST", "/install", json=body, headers=headers):
            if "event" in item:
                if on_event is not None:
                    on_event(Event.from_dict(item["event"]))
            elif "result" in item:
                return list(item["result"]["backends"])
            elif "error" in item:
                raise error_from_dict(item["error"])
        raise OrchestratorError(
            "the install stream ended without a result", hint="see the orchestrator's log"
        )

    def events(self, on_subscribed: Callable[[], None] | None = None) -> Iterator[Event]:
        """The live stream of every event (installs, starts, stops of all kernels), until the
        caller stops iterating; ``on_subscribed`` is called once no event can be missed."""
        for item in self._stream("GET", "/events", timeout=httpx.Timeout(None, connect=5.0)):
            if "event" in item:
                yield Event.from_dict(item["event"])
            elif item.get("subscribed") and on_subscribed is not None:
                on_subscribed()

    def stop(
        self,
        *,
        partition: str | None = None,
        name: str | None = None,
        version: str | None = None,
        all: bool = False,
        keep_data: bool = False,
    ) -> list[dict[str, Any]]:
        """Stop what matches; each instance's data folder (``{data}``) is deleted with it
        unless ``keep_data``."""
        body = {
            "partition": partition,
            "name": name,
            "version": version,
            "all": all,
            "keep_data": keep_data,
        }
        return list(self._call("POST", "/stop", json=body).json()["stopped"])

    def logs(self, name: str, *, partition: str = "Default", lines: int = 200) -> str:
        return self._call(
            "GET", f"/logs/{validate_name(name)}", params={"partition": partition, "lines": lines}
        ).text

    def restart(self, partition: str, name: str, version: str) -> dict[str, Any]:
        """Stop the instance ``(partition, name, version)`` and start it again (its data folder
        kept; one that was given up after crashes gets another chance). Returns the instance as
        :meth:`listing` shows it, once it is ready."""
        body = {"partition": partition, "name": name, "version": version}
        return dict(self._call("POST", "/restart", json=body).json()["restarted"])

    def uninstall(self, spec: str, fingerprint: str | None = None) -> dict[str, Any]:
        """Remove the installed environments that match ``spec`` (``name`` or ``name#range``),
        or with ``fingerprint`` only that one, stopping their instances. Returns ``{"removed":
        [environment, ...], "stopped_partitions": [...]}``."""
        body: dict[str, Any] = {"spec": spec}
        if fingerprint is not None:
            body["fingerprint"] = fingerprint
        return dict(self._call("POST", "/uninstall", json=body).json())

    def gc(self, older_than_days: float, dry_run: bool = False) -> dict[str, Any]:
        """Remove the environments that no instance runs and none has used for more than
        ``older_than_days`` days (``dry_run``: only say which). Returns ``{"removed": [...],
        "kept": [...]}``, environments as :meth:`listing` shows them (with their ``size`` in
        bytes, ``None`` when not known yet)."""
        body = {"older_than_days": older_than_days, "dry_run": dry_run}
        return dict(self._call("POST", "/gc", json=body).json())

    def dashboard_link(self) -> str:
        """A link that opens the dashboard page in a browser:
        ``http://127.0.0.1:PORT/dashboard/#code=...``. The code is good for one use, for a few
        minutes: the page trades it for a session of its own (never this client's token), kept
        across reloads of its tab. Each tab needs a link of its own. Under a Jupyter server with
        the extension (``YW_JUPYTER_BASE_URL``), the link is through that server."""
        link = str(self._call("POST", "/dashboard-link").json()["url"])
        base_url = os.environ.get(JUPYTER_BASE_URL_ENV, "")
        return jupyter_dashboard_link(base_url, link) if base_url else link

    def shutdown(self) -> None:
        self._call("POST", "/shutdown")
