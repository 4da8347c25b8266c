"""Running a cell in a python runner backend (``POST /run``), its output streamed to the notebook.

The runner answers ``application/x-ndjson`` when asked: ``{"stream": "stdout"|"stderr", "text"}``
and ``{"display": bundle}`` lines while the cell runs, then ``{"result": {...}}``. A runner that
answers plain JSON instead is accepted too (its output is then shown at the end).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ywmagics.errors import YwMagicsError

if TYPE_CHECKING:
    import httpx

    from ywmagics.client import BackendClient

NDJSON = "application/x-ndjson"
INTERRUPT_TIMEOUT = 5.0
# How long after ``--timeout`` (and its interrupt) we still wait for the runner's answer.
TIMEOUT_GRACE = 10.0

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


@dataclass
class RunRequest:
    """One ``POST /run``."""

    cell_id: str
    code: str
    captured_in: dict[str, Any] = field(default_factory=dict)
    captured_out: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "cellId": self.cell_id,
            "code": self.code,
            "capturedIn": self.captured_in,
            "capturedOut": self.captured_out,
        }


class Runner:
    """Talks ``/run`` and ``/interrupt`` to runner backends through their clients."""

    def close(self) -> None:
        """Nothing to release: clients share one connection pool."""

    def interrupt(self, client: BackendClient) -> bool:
        """Ask the runner to interrupt its running cell; ``False`` if it could not be asked."""
        try:
            response = client.fetch("/interrupt", method="POST", timeout=INTERRUPT_TIMEOUT)
        except YwMagicsError:
            return False
        return response.status_code < 400

    def run(
        self,
        client: BackendClient,
        request: RunRequest,
        *,
        timeout: float | None,
        stdout: Write,
        stderr: Write,
        display: Display,
    ) -> dict[str, Any]:
        """Run the cell; stream its output to ``stdout``/``stderr``/``display``; return the result.

        Raises :class:`InterpreterTimeout` when ``timeout`` (seconds) passes first: the runner
        is then interrupted. A ``KeyboardInterrupt`` interrupts the runner too, and propagates
        as :class:`Interrupted` (a ``KeyboardInterrupt``).
        """
        import httpx

        timer: threading.Timer | None = None
        timed_out = threading.Event()
        if timeout:

            def expire() -> None:
                timed_out.set()
                self.interrupt(client)

            timer = threading.Timer(timeout, expire)
            timer.daemon = True
        read_timeout = timeout + TIMEOUT_GRACE if timeout else None
        try:
            with client.stream(
                "/run",
                "POST",
                json=request.to_json(),
                headers={"Accept": NDJSON},
                timeout=httpx.Timeout(read_timeout, connect=5.0),
            ) as response:
                if timer is not None:
                    timer.start()
                if NDJSON in response.headers.get("content-type", ""):
                    result = _read_stream(response.iter_lines(), stdout, stderr, display)
                else:
                    result = _read_whole(response, stdout, stderr, display)
        except KeyboardInterrupt:
            # A short error instead of the HTTP stack the interrupt landed in.
            where = f"{client.name} {client.version}, partition {client.partition}"
            if self.interrupt(client):
                raise Interrupted(f"the cell was interrupted in the runner ({where})") from None
            raise Interrupted(
                f"interrupted, but the runner ({where}) could not be reached to stop the cell"
            ) from None
        except httpx.TimeoutException:
            self.interrupt(client)
            raise InterpreterTimeout(
                f"the runner did not answer within {read_timeout:.0f} s",
                hint=f"see its log: %backends logs {client.name}",
            ) from None
        finally:
            if timer is not None:
                timer.cancel()
        if timed_out.is_set():
            raise InterpreterTimeout(
                f"the cell ran longer than its timeout ({timeout:g} s) and was interrupted",
                hint="raise it with --timeout SECONDS, or %config YwMagics.run_timeout = 0",
            )
        return result


def _read_stream(
    lines: Iterator[str], stdout: Write, stderr: Write, display: Display
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
        elif "result" in item:
            return _result(item["result"])
        elif "error" in item:
            from ywmagics.errors import error_from_dict

            raise error_from_dict(item["error"])
    raise YwMagicsError(
        "the runner closed its answer without a result",
        hint="it may have crashed: see '%backends logs ALIAS'",
    )


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
        stream.write(text)
        with contextlib.suppress(Exception):
            stream.flush()

    return write
