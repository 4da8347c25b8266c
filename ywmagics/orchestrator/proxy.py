"""The proxy: ``/backends/{name}/{version or range}/{path}`` to the instance of the partition.

A plain ASGI handler (no framework on this hot path) over the pooled upstream client. Bodies up to
``BUFFERED_BODY_LIMIT`` are read whole, so that a request can be sent again to a backend restarted
after a crash; larger or chunked ones stream through, both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from http.cookies import SimpleCookie
from urllib.parse import unquote

from starlette.types import Receive, Scope, Send

from ywmagics.errors import StartError, YwMagicsError
from ywmagics.orchestrator.processes import tail_of
from ywmagics.orchestrator.security import COOKIE, PARTITION_COOKIE, send_error
from ywmagics.orchestrator.supervisor import Instance
from ywmagics.orchestrator.upstream import UpstreamError, UpstreamResponse
from ywmagics.spec import DEFAULT_PARTITION, validate_partition

BUFFERED_BODY_LIMIT = 1 << 20
InstanceFinder = Callable[[str, str, str], Awaitable[Instance]]

# Hop-by-hop headers (RFC 9110 §7.6.1), the body framing we redo, and our own credentials
# never reach a backend.
_DROPPED_REQUEST = {
    b"host",
    b"connection",
    b"keep-alive",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
    b"authorization",
    b"content-length",
    b"transfer-encoding",
    b"x-backends-partition",
    b"cookie",
}
_IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
_DROPPED_RESPONSE = {b"connection", b"keep-alive", b"transfer-encoding", b"trailer", b"upgrade"}


def partition_of(scope: Scope, headers: dict[bytes, bytes]) -> str:
    """An instance token pins its partition; else the header; else a browser's link or cookie."""
    state = scope.get("state", {})
    if state.get("pinned_partition") is not None:
        return str(state["pinned_partition"])
    chosen = headers.get(b"x-backends-partition", b"").decode("latin-1")
    if not chosen:
        chosen = state.get("browser_partition") or _cookie(headers, PARTITION_COOKIE) or ""
    return validate_partition(chosen or DEFAULT_PARTITION)


def _cookie(headers: dict[bytes, bytes], name: str) -> str | None:
    raw = headers.get(b"cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    jar.load(raw.decode("latin-1"))
    return jar[name].value if name in jar else None


def _forwarded_headers(scope: Scope, instance: Instance) -> list[tuple[bytes, bytes]]:
    headers = [(k, v) for k, v in scope["headers"] if k not in _DROPPED_REQUEST]
    for name, value in scope["headers"]:
        if name == b"cookie":
            kept = b"; ".join(
                c
                for c in value.split(b"; ")
                if not c.startswith((COOKIE.encode() + b"=", PARTITION_COOKIE.encode() + b"="))
            )
            if kept:
                headers.append((b"cookie", kept))
    base_path = f"/backends/{instance.manifest.name}/{instance.manifest.version}"
    headers.append((b"x-backends-partition", instance.partition.encode()))
    headers.append((b"x-forwarded-prefix", base_path.encode()))
    return headers


async def _body(headers: dict[bytes, bytes], receive: Receive) -> bytes | AsyncIterator[bytes]:
    length = headers.get(b"content-length", b"")
    if b"transfer-encoding" not in headers and (
        not length or (length.isdigit() and int(length) <= BUFFERED_BODY_LIMIT)
    ):
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def stream() -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise UpstreamError("the client went away", sent=True)
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return

    return stream()


class Proxy:
    """ASGI handler for ``/backends/...``; ``find`` gives the instance (starting it if needed)."""

    def __init__(self, find: InstanceFinder) -> None:
        self.find = find

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response, instance = await self._open(scope, receive)
        except YwMagicsError as error:
            await send_error(send, error)
            return
        await self._relay(response, instance, send)

    async def _open(self, scope: Scope, receive: Receive) -> tuple[UpstreamResponse, Instance]:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        parts = raw_path.split(b"/", 4)  # b"", b"backends", name, version, rest
        if len(parts) < 4 or not parts[2] or not parts[3]:
            raise YwMagicsError("a backend URL looks like /backends/NAME/VERSION/PATH")
        name, version = unquote(parts[2].decode()), unquote(parts[3].decode())
        target = b"/" + (parts[4] if len(parts) > 4 else b"")
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        headers = dict(scope["headers"])
        partition = partition_of(scope, headers)
        instance = await self.find(partition, name, version)
        body = await _body(headers, receive)
        try:
            return await self._send(instance, scope, target, body), instance
        except UpstreamError as error:
            # The process may have died an instant ago, before we noticed. Send the request again
            # to its revived successor when that is safe: nothing was sent, or the method is
            # idempotent and the body is still ours (never re-send a POST that may have run).
            process = instance.process
            replayable = isinstance(body, bytes) and (
                not error.sent or scope["method"] in _IDEMPOTENT
            )
            if process is None or not replayable:
                raise self._gone(instance, error) from None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), 2.0)
            if process.returncode is None:
                raise self._gone(instance, error) from None
            instance = await self.find(partition, name, version)
            try:
                return await self._send(instance, scope, target, body), instance
            except UpstreamError as again:
                raise self._gone(instance, again) from None

    @staticmethod
    async def _send(
        instance: Instance, scope: Scope, target: bytes, body: bytes | AsyncIterator[bytes]
    ) -> UpstreamResponse:
        pool = instance.upstream
        if pool is None:
            raise UpstreamError("the instance is stopped", sent=False)
        return await pool.request(
            scope["method"], target.decode("latin-1"), _forwarded_headers(scope, instance), body
        )

    @staticmethod
    def _gone(instance: Instance, error: UpstreamError) -> StartError:
        return StartError(
            f"{instance.manifest.name} {instance.manifest.version} in partition "
            f"{instance.partition!r} did not answer: {error}",
            hint="it may have crashed: the next request restarts it; see 'ywmagics logs'",
            log_tail=tail_of(instance.log_path),
        )

    @staticmethod
    async def _relay(response: UpstreamResponse, instance: Instance, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(k, v) for k, v in response.headers if k not in _DROPPED_RESPONSE],
                }
            )
            async for chunk, last in response.iter_body():
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
        finally:
            await response.release()
