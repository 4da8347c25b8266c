"""Clients of one backend, bound to a partition: fetch-like calls through the orchestrator.

:class:`BackendClient` and :class:`AsyncBackendClient` are twins over an I/O-free base that builds
the requests and reads the answers; only sending differs. Each takes an ``http=`` client, as
httpx's own clients take a transport: tests hand one that talks to the orchestrator's ASGI app
in-process (``httpx.ASGITransport``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from ywmagics.client._http import (
    DEFAULT_TIMEOUT,
    raise_for_error,
    raise_for_orchestrator,
    translated,
)
from ywmagics.client._pool import shared_http
from ywmagics.discovery import Connection
from ywmagics.errors import IncompleteAnswerError, YwMagicsError
from ywmagics.protocol import (
    ERROR_HEADER,
    FINGERPRINT_HEADER,
    JUPYTER_BASE_URL_ENV,
    PARTITION_HEADER,
    jupyter_link,
)


def _token_refused(response: httpx.Response) -> bool:
    """The orchestrator's own 401: the token is not (any more) the one it wants."""
    return response.status_code == 401 and response.headers.get(ERROR_HEADER) == "1"


class _BackendBase:
    """What both twins share: where the backend is, how to address it, how to read answers."""

    _http: httpx.Client | httpx.AsyncClient

    def __init__(
        self,
        connection: Connection,
        name: str,
        version: str,
        partition: str,
        follow: bool,
        fingerprint: str | None,
    ) -> None:
        self.connection = connection
        self.name = name
        self.version = version
        self.partition = partition
        self.follow = follow
        self.fingerprint = fingerprint

    def _moved(self) -> bool:
        """Whether the user's orchestrator now answers elsewhere (it was restarted: another
        port, another token), following it if so. Only for a client of the orchestrator found
        through the discovery file: one given explicitly is never swapped for another."""
        if not self.follow:
            return False
        from ywmagics.client._connect import connect

        try:
            current = connect()
        except YwMagicsError:
            return False
        if current == self.connection:
            return False
        self.connection = current
        return True

    @property
    def url_base(self) -> str:
        """The backend's base URL, e.g. ``http://127.0.0.1:PORT/backends/NAME/VERSION``."""
        return f"{self.connection.url}/backends/{self.name}/{self.version}"

    def _request(
        self,
        path: str,
        method: str,
        *,
        json: Any = None,
        content: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Request:
        """As in httpx: leave ``timeout`` out for the client's default (5 s to connect, 300 s
        for an answer); ``None`` waits as long as it takes."""
        url = self.url_base + (path if path.startswith("/") else "/" + path)
        return self._http.build_request(
            method.upper(),
            url,
            json=json,
            content=content,
            params=params,
            headers={
                **self.connection.headers,
                PARTITION_HEADER: self.partition,
                **({FINGERPRINT_HEADER: self.fingerprint} if self.fingerprint else {}),
                **(headers or {}),
            },
            timeout=timeout,
        )

    def _browser_link_request(self, path: str) -> httpx.Request:
        body = {
            "name": self.name,
            "version": self.version,
            "partition": self.partition,
            "path": "/" + path.lstrip("/"),
        }
        return self._http.build_request(
            "POST",
            f"{self.connection.url}/browser-link",
            headers=self.connection.headers,
            json=body,
        )

    @staticmethod
    def _browser_link(answer: httpx.Response) -> str:
        return str(raise_for_error(answer).json()["url"])

    def _translated(self) -> contextlib.AbstractContextManager[None]:
        return translated(self.connection.url, f"{self.name} {self.version}")

    def _broke_off(self, method: str, path: str, error: httpx.TransportError) -> Exception:
        return IncompleteAnswerError(
            f"{self.name} {self.version} (partition {self.partition}) broke off its answer to "
            f"{method} {path}: {error!r}",
            hint="it most likely exited; the next request restarts it",
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} {self.version} "
            f"partition={self.partition!r} url_base={self.url_base!r}>"
        )


