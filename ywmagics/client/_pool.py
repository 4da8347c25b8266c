"""One connection pool per process for every sync client, closed at exit.

Clients are cheap objects bound to aliases in notebooks and never closed by users: sharing one
pool keeps connections alive across clients and leaves no socket to the garbage collector.
"""

from __future__ import annotations

import atexit
import threading

import httpx

from ywmagics.client._http import DEFAULT_TIMEOUT

_lock = threading.Lock()
_client: httpx.Client | None = None


def shared_http() -> httpx.Client:
    global _client
    with _lock:
        if _client is None or _client.is_closed:
            _client = httpx.Client(timeout=DEFAULT_TIMEOUT)
        return _client


@atexit.register
def _close() -> None:
    if _client is not None:
        _client.close()
