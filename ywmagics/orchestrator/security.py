"""Who may talk to the orchestrator: loopback Hosts only, and a token on every request.

The token comes as ``Authorization: Bearer <token>``, or once as ``?yw_token=`` in a browser link
(then kept in a strict same-site cookie, as Jupyter does), so that a backend's ``/docs`` opens in a
browser. Instance tokens, given to each backend, are valid too, and pin the caller's partition.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ywmagics.errors import ERROR_HEADER, AuthenticationError, YwMagicsError
from ywmagics.spec import PARTITION_PATTERN

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
COOKIE = "ywmagics_token"
QUERY = "yw_token"
PARTITION_COOKIE = "ywmagics_partition"
PARTITION_QUERY = "yw_partition"


def host_is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in LOOPBACK_HOSTS


class SecurityMiddleware:
    """Refuses foreign Hosts and Origins, and requests without a valid token.

    ``instance_for_token`` maps an instance token to its partition (``None`` when unknown); the
    partition is put in ``scope["state"]["pinned_partition"]``.
    """

    def __init__(
        self, app: ASGIApp, token: str, instance_for_token: Callable[[str], str | None]
    ) -> None:
        self.app = app
        self.token = token
        self.instance_for_token = instance_for_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if not host_is_loopback(host):
            await send_error(
                send,
                AuthenticationError(
                    f"Host {host!r} is not allowed: the orchestrator answers loopback names only",
                    hint="use http://127.0.0.1:PORT or http://localhost:PORT",
                ),
                403,
            )
            return
        origin = headers.get("origin")
        if origin and not host_is_loopback(origin.split("://", 1)[-1]):
            await send_error(
                send, AuthenticationError(f"cross-origin requests from {origin!r} are refused"), 403
            )
            return
        given, from_query = _token_of(scope, headers)
        state = scope.setdefault("state", {})
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            state["pinned_partition"] = None
        elif given and (partition := self.instance_for_token(given)) is not None:
            state["pinned_partition"] = partition
        else:
            error = AuthenticationError(
                "missing or wrong token" if given else "this request carries no token",
                hint="send 'Authorization: Bearer <token>'; the token is in the discovery file "
                "('ywmagics status' shows where)",
            )
            await send_error(send, error)
            return
        if from_query:
            await self._browser_login(scope, receive, send, given)
            return
        await self.app(scope, receive, send)

    async def _browser_login(self, scope: Scope, receive: Receive, send: Send, token: str) -> None:
        """A link opened in a browser (a backend's /docs): move the token, and the partition if
        given, from the URL into strict cookies, and drop them from the URL before the backend
        sees it. The partition cookie is scoped to the backend's path, so that the page's own
        requests (e.g. /docs fetching openapi.json) reach the same instance."""
        pairs = parse_qsl(scope["query_string"].decode())
        partition = next((v for k, v in pairs if k == PARTITION_QUERY), None)
        scope["query_string"] = urlencode(
            [(k, v) for k, v in pairs if k not in (QUERY, PARTITION_QUERY)]
        ).encode()
        cookies = [f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"]
        if partition is not None and PARTITION_PATTERN.match(partition):
            scope["state"]["browser_partition"] = partition
            backend_path = "/".join(scope["path"].split("/")[:4])
            cookies.append(f"{PARTITION_COOKIE}={partition}; Path={backend_path}; SameSite=Strict")

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    *((b"set-cookie", c.encode()) for c in cookies),
                ]
            await send(message)

        await self.app(scope, receive, send_with_cookies)


def _token_of(scope: Scope, headers: dict[str, str]) -> tuple[str, bool]:
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip(), False
    if QUERY.encode() in scope.get("query_string", b""):
        for key, value in parse_qsl(scope["query_string"].decode()):
            if key == QUERY:
                return value, True
    cookie = headers.get("cookie")
    if cookie:
        jar: SimpleCookie = SimpleCookie()
        jar.load(cookie)
        if COOKIE in jar:
            return jar[COOKIE].value, False
    return "", False


async def send_error(send: Send, error: YwMagicsError, status: int | None = None) -> None:
    """Answer with ``error`` as the orchestrator's JSON error (marked by ``ERROR_HEADER``)."""
    payload = json.dumps({"error": error.to_dict()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status or error.http_status,
            "headers": [
                (b"content-type", b"application/json"),
                (ERROR_HEADER.encode(), b"1"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
