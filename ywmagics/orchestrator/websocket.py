"""Websockets through the proxy: ``ws://…/backends/NAME/VERSION/PATH`` to the instance.

The handshake has passed the security middleware like any request (a token, an instance's
token pinned to its partition, or a browser's session for that one instance; Host and Origin
checked). The proxy then opens the backend's websocket (over its Unix socket, or a socket its
connector hands out), with the same forwarded headers as HTTP, accepts the client's with the
subprotocol the backend chose, and relays messages both ways: each side waits for the other's
send, so a slow reader slows its writer instead of filling memory. Either side closing closes
the other, with its code; a backend that ends (stopped, crashed) closes its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from ywmagics.errors import StartError, YwMagicsError, internal_error
from ywmagics.orchestrator.browser import is_ours, set_cookie_name
from ywmagics.orchestrator.proxy import (
    InstanceFinder,
    address_of,
    client_host,
    partition_of,
    request_headers,
)
from ywmagics.orchestrator.security import refuse
from ywmagics.orchestrator.supervisor import Instance
from ywmagics.orchestrator.upstream import socket_from_connector
from ywmagics.protocol import FINGERPRINT_HEADER

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

log = logging.getLogger("ywmagics.orchestrator")
MAX_MESSAGE = 64 << 20  # bytes of one relayed message
# Set by the handshake itself, or not the backend's business.
_NOT_FORWARDED = {
    b"host",
    b"upgrade",
    b"connection",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}


class WebsocketProxy:
    """ASGI handler for websocket scopes on ``/backends/...``."""

    def __init__(self, find: InstanceFinder) -> None:
        self.find = find

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            name, version, target = address_of(scope)
            sent = dict(scope["headers"])
            bound = sent.get(FINGERPRINT_HEADER.encode(), b"").decode("latin-1") or None
            instance = await self.find(partition_of(scope, sent), name, version, bound)
            upstream = await self._open(scope, instance, target)
        except YwMagicsError as error:
            await refuse(scope, send, error, error.http_status)
            return
        except Exception as error:
            log.exception("websocket error on %s", scope.get("path"))
            await refuse(scope, send, internal_error(error), 500)
            return
        async with upstream:
            answered = upstream.response.headers.raw_items() if upstream.response else []
            headers = [  # the backend's cookies reach the browser, never one of our names
                (b"set-cookie", v.encode("latin-1"))
                for k, v in answered
                if k.lower() == "set-cookie" and not is_ours(set_cookie_name(v))
            ]
            await send(
                {
                    "type": "websocket.accept",
                    "subprotocol": upstream.subprotocol,
                    "headers": headers,
                }
            )
            await _relay(receive, send, upstream)

    async def _open(self, scope: Scope, instance: Instance, target: bytes) -> ClientConnection:
        # Imported at the first websocket, not at the orchestrator's start (~10 ms of it).
        from websockets.asyncio.client import connect, unix_connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request_headers(scope, instance)
            if k not in _NOT_FORWARDED
        ]
        uri = f"ws://{client_host(scope) or 'localhost'}{target.decode('latin-1')}"
        pool = instance.upstream
        options: dict[str, Any] = {
            "additional_headers": headers,
            "subprotocols": scope.get("subprotocols") or None,
            "compression": None,  # loopback: compressing costs more than it saves
            "max_size": MAX_MESSAGE,
            "ping_interval": None,  # the client's pings are relayed; no second heartbeat
            "proxy": None,
            "user_agent_header": None,
            "open_timeout": 30,
        }
        if pool is None:
            raise StartError(f"{instance.where} is stopped")
        try:
            if pool.uds is not None:
                return await unix_connect(pool.uds, uri, **options)
            if pool.connector is not None:
                return await connect(
                    uri, sock=await socket_from_connector(pool.connector), **options
                )
            if pool.tls is not None:  # a node shim: over its pinned TLS, never in plain text
                return await connect(
                    "wss" + uri[2:],
                    host=pool.host,
                    port=pool.port,
                    ssl=pool.tls,
                    server_hostname=pool.host,
                    **options,
                )
            return await connect(uri, host="127.0.0.1", port=pool.port, **options)
        except InvalidStatus as error:
            denied = StartError(
                f"{instance.where} refused the websocket: it answered {error.response.status_code}",
                hint="does it serve a websocket at this path?",
            )
            status = error.response.status_code
            denied.http_status = 502 if status >= 500 or status < 400 else status
            raise denied from error
        except (OSError, WebSocketException, asyncio.TimeoutError) as error:
            raise StartError(f"{instance.where} did not take the websocket: {error}") from error


async def _relay(receive: Receive, send: Send, upstream: ClientConnection) -> None:
    """Both ways until one side closes; then the other is closed with its code."""
    from websockets.exceptions import ConnectionClosed

    async def from_client() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(code=_closing_code(message.get("code", 1000)))
                return
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    async def from_backend() -> None:
        try:
            async for data in upstream:
                key = "bytes" if isinstance(data, bytes) else "text"
                await send({"type": "websocket.send", key: data})
        except ConnectionClosed:
            pass
        code = upstream.close_code if upstream.close_code is not None else 1011
        with contextlib.suppress(Exception):  # the client may be gone already
            await send(
                {
                    "type": "websocket.close",
                    "code": _closing_code(code),
                    "reason": upstream.close_reason or "",
                }
            )

    tasks = [asyncio.ensure_future(from_client()), asyncio.ensure_future(from_backend())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _closing_code(code: int) -> int:
    """A code that may be sent in a close frame (1005, 1006 and 1015 may not)."""
    return 1000 if code in (1005, 1006, 1015) or not (1000 <= code < 5000) else code
