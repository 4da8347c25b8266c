"""The one exception tree of ywmagics, shared by the orchestrator, the client and the kernel side.

::

    YwMagicsError
    ├── SpecError              a backend spec, version range or request that cannot be parsed
    ├── ConfigurationError     an unknown build option or setting, or a value it does not accept
    ├── ManifestError          a backend's ywbackend.toml that lacks a key or holds a wrong value
    ├── BackendNotFound        no backend of that name, or no version matching the range
    ├── InstanceNotFound       no running instance matches (stop, logs)
    ├── InstanceReplaced       a client's instance now runs another configuration (409)
    ├── InstallError           building the backend's environment failed (carries the log tail)
    ├── StartError             the backend did not start, or did not answer (carries its log tail)
    ├── IncompleteAnswerError  a backend's answer broke off, or never came: its process ended
    │   └── RunnerExited       ... while it ran a notebook cell (its variables are lost)
    ├── BackendHTTPError       a backend answered with an error status (status, body, response)
    ├── BackendTimeout         no answer within the timeout (also a TimeoutError)
    │   └── InterpreterTimeout a cell ran past its --timeout and was interrupted
    ├── RemoteExecutionError   a notebook cell raised in the runner (carries the runner's traceback)
    ├── TransferError          an --out value that could not come back (names the variable)
    └── OrchestratorError      the orchestrator refused the request, or failed inside
        ├── OrchestratorUnavailable  it cannot be reached or started
        │   └── OrchestratorStopping it is stopping: it takes no new work
        ├── OrchestratorBusy         a shutdown "if idle" found it in use (409)
        └── AuthenticationError      wrong or missing token, a foreign Host or Origin

Errors cross the HTTP boundary as ``{"type", "message", "hint", "log_tail"}`` and are rebuilt on the
client side by :func:`error_from_dict`, so a user of the Python client catches the same class the
orchestrator raised. Not in the tree, on purpose: ``Interrupted`` (a ``KeyboardInterrupt``, for the
stop button) and ``ywmagics.wire.WireError`` (the stdlib-only codec, which runs inside runners).
"""

from __future__ import annotations

from typing import Any


class YwMagicsError(Exception):
    """Base of every error ywmagics raises on purpose.

    ``hint`` says what to do about it; ``log_tail`` holds the last lines of a build or backend log
    when they explain the failure.
    """

    http_status = 400

    def __init__(self, message: str, *, hint: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.log_tail = log_tail

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f"\nHint: {self.hint}"
        if self.log_tail:
            text += f"\n--- last lines of the log ---\n{self.log_tail.rstrip()}"
        return text

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of the stack: what went wrong and what to do, not where in
        # ywmagics it was noticed (%tb still shows the stack).
        first, *rest = str(self).splitlines() or [""]
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {first}", *rest]

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "log_tail": self.log_tail,
        }


class SpecError(YwMagicsError, ValueError):
    """A backend spec such as ``name#^0.1.0 as alias`` that cannot be parsed."""


class ConfigurationError(YwMagicsError, ValueError):
    """A build option that the backend does not declare, or a value it cannot use."""


class BackendNotFound(YwMagicsError, LookupError):
    """No backend of that name in any registry, or no version that matches the range."""

    http_status = 404


class InstanceNotFound(YwMagicsError, LookupError):
    """No running instance matches the request."""

    http_status = 404


class InstanceReplaced(YwMagicsError):
    """The instance a client installed was replaced by one of another configuration (another
    alias, another kernel): its requests are refused rather than sent to the wrong one."""

    http_status = 409


class InstallError(YwMagicsError):
    """Building a backend's environment failed."""

    http_status = 500


class StartError(YwMagicsError):
    """A backend process exited, or did not answer its readiness path in time."""

    http_status = 502


class OrchestratorError(YwMagicsError):
    """The orchestrator cannot be reached or started, or answered something unexpected."""

    http_status = 500


class AuthenticationError(OrchestratorError):
    """The request carried no valid token, or came with a Host that is not a loopback name."""

    http_status = 401


class OrchestratorUnavailable(OrchestratorError):
    """The orchestrator cannot be reached (not running, or gone) or could not be started."""

    http_status = 503


class OrchestratorStopping(OrchestratorUnavailable):
    """The orchestrator is stopping (a shutdown was asked): it takes no new work."""


class OrchestratorBusy(OrchestratorError):
    """A conditional request to the orchestrator (a shutdown if idle) found it in use."""

    http_status = 409


class ManifestError(YwMagicsError):
    """A ``ywbackend.toml`` that is missing a key or holds a wrong value."""


class BackendHTTPError(YwMagicsError):
    """A backend answered a request with an error status.

    ``response`` is the ``httpx.Response`` (headers such as ``Retry-After`` included) when the
    error was raised by a client."""

    def __init__(
        self, message: str, *, status: int, body: str = "", url: str = "", response: Any = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.url = url
        self.response = response


class BackendTimeout(YwMagicsError, TimeoutError):
    """No answer came within the request's timeout."""

    http_status = 504


class IncompleteAnswerError(YwMagicsError):
    """A backend's answer broke off, or never came, because its process ended."""

    http_status = 502


class RunnerExited(IncompleteAnswerError):
    """The runner's process ended while it ran the cell (``os._exit``, a crash, out of memory)."""


class InterpreterTimeout(BackendTimeout):
    """The cell ran longer than its ``--timeout`` and was interrupted."""


class TransferError(YwMagicsError):
    """A captured variable that could not come back from the runner (named in the message)."""


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


def internal_error(error: BaseException) -> OrchestratorError:
    """An unexpected exception inside the orchestrator, said as the orchestrator's own error (so
    that no backend is blamed for it), its type and message kept."""
    return OrchestratorError(
        f"internal error in the orchestrator: {type(error).__name__}: {error}",
        hint="this is a fault of ywmagics, not of the backend; the orchestrator's log "
        "('ywmagics status' shows where) has the traceback",
    )


# The classes that an answer can name: those built from (message, hint, log_tail).
_BY_NAME: dict[str, type[YwMagicsError]] = {
    cls.__name__: cls
    for cls in (
        YwMagicsError,
        SpecError,
        ConfigurationError,
        ManifestError,
        BackendNotFound,
        InstanceNotFound,
        InstanceReplaced,
        InstallError,
        StartError,
        IncompleteAnswerError,
        RunnerExited,
        BackendTimeout,
        InterpreterTimeout,
        TransferError,
        OrchestratorError,
        OrchestratorUnavailable,
        OrchestratorStopping,
        OrchestratorBusy,
        AuthenticationError,
    )
}


def error_from_dict(data: dict[str, Any]) -> YwMagicsError:
    """Rebuild an error sent by the orchestrator (see :meth:`YwMagicsError.to_dict`)."""
    cls = _BY_NAME.get(str(data.get("type")), YwMagicsError)
    return cls(
        str(data.get("message", "unknown error")),
        hint=str(data.get("hint") or ""),
        log_tail=str(data.get("log_tail") or ""),
    )
