"""The runner: one persistent namespace, cells run one at a time in the main thread.

Cells run in the main thread, which owns the namespace, the asyncio loop of top-level ``await``
and the signal handlers (``pyrun_signals``); HTTP threads hand cells over through ``Runner.jobs``
and wait. So cells may use ``signal`` as in a script, and an interrupt is a SIGINT.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import queue
import sys
import threading

import pyrun_display
import ywmagics_bulk as bulk
import ywmagics_wire as wire
from pyrun_fds import FdCapture
from pyrun_signals import Signals, Terminate

TYPE_CHECKING = False
if TYPE_CHECKING:
    import traceback
    from collections.abc import Callable
    from contextlib import AbstractContextManager
    from types import CodeType, FrameType, TracebackType
    from typing import Any, NoReturn

# ast.PyCF_ALLOW_TOP_LEVEL_AWAIT and inspect.CO_COROUTINE, the same from Python 3.8 to 3.13
# (checked by the tests): importing ast, even _ast, takes milliseconds at each start.
PyCF_ALLOW_TOP_LEVEL_AWAIT = 0x2000
CO_COROUTINE = 0x80
LAST_VALUE = "_yw_last_value"  # where a cell's last expression is kept, for a moment
KEPT_SOURCES = 200  # cells whose source tracebacks can show
KEPT_SOURCE_BYTES = 16 << 20
EMIT_SIZE = 64 * 1024  # characters of output that go in one event at most, while a cell runs
APP_DIR = os.path.dirname(os.path.abspath(__file__))


class CellRun:
    """A cell to run, what it printed and displayed, and its result once done.

    Written by the main thread (the cell) and read by the HTTP thread that waits for it. When the
    client streams, text goes to ``events`` in batches, as ipykernel sends it: when
    :data:`EMIT_SIZE` of it waits, when the other stream or a display comes (so that their order
    is kept), and at the latest ``STREAM_INTERVAL`` after it was written (the streaming HTTP
    thread calls ``flush_streams`` that often). One event per ``print`` made a loop of prints
    twenty times slower than in a kernel.
    """

    def __init__(
        self,
        request: dict[str, Any],
        stream: bool,
        hold: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.request = request
        # Its sections under a lock, in the cell's thread, are held from interrupts (see
        # Signals.hold): one raised inside would leave the lock held.
        self._hold = hold
        self.run_id: str | None = request.get("runId")
        self.cancelled = False  # interrupted, or its client left, before it started
        self.events: queue.Queue[dict[str, Any]] | None = queue.Queue() if stream else None
        self.displays: list[dict[str, Any]] = []
        self.shown: set[int] = set()  # ids of the figures that the cell displayed itself
        self.result: dict[str, Any] | None = None
        self.done = threading.Event()
        # Set once the result's frames are written: until then the cell's values must not change.
        self.sent_frames = threading.Event()
        self._lock = threading.Lock()
        self._texts: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._pending: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._pending_size = {"stdout": 0, "stderr": 0}
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()  # to input() (see ask)

    def write(self, stream: str, text: str) -> None:
        with self._hold(), self._lock:
            self._texts[stream].append(text)
            if self.events is None:
                return
            other = "stderr" if stream == "stdout" else "stdout"
            if self._pending[other]:  # keep the order of interleaved stdout and stderr
                self._emit(other)
            self._pending[stream].append(text)
            self._pending_size[stream] += len(text)
            if self._pending_size[stream] >= EMIT_SIZE:
                self._emit(stream)

    def _emit(self, stream: str) -> None:
        text = "".join(self._pending[stream])
        self._pending[stream].clear()
        self._pending_size[stream] = 0
        if text and self.events is not None:
            self.events.put({"stream": stream, "text": text})

    def flush_streams(self) -> None:
        with self._hold(), self._lock:
            for stream in ("stdout", "stderr"):
                if self._pending[stream]:
                    self._emit(stream)

    def text(self, stream: str) -> str:
        with self._hold(), self._lock:
            return "".join(self._texts[stream])

    def ask(self, prompt: str, password: bool) -> str:
        """``input()`` in the cell: the question goes to the client, which asks the notebook's
        user (``POST /input`` brings the answer). Without a client that streams, or when the
        notebook has no stdin, ``EOFError`` says so."""
        if self.events is None or not self.request.get("stdin"):
            raise EOFError("input() has no stdin here: the client of this run offers none")
        self.flush_streams()
        self.events.put({"input_request": {"prompt": prompt, "password": password}})
        answer = self._answers.get()  # an interrupt lands here, as in a kernel
        if "value" in answer:
            return str(answer["value"])
        raise EOFError(str(answer.get("eof") or "no answer to input()"))

    def answer(self, answer: dict[str, Any]) -> None:
        """``POST /input``: the answer to the question the cell waits on (any thread)."""
        self._answers.put(answer)

    def sent(self, patience: float) -> None:
        """Wait (at most ``patience`` seconds) until the streaming thread has written out every
        event queued so far (an ``os._exit`` is about to end the process)."""
        if self.events is None:
            return
        import time

        deadline = time.monotonic() + patience
        while not self.events.empty() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))  # its write, under way

    def add_display(self, bundle: dict[str, Any]) -> None:
        self.flush_streams()
        with self._hold(), self._lock:
            self.displays.append(bundle)
            if self.events is not None:
                self.events.put({"display": bundle})

    def start(self) -> None:
        if self.events is not None:
            with self._hold():
                self.events.put({"started": True})

    def finish(
        self,
        captured: dict[str, Any] | None = None,
        exception: dict[str, Any] | None = None,
        shipped: Shipped | None = None,
    ) -> None:
        """End the run with its result: what it printed and displayed, the captured values
        (and their bulk buffers, ``shipped``), and the exception it raised, if any (see
        :func:`exception_info`). With frames to send, wait until they are sent: the next cell
        may change the values they are read from."""
        self.flush_streams()
        result = {
            "output": self.text("stdout"),
            "error": self.text("stderr"),
            "capturedOut": captured or {},
            "exception": exception,
            "displays": self.displays,
        }
        event: dict[str, Any] = {}
        if shipped is not None:
            result.update(buffers=shipped.listed, host=bulk.host())
            if shipped.frames:
                event["frames"] = (shipped.bulk, shipped.frames)
        self.result = result
        if self.events is not None:
            # What was printed and displayed went out as it happened: not twice.
            event["result"] = {**result, "output": "", "error": "", "displays": []}
            self.events.put(event)
        self.done.set()
        if "frames" in event:
            self.sent_frames.wait()
        if shipped is not None and self.cancelled:  # nobody is left to take its segments
            bulk.remove_segments(bulk.segment_names(shipped.listed))

    def client_left(self) -> None:
        """Its client went away (any thread): it is not waited for, nor its segments kept."""
        self.cancelled = True
        self.sent_frames.set()
        if self.result is not None:
            bulk.remove_segments(bulk.segment_names(self.result.get("buffers") or []))

    def fail(self, exc: BaseException | None) -> None:
        """Finish a run that the server could not take to its end (stopping, or a bug of ours)."""
        if exc is None:
            self.finish(exception=exception_info("Terminated", "the runner is stopping"))
            return
        import traceback

        self.finish(
            exception=exception_info(
                "InternalError",
                f"the runner failed: {exc!r}",
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            )
        )


def exception_info(
    type_name: str, message: str, traceback: str = "", lineno: int | None = None
) -> dict[str, Any]:
    """A run's ``exception``, as the kernel side reads it."""
    return {"type": type_name, "message": message, "traceback": traceback, "lineno": lineno}


