"""The Jupyter Server handlers of the extension (see :mod:`ywmagics.jupyter`)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

import httpx
from jupyter_server.base.handlers import JupyterHandler
from tornado import httpclient, iostream, netutil, web, websocket

from ywmagics import paths
from ywmagics.discovery import Connection, read_discovery
from ywmagics.protocol import DASHBOARD_SESSION_HEADER, PARTITION_HEADER
from ywmagics.spec import is_semver, validate_name, validate_partition

CAPABILITY_LIFETIME = 12 * 3600.0
# A backend's page runs as an opaque origin: it cannot reach the Jupyter server's cookies,
# storage or pages, nor another backend's, yet runs its scripts and forms.
SANDBOX = (
    "sandbox allow-scripts allow-forms allow-popups allow-popups-to-escape-sandbox "
    "allow-downloads allow-modals"
)
# Not passed on: hop-by-hop, the browser's credentials for Jupyter, our own framing, and where
# the browser's request came from (checked here: the orchestrator's client is this extension).
_REQUEST_DROPPED = {
    "host", "cookie", "authorization", "connection", "keep-alive", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-authorization", "content-length", "x-xsrftoken",
    "origin", "referer", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest", "sec-fetch-user",
    "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
    "x-forwarded-prefix",  # ours to say, below
}  # fmt: skip
# What a backend's answer may say here, on the Jupyter server's origin: what describes the
# answer itself. Anything else (HSTS, Alt-Svc, WWW-Authenticate, framing and opener policies,
# client hints, CSP, CORS, cookies' and links' own handling below) would rule the whole origin.
_ANSWER_KEPT = {
    "content-type", "content-encoding", "content-disposition", "content-language",
    "content-range", "accept-ranges", "cache-control", "expires", "pragma", "age", "etag",
    "last-modified", "vary", "retry-after", "link", "access-control-expose-headers",
}  # fmt: skip
# Custom headers of an app's own (X-Request-Id) pass, but not these old origin-wide ones.
_ANSWER_X_DROPPED = {
    "x-frame-options", "x-xss-protection", "x-content-type-options", "x-dns-prefetch-control",
    "x-permitted-cross-domain-policies",
}  # fmt: skip
# A backend's cookies are named so on the Jupyter server's origin, and only those reach it (a
# deny-list would miss a hub's, a front proxy's, or a login cookie of another name).
BACKEND_COOKIE_PREFIX = "ywb-"
# What the dashboard's page asks of the orchestrator, beside its own files: these and no other
# (the orchestrator's session rules decide the rest).
DASHBOARD_ROUTES = {
    "GET": r"dashboard/(static/[A-Za-z0-9_-][A-Za-z0-9_.-]*|state|stream|log|install-log)?",
    "POST": r"dashboard/session|stop|restart|uninstall|gc",
}
_DASHBOARD_ANSWER_KEPT = {"content-type", "cache-control", "etag", "last-modified"}
_DASHBOARD_TYPES = {
    "page": {"text/html"},
    "static": {"text/javascript", "application/javascript", "text/css", "image/png"},
    "data": {"application/json", "application/x-ndjson", "text/plain", ""},
}
# The dashboard's page here: its scripts and styles from its own folder only (not 'self': the
# backends' pages are on this origin too), framed by the Jupyter server's pages only.
_DASHBOARD_PAGE_POLICY = (
    "default-src 'none'; script-src {files}; style-src {files}; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)


@dataclass(frozen=True)
class Instance:
    partition: str
    name: str
    version: str
    created: float = field(default_factory=time.monotonic)


class Capabilities:
    """Secrets in the path, each opening one instance's pages for a while."""

    def __init__(self) -> None:
        self._by_secret: dict[str, Instance] = {}

    def new(self, instance: Instance) -> str:
        """A secret for ``instance``: the one given before while it has most of its life left,
        so that each page of a backend is at one address (a backend that says its server in
        its pages, as OpenAPI docs do, is not told a new one each time)."""
        self._forget_old()
        key = (instance.partition, instance.name, instance.version)
        for secret, given in self._by_secret.items():
            young = time.monotonic() - given.created < CAPABILITY_LIFETIME / 2
            if (given.partition, given.name, given.version) == key and young:
                return secret
        secret = secrets.token_urlsafe(24)
        self._by_secret[secret] = instance
        return secret

    def get(self, secret: str) -> Instance | None:
        instance = self._by_secret.get(secret)
        if instance is None or time.monotonic() - instance.created > CAPABILITY_LIFETIME:
            return None
        return instance

    def _forget_old(self) -> None:
        now = time.monotonic()
        for secret, instance in list(self._by_secret.items()):
            if now - instance.created > CAPABILITY_LIFETIME:
                del self._by_secret[secret]


