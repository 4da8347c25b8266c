"""Plain-Python clients of the orchestrator and its backends (httpx; no notebook needed).

Each name is imported when first used: finding or starting the orchestrator
(:mod:`ywmagics.client._connect`) needs no HTTP library, so that ``%load_ext`` starts one
before httpx is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ywmagics.client._backend import AsyncBackendClient, BackendClient
    from ywmagics.client._connect import connect, find_orchestrator
    from ywmagics.client._install import Clients, install
    from ywmagics.client._orchestrator import OrchestratorClient

_MODULE_OF = {
    "AsyncBackendClient": "_backend",
    "BackendClient": "_backend",
    "Clients": "_install",
    "OrchestratorClient": "_orchestrator",
    "connect": "_connect",
    "find_orchestrator": "_connect",
    "install": "_install",
}

__all__ = [
    "AsyncBackendClient",
    "BackendClient",
    "Clients",
    "OrchestratorClient",
    "connect",
    "find_orchestrator",
    "install",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'ywmagics.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ywmagics.client.{module}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
