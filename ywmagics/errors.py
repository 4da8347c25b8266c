"""The one exception tree of ywmagics, shared by the orchestrator, the client and the kernel side.

::

    YwMagicsError
    ├── SpecError             a backend spec or version range that cannot be parsed
    ├── ConfigurationError    an unknown build option, or a value it does not accept
    ├── BackendNotFound       no backend of that name, or no version matching the range
    ├── InstallError          building the backend's environment failed (carries the build log tail)
    ├── StartError            the backend did not start or become ready (carries its log tail)
    ├── InstanceNotFound      no running instance matches (stop, logs)
    ├── OrchestratorError     the orchestrator cannot be reached, started, or refused the request
    │   └── AuthenticationError   wrong or missing token, or a foreign Host
    ├── BackendHTTPError      a backend answered with an error status (carries status and body)
    └── IncompleteAnswerError a backend's answer broke off midway (it exited, most likely)

Errors cross the HTTP boundary as ``{"type", "message", "hint", "log_tail"}`` and are rebuilt on the
client side by :func:`error_from_dict`, so a user of the Python client catches the same class the
orchestrator raised.
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


class BackendHTTPError(YwMagicsError):
    """A backend answered a request with an error status."""

    def __init__(self, message: str, *, status: int, body: str = "", url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.url = url


class IncompleteAnswerError(YwMagicsError):
    """A backend's answer broke off, or never came, because its process ended."""

    http_status = 502


def internal_error(error: BaseException) -> OrchestratorError:
    """An unexpected exception inside the orchestrator, said as the orchestrator's own error (so
    that no backend is blamed for it), its type and message kept."""
    return OrchestratorError(
        f"internal error in the orchestrator: {type(error).__name__}: {error}",
        hint="this is a fault of ywmagics, not of the backend; the orchestrator's log "
        "('ywmagics status' shows where) has the traceback",
    )


_BY_NAME: dict[str, type[YwMagicsError]] = {
    cls.__name__: cls
    for cls in (
        YwMagicsError,
        SpecError,
        ConfigurationError,
        BackendNotFound,
        InstanceNotFound,
        InstallError,
        StartError,
        OrchestratorError,
        AuthenticationError,
        IncompleteAnswerError,
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


ERROR_HEADER = "x-ywmagics-error"
"""Set on answers that the orchestrator itself gives as errors, to tell them from a backend's."""