def _orchestrator_http(timeout: httpx.Timeout | float) -> httpx.AsyncClient:
    """A client of the orchestrator through its Unix socket, in the user's private folder: its
    TCP port, once freed by an orchestrator that stops, could be bound by another local user,
    whose answers would then be served here, on the Jupyter server's origin."""
    unix_socket = paths.runtime_dir() / "orchestrator.sock"
    transport = httpx.AsyncHTTPTransport(uds=str(unix_socket)) if unix_socket.exists() else None
    return httpx.AsyncClient(timeout=timeout, transport=transport)


class OrchestratorSocket(netutil.Resolver):
    """Resolves any name to the orchestrator's Unix socket: the websocket relay's way there,
    as :func:`_orchestrator_http` is the HTTP one's (the same reason)."""

    def initialize(self, path: str) -> None:
        self.path = path

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        return [(socket.AF_UNIX, self.path)]


# Tornado takes a resolver for websocket clients from 6.3 on; before, the relay uses the port.
_RELAY_OVER_THE_SOCKET = "resolver" in inspect.signature(websocket.websocket_connect).parameters


def _websocket_options() -> dict[str, Any]:
    unix_socket = paths.runtime_dir() / "orchestrator.sock"
    if _RELAY_OVER_THE_SOCKET and unix_socket.exists():
        return {"resolver": OrchestratorSocket(path=str(unix_socket))}
    return {}


def _orchestrator() -> Connection:
    connection = read_discovery(paths.discovery_file())
    if connection is None:
        raise web.HTTPError(
            503, reason="the ywmagics orchestrator is not running (a kernel starts it)"
        )
    return connection


class OpenHandler(JupyterHandler):
    """Jupyter's login first; then a capability for one instance, and a redirect to it."""

    def initialize(self, capabilities: Capabilities, prefix: str) -> None:
        self.capabilities, self.prefix = capabilities, prefix

    @web.authenticated
    def get(self, partition: str, name: str, version: str, path: str | None) -> None:
        # Opened from Jupyter's own pages (or typed in): another site must not make the
        # browser open a backend, with what it chose in the path, as the user.
        site = self.request.headers.get("Sec-Fetch-Site", "none")
        if site not in ("same-origin", "none"):
            raise web.HTTPError(403, reason="open backend links from the notebook")
        try:
            instance = Instance(validate_partition(partition), validate_name(name), version)
        except Exception as error:  # SpecError: a wrong link
            raise web.HTTPError(400, reason=str(error)) from None
        if not is_semver(version):
            raise web.HTTPError(400, reason=f"{version!r} is not a version")
        rest = _raw_rest(self.request.path, self.prefix, 5)  # after open/PARTITION/NAME/VERSION
        # Not Jupyter's own token, if the link carried one: it is not the backend's to see.
        kept = [part for part in self.request.query.split("&") if part and not _is_token(part)]
        query = f"?{'&'.join(kept)}" if kept else ""
        secret = self.capabilities.new(instance)
        self.redirect(f"{self.prefix}/b/{secret}{rest}{query}")


class DashboardOpenHandler(JupyterHandler):
    """``{base_url}ywmagics/dashboard``: Jupyter's login first, then a one-time dashboard link
    of the orchestrator's, through here."""

    def initialize(self, prefix: str) -> None:
        self.prefix = prefix

    @web.authenticated
    async def get(self) -> None:
        if self.request.headers.get("Sec-Fetch-Site", "none") not in ("same-origin", "none"):
            raise web.HTTPError(403, reason="open the dashboard from the notebook")
        connection = _orchestrator()
        try:
            async with _orchestrator_http(30) as client:
                answer = await client.post(
                    f"{connection.url}/dashboard-link", headers=connection.headers
                )
                answer.raise_for_status()
        except httpx.HTTPError as error:
            raise web.HTTPError(502, reason=f"the orchestrator did not answer: {error}") from None
        code = str(answer.json()["url"]).partition("#")[2]
        self.set_header("Cache-Control", "no-store")
        self.redirect(f"{self.prefix}/dashboard/#{code}")


