"""The proxy's HTTP/1.1 client to backends, against a scripted server on a Unix socket: framing,
chunked bodies, interim answers, early closes, and when a connection may be used again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from ywmagics.orchestrator.upstream import UpstreamError, UpstreamPool, may_resend

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Scripted:
    """A server that runs ``script(reader, writer, connection number)`` per connection and keeps
    what each request's head said."""

    def __init__(self, path: Path, script: Script) -> None:
        self.path = path
        self.script = script
        self.connections = 0
        self.heads: list[bytes] = []

    async def __aenter__(self) -> Scripted:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.script(reader, writer, self.connections)
            finally:
                writer.close()

        self.server = await asyncio.start_unix_server(serve, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request's head and body (by Content-Length or chunked)."""
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    return body
                body += chunk[:-2]
        for line in lower.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                return await reader.readexactly(int(line.split(b":")[1]))
        return b""


def run(work: Callable[[Path], Awaitable[None]], tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(work(tmp_path / "s.sock"), 10))


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_a_keep_alive_connection_is_used_again(tmp_path: Path) -> None:
    async def work(path: Path) -> None:
        async def script(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
        ) -> None:
            while not reader.at_eof():
                try:
                    body = await server.read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                writer.write(_ok(b"echo:" + body))
                await writer.drain()

        async with Scripted(path, script) as server:
            pool = UpstreamPool(uds=str(path))
            for n in range(3):
                response = await pool.request("POST", "/x", [(b"a", b"b")], b"n%d" % n)
                assert (response.status, await response.read()) == (200, b"echo:n%d" % n)
                await response.release()
            assert server.connections == 1
            head = server.heads[0].decode()
            assert head.startswith("POST /x HTTP/1.1\r\n") and "content-length: 2" in head
            assert "a: b" in head
            pool.close_idle()

    run(work, tmp_path)


def test_chunked_answers_stream_and_say_which_piece_is_last(tmp_path: Path) -> None:
    async def work(path: Path) -> None:
        gate = asyncio.Event()

        async def script(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
        ) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await gate.wait()  # the client has the first piece before the rest exists
            writer.write(b"6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n")
            await writer.drain()
            await reader.read()

        async with Scripted(path, script) as server:
            pool = UpstreamPool(uds=str(path))
            response = await pool.request("GET", "/", [])
            assert not response.complete
            pieces = []
            async for chunk, last in response.iter_body():
                pieces.append((chunk, last))
                gate.set()
            assert b"".join(c for c, _ in pieces) == b"hello world"
            assert pieces[0] == (b"hello", False) and pieces[-1][1] is True
            assert (b"x-trailer", b"t") not in response.headers  # trailers are not headers
            await response.release()
            pool.close_idle()

    run(work, tmp_path)


def test_a_streamed_request_body_goes_chunked(tmp_path: Path) -> None:
    async def work(path: Path) -> None:
        async def script(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
        ) -> None:
            body = await server.read_request(reader)
            writer.write(_ok(b"%d" % len(body)))
            await writer.drain()

        async def pieces() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"z" * 1000

        async with Scripted(path, script) as server:
            pool = UpstreamPool(uds=str(path))
            response = await pool.request("PUT", "/u", [], pieces())
            assert await response.read() == b"10000"
            assert b"transfer-encoding: chunked" in server.heads[0]
            await response.release()
            pool.close_idle()

    run(work, tmp_path)


def test_interim_answers_are_skipped(tmp_path: Path) -> None:
    async def work(path: Path) -> None:
        async def script(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
        ) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n")
            writer.write(_ok(b"done", b"x-final: 1\r\n"))
            await writer.drain()
            await reader.read()

        async with Scripted(path, script) as server:
            pool = UpstreamPool(uds=str(path))
            response = await pool.request("POST", "/", [], b"x")
            assert response.status == 200 and await response.read() == b"done"
            assert response.headers == [(b"content-length", b"4"), (b"x-final", b"1")]
            await response.release()
            pool.close_idle()

    run(work, tmp_path)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "connection closed before an answer"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", "closed the connection mid-answer"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", "mid-answer"),
        (b"NOT HTTP AT ALL\r\n\r\n", "connection lost"),
    ],
)
def test_an_answer_that_breaks_off_is_an_error_that_may_have_run(
    tmp_path: Path, answer: bytes, message: str
) -> None:
    async def work(path: Path) -> None:
        async def script(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
        ) -> None:
            await server.read_request(reader)
            writer.write(answer)
            await writer.drain()

        async with Scripted(path, script) as server:
            pool = UpstreamPool(uds=str(path))
            with pytest.raises(UpstreamError, match=message) as raised:
                response = await pool.request("POST", "/", [], b"x")
                try:
                    await response.read()
                finally:
                    await response.release()
            assert raised.value.sent  # it reached the backend: never sent again blindly
            assert pool._idle == []  # a broken connection is not kept

    run(work, tmp_path)


