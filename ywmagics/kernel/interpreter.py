"""Running a cell in a python runner backend (``POST /run``), its output streamed to the notebook.

The runner answers ``application/x-ndjson`` when asked: ``{"stream": "stdout"|"stderr", "text"}``
and ``{"display": bundle}`` lines while the cell runs, then ``{"result": {...}}``. A runner that
answers plain JSON instead is accepted too (its output is then shown at the end).
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ywmagics.errors import YwMagicsError

if TYPE_CHECKING:
    import httpx

    from ywmagics.client import BackendClient

NDJSON = "application/x-ndjson"
INTERRUPT_TIMEOUT = 5.0

Write = Callable[[str], None]
Display = Callable[[dict[str, Any]], None]


class RemoteExecutionError(YwMagicsError):
    """The cell raised in the runner; shown in the notebook with the runner's traceback.

    ``remote_type``, ``remote_message``, ``remote_traceback`` (line numbers are those of the
    cell) and ``lineno`` come from the runner's answer.
    """

    def __init__(self, exception: dict[str, Any], *, where: str = "") -> None:
        self.remote_type = str(exception.get("type") or "Exception")
        self.remote_message = str(exception.get("message") or "")
        self.remote_traceback = str(exception.get("traceback") or "")
        lineno = exception.get("lineno")
        self.lineno = lineno if isinstance(lineno, int) else None
        self.where = where
        text = (
            f"{self.remote_type}: {self.remote_message}"
            if self.remote_message
            else self.remote_type
        )
        if self.lineno is not None:
            text += f" (line {self.lineno} of the cell)"
        super().__init__(text)

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of the local stack: the runner's traceback, short."""
        header = f"\x1b[0;31m{self.remote_type}\x1b[0m raised in the runner"
        if self.where:
            header += f" ({self.where})"
        lines = [header]
        if self.remote_traceback:
            lines += self.remote_traceback.rstrip("\n").splitlines()
        else:
            lines.append(f"{self.remote_type}: {self.remote_message}")
        return lines


class Interrupted(KeyboardInterrupt):
    """A ``KeyboardInterrupt`` that IPython shows as one line saying what was stopped."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mKeyboardInterrupt\x1b[0m: {self}"]


class InterpreterTimeout(YwMagicsError):
    """The cell ran longer than its ``--timeout`` and was interrupted."""


class RunnerExited(YwMagicsError):
    """The runner's process ended while it ran the cell (``os._exit``, a crash, out of memory)."""


@dataclass
class RunRequest:
    """One ``POST /run``; ``run_id`` lets an interrupt reach this cell and no other."""

    cell_id: str
    code: str
    captured_in: dict[str, Any] = field(default_factory=dict)
    captured_out: list[str] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cellId": self.cell_id,
            "code": self.code,
            "capturedIn": self.captured_in,
            "capturedOut": self.captured_out,
            "runId": self.run_id,
        }


