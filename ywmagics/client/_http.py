"""What the sync and async clients share: no I/O, only how to build requests and read answers."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx

from ywmagics.errors import ERROR_HEADER, BackendHTTPError, YwMagicsError, error_from_dict

PARTITION_HEADER = "X-Backends-Partition"


def orchestrator_error(response: httpx.Response) -> YwMagicsError | None:
    """The error the orchestrator itself answered with (not a backend's), if any."""
    if response.status_code < 400 or response.headers.get(ERROR_HEADER) != "1":
        return None
    try:
        return error_from_dict(response.json()["error"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return YwMagicsError(f"orchestrator answered {response.status_code}: {response.text}")


def backend_error(response: httpx.Response) -> BackendHTTPError:
    body = response.text
    detail: Any = body
    with contextlib.suppress(json.JSONDecodeError, AttributeError):
        detail = response.json().get("detail", body)
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    return BackendHTTPError(
        f"{response.request.method} {response.request.url.path} answered "
        f"{response.status_code} {response.reason_phrase}: {detail[:2000]}",
        status=response.status_code,
        body=body,
        url=str(response.request.url),
    )


def check(response: httpx.Response) -> httpx.Response:
    """Raise the orchestrator's or the backend's error for an error status."""
    error = orchestrator_error(response)
    if error is not None:
        raise error
    if response.status_code >= 400:
        raise backend_error(response)
    return response


def translate_transport_error(error: httpx.TransportError, url: str) -> YwMagicsError:
    from ywmagics.errors import OrchestratorError

    return OrchestratorError(
        f"cannot reach the orchestrator at {url}: {error!r}",
        hint="is it running? 'ywmagics status' tells; load the extension again to restart it",
    )
