"""Running a cell in a python runner backend (``POST /run``), its output streamed to the notebook.

The runner answers ``application/x-ndjson`` when asked: ``{"stream": "stdout"|"stderr", "text"}``
and ``{"display": bundle}`` lines while the cell runs, then ``{"result": {...}}``, whose big
buffers follow it as frames or wait in shared memory (:mod:`ywmagics.bulk`). A runner that
answers plain JSON instead is accepted too (its output is then shown at the end).

The answer is read to its end, even once the result is in: the connection then goes back to
the pool, and the next cell does not open another.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ywmagics import bulk, wire
from ywmagics.errors import (
    BackendHTTPError,
    IncompleteAnswerError,
    InterpreterTimeout,
    RemoteExecutionError,
    RunnerExited,
    TransferError,
    YwMagicsError,
    error_from_dict,
)
from ywmagics.kernel.output import Output, flush_output, notebook_output
from ywmagics.kernel.transfer import (
    ChunkReader,
    Inputs,
    bulk_request,
    decode_outputs,
    encode_inputs,
)
from ywmagics.protocol import NDJSON

if TYPE_CHECKING:
    import httpx

    from ywmagics.client import BackendClient

INTERRUPT_TIMEOUT = 5.0


class Interrupted(KeyboardInterrupt):
    """A ``KeyboardInterrupt`` that IPython shows as one line saying what was stopped."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mKeyboardInterrupt\x1b[0m: {self}"]


@dataclass
class RunRequest:
    """One ``POST /run``; ``run_id`` lets an interrupt reach this cell and no other."""

    cell_id: str
    code: str
    inputs: Inputs = field(default_factory=lambda: Inputs({}))
    captured_out: list[str] = field(default_factory=list)
    bulk: dict[str, Any] | None = None  # how the --out values' big buffers may come back
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict[str, Any]:
        body = {
            "cellId": self.cell_id,
            "code": self.code,
            "capturedIn": self.inputs.encoded,
            "capturedOut": self.captured_out,
            "runId": self.run_id,
            "stdin": True,  # its input() is asked of the notebook (run_cell answers)
            "codec": wire.CODEC_VERSION,  # a runner of another codec refuses the cell
        }
        if self.inputs.listed:
            body["buffers"] = self.inputs.listed
        if self.bulk is not None:
            body["bulk"] = self.bulk
        return body

    def body(self) -> dict[str, Any]:
        """The request's body, as ``httpx`` takes it: JSON, or JSON and frames."""
        if not self.inputs.frames:
            return {"json": self.to_dict()}
        assert self.inputs.values is not None
        framed = bulk.FramedBody(self.to_dict(), self.inputs.values, self.inputs.frames)
        headers = {"Content-Type": bulk.FRAMES, "Content-Length": str(framed.size)}
        return {"content": framed, "headers": headers}


@dataclass
class RunResult:
    """The runner's result of a run, with the bulk buffers of its ``capturedOut``."""

    result: dict[str, Any]
    buffers: list[Any] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.result.get(key, default)


# Whether each runner takes big values beside the JSON, and where it runs (see bulk.host).
_runners: dict[tuple[str, str], tuple[bool, Any]] = {}


def runner_bulk(client: BackendClient) -> tuple[bool, Any]:
    """Whether the runner takes bulk buffers (its ``GET /`` says ``"bulk": 1``) and where it
    runs, asked once. A runner that does not say so (an older one) gets every value inside
    the JSON, as it always did."""
    key = (client.url_base, client.partition)
    known = _runners.get(key)
    if known is not None and _restarted(known[1]):
        del _runners[key]  # its segments must be named for its new pid: ask it again
    if key not in _runners:
        try:
            about = client.fetch_json("/")
        except (YwMagicsError, ValueError):
            return False, None  # not now: the run itself will say what is wrong
        takes = isinstance(about, dict) and about.get("bulk") == bulk.PROTOCOL
        _runners[key] = (takes, about.get("host") if takes else None)
    return _runners[key]


def _restarted(runner_host: Any) -> bool:
    """Whether a runner on this machine has ended since it said where it runs (a crash and a
    restart, a stop): its GET / then starts it again, and says its new pid."""
    here = bulk.host()
    return bool(here and bulk.same_host(here, runner_host) and not bulk.alive(runner_host["pid"]))


