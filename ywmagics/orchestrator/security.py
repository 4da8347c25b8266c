"""Who may talk to the orchestrator, checked before anything else runs.

Two kinds of host name reach it, on its one loopback port:

- **Its own** (``127.0.0.1``, ``localhost``, ``[::1]``): every request carries a token in
  ``Authorization: Bearer``, the orchestrator's (everything) or an instance's (other backends and
  ``/install`` only, pinned to the instance's partition). No cookie and no link opens anything
  there: a browser never holds the orchestrator's token.
- **An instance's** (``b-<hex>.localhost``, see :mod:`ywmagics.orchestrator.browser`): a
  browser with that instance's session cookie, or a link's one-time code that sets it, reaches
  that instance's pages and nothing else.

Every other host name is refused (DNS rebinding), and so are foreign origins and cross-site
requests. Websocket handshakes are checked like requests; other scope types are never passed on.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ywmagics.errors import AuthenticationError, YwMagicsError
from ywmagics.orchestrator.browser import (
    CODE_QUERY,
    DASHBOARD_LABEL,
    SESSION_COOKIE,
    SESSION_LIFETIME,
    BrowserAccess,
    cookie_pairs,
    dashboard_session_opens,
    is_public,
    label_of_host,
)
from ywmagics.orchestrator.forwarding import split_host
from ywmagics.protocol import ERROR_HEADER

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
# A navigation (a link opened, a reload) may come from another site; a script's request may not.
_NAVIGATION_DESTINATIONS = {"document", "empty"}


@dataclass(frozen=True)
class InstancePages:
    """What an instance host serves: its instance's partition and base path."""

    partition: str
    base_path: str


Refusal = tuple[YwMagicsError, int]


def host_is_loopback(host: str) -> bool:
    return split_host(host)[0] in LOOPBACK_HOSTS


class SecurityMiddleware:
    """Refuses foreign Hosts and Origins, and requests without a valid credential.

    A request let through carries ``scope["state"]["pinned_partition"]``: ``None`` for the
    orchestrator's token, else the partition its credential is bound to.
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        instance_for_token: Callable[[str], str | None],
        pages_of_label: Callable[[str], InstancePages | None],
        access: BrowserAccess,
    ) -> None:
        self.app = app
        self.token = token
        self.instance_for_token = instance_for_token
        self.pages_of_label = pages_of_label
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] not in ("http", "websocket"):  # fail closed: nothing we do not know
            return
        scope.setdefault("state", {})
        refusal = self._check(scope)
        if scope["state"].get("instance_host"):
            send = _same_origin_referrers(send)
        if refusal is not None:
            await refuse(scope, send, *refusal)
            return
        login = scope["state"].pop("browser_login", None)
        if login is not None:
            await _redirect_with_session(scope, send, *login)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> Refusal | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        name, _ = split_host(host)
        origin = headers.get("origin")
        # Only the page's own origin: a page served on another local port (a notebook server,
        # another user's server) is the same site, so the port must match too.
        if origin is not None and origin != f"http://{host}":
            return AuthenticationError(f"cross-origin requests from {origin!r} are refused"), 403
        if name in LOOPBACK_HOSTS:
            return self._check_token(scope, headers)
        label = label_of_host(name)
        if label is not None:
            return self._check_browser(scope, headers, label)
        return AuthenticationError(
            f"Host {host!r} is not allowed: the orchestrator answers loopback names only",
            hint="use http://127.0.0.1:PORT, or the link a notebook makes for a backend's pages",
        ), 403

    def _check_token(self, scope: Scope, headers: dict[str, str]) -> Refusal | None:
        """The orchestrator's own host: a token in the Authorization header, nothing else."""
        authorization = headers.get("authorization", "")
        given = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            scope["state"]["pinned_partition"] = None
            # The user's own proxy in front (the Jupyter server's extension): its word for
            # where it serves backends is taken (proxy.seen_from).
            scope["state"]["trusted_forwarding"] = True
            return None
        method, path = scope.get("method", ""), scope["path"]
        if scope["type"] == "http" and is_public(method, path):
            return None
        if given and self.access.session_opens(given, DASHBOARD_LABEL):
            if scope["type"] != "http" or not dashboard_session_opens(method, path):
                return AuthenticationError(
                    "a dashboard session opens the dashboard's own routes only"
                ), 403
            scope["state"]["pinned_partition"] = None
            return None
        partition = self.instance_for_token(given) if given else None
        if partition is not None:
            if not (scope["path"].startswith("/backends/") or scope["path"] == "/install"):
                return AuthenticationError(
                    "a backend's instance token reaches other backends and /install only"
                ), 403
            scope["state"]["pinned_partition"] = partition
            return None
        hint = "send 'Authorization: Bearer <token>'; the token is in the discovery file "
        hint += "('ywmagics status' shows where)"
        if CODE_QUERY.encode() in scope.get("query_string", b""):
            hint = "links for browsers open on the backend's own host name: make a new one "
            hint += "in the notebook with '%backends docs ALIAS'"
        return AuthenticationError(
            "missing or wrong token" if given else "this request carries no token", hint=hint
        ), 401

    def _check_browser(self, scope: Scope, headers: dict[str, str], label: str) -> Refusal | None:
        """An instance's host: that instance's pages, for its session cookie or a link's code."""
        scope["state"]["instance_host"] = True
        pages = self.pages_of_label(label)
        again = "open a new link from the notebook: '%backends docs ALIAS'"
        if pages is None:
            return AuthenticationError(
                "this page's backend instance is not running any more", hint=again
            ), 404
        path = scope["path"]
        if not (path == pages.base_path or path.startswith(pages.base_path + "/")):
            # The host is the instance's own: a root-relative link of its pages (made by an app
            # that does not know its base path) is one of its pages too.
            raw_path = scope.get("raw_path") or path.encode()
            scope["path"] = pages.base_path + path
            scope["raw_path"] = pages.base_path.encode() + raw_path
        site = headers.get("sec-fetch-site")
        navigation = (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and headers.get("sec-fetch-mode") == "navigate"
            and headers.get("sec-fetch-dest", "document") in _NAVIGATION_DESTINATIONS
        )
        if site not in (None, "same-origin", "none") and not navigation:
            return AuthenticationError(
                "requests from other pages to a backend's pages are refused",
                hint="only the backend's own pages, and links opened in the browser, reach it",
            ), 403
        state = scope["state"]
        sessions = [v for n, v, _ in cookie_pairs(headers.get("cookie", "")) if n == SESSION_COOKIE]
        signed_in = any(self.access.session_opens(s, label) for s in sessions)
        code = _query_value(scope, CODE_QUERY)
        if code is not None and scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            session = self.access.redeem(code, label)
            if session is not None or signed_in:  # a reload of the link: same page, no code
                state["browser_login"] = (session,)
                return None
        if signed_in:
            state["pinned_partition"] = pages.partition
            return None
        return AuthenticationError(
            "this page needs a link from the notebook (links work once, for a few minutes)",
            hint=again,
        ), 401