@pytest.mark.parametrize(
    ("extra", "surplus", "reused"),
    [
        (b"", b"", True),
        (b"connection: close\r\n", b"", False),
        (b"", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", False),  # what nobody asked for
    ],
)
def test_when_a_connection_goes_back_to_the_pool(
    tmp_path: Path, extra: bytes, surplus: bytes, reused: bool
) -> None:
    async def work(path: Path) -> None:
        async def script(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
        ) -> None:
            await server.read_request(reader)
            writer.write(_ok(b"a", extra) + surplus)
            await writer.drain()
            await reader.read()

        async with Scripted(path, script) as server:
            pool = UpstreamPool(uds=str(path))
            response = await pool.request("GET", "/", [])
            assert await response.read() == b"a"
            await response.release()
            assert len(pool._idle) == (1 if reused else 0)
            pool.close_idle()

    run(work, tmp_path)


def test_head_answers_have_no_body_to_read(tmp_path: Path) -> None:
    async def work(path: Path) -> None:
        async def script(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
        ) -> None:
            while True:
                try:
                    await server.read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                await writer.drain()

        async with Scripted(path, script) as server:
            pool = UpstreamPool(uds=str(path))
            for _ in range(2):
                response = await pool.request("HEAD", "/", [])
                assert response.complete and await response.read() == b""
                await response.release()
            assert server.connections == 1
            pool.close_idle()

    run(work, tmp_path)


def test_an_idle_connection_the_backend_closed_is_never_used(tmp_path: Path) -> None:
    async def work(path: Path) -> None:
        closed = asyncio.Event()

        async def script(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
        ) -> None:
            await server.read_request(reader)
            writer.write(_ok(b"first" if n == 1 else b"second"))
            await writer.drain()
            if n == 1:  # as a backend's keep-alive timeout does, right after answering
                writer.close()
                await writer.wait_closed()
                closed.set()
            else:
                await reader.read()

        async with Scripted(path, script) as server:
            pool = UpstreamPool(uds=str(path))
            response = await pool.request("GET", "/", [])
            assert await response.read() == b"first"
            await response.release()
            await closed.wait()
            # A POST can't be sent twice: it must not meet the closed connection at all.
            response = await pool.request("POST", "/", [], b"once")
            assert await response.read() == b"second"
            await response.release()
            assert server.connections == 2
            pool.close_idle()

    run(work, tmp_path)


def test_nothing_listening_is_an_error_before_anything_was_sent(tmp_path: Path) -> None:
    async def work(path: Path) -> None:
        with pytest.raises(UpstreamError, match="cannot connect") as raised:
            await UpstreamPool(uds=str(path)).request("POST", "/", [], b"x")
        assert not raised.value.sent

    run(work, tmp_path)


async def _stream() -> AsyncIterator[bytes]:
    yield b"x"


@pytest.mark.parametrize(
    ("method", "body", "sent", "again"),
    [
        ("POST", b"x", False, True),  # nothing reached the backend
        ("POST", b"x", True, False),  # it may have run
        ("GET", None, True, True),
        ("PUT", b"x", True, True),
        ("DELETE", b"", True, True),
        ("PUT", _stream(), True, False),  # a stream already read can't be read again
        ("PATCH", b"x", True, False),
    ],
)
def test_the_one_rule_for_sending_again(method: str, body: object, sent: bool, again: bool) -> None:
    assert may_resend(method, body, sent) is again  # type: ignore[arg-type]


def test_a_short_body_written_after_its_head_comes_with_it(tmp_path: Path) -> None:
    # uvicorn writes a head and its body separately: the answer is handed on whole, in one
    # piece; a long or unsized one streams as it comes.
    async def work(path: Path) -> None:
        async def script(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
        ) -> None:
            await server.read_request(reader)
            for part in (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", b"he", b"llo"):
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"5\r\nhello\r\n0\r\n\r\n")
            await writer.drain()

        async with Scripted(path, script) as server:
            pool = UpstreamPool(uds=str(path))
            short = await pool.request("GET", "/", [], None)
            assert short.complete
            assert [chunk async for chunk in short.iter_body()] == [(b"hello", True)]
            await short.release()
            streamed = await pool.request("GET", "/", [], None)
            assert not streamed.complete  # its head is handed on before its body comes
            assert await streamed.read() == b"hello"
            await streamed.release()
            pool.close_idle()

    run(work, tmp_path)