def run_interpreter_cell(
    client: BackendClient,
    alias: str,
    code: str,
    *,
    namespace: Mapping[str, Any],
    inputs: list[str],
    outputs: list[str],
    timeout: float | None,
    cell_id: str,
    output: Output | None = None,
) -> dict[str, Any]:
    """The whole of ``%%interpreter``: send the ``inputs`` of ``namespace``, run ``code``, show
    its output, and return the ``outputs`` decoded. A cell that raised raises
    :class:`RemoteExecutionError` with the runner's traceback."""
    where = f"{alias}: {client.name} {client.version}, partition {client.partition}"
    takes, host = runner_bulk(client) if inputs or outputs else (False, None)
    output = output or notebook_output()
    request: RunRequest | None = None
    try:
        inputs_sent = encode_inputs(namespace, inputs, host, takes_bulk=takes)
        request = RunRequest(cell_id, code, inputs_sent, outputs, bulk_request(host, takes))
        with _needs_runner(alias, client):
            result = run_cell(client, request, alias=alias, timeout=timeout, output=output)
    finally:
        if request is not None:
            request.inputs.release()
        output.flush()  # what it printed goes before its error or the next cell's output
    if "host" in result.result:  # it may have moved: the next run sends it there
        _runners[(client.url_base, client.partition)] = (True, result.get("host"))
    exception = result.get("exception")
    if exception:
        raise RemoteExecutionError(
            exception if isinstance(exception, dict) else {"message": str(exception)},
            where=where,
        )
    return decode_outputs(result.get("capturedOut") or {}, outputs, result.buffers)


def interrupt_run(client: BackendClient, run_id: str) -> bool:
    """Interrupt the run ``run_id`` (running, or cancel it if it waits for another cell);
    ``False`` if the runner could not be asked. Other people's cells are left alone."""
    try:
        response = client.fetch(
            "/interrupt", method="POST", json={"runId": run_id}, timeout=INTERRUPT_TIMEOUT
        )
    except YwMagicsError:
        return False
    return response.status_code < 400


def run_cell(
    client: BackendClient,
    request: RunRequest,
    *,
    alias: str,
    timeout: float | None,
    output: Output,
) -> RunResult:
    """Run the cell; stream its output to ``output``; return the runner's result.

    ``timeout`` (seconds) counts from the moment the cell starts in the runner (it may first
    wait for another cell of the same partition); when it passes, the cell is interrupted
    and :class:`InterpreterTimeout` raised, unless the cell finished anyway. A
    ``KeyboardInterrupt`` (the stop button) interrupts the cell in the runner, and what the cell
    prints until it really ends (its ``finally:``, its ``except KeyboardInterrupt:``) is shown;
    it then raises :class:`Interrupted`, unless the cell caught the interrupt and went on to
    its end. After :data:`GIVE_UP_AFTER` interrupts the cell did not stop for, the notebook stops
    waiting for it.
    """
    import httpx

    timed_out = threading.Event()
    timer: threading.Timer | None = None
    if timeout:

        def expire() -> None:
            timed_out.set()
            interrupt_run(client, request.run_id)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
    where = f"{alias}: {client.name} {client.version}, partition {client.partition}"
    try:
        body = request.body()
        headers = {**body.pop("headers", {}), "Accept": NDJSON}
        with client.stream(
            "/run",
            "POST",
            **body,
            headers=headers,
            # No read limit: a cell may wait for another, and print nothing for long.
            timeout=httpx.Timeout(None, connect=5.0),
        ) as response:
            if NDJSON in response.headers.get("content-type", ""):
                started = timer.start if timer is not None else None
                presses = 0

                def pressed() -> None:
                    nonlocal presses
                    presses += 1
                    if not interrupt_run(client, request.run_id):
                        raise Interrupted(
                            f"interrupted, but the runner ({where}) could not be reached to "
                            "stop the cell"
                        )
                    if presses >= GIVE_UP_AFTER:
                        raise Interrupted(
                            f"the cell did not stop for {presses} interrupts in the runner "
                            f"({where}); this notebook no longer waits for it (the next cell "
                            "there runs once it has ended)"
                        )

                def asked(question: dict[str, Any]) -> None:
                    try:
                        answer = {"value": _ask(question)}
                    except KeyboardInterrupt:
                        pressed()  # as in a kernel: the cell's input() is interrupted
                        return
                    except Exception as no_stdin:  # StdinNotImplementedError, EOFError
                        answer = {"eof": _no_stdin(no_stdin)}
                    client.fetch("/input", method="POST", json={"runId": request.run_id, **answer})

                result = _read_stream(response.iter_bytes(), output, started, pressed, asked)
                exception = result.get("exception")
                if (
                    presses
                    and isinstance(exception, dict)
                    and exception.get("type") == "KeyboardInterrupt"
                ):
                    raise Interrupted(f"the cell was interrupted in the runner ({where})")
            else:
                if timer is not None:
                    timer.start()
                result = RunResult(_read_whole(response, output))
    except Interrupted:
        raise
    except KeyboardInterrupt as interrupt:
        # A short error instead of the HTTP stack the interrupt landed in.
        if interrupt_run(client, request.run_id):
            raise Interrupted(f"the cell was interrupted in the runner ({where})") from interrupt
        raise Interrupted(
            f"interrupted, but the runner ({where}) could not be reached to stop the cell"
        ) from interrupt
    except IncompleteAnswerError as error:
        raise RunnerExited(
            f"the runner ({where}) exited while running the cell: its variables are lost",
            hint=f"it restarts, empty, on the next cell; see why in '%backends logs {alias}'",
        ) from error
    finally:
        if timer is not None:
            timer.cancel()
    exception = result.get("exception")
    interrupted = isinstance(exception, dict) and exception.get("type") == "KeyboardInterrupt"
    if timed_out.is_set() and interrupted:
        raise InterpreterTimeout(
            f"the cell ran longer than its timeout ({timeout:g} s) and was interrupted",
            hint="raise it with --timeout SECONDS, or %config YwMagics.run_timeout = 0",
        )
    return result