class Shipped:
    """The bulk buffers of a run's captured values: their descriptors, and the frames to send."""

    def __init__(self, values: wire.Bulk, listed: list[dict[str, Any]], frames: list[int]) -> None:
        self.bulk = values
        self.listed = listed
        self.frames = frames


class CellStream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` while a cell runs."""

    encoding = "utf-8"

    def __init__(self, run: CellRun, name: str) -> None:
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


class Runner:
    """Owns the namespace and runs the jobs that HTTP threads queue, in the main thread."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.current: CellRun | None = None
        self.namespace: dict[str, Any] = {}
        self.signals = Signals()
        self._sources: dict[str, int] = {}  # cells' filenames in linecache, oldest first
        self._loop: Any = None
        self._runs: dict[str, CellRun] = {}  # waiting runs by runId, so that they can be cancelled
        self._runs_lock = threading.Lock()
        self.fds = FdCapture(lambda: self.current)  # started by the server, once it listens
        self.reset()

    # main thread ---------------------------------------------------------------------------

    def serve(self) -> None:
        """Run the queued jobs until ``stop()`` or SIGTERM (which raises Terminate out of it)."""
        while not self.signals.terminating:  # set by SIGTERM even if a cell caught Terminate
            try:
                # A timeout, so that a signal handler runs soon even if the signal went to
                # another thread (one that a cell started, say) and left this wait asleep.
                job = self.jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            if job is None:
                return
            job()

    def reset(self) -> None:
        """A fresh namespace: a new ``__main__`` module with ``display`` in it."""
        module = type(sys)("__main__")
        module.__dict__["__builtins__"] = builtins
        module.__dict__["display"] = self.display
        # Classes and functions of cells live in "__main__": pickle and multiprocessing find them.
        sys.modules["__main__"] = module
        self.namespace = module.__dict__
        self._forget_sources()

    def run_job(self, run: CellRun) -> None:
        """Execute ``run``; always finish it, so that its HTTP thread never waits forever."""
        try:
            self.execute(run)
        except Terminate:
            run.fail(None)
            raise
        except Exception as exc:  # a bug of ours: answer, log, and keep serving
            import traceback

            traceback.print_exc(file=sys.__stderr__)
            run.fail(exc)

    def enqueue(self, run: CellRun) -> None:
        """Queue ``run`` behind the running cell, if any (any thread)."""
        with self._runs_lock:
            if run.run_id is not None:
                self._runs[run.run_id] = run
        self.submit(lambda: self.run_job(run))

    def execute(self, run: CellRun) -> None:
        request = run.request
        with self._runs_lock:
            self._runs.pop(run.run_id, None)  # type: ignore[arg-type]
        if run.cancelled:
            run.finish(
                exception=exception_info(
                    "KeyboardInterrupt",
                    "cancelled before it started (it was waiting for another cell)",
                )
            )
            return
        run.start()
        filename = f"<cell {request['cellId']}>"
        captured: dict[str, Any] = {}
        shipped: Shipped | None = None
        exception: dict[str, Any] | None = None
        saved = sys.stdout, sys.stderr
        self.current = run
        sys.stdout, sys.stderr = CellStream(run, "stdout"), CellStream(run, "stderr")
        import getpass

        # input() and getpass ask the notebook's user, as in a kernel.
        saved_input = builtins.input, getpass.getpass
        builtins.input = lambda prompt="": run.ask(str(prompt), False)
        getpass.getpass = lambda prompt="Password: ", stream=None: run.ask(str(prompt), True)
        real_exit = os._exit

        def exit_after_output(status: int) -> NoReturn:
            # What the cell printed just before goes out first: the process ends with it.
            self.fds.drain(0.5)
            run.flush_streams()
            run.sent(0.5)
            real_exit(status)

        os._exit = exit_after_output
        try:
            try:
                received = request.pop("received", [])
                self.namespace.update(wire.decode_namespace(request["capturedIn"], received))
                del received  # the values hold their memory now: dropping them gives it back
                self._execute(self._compile(request["code"], filename))
                # Like a notebook: the value of a last expression shows.
                value = self.namespace.pop(LAST_VALUE, None)
                if value is not None:
                    self.namespace["_"] = value
                    self.display(value)
                self._flush_figures(run)
                captured, shipped = self._capture(request["capturedOut"], request.get("bulk"))
            except Terminate:
                raise
            except BaseException as exc:  # KeyboardInterrupt and SystemExit too: the cell failed
                exception = describe(exc, filename)
                self._flush_figures(run)
        finally:
            self.fds.drain()  # what its subprocesses and C code wrote, before its result
            builtins.input, getpass.getpass = saved_input
            os._exit = real_exit
            sys.stdout, sys.stderr = saved
            self.current = None
        run.finish(captured, exception, shipped)

    def _compile(self, code: str, filename: str) -> CodeType:
        """The cell's code; a last expression (unless it ends with ``;``) is kept in
        ``LAST_VALUE``. One code object, so that a cell that awaits evaluates it in its loop."""
        import ast
        import linecache

        # linecache holds the source so that tracebacks show the cell's lines.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        self._keep_source(filename, len(code))
        flags = PyCF_ALLOW_TOP_LEVEL_AWAIT
        tree = compile(code, filename, "exec", flags=ast.PyCF_ONLY_AST | flags, dont_inherit=True)
        self.namespace.pop(LAST_VALUE, None)
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
            last = tree.body[-1]
            keep = ast.Assign(targets=[ast.Name(id=LAST_VALUE, ctx=ast.Store())], value=last.value)
            tree.body[-1] = ast.fix_missing_locations(ast.copy_location(keep, last))
        code_object: CodeType = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
        return code_object

    def _keep_source(self, filename: str, size: int) -> None:
        """Keep the sources of recent cells only (for tracebacks of functions they define):
        every cell's, kept forever, grew a runner by megabytes per big cell."""
        import linecache

        sources = self._sources
        sources.pop(filename, None)
        sources[filename] = size
        while len(sources) > KEPT_SOURCES or (
            sum(sources.values()) > KEPT_SOURCE_BYTES and len(sources) > 1
        ):
            oldest = next(iter(sources))
            del sources[oldest]
            linecache.cache.pop(oldest, None)

    def _forget_sources(self) -> None:
        if not self._sources:
            return
        import linecache

        for filename in self._sources:
            linecache.cache.pop(filename, None)
        self._sources.clear()

    def _execute(self, code: CodeType) -> None:
        """Run ``code``, awaiting it in the runner's loop if it awaits."""
        if not code.co_flags & CO_COROUTINE:
            with self.signals.running_cell():
                exec(code, self.namespace)
            return
        loop = self._event_loop()
        with self.signals.running_cell():
            task = loop.create_task(eval(code, self.namespace))
            try:
                loop.run_until_complete(task)
            except KeyboardInterrupt:
                if task.done():
                    raise
                # Interrupted while awaiting: cancel the cell, let it unwind, and report the
                # interrupt where the cell was waiting.
                waiting = task.get_stack(limit=1)  # the cell's frame, at its await
                where = [(f, f.f_lasti, f.f_lineno) for f in waiting]
                task.cancel()
                try:
                    loop.run_until_complete(task)
                except Terminate:
                    raise
                except BaseException as unwound:  # CancelledError
                    tb = unwound.__traceback__
                    if where and not _in_traceback(tb, where[0][0]):  # Python 3.8 drops it
                        import types

                        tb = types.TracebackType(None, *where[0])
                    raise KeyboardInterrupt().with_traceback(tb) from None
                raise

    def _event_loop(self) -> Any:
        """The loop of top-level ``await``: one per process, kept from cell to cell."""
        import asyncio  # only once a cell awaits: importing asyncio slows the start

        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        return self._loop

    def _capture(
        self, names: list[str], wanted: dict[str, Any] | None
    ) -> tuple[dict[str, Any], Shipped | None]:
        """The ``--out`` values encoded; with ``wanted`` (the client takes bulk buffers), their
        big buffers put in shared memory for its host, or left to send as frames."""
        values = wire.Bulk() if wanted is not None else None
        captured = {}
        for name in names:
            if name not in self.namespace:
                # Said as notebook users asked for it (the %%interpreter option); the wire's
                # field name, capturedOut, is not theirs.
                raise NameError(f"--out variable {name!r} is not defined by the cell")
            captured[name] = wire.encode(self.namespace[name], name, values)
        if values is None or wanted is None:
            return captured, None
        listed, frames = bulk.place(values, wanted.get("host"), bulk.host())
        return captured, Shipped(values, listed, frames)

    def _flush_figures(self, run: CellRun) -> None:
        """Send the matplotlib figures left open by the cell, as the inline backend does."""
        if "matplotlib.pyplot" not in sys.modules:
            return
        try:
            self.show_figures()
        except Exception:
            import traceback

            run.write("stderr", traceback.format_exc())

    def show_figures(self) -> None:
        """Display every open figure (except those the cell displayed itself) and close it."""
        run = self.current
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

        Takes IPython's ``metadata``, ``include``, ``exclude`` and ``raw`` (the objects are mime
        bundles already); other options are ignored.
        """
        run = self.current
        if run is None:
            return
        for obj in objs:
            if options.get("raw"):
                bundle = {"data": dict(obj), "metadata": {}}
            else:
                include, exclude = options.get("include"), options.get("exclude")
                bundle = pyrun_display.mime_bundle(obj, include, exclude)
            bundle["metadata"].update(options.get("metadata") or {})
            if pyrun_display.is_figure(obj):
                run.shown.add(id(obj))
            run.add_display(bundle)

    # any thread ----------------------------------------------------------------------------

    def interrupt(self, run_id: str | None = None) -> bool:
        """Raise KeyboardInterrupt in the running cell, if there is one and it is ``run_id``'s;
        a run still waiting its turn is cancelled instead (it will not start)."""
        if run_id is not None:
            with self._runs_lock:
                waiting = self._runs.get(run_id)
            if waiting is not None:
                waiting.cancelled = True
                return True
            current = self.current
            if current is None or current.run_id != run_id:
                return False  # finished already, or someone else's cell: leave it alone
        return self.signals.interrupt_cell()

    def answer(self, run_id: str, answer: dict[str, Any]) -> bool:
        """Pass the answer to ``input()`` to the running cell, if it is ``run_id``'s."""
        current = self.current
        if current is None or current.run_id != run_id:
            return False
        current.answer(answer)
        return True

    def submit(self, job: Callable[[], None]) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        self.jobs.put(None)


def _in_traceback(tb: TracebackType | None, frame: FrameType) -> bool:
    while tb is not None:
        if tb.tb_frame is frame:
            return True
        tb = tb.tb_next
    return False


def describe(exc: BaseException, filename: str) -> dict[str, Any]:
    """A cell's exception as JSON, its traceback starting at the cell's first frame."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    lineno = None
    frame = tb
    while frame is not None:  # the deepest line of this cell
        if frame.tb_frame.f_code.co_filename == filename:
            lineno = frame.tb_lineno
        frame = frame.tb_next
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        lineno = exc.lineno
    try:
        message = str(exc)
    except Exception:
        message = pyrun_display.safe_repr(exc)
    try:
        report = traceback.TracebackException(type(exc), exc, tb)
        _hide_runner_frames(report)
        text = "".join(report.format())
    except Exception:
        text = f"{type(exc).__name__}: {message}\n"
    return exception_info(type(exc).__name__, message, text, lineno)


def _hide_runner_frames(report: traceback.TracebackException) -> None:
    """Drop the frames of the runner's own files (its SIGINT handler, display) from a report."""
    import traceback

    seen: set[int] = set()
    pending: list[traceback.TracebackException | None] = [report]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        frames = [frame for frame in current.stack if not _is_runner_file(frame.filename)]
        current.stack = traceback.StackSummary.from_list(frames)
        pending += [current.__cause__, current.__context__]


def _is_runner_file(filename: str) -> bool:
    return (
        os.path.basename(filename).startswith("pyrun_")
        and os.path.dirname(os.path.abspath(filename)) == APP_DIR
    )


active: Runner | None = None  # the process's runner, for pyrun_mpl_backend


def show_figures() -> None:
    """Called by ``plt.show()`` through pyrun_mpl_backend: display the open figures now."""
    if active is not None:
        active.show_figures()
