"""Clients of one backend, bound to a partition: fetch-like calls through the orchestrator."""

from __future__ import annotations

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

DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)


class _BackendBase:
    """What both twins share: where the backend is and how to address it."""

    def __init__(self, connection: Connection, name: str, version: str, partition: str) -> None:
        self.connection = connection
        self.name = name
        self.version = version
        self.partition = partition

    @property
    def url_base(self) -> str:
        """The backend's base URL on the orchestrator, e.g. ``http://127.0.0.1:PORT/backends/x/1.0.0``."""
        return f"{self.connection.url}/backends/{self.name}/{self.version}"

    def _browser_link(self, path: str, code: str) -> str:
        return f"{self._url(path)}?{urlencode({'yw_code': code, 'yw_partition': self.partition})}"

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {**self.connection.headers, PARTITION_HEADER: self.partition}
        headers.update(extra or {})
        return headers

    def _url(self, path: str) -> str:
        return self.url_base + (path if path.startswith("/") else "/" + path)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} {self.version} "
            f"partition={self.partition!r} url_base={self.url_base!r}>"
        )


class BackendClient(_BackendBase):
    """A backend's client; ``fetch`` returns the httpx response, the others raise on errors.

    Errors: :class:`~ywmagics.errors.BackendHTTPError` when the backend answers an error status,
    another :class:`~ywmagics.errors.YwMagicsError` when the orchestrator could not reach it.
    The ``afetch*`` twins do the same with ``await``.
    """

    def __init__(self, connection: Connection, name: str, version: str, partition: str) -> None:
        super().__init__(connection, name, version, partition)
        self._http = shared_http()
        self._async: AsyncBackendClient | None = None

    def fetch(
        self,
        path: str,
        method: str = "GET",
        *,
        json: Any = None,
        content: bytes | str | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(
                method.upper(),
                self._url(path),
                json=json,
                content=content,
                params=params,
                headers=self._headers(headers),
                timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
            )
        except httpx.TimeoutException:
            raise  # the caller's own limit: not a failure to reach the orchestrator
        except httpx.TransportError as error:
            raise translate_transport_error(error, self.connection.url) from None
        failure = orchestrator_error(response)
        if failure is not None:
            raise failure
        return response

    def fetch_json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        return check(self.fetch(path, method, **kwargs)).json()

    @property
    def docs_url(self) -> str:
        """A link to the backend's ``/docs`` that opens in a browser, for a few minutes.

        It carries a one-time code, not the orchestrator's token, so it is safe in a saved
        notebook; read the property again for a fresh link."""
        return self.browser_url("/docs")

    def browser_url(self, path: str) -> str:
        """A link to ``path`` of the backend that a browser can open (see :attr:`docs_url`)."""
        try:
            response = self._http.post(
                f"{self.connection.url}/browser-code", headers=self.connection.headers, timeout=10
            )
        except httpx.TransportError as error:
            raise translate_transport_error(error, self.connection.url) from None
        return self._browser_link(path, check(response).json()["code"])

    @contextlib.contextmanager
    def stream(
        self,
        path: str,
        method: str = "GET",
        *,
        json: Any = None,
        content: bytes | str | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> Iterator[httpx.Response]:
        """Like :meth:`fetch`, with the body read as it arrives (``iter_lines``, ``iter_bytes``).

        An error status raises, like :meth:`fetch_json`, with the body read for the message."""
        try:
            with self._http.stream(
                method.upper(),
                self._url(path),
                json=json,
                content=content,
                params=params,
                headers=self._headers(headers),
                timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    check(response)
                yield response
        except httpx.TimeoutException:
            raise  # the caller's own limit: not a failure to reach the orchestrator
        except httpx.TransportError as error:
            raise translate_transport_error(error, self.connection.url) from None

    def fetch_text(self, path: str, method: str = "GET", **kwargs: Any) -> str:
        return check(self.fetch(path, method, **kwargs)).text

    @property
    def aio(self) -> AsyncBackendClient:
        if self._async is None or self._async.closed:
            self._async = AsyncBackendClient(
                self.connection, self.name, self.version, self.partition
            )
        return self._async

    async def afetch(self, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
        return await self.aio.fetch(path, method, **kwargs)

    async def afetch_json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        return await self.aio.fetch_json(path, method, **kwargs)

    async def afetch_text(self, path: str, method: str = "GET", **kwargs: Any) -> str:
        return await self.aio.fetch_text(path, method, **kwargs)


class AsyncBackendClient(_BackendBase):
    """The async twin of :class:`BackendClient`."""

    def __init__(self, connection: Connection, name: str, version: str, partition: str) -> None:
        super().__init__(connection, name, version, partition)
        self._http = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)

    async def fetch(
        self,
        path: str,
        method: str = "GET",
        *,
        json: Any = None,
        content: bytes | str | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method.upper(),
                self._url(path),
                json=json,
                content=content,
                params=params,
                headers=self._headers(headers),
                timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
            )
        except httpx.TimeoutException:
            raise  # the caller's own limit: not a failure to reach the orchestrator
        except httpx.TransportError as error:
            raise translate_transport_error(error, self.connection.url) from None
        failure = orchestrator_error(response)
        if failure is not None:
            raise failure
        return response

    async def fetch_json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        return check(await self.fetch(path, method, **kwargs)).json()

    async def fetch_text(self, path: str, method: str = "GET", **kwargs: Any) -> str:
        return check(await self.fetch(path, method, **kwargs)).text

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    async def aclose(self) -> None:
        await self._http.aclose()