def _same_origin_referrers(send: Send) -> Send:
    """Every answer on an instance's host tells the browser to send no ``Referer`` to other
    origins (whatever the backend said): the host name is what a session's theft starts from,
    and a page's links to other sites would give it away."""

    async def sending(message: Message) -> None:
        if message["type"] in ("http.response.start", "websocket.http.response.start"):
            headers = [(k, v) for k, v in message.get("headers", []) if k != b"referrer-policy"]
            headers.append((b"referrer-policy", b"same-origin"))
            message = {**message, "headers": headers}
        await send(message)

    return sending


def _query_value(scope: Scope, key: str) -> str | None:
    query = scope.get("query_string", b"")
    if key.encode() not in query:
        return None
    return next((v for k, v in parse_qsl(query.decode("latin-1")) if k == key), None)


async def _redirect_with_session(scope: Scope, send: Send, session: str | None) -> None:
    """To the same address without the code (a reload then works), with the session cookie."""
    # From the path and query as sent, byte for byte: decoded, '%3F' would become a query and
    # a character beyond Latin-1 could not be written.
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    kept = [
        pair
        for pair in scope["query_string"].split(b"&")
        if pair and unquote_plus(pair.split(b"=", 1)[0].decode("latin-1")) != CODE_QUERY
    ]
    location = path + (b"?" + b"&".join(kept) if kept else b"")
    headers = [
        (b"location", location),
        (b"cache-control", b"no-store"),
        (b"content-length", b"0"),
    ]
    if session is not None:
        cookie = (
            f"{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax; "
            f"Max-Age={int(SESSION_LIFETIME)}"
        )
        headers.append((b"set-cookie", cookie.encode()))
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def refuse(scope: Scope, send: Send, error: YwMagicsError, status: int) -> None:
    """Refuse a request, or a websocket before it is accepted: with the HTTP answer when the
    server can send one to a websocket handshake, else by closing it (policy violation)."""
    if scope["type"] == "http":
        # Closed after the answer: a refused client must not hold a kept-alive connection.
        await send_error(send, error, status, close=True)
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


async def send_error(
    send: Send, error: YwMagicsError, status: int | None = None, *, close: bool = False
) -> None:
    """Answer with ``error`` as the orchestrator's JSON error (marked by ``ERROR_HEADER``)."""
    payload = json.dumps({"error": error.to_dict()}).encode()
    headers = _error_headers(payload)
    if close:
        headers.append((b"connection", b"close"))
    await send(
        {
            "type": "http.response.start",
            "status": status or error.http_status,
            "headers": headers,
        }
    )
    await send({"type": "http.response.body", "body": payload})
