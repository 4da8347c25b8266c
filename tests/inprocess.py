"""Helpers for in-process tests: the orchestrator's real ASGI app around a real ``Orchestrator``
(over temporary folders, nothing started), driven through httpx's ASGI transports or raw ASGI."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.types import ASGIApp, Message

from ywmagics.orchestrator.app import create_app
from ywmagics.orchestrator.service import Orchestrator, Settings

from .conftest import TEST_REGISTRY

TOKEN = "the-master-token"
BASE = "http://127.0.0.1:8765"


def make_orchestrator(root: Path, registries: list[Path] | None = None) -> Orchestrator:
    sockets = root / "sockets"
    sockets.mkdir(parents=True, exist_ok=True)
    return Orchestrator(
        Settings(
            environments_dir=root / "environments",
            logs_dir=root / "logs",
            sockets_dir=sockets,
            registries=registries or [TEST_REGISTRY],
            url=BASE,
        )
    )


def make_app(root: Path) -> tuple[ASGIApp, Orchestrator]:
    orchestrator = make_orchestrator(root)
    return create_app(orchestrator, TOKEN), orchestrator


async def call_asgi(
    app: ASGIApp, scope: dict[str, Any], incoming: list[Message] | None = None
) -> list[Message]:
    """Run ``app`` on one scope; return what it sent."""
    sent: list[Message] = []
    queue: asyncio.Queue[Message] = asyncio.Queue()
    for message in incoming or []:
        queue.put_nowait(message)

    async def receive() -> Message:
        return await queue.get()

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 10)
    return sent


def websocket_scope(path: str, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "scheme": "ws",
        "server": ("127.0.0.1", 8765),
        "client": ("127.0.0.1", 50000),
        "subprotocols": [],
        **extra,
    }


T = TypeVar("T")


class LoopThread:
    """One event loop in a thread, for sync tests of async code: the app's state (locks,
    pools) lives in one loop, as in the server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class SyncASGITransport(httpx.BaseTransport):
    """httpx's ASGITransport for a sync ``httpx.Client``: each request runs in ``loop``'s thread
    and its whole answer is read there (no endless streams through it)."""

    def __init__(self, app: ASGIApp, loop: LoopThread) -> None:
        # The app re-raises its faults after answering them (for the server to log): the answer
        # is what a client sees.
        self._inner = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def exchange() -> httpx.Response:
            inner = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self._inner.handle_async_request(inner)
            content = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
            return httpx.Response(
                response.status_code, headers=response.headers, content=content, request=request
            )

        return self._loop.run(exchange())


def sync_client(app: ASGIApp, loop: LoopThread) -> httpx.Client:
    return httpx.Client(transport=SyncASGITransport(app, loop), base_url=BASE)
