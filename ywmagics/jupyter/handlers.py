"""The Jupyter Server handlers of the extension (see :mod:`ywmagics.jupyter`)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, quote, urlencode

import httpx
from jupyter_server.base.handlers import JupyterHandler
from tornado import web

from ywmagics import paths
from ywmagics.discovery import Connection, read_discovery
from ywmagics.protocol import PARTITION_HEADER
from ywmagics.spec import validate_name, validate_partition

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
}  # fmt: skip
_ANSWER_DROPPED = {
    "connection", "keep-alive", "transfer-encoding", "content-length", "server", "date",
    "set-cookie", "location",
}  # fmt: skip


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
        self._forget_old()
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
        try:
            instance = Instance(validate_partition(partition), validate_name(name), version)
        except Exception as error:  # SpecError: a wrong link
            raise web.HTTPError(400, reason=str(error)) from None
        secret = self.capabilities.new(instance)
        # Not Jupyter's own token, if the link carried one: it is not the backend's to see.
        kept = [(k, v) for k, v in parse_qsl(self.request.query, keep_blank_values=True)]
        kept = [(k, v) for k, v in kept if k != "token"]
        query = f"?{urlencode(kept)}" if kept else ""
        self.redirect(f"{self.prefix}/b/{secret}{path or '/'}{query}")


class BackendHandler(web.RequestHandler):
    """Forwards to the instance its capability opens; the capability is the only credential
    (a sandboxed page has no other), so no Jupyter cookie or XSRF token is asked for."""

    def initialize(self, capabilities: Capabilities, prefix: str) -> None:
        self.capabilities, self.prefix = capabilities, prefix

    def check_xsrf_cookie(self) -> None:
        """The capability in the path is what another site cannot forge."""

    async def _forward(self, secret: str, path: str | None) -> None:
        instance = self.capabilities.get(secret)
        if instance is None:
            raise web.HTTPError(404, reason="unknown or expired link: open it from the notebook")
        connection = _orchestrator()
        base = f"/backends/{quote(instance.name)}/{quote(instance.version)}"
        url = f"{connection.url}{base}{path or '/'}"
        if self.request.query:
            url += f"?{self.request.query}"
        headers = {
            k: v for k, v in self.request.headers.get_all() if k.lower() not in _REQUEST_DROPPED
        }
        headers.update(connection.headers)
        headers[PARTITION_HEADER] = instance.partition
        client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, read=None))
        try:
            request = client.build_request(
                self.request.method or "GET", url, headers=headers, content=self.request.body
            )
            answer = await client.send(request, stream=True)
            try:
                self._answer_head(answer, base, connection, secret)
                async for chunk in answer.aiter_raw():
                    self.write(chunk)
                    await self.flush()
            finally:
                await answer.aclose()
        except httpx.HTTPError as error:
            raise web.HTTPError(502, reason=f"the orchestrator did not answer: {error}") from None
        finally:
            await client.aclose()

    def _answer_head(
        self, answer: httpx.Response, base: str, connection: Connection, secret: str
    ) -> None:
        self.set_status(answer.status_code, answer.reason_phrase or None)
        self.clear_header("Content-Type")
        own = f"{self.prefix}/b/{secret}"
        for key, value in answer.headers.multi_items():
            if key.lower() not in _ANSWER_DROPPED:
                self.add_header(key, value)
        location = answer.headers.get("location")
        if location:
            for before in (f"{connection.url}{base}", base):
                if location.startswith(before):
                    location = own + location[len(before) :]
                    break
            self.set_header("Location", location)
        for cookie in answer.headers.get_list("set-cookie"):
            self.add_header("Set-Cookie", _kept_to(cookie, own))
        self.set_header("Content-Security-Policy", SANDBOX)
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Content-Type-Options", "nosniff")

    async def get(self, secret: str, path: str | None) -> None:
        await self._forward(secret, path)

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


def _kept_to(header: str, path: str) -> str:
    """A backend's cookie, kept to its own path on the Jupyter server's host (no Domain, no
    wider Path: it must not replace Jupyter's cookies)."""
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(header)
    for morsel in cookie.values():
        morsel["path"] = path
        morsel["domain"] = ""
    return "; ".join(m.OutputString() for m in cookie.values())
