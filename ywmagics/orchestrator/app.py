"""The orchestrator's HTTP application: admin routes, the install stream, events, the proxy.

Routes are plain functions that read what they work on from ``request.app.state``
(``orchestrator``, ``codes``, ``request_exit``), so that tests can build the app around any
:class:`~ywmagics.orchestrator.service.Orchestrator` and drive it in-process.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from ywmagics._version import __version__
from ywmagics.errors import (
    OrchestratorBusy,
    OrchestratorError,
    OrchestratorStopping,
    SpecError,
    YwMagicsError,
    internal_error,
)
from ywmagics.events import Event
from ywmagics.orchestrator import dashboard
from ywmagics.orchestrator.browser import CODE_LIFETIME, CODE_QUERY, BrowserAccess
from ywmagics.orchestrator.proxy import Proxy
from ywmagics.orchestrator.registry import client_bundled_folder
from ywmagics.orchestrator.requests import (
    BrowserLinkBody,
    GcBody,
    InstallBody,
    RestartBody,
    ShutdownBody,
    StopBody,
    UninstallBody,
    read_body,
)
from ywmagics.orchestrator.security import InstancePages, SecurityMiddleware
from ywmagics.orchestrator.service import ClientInstall, Orchestrator
from ywmagics.orchestrator.snapshots import SnapshotFeed
from ywmagics.orchestrator.websocket import WebsocketProxy
from ywmagics.protocol import (
    CLIENT_HEADER,
    CLIENT_VERSION_HEADER,
    ERROR_HEADER,
    NDJSON,
    ORCHESTRATOR_HEADER,
    OWNER_HEADER,
    PROTOCOL_VERSION,
)
from ywmagics.spec import DEFAULT_PARTITION, InstallRequest, validate_name, validate_partition

log = logging.getLogger("ywmagics.orchestrator")


def _error_response(error: YwMagicsError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": error.to_dict()},
        status_code=error.http_status,
        headers={**(headers or {}), ERROR_HEADER: "1"},
    )


def _line(item: dict[str, Any]) -> bytes:
    return (json.dumps(item) + "\n").encode()


def _orchestrator(request: Request) -> Orchestrator:
    orchestrator: Orchestrator = request.app.state.orchestrator
    return orchestrator


async def status(request: Request) -> Response:
    return JSONResponse(_orchestrator(request).status())


async def listing(request: Request) -> Response:
    return JSONResponse(_orchestrator(request).listing())


async def install(request: Request) -> Response:
    if _orchestrator(request).stopping:
        raise OrchestratorStopping(
            "the orchestrator is stopping: it takes no new install",
            hint="try again: the next one to start takes it",
        )
    body = await read_body(request, InstallBody)
    install_request = InstallRequest.from_object(body.as_object())
    pinned = request.scope.get("state", {}).get("pinned_partition")
    if pinned is not None:
        install_request.partition = pinned
    # Who asks, as the client says (printable, short): told to the clients a new instance leaves.
    asking = request.headers.get(CLIENT_HEADER, "")[:120]
    requested_by = asking if asking.isprintable() else ""
    owner = request.headers.get(OWNER_HEADER, "")
    if owner and not (owner.isascii() and owner.isdigit() and 0 < int(owner) < 1 << 31):
        raise SpecError(f"{OWNER_HEADER} must be a process id, not {owner[:40]!r}")
    version = request.headers.get(CLIENT_VERSION_HEADER, "")[:40]
    # A backend's install (its instance token pins it) gets this install's bundled backends:
    # only the user's kernels and tools name a folder of theirs to read manifests from.
    bundled = body.bundled if body.bundled is not None and pinned is None else None
    seen = client_bundled_folder(bundled) if bundled is not None else None
    client = ClientInstall(
        version if version.isascii() and version.isprintable() else "",
        seen,
        unseen=bundled[:300] if bundled is not None and seen is None else "",
    )
    events = _orchestrator(request).install(
        install_request, requested_by, int(owner) if owner else None, client
    )

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for item in events:
                if isinstance(item, Event):
                    yield _line({"event": item.to_dict()})
                else:
                    yield _line({"result": item})
        except YwMagicsError as error:
            yield _line({"error": error.to_dict()})
        except Exception as error:  # the stream has started: report, don't drop the line
            log.exception("install failed")
            yield _line({"error": internal_error(error).to_dict()})

    return StreamingResponse(lines(), media_type=NDJSON)


async def event_stream(request: Request) -> Response:
    bus = _orchestrator(request).bus

    async def lines() -> AsyncIterator[bytes]:
        async with bus.subscribe() as queue:
            yield _line({"subscribed": True})
            while (event := await queue.get()) is not None:  # None: the server is stopping
                yield _line({"event": event.to_dict()})

    return StreamingResponse(lines(), media_type=NDJSON)


async def stop(request: Request) -> Response:
    body = await read_body(request, StopBody)
    if body.partition is not None:
        validate_partition(body.partition)
    name = validate_name(body.name) if body.name is not None else None  # pypi:Yw_X is pypi:yw-x
    if body.all == (body.partition is not None or name is not None):
        raise SpecError(
            "say what to stop: a partition, a name (or both), or all",
            hint="'all' stops every instance: give it alone",
        )
    stopped = await _orchestrator(request).stop(
        body.partition, name, body.version, keep_data=body.keep_data
    )
    return JSONResponse({"stopped": stopped})


async def logs(request: Request) -> Response:
    name = request.path_params["name"]
    partition = validate_partition(request.query_params.get("partition", DEFAULT_PARTITION))
    text = request.query_params.get("lines", "200")
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise SpecError(f"'lines' must be a whole number of at least 1, got {text!r}")
    return PlainTextResponse(_orchestrator(request).logs(name, partition, int(text)))


async def uninstall(request: Request) -> Response:
    body = await read_body(request, UninstallBody)
    return JSONResponse(await _orchestrator(request).uninstall(body.spec, body.fingerprint))


async def restart(request: Request) -> Response:
    body = await read_body(request, RestartBody)
    partition = validate_partition(body.partition)
    restarted = await _orchestrator(request).restart(partition, body.name, body.version)
    return JSONResponse({"restarted": restarted})


async def collect_garbage(request: Request) -> Response:
    body = await read_body(request, GcBody)
    orchestrator = _orchestrator(request)
    return JSONResponse(await orchestrator.gc(body.older_than_days, body.dry_run, body.only))


async def browser_link(request: Request) -> Response:
    """A link that opens ``path`` of an instance in a browser, on the instance's own host name,
    with a one-time code (the instance is started if it does not run)."""
    body = await read_body(request, BrowserLinkBody)
    path, _, fragment = body.path.partition("#")
    path, _, query = path.partition("?")
    if "//" in path or "\\" in path:
        raise SpecError(f"{path!r} is not a path of the backend")
    partition = request.scope["state"].get("pinned_partition") or body.partition
    instance = await _orchestrator(request).instance_for(
        validate_partition(partition), validate_name(body.name), body.version
    )
    access: BrowserAccess = request.app.state.access
    code = access.issue_code(instance.browser_label)
    port = urlsplit(_orchestrator(request).settings.url).port
    # The query as given, byte for byte (the redirect that spends the code keeps it so too).
    query = f"{query}&{CODE_QUERY}={code}" if query else f"{CODE_QUERY}={code}"
    url = f"http://{instance.browser_label}.localhost:{port}{instance.base_path}{path}?{query}"
    if fragment:
        url += f"#{fragment}"
    return JSONResponse({"url": url, "expires_in": CODE_LIFETIME})


async def shutdown(request: Request) -> Response:
    orchestrator = _orchestrator(request)
    if request.headers.get("content-type", "").startswith("application/json"):
        if_idle = (await read_body(request, ShutdownBody)).if_idle
    else:  # 'ywmagics shutdown', and clients of before if_idle
        if_idle = False
    if if_idle and not orchestrator.stopping:
        use = orchestrator.in_use()
        if use:
            raise OrchestratorBusy(
                f"the orchestrator is in use ({use}): it is not stopped",
                hint="stop what runs on it first, or 'ywmagics shutdown' to stop it anyway",
            )
    # From now on it takes no new work: an install that comes after would be killed with it.
    orchestrator.stopping = True
    # Answer first, then stop: the server's lifespan stops every backend.
    asyncio.get_running_loop().call_later(0.05, request.app.state.request_exit)
    return JSONResponse({"stopping": True})


async def on_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, YwMagicsError)
    return _error_response(error)


async def on_http_error(request: Request, error: Exception) -> Response:
    # The router's own answers (no such route, wrong method) are the orchestrator's too.
    assert isinstance(error, HTTPException)
    refused = OrchestratorError(
        f"{request.method} {request.url.path}: {error.detail}",
        hint="the orchestrator's routes: " + ", ".join(sorted({r.path for r in ROUTES})),
    )
    refused.http_status = error.status_code
    return _error_response(refused, error.headers)  # a 405's Allow, say


async def on_unexpected(request: Request, error: Exception) -> Response:
    # Outermost (ServerErrorMiddleware, which then re-raises it for the server to log): a fault
    # of ours answers as the orchestrator's own error.
    return _error_response(internal_error(error))


ROUTES = [
    Route("/status", status),
    Route("/list", listing),
    Route("/install", install, methods=["POST"]),
    Route("/events", event_stream),
    Route("/stop", stop, methods=["POST"]),
    Route("/logs/{name}", logs),
    Route("/uninstall", uninstall, methods=["POST"]),
    Route("/restart", restart, methods=["POST"]),
    Route("/gc", collect_garbage, methods=["POST"]),
    Route("/shutdown", shutdown, methods=["POST"]),
    Route("/browser-link", browser_link, methods=["POST"]),
    *dashboard.ROUTES,
]


class SaysItsVersion:
    """The admin routes' answers say the orchestrator's version and protocol (one header; the
    proxy's hot path, which answers for backends, is not wrapped)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.header = (
            ORCHESTRATOR_HEADER.encode(),
            f"{__version__}; protocol={PROTOCOL_VERSION}".encode(),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def saying(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, saying)


class BackendsDispatch:
    """Sends ``/backends/...`` straight to the proxy, and the rest to the admin application: the
    hot path goes through no framework at all."""

    def __init__(self, app: ASGIApp, proxy: Proxy, websockets: WebsocketProxy) -> None:
        self.app = app
        self.proxy = proxy
        self.websockets = websockets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path", "").startswith("/backends/"):
            if scope["type"] == "http":
                await self.proxy(scope, receive, send)
                return
            if scope["type"] == "websocket":
                await self.websockets(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    orchestrator: Orchestrator,
    token: str,
    lifespan: Lifespan[Starlette] | None = None,
    request_exit: Callable[[], None] = lambda: None,
) -> ASGIApp:
    """The orchestrator's ASGI application: security first, then the proxy or the admin routes.

    ``request_exit`` is called (soon after answering) when a client asks for a shutdown."""
    admin = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            YwMagicsError: on_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )
    access = BrowserAccess()
    admin.state.orchestrator = orchestrator
    admin.state.access = access
    admin.state.snapshots = SnapshotFeed(
        orchestrator.bus, lambda: dashboard.snapshot_line(orchestrator)
    )
    admin.state.request_exit = request_exit
    supervisor = orchestrator.supervisor

    def partition_for_token(candidate: str) -> str | None:
        instance = supervisor.by_token.get(candidate)
        return instance.partition if instance else None

    def pages_of_label(label: str) -> InstancePages | None:
        instance = supervisor.by_label.get(label)
        return InstancePages(instance.partition, instance.base_path) if instance else None

    return SecurityMiddleware(
        BackendsDispatch(
            SaysItsVersion(admin),
            Proxy(orchestrator.instance_for, supervisor),
            WebsocketProxy(orchestrator.instance_for),
        ),
        token=token,
        instance_for_token=partition_for_token,
        pages_of_label=pages_of_label,
        access=access,
    )
