"""How the orchestrator writes its answers: a head leaves with its body, in one write."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from ywmagics.orchestrator.connections import HeadWithItsBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording:
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return f"info {name}"


def test_a_head_waits_for_its_body_and_leaves_alone_at_the_end_of_the_turn() -> None:
    loop = asyncio.new_event_loop()
    try:
        recording = Recording()
        transport = HeadWithItsBody(cast(asyncio.Transport, recording), loop)
        transport.write(HEAD)
        assert recording.writes == []  # it waits...
        transport.write(b"ok")
        assert recording.writes == [HEAD + b"ok"]  # ...and leaves with its body, in one write
        transport.write(b"more")  # not a head: at once
        assert recording.writes[-1] == b"more"
        transport.write(HEAD)  # a head with no body (a 204, a HEAD request)
        loop.run_until_complete(asyncio.sleep(0))
        assert recording.writes[-1] == HEAD  # gone at the end of the turn of the loop
        transport.write(HEAD)
        transport.close()  # a close sends what waits first
        assert recording.writes[-1] == HEAD and recording.closed
        assert transport.get_extra_info("peername") == "info peername"  # the rest: its own
    finally:
        loop.close()
