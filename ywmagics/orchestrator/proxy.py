"""The proxy: ``/backends/{name}/{version or range}/{path}`` to the instance of the partition.

A plain ASGI handler (no framework on this hot path) over the pooled upstream client. Bodies up to
``BUFFERED_BODY_LIMIT`` are read whole, so that a request can be sent again to a backend restarted
after a crash; larger or chunked ones stream through, both ways.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import unquote

from starlette.types import Message, Receive, Scope, Send

from ywmagics.errors import (
    IncompleteAnswerError,
    StartError,
    YwMagicsError,
    internal_error,
)
from ywmagics.orchestrator.browser import cookie_pairs, is_ours, set_cookie_name
from ywmagics.orchestrator.forwarding import Rewriter, forwarded_headers
from ywmagics.orchestrator.processes import tail_of
from ywmagics.orchestrator.security import send_error
from ywmagics.orchestrator.supervisor import Instance, Supervisor
from ywmagics.orchestrator.upstream import (
    IDEMPOTENT,
    UpstreamError,
    UpstreamResponse,
    may_resend,
)
from ywmagics.protocol import ERROR_HEADER, FINGERPRINT_HEADER, PARTITION_HEADER
from ywmagics.spec import DEFAULT_PARTITION, validate_partition

BUFFERED_BODY_LIMIT = 1 << 20
log = logging.getLogger("ywmagics.orchestrator")
# (partition, name, version or range, fingerprint of the client's configuration or None)
InstanceFinder = Callable[[str, str, str, str | None], Awaitable[Instance]]

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
    PARTITION_HEADER.encode(),
    FINGERPRINT_HEADER.encode(),
    b"cookie",
    b"expect",  # uvicorn already answered any 100-continue
    # where the request comes from is ours to say (forwarding.forwarded_headers)
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-forwarded-port",
    b"x-forwarded-prefix",
}
_DROPPED_RESPONSE = {
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"trailer",
    b"upgrade",
    ERROR_HEADER.encode(),  # only the orchestrator's own errors carry it
}


def partition_of(scope: Scope, headers: dict[bytes, bytes]) -> str:
    """A credential bound to a partition (an instance's token, a browser's session) pins it;
    else the partition header; else ``Default``."""
    pinned = scope.get("state", {}).get("pinned_partition")
    if pinned is not None:
        return str(pinned)
    chosen = headers.get(PARTITION_HEADER.encode(), b"").decode("latin-1")
    return validate_partition(chosen or DEFAULT_PARTITION)


def _without_our_cookies(value: bytes) -> bytes:
    text = value.decode("latin-1")
    return "; ".join(p.strip() for n, _, p in cookie_pairs(text) if not is_ours(n)).encode(
        "latin-1"
    )


def address_of(scope: Scope) -> tuple[str, str, bytes]:
    """``(name, version or range, target)`` of ``/backends/NAME/VERSION/PATH?QUERY``."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    parts = raw_path.split(b"/", 4)  # b"", b"backends", name, version, rest
    if len(parts) < 4 or not parts[2] or not parts[3]:
        raise YwMagicsError("a backend URL looks like /backends/NAME/VERSION/PATH")
    name, version = unquote(parts[2].decode()), unquote(parts[3].decode())
    target = b"/" + (parts[4] if len(parts) > 4 else b"")
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    return name, version, target


def client_host(scope: Scope) -> str:
    host: bytes = dict(scope["headers"]).get(b"host", b"")
    return host.decode("latin-1")


def seen_from(scope: Scope, instance: Instance) -> tuple[str, str, str]:
    """``(host, base path, scheme)`` where the client serves the backend: the request's own,
    or, from a proxy in front that holds our token, the ``X-Forwarded-*`` it sends (see
    :mod:`~ywmagics.orchestrator.forwarding`). Worked out once per request: its headers are
    asked for both ways."""
    state = scope.get("state", {})
    seen: tuple[str, str, str] | None = state.get("seen_from")
    if seen is None:
        seen = _seen_from(scope, instance, state.get("trusted_forwarding") is True)
        if "state" in scope:
            state["seen_from"] = seen
    return seen


def _seen_from(scope: Scope, instance: Instance, trusted: bool) -> tuple[str, str, str]:
    headers = dict(scope["headers"])
    host = headers.get(b"host", b"").decode("latin-1")
    prefix, scheme = instance.base_path, str(scope.get("scheme", "http"))
    if not trusted:
        return host, prefix, scheme
    given_prefix = headers.get(b"x-forwarded-prefix", b"").decode("latin-1").rstrip("/")
    if given_prefix.startswith("/"):
        prefix = given_prefix
    host = headers.get(b"x-forwarded-host", b"").decode("latin-1") or host
    given_scheme = headers.get(b"x-forwarded-proto", b"").decode("latin-1")
    if given_scheme in ("http", "https"):
        scheme = given_scheme
    return host, prefix, scheme


def request_headers(scope: Scope, instance: Instance) -> list[tuple[bytes, bytes]]:
    host, prefix, scheme = seen_from(scope, instance)
    headers = forwarded_headers(host, prefix, scheme, instance.manifest.host)
    headers += [(k, v) for k, v in scope["headers"] if k not in _DROPPED_REQUEST]
    for name, value in scope["headers"]:
        if name == b"cookie":
            kept = _without_our_cookies(value)
            if kept:
                headers.append((b"cookie", kept))
    headers.append((PARTITION_HEADER.encode(), instance.partition.encode()))
    return headers


