"""The notebook side of ywmagics: ``%backends``, ``%%interpreter``, progress views, kernel spec.

``%load_ext ywmagics`` (or the "Python 3 (ywmagics)" kernel, which preloads it) calls
:func:`load_ipython_extension`. This package imports IPython; nothing outside it does.
"""

from __future__ import annotations

from typing import Any

from ywmagics.errors import InterpreterTimeout, RemoteExecutionError, RunnerExited, TransferError
from ywmagics.kernel.interpreter import Interrupted
from ywmagics.kernel.magics import YwMagics, kernel_partition

__all__ = [
    "InterpreterTimeout",
    "Interrupted",
    "RemoteExecutionError",
    "RunnerExited",
    "TransferError",
    "YwMagics",
    "kernel_partition",
    "load_ipython_extension",
    "unload_ipython_extension",
]

_LOADED: dict[int, YwMagics] = {}


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics on ``ipython`` and find (or start) the orchestrator."""
    if id(ipython) in _LOADED:
        return
    magics = YwMagics(shell=ipython)
    ipython.register_magics(magics)
    magics.register_hooks()
    _LOADED[id(ipython)] = magics
    magics.find_orchestrator()


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics and hooks; running backends keep running."""
    magics = _LOADED.pop(id(ipython), None)
    if magics is not None:
        magics.unregister()
