"""pyrun_backend: runs Python code sent by notebook cells, in an environment of its own.

Standard library only, Python 3.8 and later, so that any Python with any modules can run it; the
wire codec ``ywmagics_wire.py`` is copied next to this file by the installer.

Routes (JSON in, JSON out)::

    GET  /           {"name", "version", "python"}                        (readiness)
    POST /run        {"cellId", "code", "capturedIn", "capturedOut"}
                     -> {"output", "error", "capturedOut", "exception", "displays"}
                     with "Accept: application/x-ndjson": one JSON object per line,
                     {"stream", "text"} and {"display"} while the cell runs, then {"result"}
    POST /interrupt  -> {"interrupted": bool}
    POST /reset      -> {"reset": true}          (a fresh namespace)

Threads: cells run one at a time in the main thread, which owns the namespace, the asyncio loop of
top-level ``await`` and the signal handlers; HTTP requests are served by other threads that hand
cells over through a queue. Running cells in the main thread lets an interrupt (SIGINT sent to
ourselves) break a blocking call such as ``time.sleep(60)`` at once, which an asynchronous
exception set on a worker thread cannot, and lets cells use ``signal``.
"""

from __future__ import annotations

import argparse
import ast
import base64
import builtins
import contextlib
import errno
import io
import json
import linecache
import os
import queue
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ywmagics_wire as wire  # found next to this file, also under python -I

NAME = "pyrun_backend"
VERSION = "0.1.0"
NDJSON = "application/x-ndjson"
STREAM_INTERVAL = 0.05  # seconds: the longest that printed text waits before it is streamed
CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect
MPL_BACKEND = "module://pyrun_mpl_backend"

_RICH_REPRS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("text/latex", "_repr_latex_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
)


class BadRequest(Exception):
    """A request body that is not what the route expects: answered with HTTP 400."""


class Terminate(BaseException):
    """Raised in the main thread by SIGTERM: stop the cell, if any, and the server."""


# ---------------------------------------------------------------------------------------------
# one execution of a cell


class Run:
    """A cell to run, what it printed and displayed, and its result once done.

    Written by the main thread (the cell) and read by the HTTP thread that waits for it; when the
    client streams, text goes to ``events`` on each newline, or when it has waited
    ``STREAM_INTERVAL`` (the waiting thread calls ``flush_streams`` that often).
    """

    def __init__(self, request: dict[str, Any], stream: bool) -> None:
        self.request = request
        self.events: queue.Queue[dict[str, Any]] | None = queue.Queue() if stream else None
        self.displays: list[dict[str, Any]] = []
        self.shown: set[int] = set()  # ids of the figures already displayed by the cell
        self.result: dict[str, Any] | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._texts: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._pending: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._last_emit = time.monotonic()

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            self._texts[stream].append(text)
            if self.events is None:
                return
            other = "stderr" if stream == "stdout" else "stdout"
            if self._pending[other]:  # keep the order of interleaved stdout and stderr
                self._emit(other)
            self._pending[stream].append(text)
            if "\n" in text or time.monotonic() - self._last_emit >= STREAM_INTERVAL:
                self._emit(stream)

    def _emit(self, stream: str) -> None:
        text = "".join(self._pending[stream])
        self._pending[stream].clear()
        self._last_emit = time.monotonic()
        if text and self.events is not None:
            self.events.put({"stream": stream, "text": text})

    def flush_streams(self) -> None:
        with self._lock:
            for stream in ("stdout", "stderr"):
                if self._pending[stream]:
                    self._emit(stream)

    def text(self, stream: str) -> str:
        with self._lock:
            return "".join(self._texts[stream])

    def add_display(self, bundle: dict[str, Any]) -> None:
        self.flush_streams()
        with self._lock:
            self.displays.append(bundle)
            if self.events is not None:
                self.events.put({"display": bundle})

    def finish(self, result: dict[str, Any]) -> None:
        self.flush_streams()
        self.result = result
        if self.events is not None:
            self.events.put({"result": result})
        self.done.set()


