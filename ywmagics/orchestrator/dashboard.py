"""The dashboard: a page shipped in the package (``dashboard_page/``), the data it shows, live,
and how a browser gets in.

A browser never holds the orchestrator's token, and the dashboard uses no cookie (nothing
ambient: no other page can make the browser act with it, so no cross-site request forgery).
``POST /dashboard-link`` (with the token) makes a link whose fragment carries a one-time code;
the page (served to anyone: it holds no data) trades the code for a session at
``POST /dashboard/session``, keeps it in the tab's ``sessionStorage`` (a reload works) and sends
it as a bearer token, which opens :data:`SESSION_ROUTES` and nothing else. A fragment is never
sent to a server nor in a ``Referer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from ywmagics.errors import AuthenticationError, InstanceNotFound, SpecError
from ywmagics.orchestrator.browser import (
    CODE_LIFETIME,
    DASHBOARD_LABEL,
    SESSION_LIFETIME,
    BrowserAccess,
)
from ywmagics.orchestrator.requests import read_body
from ywmagics.orchestrator.service import Orchestrator
from ywmagics.orchestrator.snapshots import SnapshotFeed
from ywmagics.protocol import NDJSON
from ywmagics.spec import validate_name, validate_partition

PAGE_FOLDER = Path(__file__).parent / "dashboard_page"
LOG_TAIL = 64 * 1024  # bytes of a log shown before it is followed
INSTALL_LOG_TAIL = 256 * 1024
LOG_LOOK_EVERY = 0.25  # seconds between looks at a followed log
# Framed only by loopback pages (a notebook's output area); never by a backend's pages, which
# have names of their own (b-<hex>.localhost).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors http://127.0.0.1:* http://localhost:*"  # (no IPv6 literal is allowed here)
)
_PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
_PRIVATE_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,63}")
_FINGERPRINT = re.compile(r"[0-9a-f]{6,64}")


class SessionBody(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(max_length=256)]


def _orchestrator(request: Request) -> Orchestrator:
    orchestrator: Orchestrator = request.app.state.orchestrator
    return orchestrator


def _access(request: Request) -> BrowserAccess:
    access: BrowserAccess = request.app.state.access
    return access


def _line(item: dict[str, Any]) -> bytes:
    return (json.dumps(item) + "\n").encode()


async def page(request: Request) -> Response:
    if not request.url.path.endswith("/"):  # its files are named relative to the folder
        return RedirectResponse("/dashboard/", status_code=308)
    return FileResponse(PAGE_FOLDER / "index.html", headers=_PAGE_HEADERS)


async def static(request: Request) -> Response:
    name = request.path_params["file"]
    shipped = {p.name for p in PAGE_FOLDER.iterdir() if p.is_file()}
    if name not in shipped:  # only what the package ships: no path is ever built from input
        raise InstanceNotFound(f"the dashboard has no file {name[:80]!r}")
    return FileResponse(PAGE_FOLDER / name, headers=_PAGE_HEADERS)


async def dashboard_link(request: Request) -> Response:
    code = _access(request).issue_code(DASHBOARD_LABEL)
    url = f"{_orchestrator(request).settings.url}/dashboard/#code={code}"
    return JSONResponse({"url": url, "expires_in": CODE_LIFETIME})


async def session(request: Request) -> Response:
    body = await read_body(request, SessionBody)
    granted = _access(request).redeem(body.code, DASHBOARD_LABEL)
    if granted is None:
        raise AuthenticationError(
            "this dashboard link was used already, or is too old (links work once, for a few "
            "minutes)",
            hint="make a new one: 'ywmagics dashboard', or '%backends dashboard' in a notebook",
        )
    return JSONResponse(
        {"session": granted, "expires_in": SESSION_LIFETIME}, headers=_PRIVATE_HEADERS
    )


async def state(request: Request) -> Response:
    return JSONResponse(_orchestrator(request).overview(), headers=_PRIVATE_HEADERS)


async def stream(request: Request) -> Response:
    """``{"state": ...}`` lines: the newest snapshot, then each newer one (see
    :mod:`~ywmagics.orchestrator.snapshots`), until the server stops."""
    feed: SnapshotFeed = request.app.state.snapshots

    async def lines() -> AsyncIterator[bytes]:
        async with feed.watching():
            seen = 0
            while (newer := await feed.newer_than(seen)) is not None:
                line, seen = newer
                yield line

    return StreamingResponse(lines(), media_type=NDJSON, headers=_PRIVATE_HEADERS)


def snapshot_line(orchestrator: Orchestrator) -> bytes:
    return _line({"state": orchestrator.overview()})


async def follow_log(request: Request) -> Response:
    """An instance's log: its last :data:`LOG_TAIL` bytes, then what is appended, as it is."""
    orchestrator = _orchestrator(request)
    query = request.query_params
    key = (
        validate_partition(query.get("partition", "")),
        validate_name(query.get("name", "")),
        _checked(_VERSION, query.get("version", ""), "version"),
    )
    instance = orchestrator.supervisor.instances.get(key)
    if instance is None:
        raise InstanceNotFound(f"no instance of {key[1]} {key[2]} in partition {key[0]!r}")
    path = instance.log_path

    async def chunks() -> AsyncIterator[bytes]:
        while not path.exists():
            if orchestrator.bus.closed:
                return
            await asyncio.sleep(LOG_LOOK_EVERY)
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, 2) - LOG_TAIL))
            while True:
                if data := log.read(1 << 20):
                    yield data
                    continue
                if orchestrator.bus.closed:  # the server is stopping
                    return
                if orchestrator.supervisor.instances.get(key) is not instance:
                    yield b"\n--- the instance was stopped ---\n"
                    return
                with contextlib.suppress(OSError):
                    if path.stat().st_size < log.tell():  # emptied: follow from its start
                        log.seek(0)
                await asyncio.sleep(LOG_LOOK_EVERY)

    return StreamingResponse(
        chunks(), media_type="text/plain; charset=utf-8", headers=_PRIVATE_HEADERS
    )


async def install_log(request: Request) -> Response:
    orchestrator = _orchestrator(request)
    query = request.query_params
    path = orchestrator.installer.install_log(
        validate_name(query.get("name", "")),
        _checked(_VERSION, query.get("version", ""), "version"),
        _checked(_FINGERPRINT, query.get("fingerprint", ""), "fingerprint"),
    )
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, 2) - INSTALL_LOG_TAIL))
            text = log.read()
    except FileNotFoundError:
        raise InstanceNotFound(
            "no install log for that environment", hint="it was installed by an older version"
        ) from None
    return Response(text, media_type="text/plain; charset=utf-8", headers=_PRIVATE_HEADERS)


def _checked(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise SpecError(f"{value[:80]!r} is not a {what}")
    return value


ROUTES = [
    Route("/dashboard", page),
    Route("/dashboard/", page),
    Route("/dashboard/static/{file}", static),
    Route("/dashboard/session", session, methods=["POST"]),
    Route("/dashboard/state", state),
    Route("/dashboard/stream", stream),
    Route("/dashboard/log", follow_log),
    Route("/dashboard/install-log", install_log),
    Route("/dashboard-link", dashboard_link, methods=["POST"]),
]
