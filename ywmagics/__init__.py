"""ywmagics: run local backend microservices from Jupyter.

In a notebook: ``%load_ext ywmagics``. From Python::

    import ywmagics
    clients = ywmagics.install(["demo_yw_backend#^0.1.1 as demo"], partition="Foo")
    clients.demo.fetch_json("/cow-say", method="POST", json={"message": "hi"})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ywmagics._version import __version__
from ywmagics.errors import (
    AuthenticationError,
    BackendHTTPError,
    BackendNotFound,
    BackendTimeout,
    ConfigurationError,
    IncompleteAnswerError,
    InstallError,
    InstanceNotFound,
    InstanceReplaced,
    InterpreterTimeout,
    ManifestError,
    OrchestratorBusy,
    OrchestratorError,
    OrchestratorStopping,
    OrchestratorUnavailable,
    RemoteExecutionError,
    RunnerExited,
    SpecError,
    StartError,
    TransferError,
    YwMagicsError,
)
from ywmagics.events import Event, EventKind

if TYPE_CHECKING:
    from ywmagics.client import (
        AsyncBackendClient,
        BackendClient,
        Clients,
        OrchestratorClient,
        connect,
        install,
    )

_CLIENT_NAMES = {
    "AsyncBackendClient",
    "BackendClient",
    "Clients",
    "OrchestratorClient",
    "connect",
    "install",
}


def __getattr__(name: str) -> Any:
    # The client (httpx) loads on first use, so that the orchestrator process, which imports
    # this package too, never loads it.
    if name in _CLIENT_NAMES:
        import ywmagics.client

        return getattr(ywmagics.client, name)
    raise AttributeError(f"module 'ywmagics' has no attribute {name!r}")


__all__ = [
    "AsyncBackendClient",
    "AuthenticationError",
    "BackendClient",
    "BackendHTTPError",
    "BackendNotFound",
    "BackendTimeout",
    "Clients",
    "ConfigurationError",
    "Event",
    "EventKind",
    "IncompleteAnswerError",
    "InstallError",
    "InstanceNotFound",
    "InstanceReplaced",
    "InterpreterTimeout",
    "ManifestError",
    "OrchestratorBusy",
    "OrchestratorClient",
    "OrchestratorError",
    "OrchestratorStopping",
    "OrchestratorUnavailable",
    "RemoteExecutionError",
    "RunnerExited",
    "SpecError",
    "StartError",
    "TransferError",
    "YwMagicsError",
    "__version__",
    "connect",
    "install",
    "load_ipython_extension",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext ywmagics``: register the magics, and start the orchestrator if none runs
    (without waiting for it: the first magic that needs it does)."""
    from ywmagics.kernel import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from ywmagics.kernel import unload_ipython_extension as unload

    unload(ipython)