def _returned_headers(
    scope: Scope, instance: Instance, response: UpstreamResponse
) -> list[tuple[bytes, bytes]]:
    """The backend's headers, less hop-by-hop ones and any that would pass for ours (our
    error mark; a cookie of one of our names, which would log the browser out or steer it),
    with its links moved into its base path."""
    kept = [
        (k, v)
        for k, v in response.headers
        if k not in _DROPPED_RESPONSE
        and not (k == b"set-cookie" and is_ours(set_cookie_name(v.decode("latin-1"))))
    ]
    seen_as, prefix, _ = seen_from(scope, instance)
    own = [instance.manifest.host or seen_as]
    if instance.port is not None:
        own += [f"127.0.0.1:{instance.port}", f"localhost:{instance.port}"]
    inner = instance.base_path if prefix != instance.base_path else None
    return Rewriter(prefix, seen_as, own, inner).headers(kept)


class ClientGone(Exception):
    """The client hung up before its request was whole: what was sent of it is abandoned, and
    nobody is left to answer."""


async def _body(headers: dict[bytes, bytes], receive: Receive) -> bytes | AsyncIterator[bytes]:
    length = headers.get(b"content-length", b"")
    if b"transfer-encoding" not in headers and (
        not length or (length.isdigit() and int(length) <= BUFFERED_BODY_LIMIT)
    ):
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def stream() -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return

    return stream()


async def _abandon_on_disconnect(receive: Receive, response: UpstreamResponse) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    response.abandon()


class Proxy:
    """ASGI handler for ``/backends/...``: ``find`` gives the instance (starting it if needed);
    whether a backend has ended is the supervisor's to say."""

    def __init__(self, find: InstanceFinder, supervisor: Supervisor) -> None:
        self.find = find
        self.supervisor = supervisor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            response, instance = await self._open(scope, receive)
            await self._relay(scope, response, instance, receive, tracked_send)
        except ClientGone:
            return
        except YwMagicsError as error:
            if not started:
                await send_error(send, error)
        except Exception as error:
            # A fault of ours, not the backend's: said as the orchestrator's own error.
            log.exception("proxy error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await send_error(send, internal_error(error))

    async def _open(self, scope: Scope, receive: Receive) -> tuple[UpstreamResponse, Instance]:
        name, version, target = address_of(scope)
        headers = dict(scope["headers"])
        method = scope["method"]
        partition = partition_of(scope, headers)
        bound = headers.get(FINGERPRINT_HEADER.encode(), b"").decode("latin-1") or None
        instance = await self.find(partition, name, version, bound)
        if method not in IDEMPOTENT and self.supervisor.has_ended(instance):
            # Ended, but maybe not reaped yet: a request that cannot be sent twice must not go
            # to its dead sockets (it would fail, and could not be sent again). The lookup
            # restarts it.
            instance = await self.find(partition, name, version, bound)
        body = await _body(headers, receive)
        try:
            return await self._send(instance, scope, target, body), instance
        except UpstreamError as error:
            # The process may have ended an instant ago, before we noticed: give it the moment
            # that takes to be seen, then send the request to its restarted successor when that
            # is safe.
            ended = await self.supervisor.wait_ended(instance, patience=0.5)
            if not (ended and may_resend(method, body, error.sent)):
                raise self._gone(instance, error, ended) from error
            instance = await self.find(partition, name, version, bound)
            try:
                return await self._send(instance, scope, target, body), instance
            except UpstreamError as again:
                ended = await self.supervisor.wait_ended(instance, patience=0.5)
                raise self._gone(instance, again, ended) from again

    @staticmethod
    async def _send(
        instance: Instance, scope: Scope, target: bytes, body: bytes | AsyncIterator[bytes]
    ) -> UpstreamResponse:
        pool = instance.upstream
        if pool is None:
            raise UpstreamError("the instance is stopped", sent=False)
        return await pool.request(
            scope["method"], target.decode("latin-1"), request_headers(scope, instance), body
        )

    @staticmethod
    def _gone(instance: Instance, error: UpstreamError, ended: bool) -> YwMagicsError:
        if ended:
            return IncompleteAnswerError(
                f"{instance.where} exited without answering ({error})",
                hint="the next request restarts it; see 'ywmagics logs'",
                log_tail=tail_of(instance.log_path),
            )
        return StartError(
            f"{instance.where} did not answer: {error}",
            hint="it dropped the connection without answering; see 'ywmagics logs'",
            log_tail=tail_of(instance.log_path),
        )

    async def _relay(
        self,
        scope: Scope,
        response: UpstreamResponse,
        instance: Instance,
        receive: Receive,
        send: Send,
    ) -> None:
        """Send the answer on; a long one stops when the client goes away (uvicorn's send then
        does nothing, so without watching we would read the backend to its end)."""
        watcher: asyncio.Future[None] | None = None
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": _returned_headers(scope, instance, response),
                }
            )
            if not response.complete:
                watcher = asyncio.ensure_future(_abandon_on_disconnect(receive, response))
            async for chunk, last in response.iter_body():
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
        except UpstreamError:
            # The client went away (we abandoned the backend's answer), or the backend broke
            # off mid-answer: with the head sent, all we can do is end the connection short.
            # In the second case it most likely exited: let that be seen (briefly), so that
            # the client's next request restarts it rather than meeting its dead sockets.
            # (Both may happen at once: a client can see the break before we do.)
            await self.supervisor.wait_ended(instance, 0.2 if response.abandoned else 1.0)
            return
        finally:
            if watcher is not None:
                # Done with before the connection goes back to the pool: a late abandon would
                # close it under the next request.
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await response.release()
