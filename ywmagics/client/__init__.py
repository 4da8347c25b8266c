"""Plain-Python clients of the orchestrator and its backends (httpx; no notebook needed)."""

from ywmagics.client._backend import AsyncBackendClient, BackendClient
from ywmagics.client._connect import connect, find_orchestrator
from ywmagics.client._install import Clients, install
from ywmagics.client._orchestrator import OrchestratorClient

__all__ = [
    "AsyncBackendClient",
    "BackendClient",
    "Clients",
    "OrchestratorClient",
    "connect",
    "find_orchestrator",
    "install",
]
