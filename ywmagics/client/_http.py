"""What the sync and async clients share: no I/O, only how to read answers and errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx

from ywmagics.errors import (
    BackendHTTPError,
    BackendTimeout,
    OrchestratorError,
    OrchestratorUnavailable,
    YwMagicsError,
    error_from_dict,
)
from ywmagics.protocol import ERROR_HEADER

DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)


def orchestrator_error(response: httpx.Response) -> YwMagicsError | None:
    """The error the orchestrator itself answered with (not a backend's), if any."""
    if response.status_code < 400 or response.headers.get(ERROR_HEADER) != "1":
        return None
    try:
        return error_from_dict(response.json()["error"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return OrchestratorError(f"orchestrator answered {response.status_code}: {response.text}")


def raise_for_orchestrator(response: httpx.Response) -> httpx.Response:
    """The response, unless it is the orchestrator's own error (then that is raised)."""
    error = orchestrator_error(response)
    if error is not None:
        raise error
    return response


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
        response=response,
    )


def raise_for_error(response: httpx.Response) -> httpx.Response:
    """Raise the orchestrator's or the backend's error for an error status."""
    raise_for_orchestrator(response)
    if response.status_code >= 400:
        raise backend_error(response)
    return response


@contextlib.contextmanager
def translated(url: str, what: str = "the orchestrator") -> Iterator[None]:
    """httpx's timeouts and transport errors as ours, their cause kept: the one translation."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise BackendTimeout(
            f"no answer from {what} within the timeout ({type(error).__name__})",
            hint="pass a longer timeout=, or timeout=None to wait as long as it takes",
        ) from error
    except httpx.TransportError as error:
        raise OrchestratorUnavailable(
            f"cannot reach the orchestrator at {url}: {error!r}",
            hint="is it running? 'ywmagics status' tells; load the extension again to restart it",
        ) from error


def ndjson_items(
    lines: Iterator[str] | Iterator[bytes], source: str = "the orchestrator"
) -> Iterator[dict[str, Any]]:
    """The objects of an NDJSON answer (blank lines skipped); a line that is not a JSON object
    is an error saying that ``source`` sent it."""
    for line in lines:
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise YwMagicsError(f"{source} sent a line that is not JSON: {line[:200]!r}") from error
        if not isinstance(item, dict):
            raise YwMagicsError(f"{source} sent a line that is not an object: {line[:200]!r}")
        yield item