class Runner:
    """Talks ``/run`` and ``/interrupt`` to runner backends through their clients."""

    def close(self) -> None:
        """Nothing to release: clients share one connection pool."""

    def interrupt(self, client: BackendClient, run_id: str) -> bool:
        """Interrupt the run ``run_id`` (running, or cancel it if it waits for another cell);
        ``False`` if the runner could not be asked. Other people's cells are left alone."""
        try:
            response = client.fetch(
                "/interrupt", method="POST", json={"runId": run_id}, timeout=INTERRUPT_TIMEOUT
            )
        except YwMagicsError:
            return False
        return response.status_code < 400

    def run(
        self,
        client: BackendClient,
        request: RunRequest,
        *,
        alias: str,
        timeout: float | None,
        stdout: Write,
        stderr: Write,
        display: Display,
    ) -> dict[str, Any]:
        """Run the cell; stream its output to ``stdout``/``stderr``/``display``; return the result.

        ``timeout`` (seconds) counts from the moment the cell starts in the runner (it may first
        wait for another cell of the same partition); when it passes, the cell is interrupted
        and :class:`InterpreterTimeout` raised, unless the cell finished anyway. A
        ``KeyboardInterrupt`` interrupts the cell too, and propagates as :class:`Interrupted`.
        """
        import httpx

        from ywmagics.errors import IncompleteAnswerError

        timed_out = threading.Event()
        timer: threading.Timer | None = None
        if timeout:

            def expire() -> None:
                timed_out.set()
                self.interrupt(client, request.run_id)

            timer = threading.Timer(timeout, expire)
            timer.daemon = True
        where = f"{alias}: {client.name} {client.version}, partition {client.partition}"
        try:
            with client.stream(
                "/run",
                "POST",
                json=request.to_dict(),
                headers={"Accept": NDJSON},
                # No read limit: a cell may wait for another, and print nothing for long.
                timeout=httpx.Timeout(None, connect=5.0),
            ) as response:
                if NDJSON in response.headers.get("content-type", ""):
                    started = timer.start if timer is not None else None
                    result = _read_stream(response.iter_lines(), stdout, stderr, display, started)
                else:
                    if timer is not None:
                        timer.start()
                    result = _read_whole(response, stdout, stderr, display)
        except KeyboardInterrupt:
            # A short error instead of the HTTP stack the interrupt landed in.
            if self.interrupt(client, request.run_id):
                raise Interrupted(f"the cell was interrupted in the runner ({where})") from None
            raise Interrupted(
                f"interrupted, but the runner ({where}) could not be reached to stop the cell"
            ) from None
        except IncompleteAnswerError:
            raise RunnerExited(
                f"the runner ({where}) exited while running the cell: its variables are lost",
                hint=f"it restarts, empty, on the next cell; see why in '%backends logs {alias}'",
            ) from None
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


def _read_stream(
    lines: Iterator[str],
    stdout: Write,
    stderr: Write,
    display: Display,
    on_started: Callable[[], None] | None = None,
) -> dict[str, Any]:
    for line in lines:
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise YwMagicsError(
                f"the runner sent a line that is not JSON: {line[:200]!r}"
            ) from None
        if "stream" in item:
            (stderr if item["stream"] == "stderr" else stdout)(str(item.get("text", "")))
        elif "display" in item:
            display(item["display"])
        elif "started" in item:
            if on_started is not None:
                on_started()
        elif "result" in item:
            return _result(item["result"])
        elif "error" in item:
            from ywmagics.errors import error_from_dict

            raise error_from_dict(item["error"])
    from ywmagics.errors import IncompleteAnswerError

    raise IncompleteAnswerError("the runner closed its answer without a result")


def _read_whole(
    response: httpx.Response, stdout: Write, stderr: Write, display: Display
) -> dict[str, Any]:
    response.read()
    result = _result(response.json())
    if result.get("output"):
        stdout(str(result["output"]))
    if result.get("error"):
        stderr(str(result["error"]))
    for bundle in result.get("displays") or []:
        display(bundle)
    return result


def _result(result: Any) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise YwMagicsError(f"the runner answered an unexpected result: {str(result)[:200]}")
    return result


def publish(bundle: dict[str, Any]) -> None:
    """Show a display bundle ``{"data": {mime: ...}, "metadata": {...}}`` under the cell."""
    from IPython.display import publish_display_data

    data = bundle.get("data")
    if isinstance(data, dict) and data:
        publish_display_data(  # type: ignore[no-untyped-call]
            data=data, metadata=bundle.get("metadata") or {}
        )


def writer(stream_name: str) -> Write:
    """Write to the kernel's current ``sys.stdout``/``sys.stderr`` (looked up at each call)."""
    import sys

    def write(text: str) -> None:
        stream = sys.stderr if stream_name == "stderr" else sys.stdout
        try:
            stream.write(text)
        except UnicodeEncodeError:  # a lone surrogate, or a terminal that can't show it
            stream.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))
        with contextlib.suppress(Exception):
            stream.flush()

    return write