@contextlib.contextmanager
def _needs_runner(alias: str, client: BackendClient) -> Iterator[None]:
    """A backend without ``/run`` is not a python runner: say so, not "404 Not Found"."""
    try:
        yield
    except BackendHTTPError as error:
        if error.status not in (404, 405):
            raise
        raise UsageError(
            f"{alias} is {client.name} {client.version}, which runs no cells (its /run answered "
            f"{error.status}): %%interpreter needs a python runner, e.g. "
            f"%backends install pyrun_backend#^0.1.0 as {alias}"
        ) from error


def _ask(question: dict[str, Any]) -> str:
    """The notebook user's answer to a cell's ``input()`` (the kernel's stdin, when the
    frontend offers one), or its ``getpass``."""
    flush_output()
    prompt = str(question.get("prompt", ""))
    if question.get("password"):
        import getpass

        return getpass.getpass(prompt)
    return input(prompt)


def _no_stdin(error: Exception) -> str:
    if type(error).__name__ == "StdinNotImplementedError":
        return "input() has no stdin: this frontend does not offer one (allow_stdin is off)"
    return f"input() got no answer: {type(error).__name__}: {error}"


def _read_stream(
    chunks: Iterator[bytes],
    output: Output,
    on_started: Callable[[], None] | None = None,
    on_interrupt: Callable[[], None] | None = None,
    on_input: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Show what the runner streams until its result, and read its answer to the end. The
    answer is read in a thread of its own: an interrupt landing in the middle of a read would
    end the stream with it, and what the cell prints after the interrupt would be lost. Here it
    lands in the wait for the next item, where ``on_interrupt`` is called (and may raise to
    stop waiting)."""
    from ywmagics.client._http import ndjson_items

    items = _Mailbox()
    reader = ChunkReader(chunks)

    def pump() -> None:
        try:
            for item in ndjson_items(reader.lines(), source="the runner"):
                if "result" in item:
                    result = _result(item["result"])
                    items.put(("result", RunResult(result, _receive(result, reader))))
                else:
                    items.put(("item", item))
            items.put(("end", None))
        except BaseException as error:  # to the notebook's thread, which raises it
            items.put(("error", error))
        finally:
            items.close_sending()

    _Reader.run(pump)
    try:
        with items.taking_interrupts(on_interrupt is not None):
            return _show_items(items, output, on_started, on_interrupt, on_input)
    finally:
        items.close_receiving()


class _Reader:
    """A thread that reads runners' answers, kept from cell to cell: starting a thread costs a
    millisecond in a kernel, whose own threads hold the GIL often. A reader still busy (with a
    cell the notebook stopped waiting for) is not waited for: another one starts."""

    _idle: collections.deque[_Reader] = collections.deque()

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="ywmagics-run-reader", daemon=True).start()

    @classmethod
    def run(cls, job: Callable[[], None]) -> None:
        """Run ``job`` (which handles its own errors) in an idle reader."""
        try:
            reader = cls._idle.pop()
        except IndexError:
            reader = cls()
        reader._jobs.put(job)

    def _serve(self) -> None:
        while True:
            self._jobs.get()()
            self._idle.append(self)

    @classmethod
    def forget(cls) -> None:
        cls._idle = collections.deque()  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_Reader.forget)


class _Mailbox:
    """Items from the reader thread to the notebook's thread, and the stop button's interrupts,
    in the order they come, with no lock in between.

    An interrupt raised as ``KeyboardInterrupt`` lands anywhere in the notebook's thread: inside
    a ``queue.Queue`` it can leave the queue's lock held (the next ``get`` and the reader's
    ``put`` then wait for each other forever), between a ``get`` and the use of its item it
    loses the item. So while it is read, SIGINT only posts an interrupt here. Items go in a
    deque (whose append and pop are atomic), each announced by a byte on a pipe that ``get``
    waits on."""

    INTERRUPT = ("interrupt", None)

    def __init__(self) -> None:
        self._items: collections.deque[tuple[str, Any]] = collections.deque()
        self._wakeup, self._announce = os.pipe()
        self._interrupted = False
        self._previous: Any = None

    def put(self, item: tuple[str, Any]) -> None:
        self._items.append(item)
        self._announce_one()

    def _announce_one(self) -> None:
        with contextlib.suppress(OSError):  # the notebook stopped reading: nobody to wake up
            os.write(self._announce, b"!")

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._interrupted = True
        self._announce_one()

    @contextlib.contextmanager
    def taking_interrupts(self, wanted: bool) -> Iterator[None]:
        """SIGINT posts an interrupt while inside; only in the main thread (where handlers run)."""
        if not wanted or threading.current_thread() is not threading.main_thread():
            yield
            return
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, self._previous)

    @contextlib.contextmanager
    def raising_interrupts(self) -> Iterator[None]:
        """The usual ``KeyboardInterrupt`` again while inside (``input()`` is interrupted so)."""
        if signal.getsignal(signal.SIGINT) != self._on_sigint:
            yield
            return
        signal.signal(signal.SIGINT, self._previous)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, self._on_sigint)

    def get(self) -> tuple[str, Any]:
        while True:
            if self._interrupted:
                self._interrupted = False
                return self.INTERRUPT
            if self._items:
                return self._items.popleft()
            os.read(self._wakeup, 65536)  # each item's byte comes after the item

    def close_sending(self) -> None:
        os.close(self._announce)

    def close_receiving(self) -> None:
        os.close(self._wakeup)


def _receive(result: dict[str, Any], reader: ChunkReader) -> list[Any]:
    """The bulk buffers of the result's ``capturedOut``: mapped, or read from the frames that
    follow its line."""
    listed = result.get("buffers") or []
    try:
        return bulk.receive(bulk.check_descriptors(listed), reader.readinto)
    except (ValueError, OverflowError, MemoryError, OSError, bulk.SegmentError) as error:
        bulk.remove_segments(bulk.segment_names(listed if isinstance(listed, list) else []))
        names = ", ".join(result.get("capturedOut") or {}) or "none"
        raise TransferError(
            f"the --out values ({names}) could not be received: {error} (no --out variable "
            "was assigned)"
        ) from error
    except EOFError as error:
        raise IncompleteAnswerError(f"the runner's answer ended in its frames: {error}") from error


def _show_items(
    items: _Mailbox,
    output: Output,
    on_started: Callable[[], None] | None,
    on_interrupt: Callable[[], None] | None,
    on_input: Callable[[dict[str, Any]], None] | None,
) -> RunResult:
    result: RunResult | None = None
    while True:
        try:
            kind, item = items.get()
        except KeyboardInterrupt:  # not taken over (another thread, or nobody to tell)
            if on_interrupt is None:
                raise
            on_interrupt()
            continue
        if kind == "interrupt":
            if on_interrupt is not None:
                on_interrupt()
            continue
        if kind == "end":
            break
        if kind == "error":
            if result is not None:  # the result is whole: only the end of the answer is lost
                return result
            raise item
        if kind == "result":
            result = item  # read on to the end of the answer: its connection can serve again
        elif "stream" in item:
            (output.stderr if item["stream"] == "stderr" else output.stdout)(
                str(item.get("text", ""))
            )
        elif "display" in item:
            output.display(item["display"])
        elif "started" in item:
            if on_started is not None:
                on_started()
        elif "input_request" in item:
            if on_input is not None:
                with items.raising_interrupts():
                    on_input(item["input_request"])
        elif "error" in item:
            raise error_from_dict(item["error"])
    if result is None:
        raise IncompleteAnswerError("the runner closed its answer without a result")
    return result


GIVE_UP_AFTER = 3  # interrupts a cell did not stop for, before the notebook stops waiting


def _read_whole(response: httpx.Response, output: Output) -> dict[str, Any]:
    response.read()
    result = _result(response.json())
    if result.get("output"):
        output.stdout(str(result["output"]))
    if result.get("error"):
        output.stderr(str(result["error"]))
    for bundle in result.get("displays") or []:
        output.display(bundle)
    return result


def _result(result: Any) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise YwMagicsError(f"the runner answered an unexpected result: {str(result)[:200]}")
    return result
