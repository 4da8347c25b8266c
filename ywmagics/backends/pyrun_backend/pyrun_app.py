"""The routes of the python runner.

::

    GET  /           {"name", "version", "python", "bulk", "codec", "host"}  (readiness)
    POST /run        {"cellId", "code", "capturedIn", "capturedOut", "runId", "stdin" (optional),
                     "buffers", "bulk" (optional: see below), "codec" (optional: the
                     version the values were encoded with; another than this runner's is
                     refused)}
                     -> {"output", "error", "capturedOut", "exception", "displays"}
                     with "Accept: application/x-ndjson": one JSON object per line,
                     {"started": true} when the cell starts (it may wait for another),
                     {"stream", "text"} and {"display"} while it runs, then {"result"}
                     (whose output and displays are left out: they were streamed)
    POST /interrupt  {"runId"} (optional) -> {"interrupted": bool}: that run only, running
                     or waiting; without a runId, the running cell
    POST /input      {"runId", "value"} or {"runId", "eof": reason} -> {"answered": bool}:
                     the answer to the {"input_request": {"prompt", "password"}} that a
                     streamed run with "stdin": true sent when its cell called input() (or
                     getpass); without it, input() raises EOFError
    POST /reset      -> {"reset": true}          (a fresh namespace)

Big values (``ywmagics_bulk``): the ``capturedIn`` values may name ``buffers``, which are in
shared memory or follow the JSON as frames (the body is then of type ``FRAMES``: the JSON on one
line, the frames after it). A streamed run with ``"bulk": {"host": ...}`` gets its
``capturedOut`` so as well: the result lists its ``buffers`` (segments for that host when it is
this one's), and the frames follow the result's line. Without ``bulk``, every value is inside the
JSON, as a reader of the raw answer expects.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time

import ywmagics_bulk as bulk
import ywmagics_wire as wire
from pyrun_http import Connection, HTTPError, Request
from pyrun_runner import CellRun, Runner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NAME = "pyrun_backend"
VERSION = "0.1.0"
NDJSON = "application/x-ndjson"
HOST = bulk.host()  # where this runner is, for a kernel to tell whether they share memory
STREAM_INTERVAL = 0.05  # seconds: the longest that text printed without a newline waits


def parse_run(http: Request, stream: bool) -> dict[str, Any]:
    """Check the body of ``POST /run`` and receive its buffers: HTTP 400 says what is wrong."""
    framed = bulk.FRAMES in http.headers.get("content-type", "")
    try:
        request = json.loads(http.reader.readline() if framed else http.body)
    except ValueError as exc:
        raise HTTPError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise HTTPError(400, "the body must be a JSON object")
    code = request.get("code")
    cell_id = request.get("cellId", "cell")
    run_id = request.get("runId")
    if run_id is not None and not isinstance(run_id, str):
        raise HTTPError(400, "'runId' must be a string")
    captured_in = request.get("capturedIn") or {}
    captured_out = request.get("capturedOut") or []
    if not isinstance(code, str):
        raise HTTPError(400, "'code' must be a string")
    if not isinstance(cell_id, str):
        raise HTTPError(400, "'cellId' must be a string")
    if not isinstance(captured_in, dict):
        raise HTTPError(400, "'capturedIn' must be an object of encoded values")
    if not isinstance(captured_out, list) or not all(isinstance(n, str) for n in captured_out):
        raise HTTPError(400, "'capturedOut' must be a list of variable names")
    codec = request.get("codec", wire.CODEC_VERSION)  # a raw request's values are plain JSON
    if codec != wire.CODEC_VERSION:
        raise HTTPError(
            400,
            f"the cell's values were encoded with codec version {codec!r}, and this runner "
            f"({NAME} {VERSION}) speaks version {wire.CODEC_VERSION}: it was built by another "
            "ywmagics version than the notebook's; install the runner again from this notebook's "
            "environment, which builds one that speaks its codec",
        )
    wanted = request.get("bulk")
    if wanted is not None and not isinstance(wanted, dict):
        raise HTTPError(400, "'bulk' must be an object, {'host': ...}")
    return {
        "cellId": cell_id,
        "code": code,
        "capturedIn": captured_in,
        "capturedOut": captured_out,
        "runId": run_id,
        "stdin": request.get("stdin") is True,
        "bulk": wanted if stream else None,  # a whole JSON answer has its values inside
        "received": _receive(request.get("buffers") or [], http, framed),
    }


def _receive(listed: Any, http: Request, framed: bool) -> list[Any]:
    try:
        listed = bulk.check_descriptors(listed)
        framing = sum(item["size"] for item in listed if "shm" not in item)
        if framing and not framed:
            raise ValueError(f"frames are listed, but the body is not of type {bulk.FRAMES}")
        if framing > http.reader.most_to_come():  # checked before any memory is given to them
            raise ValueError(
                f"the frames listed add up to {framing} bytes, more than the body holds or this "
                f"runner takes ({http.reader.most_to_come()} bytes)"
            )
        return bulk.receive(listed, http.reader.readinto)
    except (ValueError, bulk.SegmentError) as exc:
        bulk.remove_segments(bulk.segment_names(listed if isinstance(listed, list) else []))
        raise HTTPError(400, f"the buffers of 'capturedIn' cannot be read: {exc}") from None
    except EOFError as exc:
        raise OSError(str(exc)) from None  # the client left in the middle of the body


def parse_interrupt(body: bytes) -> str | None:
    """The ``runId`` of ``POST /interrupt``, if any (an empty body interrupts the running cell)."""
    if not body.strip():
        return None
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise HTTPError(400, f"the body is not JSON: {exc}") from None
    run_id = request.get("runId") if isinstance(request, dict) else None
    if run_id is not None and not isinstance(run_id, str):
        raise HTTPError(400, "'runId' must be a string")
    return run_id


def parse_input(body: bytes) -> tuple[str, dict[str, Any]]:
    """``(runId, answer)`` of ``POST /input``: the answer has ``value`` or ``eof``."""
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise HTTPError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("runId"), str):
        raise HTTPError(400, "the body must be an object with a 'runId' string")
    if isinstance(request.get("value"), str):
        return request["runId"], {"value": request["value"]}
    if "eof" in request:
        return request["runId"], {"eof": str(request["eof"])}
    raise HTTPError(400, "give the answer as 'value' (a string), or 'eof' (why there is none)")


class App(Connection):
    """A connection to the runner; ``runner`` is set on a subclass by ``bind``."""

    server_name = f"{NAME}/{VERSION}"
    runner: Runner

    @classmethod
    def bind(cls, runner: Runner, verbose: bool, max_body: int) -> type[App]:
        return type(
            "BoundApp", (cls,), {"runner": runner, "verbose": verbose, "max_body": max_body}
        )

    def respond(self, request: Request) -> None:
        route = (request.method, request.path)
        try:
            if route in (("GET", "/"), ("HEAD", "/")):
                about = {
                    "name": NAME,
                    "version": VERSION,
                    "python": sys.version,
                    "bulk": bulk.PROTOCOL,  # it takes values' buffers beside the JSON
                    "codec": wire.CODEC_VERSION,
                    "host": HOST,
                }
                self.send_json(200, about)
            elif route == ("POST", "/run"):
                stream = NDJSON in request.headers.get("accept", "")
                self._run(parse_run(request, stream), stream)
            elif route == ("POST", "/interrupt"):
                run_id = parse_interrupt(request.body)
                self.send_json(200, {"interrupted": self.runner.interrupt(run_id)})
            elif route == ("POST", "/input"):
                run_id, answer = parse_input(request.body)
                self.send_json(200, {"answered": self.runner.answer(run_id, answer)})
            elif route == ("POST", "/reset"):
                self._reset()
            elif request.path in ("/", "/run", "/interrupt", "/input", "/reset"):
                raise HTTPError(405, f"{request.method} is not allowed on {request.path}")
            else:
                raise HTTPError(404, f"no route {request.path}")
        except HTTPError as exc:
            self.send_json(exc.status, {"detail": exc.detail})

    def _reset(self) -> None:
        done = threading.Event()

        def reset() -> None:
            self.runner.reset()
            done.set()

        self.runner.submit(reset)  # after the running cell, if any
        done.wait()
        self.send_json(200, {"reset": True})

    def _run(self, request: dict[str, Any], stream: bool) -> None:
        run = CellRun(request, stream, hold=self.runner.signals.hold)
        self.runner.enqueue(run)
        if not stream:
            run.done.wait()
            self.send_json(200, run.result)
            return
        events = run.events
        assert events is not None
        try:
            self.stream_start(NDJSON)
            self._stream(run, events)
        except BaseException:  # the client left (OSError), or a bug of ours: nobody gets the rest
            run.client_left()  # so a waiting cell never starts, a running one is not waited for
            raise
        finally:
            run.sent_frames.set()  # sent, or nobody to send them to: the values may change

    def _stream(self, run: CellRun, events: queue.Queue[dict[str, Any]]) -> None:
        finished = False
        next_flush = time.monotonic() + STREAM_INTERVAL
        while not finished:
            try:
                items = [events.get(timeout=max(0.0, next_flush - time.monotonic()))]
            except queue.Empty:
                items = []
            if time.monotonic() >= next_flush:  # text printed without a newline
                run.flush_streams()
                next_flush = time.monotonic() + STREAM_INTERVAL
            while True:  # what is ready goes in one chunk
                try:
                    items.append(events.get_nowait())
                except queue.Empty:
                    break
            if not items:
                continue
            # The result's frames follow its line at once; what a thread of the cell printed
            # after it comes after them.
            ends = [i for i, item in enumerate(items) if "result" in item]
            finished = bool(ends)
            upto = ends[0] + 1 if ends else len(items)
            frames = items[upto - 1].pop("frames", None) if finished else None
            self.stream_write(b"".join(json.dumps(i).encode() + b"\n" for i in items[:upto]))
            if frames is not None:
                for piece in bulk.frame_pieces(*frames):
                    self.stream_write(piece)
            if items[upto:]:
                self.stream_write(b"".join(json.dumps(i).encode() + b"\n" for i in items[upto:]))
        self.stream_end()