class DashboardHandler(JupyterHandler):
    """The dashboard's page and its calls, behind Jupyter's login, forwarded as they are: the
    page's own session (a header it sets, never a cookie) is its credential at the
    orchestrator; the orchestrator's token is never added."""

    def initialize(self, prefix: str) -> None:
        self.prefix = prefix

    def check_xsrf_cookie(self) -> None:
        """Each call carries the page's session, which no other site has, or a one-time code;
        nothing here is opened by a cookie alone."""

    def on_connection_close(self) -> None:
        _stop_copying(self)

    @web.authenticated
    async def get(self, route: str) -> None:
        await self._forward("GET", route)

    @web.authenticated
    async def post(self, route: str) -> None:
        await self._forward("POST", route)

    async def _forward(self, method: str, route: str) -> None:
        if not re.fullmatch(DASHBOARD_ROUTES[method], route):
            raise web.HTTPError(404, reason="the dashboard has no such route")
        connection = _orchestrator()
        headers = {"Accept": self.request.headers.get("Accept", "*/*")}
        if "Content-Type" in self.request.headers:
            headers["Content-Type"] = self.request.headers["Content-Type"]
        session = self.request.headers.get(DASHBOARD_SESSION_HEADER, "")
        if session:
            headers["Authorization"] = f"Bearer {session}"
        query = f"?{self.request.query}" if self.request.query else ""
        url = f"{connection.url}/{route}{query}"

        def head(answer: httpx.Response) -> None:
            self._answer_head(answer, route)

        await _relay(self, method, url, headers, self.request.body or None, head)

    def _answer_head(self, answer: httpx.Response, route: str) -> None:
        """The orchestrator's status and plain headers; the rules of what may run here are ours
        (this is the Jupyter server's origin): the page runs our files only, and nothing else
        it is sent is a page."""
        kind = answer.headers.get("content-type", "").split(";")[0].strip().lower()
        expected = _DASHBOARD_TYPES[
            "page"
            if route == "dashboard/"
            else "static"
            if route.startswith("dashboard/static/")
            else "data"
        ]
        if answer.is_success and kind not in expected:
            raise web.HTTPError(502, reason=f"the orchestrator answered {kind!r} for {route}")
        self.set_status(answer.status_code, answer.reason_phrase or None)
        self.clear_header("Content-Type")
        for key, value in answer.headers.items():
            if key.lower() in _DASHBOARD_ANSWER_KEPT:
                self.set_header(key, value)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        if route == "dashboard/":
            files = f"{self.request.protocol}://{self.request.host}{self.prefix}/dashboard/static/"
            policy = _DASHBOARD_PAGE_POLICY.format(files=files)
        else:
            policy = "sandbox; default-src 'none'"
        self.set_header("Content-Security-Policy", policy)


