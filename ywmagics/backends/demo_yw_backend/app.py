"""demo_yw_backend: the demo backend of the tutorial (FastAPI).

Routes: ``GET /`` (readiness), ``GET /hello-world``, ``POST /cow-say``, and two helpers used by
the tests of partition pinning: ``GET /partition-echo`` and ``GET /call?path=...``.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import Any

import cowsay
import httpx
from fastapi import HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

NAME = "demo_yw_backend"
VERSION = "0.1.1"
CHARACTERS = sorted(cowsay.char_names)

# FastAPIOffline serves /docs and /redoc with their scripts from the backend itself (a FastAPI
# app loads them from a CDN): the pages work with no internet.
app = FastAPIOffline(
    title=NAME,
    version=VERSION,
    description="The demo backend of ywmagics: hello world and cowsay pictures.",
    root_path_in_servers=False,  # the server is said per request (served_at, below)
)
_seen_at: ContextVar[str] = ContextVar("seen_at", default="")


class ServedAtForwardedPrefix:
    """The app behind the prefix its proxy says (``X-Forwarded-Prefix``: the orchestrator's
    ``/backends/NAME/VERSION``, or the Jupyter server's path to it), per request, as
    ``--root-path`` would set it once: so /docs and its files load through either."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            prefix = dict(scope["headers"]).get(b"x-forwarded-prefix", b"").rstrip(b"/")
            if prefix.startswith(b"/"):
                raw_path = scope.get("raw_path") or scope["path"].encode()
                scope = {
                    **scope,
                    "root_path": prefix.decode("latin-1"),
                    "path": prefix.decode("latin-1") + scope["path"],
                    "raw_path": prefix + raw_path,
                }
            _seen_at.set(scope.get("root_path", ""))
        await self.inner(scope, receive, send)


def _openapi_served_here() -> dict[str, Any]:
    """The schema, its server being where this request came through (try-it-out calls there)."""
    schema = type(app).openapi(app)
    return {**schema, "servers": [{"url": _seen_at.get() or "/"}]}


app.openapi = _openapi_served_here  # type: ignore[method-assign]


class CowSayBody(BaseModel):
    message: str = Field(..., examples=["hello backends"])
    character: str = Field(
        "cow", description=f"One of: {', '.join(CHARACTERS)}.", examples=["trex"]
    )


@app.get("/")
def root() -> dict[str, str]:
    """Name and version; also the readiness path."""
    return {"name": NAME, "version": VERSION}


@app.get("/hello-world")
def hello_world() -> dict[str, str]:
    return {"message": "Hello world"}


@app.post("/cow-say")
def cow_say(body: CowSayBody) -> str:
    """The ASCII picture of ``character`` saying ``message``, as one JSON string."""
    character = body.character.strip().lower()
    if character not in CHARACTERS:
        raise HTTPException(
            status_code=422,
            detail=f"unknown character {body.character!r}; "
            f"valid characters are: {', '.join(CHARACTERS)}",
        )
    return cowsay.get_output_string(character, body.message)


@app.get("/partition-echo")
def partition_echo() -> dict[str, str | None]:
    """The partition this instance runs in (set by the orchestrator)."""
    return {"partition": os.environ.get("YW_PARTITION")}


@app.get("/call")
async def call(
    request: Request,
    path: str = Query(..., examples=["/backends/demo_yw_backend/^0.1.1/partition-echo"]),
    partition: str | None = Query(None, description="X-Backends-Partition header to send"),
):
    """GET ``path`` on the orchestrator with this instance's token and answer what it answered.

    The call carries the ``X-Backends-Partition`` header of the incoming request, or ``partition``
    when given: either way the orchestrator must pin it to this instance's partition.
    """
    base = os.environ.get("YW_ORCHESTRATOR_URL")
    if not base:
        raise HTTPException(503, detail="YW_ORCHESTRATOR_URL is not set")
    if not path.startswith("/"):
        raise HTTPException(422, detail="path must start with '/'")
    headers = {"Authorization": f"Bearer {os.environ.get('YW_INSTANCE_TOKEN', '')}"}
    partition = partition or request.headers.get("x-backends-partition")
    if partition:
        headers["X-Backends-Partition"] = partition
    try:
        async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
            response = await client.get(base.rstrip("/") + path, headers=headers)
    except httpx.HTTPError as error:
        raise HTTPException(502, detail=f"calling the orchestrator failed: {error!r}") from None
    try:
        content = response.json()
    except ValueError:
        content = {"text": response.text}
    return JSONResponse(content, status_code=response.status_code)


served = ServedAtForwardedPrefix(app)  # what uvicorn serves (the manifest's 'app:served')
