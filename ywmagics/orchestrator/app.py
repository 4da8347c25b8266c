"""The orchestrator's HTTP application: admin routes, the install stream, events, the proxy."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Lifespan, Receive, Scope, Send

from ywmagics.errors import ERROR_HEADER, SpecError, YwMagicsError
from ywmagics.events import Event
from ywmagics.orchestrator.proxy import Proxy
from ywmagics.orchestrator.security import CODE_LIFETIME, BrowserCodes, SecurityMiddleware
from ywmagics.orchestrator.service import Orchestrator
from ywmagics.spec import DEFAULT_PARTITION, InstallRequest, validate_partition

NDJSON = "application/x-ndjson"
log = logging.getLogger("ywmagics.orchestrator")


def _error_response(error: YwMagicsError) -> JSONResponse:
    return JSONResponse(
        {"error": error.to_dict()}, status_code=error.http_status, headers={ERROR_HEADER: "1"}
    )


async def _json_body(request: Request) -> dict[str, Any]:
    # A JSON content type cannot be sent by a plain HTML form or a "simple" cross-site request.
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise SpecError("send the request body as JSON (Content-Type: application/json)")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SpecError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise SpecError("the request body must be a JSON object")
    return body


class BackendsDispatch:
    """Sends ``/backends/...`` straight to the proxy, and the rest to the admin application: the
    hot path goes through no framework at all."""

    def __init__(self, app: ASGIApp, proxy: Proxy) -> None:
        self.app = app
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/backends/"):
            await self.proxy(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(
    orchestrator: Orchestrator,
    token: str,
    lifespan: Lifespan[Starlette] | None = None,
    request_exit: Callable[[], None] = lambda: None,
) -> ASGIApp:
    """The orchestrator's ASGI application: security first, then the proxy or the admin routes.

    ``request_exit`` is called (soon after answering) when a client asks for a shutdown."""

    async def status(request: Request) -> Response:
        return JSONResponse(orchestrator.status())

    async def listing(request: Request) -> Response:
        return JSONResponse(orchestrator.listing())

    async def install(request: Request) -> Response:
        body = await _json_body(request)
        install_request = InstallRequest.from_object(body)
        pinned = request.scope.get("state", {}).get("pinned_partition")
        if pinned is not None:
            install_request.partition = pinned
        events = orchestrator.install(install_request)

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for item in events:
                    if isinstance(item, Event):
                        yield (json.dumps({"event": item.to_json()}) + "\n").encode()
                    else:
                        yield (json.dumps({"result": item}) + "\n").encode()
            except YwMagicsError as error:
                yield (json.dumps({"error": error.to_dict()}) + "\n").encode()
            except Exception as error:  # the stream has started: report, don't drop the line
                message = f"internal error: {type(error).__name__}: {error}"
                yield (
                    json.dumps(
                        {
                            "error": {
                                "type": "OrchestratorError",
                                "message": message,
                                "hint": "see the orchestrator's log",
                                "log_tail": "",
                            }
                        }
                    )
                    + "\n"
                ).encode()
                log.exception("install failed")

        return StreamingResponse(lines(), media_type=NDJSON)

    async def event_stream(request: Request) -> Response:
        async def lines() -> AsyncIterator[bytes]:
            async with orchestrator.bus.subscribe() as queue:
                yield b'{"subscribed": true}\n'
                while True:
                    event = await queue.get()
                    yield (json.dumps({"event": event.to_json()}) + "\n").encode()

        return StreamingResponse(lines(), media_type=NDJSON)

    async def stop(request: Request) -> Response:
        body = await _json_body(request)
        partition = body.get("partition")
        if partition is not None:
            validate_partition(partition)
        if not body.get("all") and partition is None and body.get("name") is None:
            raise SpecError("say what to stop: a partition, a name, or all")
        stopped = await orchestrator.stop(partition, body.get("name"), body.get("version"))
        return JSONResponse({"stopped": stopped})

    async def logs(request: Request) -> Response:
        name = request.path_params["name"]
        partition = validate_partition(request.query_params.get("partition", DEFAULT_PARTITION))
        lines = int(request.query_params.get("lines", "200"))
        return PlainTextResponse(orchestrator.logs(name, partition, lines))

    async def uninstall(request: Request) -> Response:
        body = await _json_body(request)
        return JSONResponse(await orchestrator.uninstall(str(body.get("spec", ""))))

    async def browser_code(request: Request) -> Response:
        return JSONResponse({"code": codes.issue(), "expires_in": CODE_LIFETIME})

    async def shutdown(request: Request) -> Response:
        # Answer first, then stop: the server's lifespan stops every backend.
        asyncio.get_running_loop().call_later(0.05, request_exit)
        return JSONResponse({"stopping": True})

    async def on_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, YwMagicsError)
        return _error_response(error)

    async def on_value_error(request: Request, error: Exception) -> Response:
        return _error_response(SpecError(f"bad request: {error}"))

    routes = [
        Route("/status", status),
        Route("/list", listing),
        Route("/install", install, methods=["POST"]),
        Route("/events", event_stream),
        Route("/stop", stop, methods=["POST"]),
        Route("/logs/{name}", logs),
        Route("/uninstall", uninstall, methods=["POST"]),
        Route("/shutdown", shutdown, methods=["POST"]),
        Route("/browser-code", browser_code, methods=["POST"]),
    ]
    supervisor = orchestrator.supervisor
    codes = BrowserCodes()

    def partition_for_token(candidate: str) -> str | None:
        instance = supervisor.by_token.get(candidate)
        return instance.partition if instance else None

    admin = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={YwMagicsError: on_error, ValueError: on_value_error},
    )
    return SecurityMiddleware(
        BackendsDispatch(admin, Proxy(orchestrator.instance_for)),
        token=token,
        instance_for_token=partition_for_token,
        codes=codes,
    )