class BackendHandler(websocket.WebSocketHandler, JupyterHandler):
    """Forwards to the instance its capability opens, HTTP and websockets alike; the capability
    is the only credential (a sandboxed page has no other), so no Jupyter cookie or XSRF token
    is asked for."""

    def initialize(self, capabilities: Capabilities, prefix: str) -> None:
        self.capabilities, self.prefix = capabilities, prefix
        self.upstream: websocket.WebSocketClientConnection | None = None

    def check_xsrf_cookie(self) -> None:
        """The capability in the path is what another site cannot forge."""

    def check_origin(self, origin_to_satisfy_tornado: str = "") -> bool:
        """A sandboxed page's origin is ``null``; the capability is what is checked."""
        return True

    def _upstream(self, secret: str, path: str | None) -> tuple[httpx.URL, dict[str, str], str]:
        """The orchestrator's URL for the request, the headers to send, and the instance's
        base path there. The path goes as the browser sent it, still encoded, and must stay
        inside the instance's: no dot segment, no encoded '/' (else '..%2F' would reach the
        orchestrator's own routes, with its token)."""
        instance = self.capabilities.get(secret)
        if instance is None:
            raise web.HTTPError(404, reason="unknown or expired link: open it from the notebook")
        rest = _raw_rest(self.request.path, self.prefix, 3)  # after b/CAPABILITY
        connection = _orchestrator()
        base = f"/backends/{quote(instance.name, safe='')}/{quote(instance.version, safe='')}"
        query = f"?{self.request.query}" if self.request.query else ""
        url = httpx.URL(connection.url).copy_with(raw_path=f"{base}{rest}{query}".encode())
        headers = {
            k: v for k, v in self.request.headers.get_all() if k.lower() not in _REQUEST_DROPPED
        }
        cookies = _backend_cookies(self.request.headers.get("Cookie", ""))
        if cookies:
            headers["Cookie"] = cookies
        headers.update(connection.headers)
        headers[PARTITION_HEADER] = instance.partition
        # Where the browser sees the backend: its answers' links and redirects stay here (the
        # orchestrator takes these from a client with its token).
        headers["X-Forwarded-Host"] = self.request.host
        headers["X-Forwarded-Proto"] = self.request.protocol
        headers["X-Forwarded-Prefix"] = f"{self.prefix}/b/{secret}"
        return url, headers, base

    async def _forward(self, secret: str, path: str | None) -> None:
        url, headers, base = self._upstream(secret, path)
        if (
            self.request.method == "OPTIONS"
            and "Access-Control-Request-Method" in self.request.headers
        ):
            return self._preflight()
        connection = _orchestrator()
        method, body = self.request.method or "GET", self.request.body

        def head(answer: httpx.Response) -> None:
            self._answer_head(answer, base, connection, secret)

        await _relay(self, method, url, headers, body, head)

    def _answer_head(
        self, answer: httpx.Response, base: str, connection: Connection, secret: str
    ) -> None:
        self.set_status(answer.status_code, answer.reason_phrase or None)
        self.clear_header("Content-Type")
        own = f"{self.prefix}/b/{secret}"
        for key, value in answer.headers.multi_items():
            name = key.lower()
            if name in _ANSWER_KEPT or (name.startswith("x-") and name not in _ANSWER_X_DROPPED):
                self.add_header(key, value)
        location = answer.headers.get("location")
        if location:
            bases = (connection.url + base, base)  # the orchestrator's paths of the instance
            self.set_header("Location", self._kept_inside(location, own, bases))
        for cookie in answer.headers.get_list("set-cookie"):
            self.add_header("Set-Cookie", _kept_to(cookie, own))
        self.set_header("Content-Security-Policy", SANDBOX)
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Content-Type-Options", "nosniff")
        # Its own page's scripts run as an opaque origin ('null'): its calls to its own path
        # are cross-origin, and need this to be read (without credentials).
        self.set_header("Access-Control-Allow-Origin", "null")

    def _kept_inside(self, location: str, own: str, bases: tuple[str, str]) -> str:
        """A redirect of the backend, as the browser will read it, into its own path here; one
        that would land elsewhere on this origin (``..``, ``http:/…``, ``\\``) is refused: it
        would make the browser ask the Jupyter server, or another backend, as the user."""
        cleaned = re.sub(r"[\x00-\x20]", "", location).replace("\\", "/")  # as browsers read it
        for before in bases:
            if cleaned.startswith(before):
                cleaned = own + cleaned[len(before) :]
                break
        here = f"{self.request.protocol}://{self.request.host}"
        resolved = urlsplit(urljoin(here + self.request.path, cleaned))
        if resolved.scheme not in ("http", "https") or resolved.netloc.lower() != (
            self.request.host.lower()
        ):
            return cleaned  # another site: the backend's own business
        segments = [unquote(s) for s in resolved.path.split("/")]
        inside = resolved.path == own or resolved.path.startswith(own + "/")
        if not inside or any(s in (".", "..") for s in segments):
            raise web.HTTPError(502, reason="the backend redirected out of its own pages")
        return urlunsplit(("", "", resolved.path, resolved.query, resolved.fragment))

    def _preflight(self) -> None:
        """A sandboxed page's preflight for a call to its own backend, answered here."""
        self.set_status(204)
        self.set_header("Access-Control-Allow-Origin", "null")
        self.set_header("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, PATCH, DELETE")
        asked = self.request.headers.get("Access-Control-Request-Headers", "")
        if asked:
            self.set_header("Access-Control-Allow-Headers", asked)
        self.set_header("Access-Control-Max-Age", "600")
        self.finish()

    async def get(self, secret: str, path: str | None) -> None:
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            return await self._forward(secret, path)
        url, headers, _ = self._upstream(secret, path)
        handshake = ("sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions")
        # The handshake to the orchestrator is its own.
        headers = {k: v for k, v in headers.items() if k.lower() not in handshake}
        request = httpclient.HTTPRequest("ws" + str(url)[len("http") :], headers=headers)
        try:
            self.upstream = await websocket.websocket_connect(request, **_websocket_options())
        except (OSError, httpclient.HTTPClientError) as error:
            raise web.HTTPError(502, reason=f"the backend's websocket: {error}") from None
        await super().get(secret, path)

    def open(self, *args: str, **kwargs: str) -> None:
        # Held by the handler: a task only the loop refers to may be collected mid-way.
        self.relaying = asyncio.ensure_future(self._relay_from_backend())

    async def _relay_from_backend(self) -> None:
        assert self.upstream is not None
        while (message := await self.upstream.read_message()) is not None:
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                break
        self.close()

    async def on_message(self, message: str | bytes) -> None:
        if self.upstream is not None:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()

    def on_connection_close(self) -> None:
        _stop_copying(self)  # an HTTP answer being copied
        super().on_connection_close()  # a websocket's end

    async def head(self, secret: str, path: str | None) -> None:
        await self._forward(secret, path)

    async def post(self, secret: str, path: str | None) -> None:
        await self._forward(secret, path)

    async def put(self, secret: str, path: str | None) -> None:
        await self._forward(secret, path)

    async def patch(self, secret: str, path: str | None) -> None:
        await self._forward(secret, path)

    async def delete(self, secret: str, path: str | None) -> None:
        await self._forward(secret, path)

    async def options(self, secret: str, path: str | None) -> None:
        await self._forward(secret, path)


