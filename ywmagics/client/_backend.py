"""Clients of one backend, bound to a partition: fetch-like calls through the orchestrator.

:class:`BackendClient` and :class:`AsyncBackendClient` are twins over an I/O-free base that builds
the requests and reads the answers; only sending differs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx

from ywmagics.client._http import (
    PARTITION_HEADER,
    check,
    orchestrator_error,
    translate_transport_error,
)
from ywmagics.client._pool import shared_http
from ywmagics.discovery import Connection
from ywmagics.errors import IncompleteAnswerError

DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)
Timeout = httpx.Timeout | float | None


class _BackendBase:
    """What both twins share: where the backend is, how to address it, how to read answers."""

    _http: httpx.Client | httpx.AsyncClient

    def __init__(self, connection: Connection, name: str, version: str, partition: str) -> None:
        self.connection = connection
        self.name = name
        self.version = version
        self.partition = partition

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
        content: bytes | str | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: Timeout = None,
    ) -> httpx.Request:
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
                **(headers or {}),
            },
            timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
        )

    def _browser_code_request(self) -> httpx.Request:
        return self._http.build_request(
            "POST", f"{self.connection.url}/browser-code", headers=self.connection.headers
        )

    def _browser_link(self, path: str, code_answer: httpx.Response) -> str:
        query = urlencode(
            {"yw_code": check(code_answer).json()["code"], "yw_partition": self.partition}
        )
        return f"{self.url_base}/{path.lstrip('/')}?{query}"

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """httpx's transport errors as ours; timeouts stay httpx's: they are the caller's."""
        try:
            yield
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as error:
            raise translate_transport_error(error, self.connection.url) from None

    @staticmethod
    def _accepted(response: httpx.Response) -> httpx.Response:
        """The response, unless it is the orchestrator's own error (then that is raised)."""
        failure = orchestrator_error(response)
        if failure is not None:
            raise failure
        return response

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} {self.version} "
            f"partition={self.partition!r} url_base={self.url_base!r}>"
        )


class BackendClient(_BackendBase):
    """A backend's client; ``fetch`` returns the httpx response, the others raise on errors.

    Errors: :class:`~ywmagics.errors.BackendHTTPError` when the backend answers an error status,
    another :class:`~ywmagics.errors.YwMagicsError` when the orchestrator could not reach it.
    The ``afetch*`` twins do the same with ``await`` (see :class:`AsyncBackendClient`).
    """

    _http: httpx.Client

    def __init__(self, connection: Connection, name: str, version: str, partition: str) -> None:
        super().__init__(connection, name, version, partition)
        self._http = shared_http()
        self._async: AsyncBackendClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None

    def fetch(self, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
        """Send a request (``json``, ``content``, ``params``, ``headers``, ``timeout``)."""
        with self._translated():
            return self._accepted(self._http.send(self._request(path, method, **kwargs)))

    def fetch_json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        return check(self.fetch(path, method, **kwargs)).json()

    def fetch_text(self, path: str, method: str = "GET", **kwargs: Any) -> str:
        return check(self.fetch(path, method, **kwargs)).text

    @contextlib.contextmanager
    def stream(self, path: str, method: str = "GET", **kwargs: Any) -> Iterator[httpx.Response]:
        """Like :meth:`fetch`, with the body read as it arrives (``iter_lines``, ``iter_bytes``).

        An error status raises, like :meth:`fetch_json`, with the body read for the message."""
        with self._translated():
            response = self._http.send(self._request(path, method, **kwargs), stream=True)
        try:
            if response.status_code >= 400:
                with self._translated():
                    response.read()
                check(response)
            try:
                yield response
            except httpx.TransportError as error:  # raised while the caller read the body
                raise IncompleteAnswerError(
                    f"{self.name} {self.version} (partition {self.partition}) broke off its "
                    f"answer to {method} {path}: {error!r}",
                    hint="it most likely exited; the next request restarts it",
                ) from None
        finally:
            response.close()

    @property
    def docs_url(self) -> str:
        """A link to the backend's ``/docs`` that opens in a browser, for a few minutes.

        It carries a one-time code, not the orchestrator's token, so it is safe in a saved
        notebook; read the property again for a fresh link."""
        return self.browser_url("/docs")

    def browser_url(self, path: str) -> str:
        """A link to ``path`` of the backend that a browser can open (see :attr:`docs_url`)."""
        with self._translated():
            return self._browser_link(path, self._http.send(self._browser_code_request()))

    @property
    def aio(self) -> AsyncBackendClient:
        """The async twin, bound to the same backend and partition, and to the running event
        loop (a new one is made for each new loop: its connections belong to their loop)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._async is None or self._async.closed or self._async_loop is not loop:
            self._async = AsyncBackendClient(
                self.connection, self.name, self.version, self.partition
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
    """The async twin of :class:`BackendClient`."""

    _http: httpx.AsyncClient

    def __init__(self, connection: Connection, name: str, version: str, partition: str) -> None:
        super().__init__(connection, name, version, partition)
        self._http = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)

    async def fetch(self, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
        with self._translated():
            return self._accepted(await self._http.send(self._request(path, method, **kwargs)))

    async def fetch_json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        return check(await self.fetch(path, method, **kwargs)).json()

    async def fetch_text(self, path: str, method: str = "GET", **kwargs: Any) -> str:
        return check(await self.fetch(path, method, **kwargs)).text

    async def browser_url(self, path: str) -> str:
        with self._translated():
            return self._browser_link(path, await self._http.send(self._browser_code_request()))

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    async def aclose(self) -> None:
        await self._http.aclose()
