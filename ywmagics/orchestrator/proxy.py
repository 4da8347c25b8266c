"""Forwarding a request to a backend instance, streaming bodies both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ywmagics.errors import StartError
from ywmagics.orchestrator.processes import tail_of
from ywmagics.orchestrator.security import COOKIE
from ywmagics.orchestrator.supervisor import Instance

# Hop-by-hop headers (RFC 9110 §7.6.1) and our own credentials never reach a backend.
_DROPPED_REQUEST = {
    "host",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "authorization",
}
_DROPPED_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "trailer", "upgrade"}


class BackendGone(StartError):
    """The backend refused or dropped the connection before answering: it may have died."""


def _request_headers(request: Request, instance: Instance) -> list[tuple[str, str]]:
    headers = [
        (k, v)
        for k, v in request.headers.items()
        if k not in _DROPPED_REQUEST and k != "cookie" and k != "x-backends-partition"
    ]
    cookie = request.headers.get("cookie")
    if cookie:
        kept = "; ".join(c for c in cookie.split("; ") if not c.startswith(COOKIE + "="))
        if kept:
            headers.append(("cookie", kept))
    headers.append(("x-backends-partition", instance.partition))
    headers.append(
        ("x-forwarded-prefix", f"/backends/{instance.manifest.name}/{instance.manifest.version}")
    )
    return headers


# Bodies up to this size are read whole (so a request can be sent again to a restarted backend);
# larger or chunked ones stream through.
BUFFERED_BODY_LIMIT = 1 << 20


async def request_content(request: Request) -> bytes | AsyncIterator[bytes] | None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) <= BUFFERED_BODY_LIMIT:
        return await request.body()
    if length is not None or "transfer-encoding" in request.headers:
        return request.stream()
    return None


async def forward(
    request: Request, instance: Instance, path: str, content: bytes | AsyncIterator[bytes] | None
) -> Response:
    client = instance.client
    assert client is not None
    outgoing = client.build_request(
        request.method,
        httpx.URL(path="/" + path, query=request.url.query.encode() or None),
        headers=_request_headers(request, instance),
        content=content,
    )
    try:
        response = await client.send(outgoing, stream=True)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as error:
        raise BackendGone(
            f"{instance.manifest.name} {instance.manifest.version} in partition "
            f"{instance.partition!r} dropped the connection: {error!r}",
            hint="it may have crashed: the next request restarts it; see 'ywmagics logs'",
            log_tail=tail_of(instance.log_path),
        ) from None
    except httpx.TransportError as error:
        raise StartError(
            f"{instance.manifest.name} {instance.manifest.version} in partition "
            f"{instance.partition!r} did not answer: {error!r}",
            hint="it may have crashed: the next request restarts it; see 'ywmagics logs'",
            log_tail=tail_of(instance.log_path),
        ) from None
    streaming = StreamingResponse(
        response.aiter_raw(),
        status_code=response.status_code,
        background=BackgroundTask(response.aclose),
    )
    # raw headers keep repeated ones (set-cookie) as the backend sent them
    streaming.raw_headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in response.headers.multi_items()
        if k not in _DROPPED_RESPONSE
    ]
    return streaming