async def _relay(
    handler: web.RequestHandler,
    method: str,
    url: httpx.URL | str,
    headers: dict[str, str],
    body: bytes | None,
    head: Callable[[httpx.Response], None],
) -> None:
    """Send the request to the orchestrator; its answer's head through ``head``, then its body
    as it comes (streams stay streams), until it ends or the browser leaves (the handler's
    ``on_connection_close`` cancels :attr:`copying`: a quiet stream would not notice)."""
    client = _orchestrator_http(httpx.Timeout(60.0, read=None))
    try:
        request = client.build_request(method, url, headers=headers, content=body)
        answer = await client.send(request, stream=True)
        try:
            head(answer)
            copying = asyncio.ensure_future(_copy(answer, handler))
            handler.copying = copying  # type: ignore[attr-defined]
            with contextlib.suppress(asyncio.CancelledError):
                await copying
        finally:
            await answer.aclose()
    except httpx.HTTPError as error:
        raise web.HTTPError(502, reason=f"the orchestrator did not answer: {error}") from None
    finally:
        await client.aclose()


async def _copy(answer: httpx.Response, handler: web.RequestHandler) -> None:
    try:
        async for chunk in answer.aiter_raw():
            handler.write(chunk)
            await handler.flush()
    except iostream.StreamClosedError:
        pass  # the browser left: nobody to tell


def _stop_copying(handler: web.RequestHandler) -> None:
    copying = getattr(handler, "copying", None)
    if copying is not None:
        copying.cancel()


def _raw_rest(path: str, prefix: str, skip: int) -> str:
    """The rest of a request's path, as sent (still encoded), after ``prefix`` and ``skip``
    more segments; refused if it could leave the instance's path."""
    parts = path[len(prefix.rstrip("/")) + 1 :].split("/")
    rest = parts[skip - 1 :] if len(parts) >= skip else []
    for segment in rest:
        decoded = unquote(segment)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            raise web.HTTPError(400, reason="a path that leaves the backend's is refused")
    return "/" + "/".join(rest) if rest else "/"


def _is_token(part: str) -> bool:
    return part.split("=", 1)[0] == "token"


def _backend_cookies(header: str) -> str:
    """The cookies a backend set here (see :func:`_kept_to`), under their own names; no other
    cookie of this origin."""
    kept = []
    for part in header.split(";"):
        name, equals, value = part.strip().partition("=")
        if equals and name.startswith(BACKEND_COOKIE_PREFIX) and name != BACKEND_COOKIE_PREFIX:
            kept.append(f"{name[len(BACKEND_COOKIE_PREFIX) :]}={value}")
    return "; ".join(kept)


def _kept_to(header: str, path: str) -> str:
    """A backend's cookie, renamed as a backend's and kept to its own path on the Jupyter
    server's host (no Domain, no wider Path: it must not replace anyone else's cookies)."""
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(header)
    renamed: SimpleCookie = SimpleCookie()
    for name, morsel in cookie.items():
        ours = BACKEND_COOKIE_PREFIX + name
        renamed[ours] = morsel.value
        for attribute, value in morsel.items():
            if value and attribute not in ("path", "domain"):
                renamed[ours][attribute] = value
        renamed[ours]["path"] = path
    return "; ".join(m.OutputString() for m in renamed.values())
