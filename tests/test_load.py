"""256 concurrent clients through the proxy, against pyrun (a stdlib server) and a uvicorn
backend: every request answered, and the orchestrator's descriptors back to where they were."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from pathlib import Path

import httpx
import pytest

import ywmagics
from ywmagics.orchestrator.upstream import IDLE_TIMEOUT

from .conftest import start_orchestrator, stop_orchestrator

pytestmark = pytest.mark.slow  # an orchestrator, backends, 2,048 requests
CLIENTS = 256


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("backend", ["pyrun_backend", "demo_yw_backend"])
def test_256_concurrent_clients_all_answered(tmp_path: Path, backend: str) -> None:
    process, connection = start_orchestrator(tmp_path / "home")
    try:
        client = ywmagics.install(f"{backend} as b", partition="Load", connection=connection).b
        url = client.url_base + "/"
        headers = {**connection.headers, "X-Backends-Partition": "Load"}
        before = _descriptors(process.pid)

        async def burst() -> collections.Counter[object]:
            outcomes: collections.Counter[object] = collections.Counter()
            limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
            async with httpx.AsyncClient(limits=limits, timeout=60) as http:

                async def one_client() -> None:
                    for _ in range(4):
                        try:
                            outcomes[(await http.get(url, headers=headers)).status_code] += 1
                        except httpx.HTTPError as error:
                            outcomes[type(error).__name__] += 1

                await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
            return outcomes

        assert asyncio.run(burst()) == {200: 4 * CLIENTS}
        deadline = time.monotonic() + IDLE_TIMEOUT * 3
        while _descriptors(process.pid) > before + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _descriptors(process.pid) <= before + 2  # the pooled connections were let go
    finally:
        stop_orchestrator(process)
