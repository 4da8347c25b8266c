"""Who may talk to the orchestrator: loopback Hosts only, and a token on every request.

The token comes as ``Authorization: Bearer <token>``. A browser, which cannot send that header,
opens a link carrying a one-time code instead (``?yw_code=``, valid for a few minutes), traded for
the token in a strict same-site cookie: the token itself never appears in a URL, so it is not left
in notebook outputs or browser history. Instance tokens, given to each backend, are valid too,
and pin the caller's partition.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ywmagics.errors import AuthenticationError, YwMagicsError
from ywmagics.protocol import ERROR_HEADER
from ywmagics.spec import PARTITION_PATTERN

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
COOKIE = "ywmagics_token"
QUERY = "yw_code"
CODE_LIFETIME = 300.0
PARTITION_COOKIE = "ywmagics_partition"
PARTITION_QUERY = "yw_partition"


class BrowserCodes:
    """One-time codes for browser links, each good once within :data:`CODE_LIFETIME` seconds."""

    def __init__(self) -> None:
        self._codes: dict[str, float] = {}

    def issue(self) -> str:
        now = time.monotonic()
        self._codes = {c: t for c, t in self._codes.items() if t > now}
        code = secrets.token_urlsafe(24)
        self._codes[code] = now + CODE_LIFETIME
        return code

    def redeem(self, code: str) -> bool:
        expires = self._codes.pop(code, 0.0)
        return expires > time.monotonic()


def host_is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in LOOPBACK_HOSTS


class SecurityMiddleware:
    """Refuses foreign Hosts and Origins, and requests without a valid token.

    ``instance_for_token`` maps an instance token to its partition (``None`` when unknown); the
    partition is put in ``scope["state"]["pinned_partition"]``.
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        instance_for_token: Callable[[str], str | None],
        codes: BrowserCodes,
    ) -> None:
        self.app = app
        self.token = token
        self.instance_for_token = instance_for_token
        self.codes = codes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] not in ("http", "websocket"):  # fail closed: nothing we do not know
            return
        refusal = self._check(scope)
        if refusal is not None:
            await refuse(scope, send, *refusal)
            return
        if scope["type"] == "http" and scope["state"].pop("browser_login", False):
            await self._browser_login(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> tuple[AuthenticationError, int] | None:
        """Why ``scope`` is refused (the error and its status), or ``None``; a request let
        through gets ``scope["state"]["pinned_partition"]`` (``None`` for the master token)."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if not host_is_loopback(host):
            return AuthenticationError(
                f"Host {host!r} is not allowed: the orchestrator answers loopback names only",
                hint="use http://127.0.0.1:PORT or http://localhost:PORT",
            ), 403
        origin = headers.get("origin")
        # Only our own origin: a page served on another local port (a notebook server, a dev
        # server) is same-site for cookies, so the port must match too.
        if origin and origin != f"http://{host}":
            return AuthenticationError(f"cross-origin requests from {origin!r} are refused"), 403
        to_backend = scope["path"].startswith("/backends/")
        given, source = _token_of(scope, headers)
        state = scope.setdefault("state", {})
        if source == "query":
            # A link's one-time code is traded for a cookie by a page load, nothing else.
            if to_backend and scope["type"] == "http" and self.codes.redeem(given):
                state["browser_login"] = True
                state["pinned_partition"] = None
                return None
            given = ""  # a used or expired code is no credential
        if source == "cookie" and not to_backend:
            given = ""  # the browser's cookie opens backends' pages, not the admin routes
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            state["pinned_partition"] = None
            return None
        if given and (partition := self.instance_for_token(given)) is not None:
            if not (to_backend or scope["path"] == "/install"):
                return AuthenticationError(
                    "a backend's instance token reaches other backends and /install only"
                ), 403
            state["pinned_partition"] = partition
            return None
        return AuthenticationError(
            "missing or wrong token" if given else "this request carries no token",
            hint="send 'Authorization: Bearer <token>'; the token is in the discovery file "
            "('ywmagics status' shows where)",
        ), 401

    async def _browser_login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A link opened in a browser (a backend's /docs) with a valid code: set the token, and
        the partition if given, in strict cookies, and drop them from the URL before the backend
        sees it. The partition cookie is scoped to the backend's path, so that the page's own
        requests (e.g. /docs fetching openapi.json) reach the same instance."""
        pairs = parse_qsl(scope["query_string"].decode(), keep_blank_values=True)
        partition = next((v for k, v in pairs if k == PARTITION_QUERY), None)
        scope["query_string"] = urlencode(
            [(k, v) for k, v in pairs if k not in (QUERY, PARTITION_QUERY)]
        ).encode()
        cookies = [f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"]
        if partition is not None and PARTITION_PATTERN.fullmatch(partition):
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


def _token_of(scope: Scope, headers: dict[str, str]) -> tuple[str, str]:
    """The credential a request carries, and where: ``header``, ``query``, ``cookie`` or ``""``."""
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip(), "header"
    if QUERY.encode() in scope.get("query_string", b""):
        for key, value in parse_qsl(scope["query_string"].decode()):
            if key == QUERY:
                return value, "query"
    cookie = headers.get("cookie")
    if cookie:
        jar: SimpleCookie = SimpleCookie()
        jar.load(cookie)
        if COOKIE in jar:
            return jar[COOKIE].value, "cookie"
    return "", ""


async def refuse(scope: Scope, send: Send, error: YwMagicsError, status: int) -> None:
    """Refuse a request, or a websocket before it is accepted: with the HTTP answer when the
    server can send one to a websocket handshake, else by closing it (policy violation)."""
    if scope["type"] == "http":
        await send_error(send, error, status)
    elif "websocket.http.response" in scope.get("extensions", {}):
        payload = json.dumps({"error": error.to_dict()}).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": _error_headers(payload),
            }
        )
        await send({"type": "websocket.http.response.body", "body": payload})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})


def _error_headers(payload: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (ERROR_HEADER.encode(), b"1"),
        (b"content-length", str(len(payload)).encode()),
    ]


async def send_error(send: Send, error: YwMagicsError, status: int | None = None) -> None:
    """Answer with ``error`` as the orchestrator's JSON error (marked by ``ERROR_HEADER``)."""
    payload = json.dumps({"error": error.to_dict()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status or error.http_status,
            "headers": _error_headers(payload),
        }
    )
    await send({"type": "http.response.body", "body": payload})
