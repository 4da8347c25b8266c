"""A raw HTTP/1.1 keep-alive load generator (asyncio, no HTTP library): what the proxy adds,
not what a client library costs. Answers must carry a Content-Length."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

Opener = Callable[[], Coroutine[Any, Any, tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def opener(*, host: str = "127.0.0.1", port: int | None = None, uds: str | None = None) -> Opener:
    async def open_() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if uds is not None:
            return await asyncio.open_unix_connection(uds)
        return await asyncio.open_connection(host, port)

    return open_


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def latencies(open_: Opener, request: bytes, count: int) -> list[float]:
    """Seconds of each of ``count`` requests, one after the other on one kept-alive connection."""
    reader, writer = await open_()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        status = await _exchange(reader, writer, request)
        times.append(time.perf_counter() - start)
        assert status == 200, status
    writer.close()
    return times


async def throughput(
    open_: Opener, request: bytes, connections: int, seconds: float
) -> tuple[float, int]:
    """(answers per second, errors) with ``connections`` clients for ``seconds``."""
    done = errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done, errors
        reader, writer = await open_()
        while time.perf_counter() < deadline:
            try:
                if await _exchange(reader, writer, request) == 200:
                    done += 1
                else:
                    errors += 1
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
                reader, writer = await open_()
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return done / (time.perf_counter() - start), errors