class CellStream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` while a cell runs."""

    encoding = "utf-8"

    def __init__(self, run: Run, name: str) -> None:
        super().__init__()
        self._run = run
        self._name = name

    @property
    def name(self) -> str:
        return f"<{self._name}>"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._run.write(self._name, text)
        return len(text)

    def flush(self) -> None:
        self._run.flush_streams()


# ---------------------------------------------------------------------------------------------
# rich display


def _safe_repr(obj: object) -> str:
    try:
        return repr(obj)
    except Exception as exc:
        return f"<{type(obj).__name__} object (repr failed: {exc!r})>"


def _is_figure(obj: object) -> bool:
    figure = sys.modules.get("matplotlib.figure")
    return figure is not None and isinstance(obj, figure.Figure)


def _figure_png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _mime_value(mime: str, value: Any) -> Any:
    """What JSON carries for one mime type: JSON data as is, bytes as base64, the rest as str."""
    if mime == "application/json" or mime.endswith("+json"):
        try:
            json.dumps(value, allow_nan=False)
            return value
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return value if isinstance(value, str) else str(value)


def mime_bundle(obj: Any, include: Any = None, exclude: Any = None) -> dict[str, Any]:
    """The mime bundle of ``obj``, like IPython's display formatter."""
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    if _is_figure(obj):
        data["image/png"] = _figure_png(obj)
    elif not isinstance(obj, type):  # a class's _repr_*_ are unbound methods: use its repr
        method = getattr(obj, "_repr_mimebundle_", None)
        if callable(method):
            try:
                found = method(include=include, exclude=exclude)
                if isinstance(found, tuple):
                    found, meta = found
                    metadata.update(meta or {})
                for mime, value in (found or {}).items():
                    data[mime] = _mime_value(mime, value)
            except Exception:
                traceback.print_exc()
        for mime, attribute in _RICH_REPRS:
            method = getattr(obj, attribute, None)
            if mime in data or not callable(method):
                continue
            try:
                value = method()
            except Exception:
                traceback.print_exc()
                continue
            if isinstance(value, tuple):
                value, meta = value
                metadata[mime] = meta
            if value is not None:
                data[mime] = _mime_value(mime, value)
    data.setdefault("text/plain", _safe_repr(obj))
    if include:
        data = {mime: value for mime, value in data.items() if mime in include}
    if exclude:
        data = {mime: value for mime, value in data.items() if mime not in exclude}
    return {"data": data, "metadata": metadata}


# ---------------------------------------------------------------------------------------------
# the runner: namespace, cells, interrupt


class Runner:
    """Owns the namespace and runs what the HTTP threads queue, in the main thread."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.current: Run | None = None
        self.namespace: dict[str, Any] = {}
        self._main_thread = threading.main_thread().ident
        self._busy = False  # cell code is executing: SIGINT raises KeyboardInterrupt in it
        self._interrupting = False  # the SIGINT comes from /interrupt, not from a terminal
        self._terminating = False
        self._loop: Any = None
        self.reset()

    # main thread ---------------------------------------------------------------------------

    def serve(self) -> None:
        """Run the queued jobs until ``stop`` (or SIGTERM, which raises Terminate)."""
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job()

    def reset(self) -> None:
        module = types.ModuleType("__main__")
        module.__dict__["__builtins__"] = builtins
        module.__dict__["display"] = self.display
        # Classes and functions of cells live in "__main__": pickle and multiprocessing find them.
        sys.modules["__main__"] = module
        self.namespace = module.__dict__

    def execute(self, run: Run) -> None:
        request = run.request
        filename = f"<cell {request['cellId']}>"
        captured: dict[str, Any] = {}
        exception: dict[str, Any] | None = None
        saved = sys.stdout, sys.stderr
        self.current = run
        sys.stdout, sys.stderr = CellStream(run, "stdout"), CellStream(run, "stderr")
        try:
            try:
                self.namespace.update(wire.decode_namespace(request["capturedIn"]))
                self._execute(self._compile(request["code"], filename))
                self._flush_figures(run)
                captured = self._capture(request["capturedOut"])
            except Terminate:
                raise
            except BaseException as exc:  # KeyboardInterrupt and SystemExit too: the cell failed
                exception = describe(exc, filename)
                self._flush_figures(run)
        finally:
            sys.stdout, sys.stderr = saved
            self.current = None
        run.finish(
            {
                "output": run.text("stdout"),
                "error": run.text("stderr"),
                "capturedOut": captured,
                "exception": exception,
                "displays": run.displays,
            }
        )

    def _compile(self, code: str, filename: str) -> types.CodeType:
        # linecache holds the source so that tracebacks show the cell's lines.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        return compile(code, filename, "exec", flags=flags, dont_inherit=True)

    def _execute(self, code: types.CodeType) -> None:
        if not code.co_flags & CO_COROUTINE:
            self._busy = True
            try:
                exec(code, self.namespace)
            finally:
                self._busy = False
            return
        loop = self._event_loop()
        self._busy = True
        try:
            task = loop.create_task(eval(code, self.namespace))
            try:
                loop.run_until_complete(task)
            except KeyboardInterrupt:
                if not task.done():  # interrupted while awaiting: let the cell unwind
                    task.cancel()
                    with contextlib.suppress(Exception, KeyboardInterrupt):
                        loop.run_until_complete(task)
                raise
        finally:
            self._busy = False

    def _event_loop(self) -> Any:
        """The loop of top-level ``await``: one per process, kept from cell to cell."""
        import asyncio  # only when a cell awaits: importing asyncio slows the start

        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        return self._loop

    def _capture(self, names: list[str]) -> dict[str, Any]:
        captured = {}
        for name in names:
            if name not in self.namespace:
                raise NameError(f"capturedOut: {name!r} is not defined by the cell")
            captured[name] = wire.encode(self.namespace[name], name)
        return captured

    def _flush_figures(self, run: Run) -> None:
        """Send the matplotlib figures left open by the cell, as the inline backend does."""
        if "matplotlib.pyplot" not in sys.modules:
            return
        try:
            self.show_figures(run)
        except Exception:
            run.write("stderr", traceback.format_exc())

    def show_figures(self, run: Run | None = None) -> None:
        """Display every open figure (except those the cell displayed itself) and close it."""
        run = run or self.current
        pyplot = sys.modules.get("matplotlib.pyplot")
        if run is None or pyplot is None:
            return
        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            try:
                if id(figure) not in run.shown:
                    self.display(figure)
            finally:
                pyplot.close(figure)

    def display(self, *objs: Any, **options: Any) -> None:
        """Show objects in the notebook: the ``display`` function of the cells' namespace.

        Accepts IPython's ``metadata``, ``include``, ``exclude`` and ``raw`` (objects that are
        mime bundles already); other options are ignored.
        """
        run = self.current
        if run is None:
            return
        for obj in objs:
            if options.get("raw"):
                bundle = {"data": dict(obj), "metadata": {}}
            else:
                bundle = mime_bundle(obj, options.get("include"), options.get("exclude"))
            bundle["metadata"].update(options.get("metadata") or {})
            if _is_figure(obj):
                run.shown.add(id(obj))
            run.add_display(bundle)

    # signals (main thread) -----------------------------------------------------------------

    def on_sigint(self, signum: int, frame: Any) -> None:
        ours, self._interrupting = self._interrupting, False
        if self._busy:
            raise KeyboardInterrupt
        if not ours:  # Ctrl-C in a terminal while idle: stop the server
            self.on_sigterm(signum, frame)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        if not self._terminating:
            self._terminating = True
            raise Terminate

    # any thread ----------------------------------------------------------------------------

    def interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the running cell, if there is one."""
        if not self._busy or self._main_thread is None:
            return False
        self._interrupting = True
        if hasattr(signal, "pthread_kill"):
            signal.pthread_kill(self._main_thread, signal.SIGINT)
        else:  # no POSIX signals: an asynchronous exception, seen between two bytecodes
            import ctypes

            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._main_thread), ctypes.py_object(KeyboardInterrupt)
            )
        return True

    def submit(self, job: Callable[[], None]) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        self.jobs.put(None)


def describe(exc: BaseException, filename: str) -> dict[str, Any]:
    """A cell's exception as JSON, its traceback trimmed to the frames of the cell."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    lineno = None
    frame = tb
    while frame is not None:
        if frame.tb_frame.f_code.co_filename == filename:
            lineno = frame.tb_lineno
        frame = frame.tb_next
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        lineno = exc.lineno
    try:
        message = str(exc)
    except Exception:
        message = _safe_repr(exc)
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:
        text = f"{type(exc).__name__}: {message}\n"
    return {"type": type(exc).__name__, "message": message, "traceback": text, "lineno": lineno}


def parse_run(body: bytes) -> dict[str, Any]:
    """Check the body of ``POST /run``; raise BadRequest with what is wrong."""
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest("the body must be a JSON object")
    code = request.get("code")
    cell_id = request.get("cellId", "cell")
    captured_in = request.get("capturedIn") or {}
    captured_out = request.get("capturedOut") or []
    if not isinstance(code, str):
        raise BadRequest("'code' must be a string")
    if not isinstance(cell_id, str):
        raise BadRequest("'cellId' must be a string")
    if not isinstance(captured_in, dict):
        raise BadRequest("'capturedIn' must be an object of encoded values")
    if not isinstance(captured_out, list) or not all(isinstance(n, str) for n in captured_out):
        raise BadRequest("'capturedOut' must be a list of variable names")
    return {"cellId": cell_id, "code": code, "capturedIn": captured_in, "capturedOut": captured_out}


# ---------------------------------------------------------------------------------------------
# HTTP


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a length, or is chunked
    server_version = f"{NAME}/{VERSION}"
    sys_version = ""
    runner: Runner  # set by make_server
    verbose = False

    def address_string(self) -> str:
        # client_address is a str (often empty) on a Unix socket
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        if self.verbose:
            sys.__stderr__.write(f"{NAME}: {format % args}\n")

    def log_error(self, format: str, *args: Any) -> None:
        sys.__stderr__.write(f"{NAME}: {format % args}\n")

    # routes --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self._route() == "/":
            self._send_json(200, {"name": NAME, "version": VERSION, "python": sys.version})
        else:
            self._send_json(404, {"detail": f"no route GET {self._route()}"})

    def do_POST(self) -> None:
        try:
            body = self._read_body()
        except BadRequest as exc:
            self.close_connection = True
            self._send_json(400, {"detail": str(exc)})
            return
        route = self._route()
        try:
            if route == "/run":
                self._run(parse_run(body))
            elif route == "/interrupt":
                self._send_json(200, {"interrupted": self.runner.interrupt()})
            elif route == "/reset":
                done = threading.Event()

                def reset() -> None:
                    self.runner.reset()
                    done.set()

                self.runner.submit(reset)
                done.wait()
                self._send_json(200, {"reset": True})
            else:
                self._send_json(404, {"detail": f"no route POST {route}"})
        except BadRequest as exc:
            self._send_json(400, {"detail": str(exc)})

    def _run(self, request: dict[str, Any]) -> None:
        stream = NDJSON in self.headers.get("Accept", "")
        run = Run(request, stream)

        def job() -> None:
            try:
                self.runner.execute(run)
            except Terminate:
                run.finish(_failed_run(run, None))
                raise
            except Exception as exc:  # a bug of ours: answer, log, and keep serving
                traceback.print_exc(file=sys.__stderr__)
                run.finish(_failed_run(run, exc))

        self.runner.submit(job)
        if not stream:
            run.done.wait()
            self._send_json(200, run.result)
            return
        self.send_response(200)
        self.send_header("Content-Type", NDJSON)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        assert run.events is not None
        finished = False
        while not finished:
            try:
                items = [run.events.get(timeout=STREAM_INTERVAL)]
            except queue.Empty:
                run.flush_streams()
                continue
            while True:  # send what is ready in one chunk
                try:
                    items.append(run.events.get_nowait())
                except queue.Empty:
                    break
            finished = "result" in items[-1]
            lines = b"".join(json.dumps(item).encode() + b"\n" for item in items)
            if not self._write_chunk(lines):
                run.done.wait()  # the client left: the cell still ends before the next one
                return
        self._write_chunk(b"")

    # plumbing ------------------------------------------------------------------------------

    def _route(self) -> str:
        path = self.path.split("?", 1)[0]
        return path.rstrip("/") or "/"

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BadRequest("malformed chunked body") from None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise BadRequest("malformed Content-Length") from None
        return self.rfile.read(size)

    def _send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> bool:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            return True
        except OSError:
            self.close_connection = True
            return False


def _failed_run(run: Run, exc: Exception | None) -> dict[str, Any]:
    """The answer for a cell that the server could not run to its end."""
    if exc is None:
        exception = {"type": "Terminated", "message": f"{NAME} is stopping", "traceback": ""}
    else:
        exception = {
            "type": "InternalError",
            "message": f"{NAME} failed to run the cell: {exc!r}",
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        }
    return {
        "output": run.text("stdout"),
        "error": run.text("stderr"),
        "capturedOut": {},
        "exception": dict(exception, lineno=None),
        "displays": run.displays,
    }


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        # Without it, Nagle's algorithm holds a small write until the previous one is acknowledged.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse to take over a live one."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            return
        raise
    finally:
        probe.close()
    raise SystemExit(f"{NAME}: a server already listens on {path}")


def make_server(runner: Runner, socket_path: str | None, port: int | None, verbose: bool) -> Any:
    handler = type("BoundHandler", (Handler,), {"runner": runner, "verbose": verbose})
    if socket_path is not None:
        _remove_stale_socket(socket_path)
        server: Any = UnixServer(socket_path, handler)
        os.chmod(socket_path, 0o600)
        return server
    return TCPServer(("127.0.0.1", port or 0), handler)


def show_figures() -> None:
    """Called by ``plt.show()`` through pyrun_mpl_backend: display the open figures now."""
    if RUNNER is not None:
        RUNNER.show_figures()


RUNNER: Runner | None = None


def main(argv: list[str] | None = None) -> int:
    global RUNNER
    parser = argparse.ArgumentParser(prog="pyrun_server", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="listen on this Unix socket path")
    where.add_argument("--port", type=int, help="listen on 127.0.0.1:PORT (0: any free port)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    # Figures render off screen and come back as PNG. A backend inherited from a Jupyter
    # kernel's environment (matplotlib_inline) is not installed here: replace it too.
    backend = os.environ.get("MPLBACKEND", "")
    if not backend or "matplotlib_inline" in backend or "ipykernel" in backend:
        os.environ["MPLBACKEND"] = MPL_BACKEND
    sys.modules.setdefault("pyrun_server", sys.modules[__name__])
    sys.stdin = io.StringIO()  # input() in a cell fails at once instead of waiting forever

    RUNNER = runner = Runner()
    server = make_server(runner, args.socket, args.port, args.verbose)
    signal.signal(signal.SIGTERM, runner.on_sigterm)
    signal.signal(signal.SIGINT, runner.on_sigint)
    address = args.socket if args.socket is not None else server.server_address[1]
    print(f"LISTENING {address}", flush=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="http", daemon=True)
    thread.start()
    try:
        runner.serve()
    except Terminate:
        pass
    finally:
        server.shutdown()
        server.server_close()
        if args.socket is not None and os.path.exists(args.socket):
            os.unlink(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