class BackendClient(_BackendBase):
    """A backend's client; ``fetch`` returns the httpx response, the others raise on errors.

    Errors: :class:`~ywmagics.errors.BackendHTTPError` when the backend answers an error status,
    :class:`~ywmagics.errors.BackendTimeout` when no answer comes in time, another
    :class:`~ywmagics.errors.YwMagicsError` when the orchestrator could not reach the backend.
    The ``afetch*`` twins do the same with ``await`` (see :class:`AsyncBackendClient`).

    ``http`` is the ``httpx.Client`` to send with (default: one pool shared by the process).
    With ``follow``, a client whose orchestrator was restarted (its connection refused, or its
    token no longer valid) finds the new one through the discovery file and sends once more.
    With ``fingerprint`` (an install's result has it), its requests reach only an instance of
    the configuration it installed: one of another is refused with
    :class:`~ywmagics.errors.InstanceReplaced`, never used in its place.
    """

    _http: httpx.Client

    def __init__(
        self,
        connection: Connection,
        name: str,
        version: str,
        partition: str,
        *,
        http: httpx.Client | None = None,
        async_http: httpx.AsyncClient | None = None,
        follow: bool = False,
        fingerprint: str | None = None,
    ) -> None:
        super().__init__(connection, name, version, partition, follow, fingerprint)
        self._http = http or shared_http()
        self._given_async_http = async_http
        self._async: AsyncBackendClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None

    def fetch(self, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
        """Send a request (``json``, ``content``, ``params``, ``headers``, ``timeout``)."""
        with self._translated():
            return raise_for_orchestrator(self._send(path, method, kwargs))

    def _send(
        self, path: str, method: str, kwargs: dict[str, Any], stream: bool = False
    ) -> httpx.Response:
        """Send; once more to a restarted orchestrator when nothing was received by the old one
        (connection refused) or it refused the token (see ``follow``)."""
        try:
            response = self._http.send(self._request(path, method, **kwargs), stream=stream)
        except httpx.ConnectError:
            if not self._moved():
                raise
        else:
            if not (_token_refused(response) and self._moved()):
                return response
            response.close()
        return self._http.send(self._request(path, method, **kwargs), stream=stream)

    def fetch_json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        return raise_for_error(self.fetch(path, method, **kwargs)).json()

    def fetch_text(self, path: str, method: str = "GET", **kwargs: Any) -> str:
        return raise_for_error(self.fetch(path, method, **kwargs)).text

    @contextlib.contextmanager
    def stream(self, path: str, method: str = "GET", **kwargs: Any) -> Iterator[httpx.Response]:
        """Like :meth:`fetch`, with the body read as it arrives (``iter_lines``, ``iter_bytes``).

        An error status raises, like :meth:`fetch_json`, with the body read for the message."""
        with self._translated():
            response = self._send(path, method, kwargs, stream=True)
        try:
            if response.status_code >= 400:
                with self._translated():
                    response.read()
                raise_for_error(response)
            try:
                yield response
            except httpx.TimeoutException as error:
                with self._translated():
                    raise error
            except httpx.TransportError as error:  # raised while the caller read the body
                raise self._broke_off(method, path, error) from error
        finally:
            response.close()

    @property
    def docs_url(self) -> str:
        """A link to the backend's ``/docs`` that opens in a browser, for a few minutes.

        It opens on the backend instance's own host name (``b-<hex>.localhost``) with a one-time
        code, not the orchestrator's token, so it is safe in a saved notebook; the browser then
        holds a session for that instance only. Read the property again for a fresh link."""
        return self.browser_url("/docs")

    def browser_url(self, path: str) -> str:
        """A link to ``path`` of the backend that a browser can open (see :attr:`docs_url`);
        under a Jupyter server with ywmagics' extension, one through that server."""
        through_jupyter = _through_jupyter(self, path)
        if through_jupyter:
            return through_jupyter
        with self._translated():
            return self._browser_link(self._http.send(self._browser_link_request(path)))

    @property
    def aio(self) -> AsyncBackendClient:
        """The async twin, bound to the same backend and partition, and to the running event
        loop (a new one is made for each new loop: its connections belong to their loop),
        sending with the ``async_http`` client given, if any."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._async is None or self._async.closed or self._async_loop is not loop:
            self._async = AsyncBackendClient(
                self.connection,
                self.name,
                self.version,
                self.partition,
                http=self._given_async_http,
                follow=self.follow,
                fingerprint=self.fingerprint,
            )
            self._async_loop = loop
        return self._async

    async def afetch(self, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
        return await self.aio.fetch(path, method, **kwargs)

    async def afetch_json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        return await self.aio.fetch_json(path, method, **kwargs)

    async def afetch_text(self, path: str, method: str = "GET", **kwargs: Any) -> str:
        return await self.aio.fetch_text(path, method, **kwargs)


class AsyncBackendClient(_BackendBase):
    """The async twin of :class:`BackendClient`; ``http`` is an ``httpx.AsyncClient`` (default:
    its own, closed by :meth:`aclose`)."""

    _http: httpx.AsyncClient

    def __init__(
        self,
        connection: Connection,
        name: str,
        version: str,
        partition: str,
        *,
        http: httpx.AsyncClient | None = None,
        follow: bool = False,
        fingerprint: str | None = None,
    ) -> None:
        super().__init__(connection, name, version, partition, follow, fingerprint)
        self._http = http or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)

    async def fetch(self, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
        with self._translated():
            return raise_for_orchestrator(await self._send(path, method, kwargs))

    async def _send(
        self, path: str, method: str, kwargs: dict[str, Any], stream: bool = False
    ) -> httpx.Response:
        """The twin of :meth:`BackendClient._send`."""
        try:
            response = await self._http.send(self._request(path, method, **kwargs), stream=stream)
        except httpx.ConnectError:
            if not await asyncio.to_thread(self._moved):
                raise
        else:
            if not (_token_refused(response) and await asyncio.to_thread(self._moved)):
                return response
            await response.aclose()
        return await self._http.send(self._request(path, method, **kwargs), stream=stream)

    async def fetch_json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        return raise_for_error(await self.fetch(path, method, **kwargs)).json()

    async def fetch_text(self, path: str, method: str = "GET", **kwargs: Any) -> str:
        return raise_for_error(await self.fetch(path, method, **kwargs)).text

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, method: str = "GET", **kwargs: Any
    ) -> AsyncIterator[httpx.Response]:
        """The twin of :meth:`BackendClient.stream`: ``aiter_lines``, ``aiter_bytes``."""
        with self._translated():
            response = await self._send(path, method, kwargs, stream=True)
        try:
            if response.status_code >= 400:
                with self._translated():
                    await response.aread()
                raise_for_error(response)
            try:
                yield response
            except httpx.TimeoutException as error:
                with self._translated():
                    raise error
            except httpx.TransportError as error:
                raise self._broke_off(method, path, error) from error
        finally:
            await response.aclose()

    async def browser_url(self, path: str) -> str:
        through_jupyter = _through_jupyter(self, path)
        if through_jupyter:
            return through_jupyter
        with self._translated():
            return self._browser_link(await self._http.send(self._browser_link_request(path)))

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    async def aclose(self) -> None:
        await self._http.aclose()


def _through_jupyter(client: Any, path: str) -> str:
    """The link through the Jupyter server this kernel runs under, if it has the extension."""
    base_url = os.environ.get(JUPYTER_BASE_URL_ENV, "")
    if not base_url:
        return ""
    return jupyter_link(base_url, client.partition, client.name, client.version, path)
