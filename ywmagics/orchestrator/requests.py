"""The bodies of the admin routes: read with a size limit, decoded against a schema.

Every body is a JSON object of a known shape (``msgspec`` structs: strict types, unknown fields
refused, no NaN, bounded depth), so a wrong one is a 400 that says what was wrong and where,
never a 500. A large body is decoded in a worker thread: the event loop serves every kernel and
every proxied request, and must not wait on one client's parsing.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

import msgspec
from starlette.requests import Request

from ywmagics.errors import SpecError
from ywmagics.spec import MAX_MODULES, MAX_SPEC_LENGTH

MAX_BODY = 256 * 1024  # bytes of an admin request's body
_IN_A_THREAD_FROM = 32 * 1024
Short = Annotated[str, msgspec.Meta(max_length=256)]
Value = Annotated[str, msgspec.Meta(max_length=8192)] | int | float


class InstallBody(msgspec.Struct, forbid_unknown_fields=True):
    modules: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=MAX_SPEC_LENGTH)]],
        msgspec.Meta(max_length=MAX_MODULES),
    ]
    configurations: Annotated[
        dict[Short, dict[Short, Annotated[dict[Short, Value], msgspec.Meta(max_length=64)]]],
        msgspec.Meta(max_length=MAX_MODULES),
    ] = {}
    partition: Short | None = None
    on: Short | None = None
    resources: Annotated[dict[Short, Short], msgspec.Meta(max_length=16)] = {}
    # the client's bundled backends (see Registry.searched): not part of the install object
    bundled: Annotated[str, msgspec.Meta(max_length=4096)] | None = None

    def as_object(self) -> dict[str, Any]:
        data = msgspec.structs.asdict(self)
        del data["bundled"]
        return data


class ShutdownBody(msgspec.Struct, forbid_unknown_fields=True):
    if_idle: bool = False  # only if nothing uses it (decided here, at once: no race)


class StopBody(msgspec.Struct, forbid_unknown_fields=True):
    partition: Short | None = None
    name: Short | None = None
    version: Short | None = None
    all: bool = False
    keep_data: bool = False


class UninstallBody(msgspec.Struct, forbid_unknown_fields=True):
    spec: Annotated[str, msgspec.Meta(max_length=MAX_SPEC_LENGTH)]
    fingerprint: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{6,64}$")] | None = None


class RestartBody(msgspec.Struct, forbid_unknown_fields=True):
    partition: Short
    name: Short
    version: Short


class GcBody(msgspec.Struct, forbid_unknown_fields=True):
    older_than_days: Annotated[float, msgspec.Meta(ge=0, le=100_000)]
    dry_run: bool = False
    # only these, NAME/VERSION/FINGERPRINT (as a dry run listed them and the user confirmed),
    # if they still qualify
    only: Annotated[list[Short], msgspec.Meta(max_length=10_000)] | None = None


class BrowserLinkBody(msgspec.Struct, forbid_unknown_fields=True):
    """A link for a browser to ``path`` of the backend ``name`` (``version``: exact, or a range)
    in ``partition``."""

    name: Short
    version: Short
    partition: Short = "Default"
    path: Annotated[str, msgspec.Meta(max_length=2048, pattern="^/")] = "/"


Body = TypeVar("Body", bound=msgspec.Struct)


async def read_body(request: Request, shape: type[Body]) -> Body:
    """The request's JSON body as ``shape``, or :class:`SpecError` saying what is wrong."""
    # A JSON content type cannot be sent by a plain HTML form or a "simple" cross-site request.
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise SpecError("send the request body as JSON (Content-Type: application/json)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _too_big()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _too_big()
        chunks.append(chunk)
    raw = b"".join(chunks)
    decoder = msgspec.json.Decoder(shape)
    try:
        if len(raw) >= _IN_A_THREAD_FROM:
            return await asyncio.to_thread(decoder.decode, raw)
        return decoder.decode(raw)
    except msgspec.ValidationError as error:
        raise SpecError(
            f"the request body is not what {request.url.path} takes: {error}"
        ) from error
    except msgspec.DecodeError as error:
        raise SpecError(f"the request body is not JSON: {error}") from error


def _too_big() -> SpecError:
    error = SpecError(f"the request body is larger than {MAX_BODY // 1024} KiB")
    error.http_status = 413
    return error
