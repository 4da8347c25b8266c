"""Moving notebook variables to a python runner and back, through the one wire codec.

``--in`` names are read from the notebook's namespace and encoded with :mod:`ywmagics.wire`;
``--out`` values come back encoded and are decoded here. Every failure names the variable.

Big buffers (array data, long ``bytes``) travel beside the JSON (:mod:`ywmagics.bulk`): in shared
memory when the runner is on this machine, else as binary frames. ``YWMAGICS_BULK=frames``
forces frames, ``YWMAGICS_BULK=inline`` puts everything in the JSON (base64): both are for
finding out what goes wrong, not for speed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError

from ywmagics import bulk, wire
from ywmagics.errors import TransferError

BULK_MODES = ("shared", "frames", "inline")


def bulk_mode() -> str:
    mode = os.environ.get("YWMAGICS_BULK", "").strip().lower() or "shared"
    if mode not in BULK_MODES:
        raise UsageError(f"YWMAGICS_BULK={mode!r}: say one of {', '.join(BULK_MODES)}")
    return mode


@dataclass
class Inputs:
    """The ``--in`` values of one run: their JSON, and their big buffers (in shared memory,
    ``listed`` says where, or to send as ``frames`` after the JSON)."""

    encoded: dict[str, Any]
    values: wire.Bulk | None = None
    listed: list[dict[str, Any]] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)

    def release(self) -> None:
        """Remove the segments the runner did not take (it failed, or never got them)."""
        bulk.remove_segments(bulk.segment_names(self.listed))


def check_names(option: str, names: Iterable[str]) -> list[str]:
    """The names given to ``--in``/``--out``, each a Python identifier, without repeats."""
    checked: list[str] = []
    for name in names:
        if not name.isidentifier():
            raise UsageError(f"{option} {name}: {name!r} is not a Python variable name")
        if name not in checked:
            checked.append(name)
    return checked


def encode_inputs(
    namespace: Mapping[str, Any],
    names: Iterable[str],
    runner_host: Any = None,
    *,
    takes_bulk: bool = True,
) -> Inputs:
    """Encode the notebook variables ``names`` for ``capturedIn``; for a runner that
    ``takes_bulk``, their big buffers go beside the JSON: in shared memory when
    ``runner_host`` (where the runner runs) is this machine, else as frames."""
    mode = bulk_mode() if takes_bulk else "inline"
    values = None if mode == "inline" else wire.Bulk()
    encoded: dict[str, Any] = {}
    for name in names:
        if name not in namespace:
            raise UsageError(
                f"--in {name}: no variable {name!r} is defined in the notebook "
                "(run the cell that defines it first)"
            )
        try:
            encoded[name] = wire.encode(namespace[name], name, values)
        except wire.WireError as error:
            raise UsageError(f"--in {name}: {error}") from error
    if values is None or not len(values):
        return Inputs(encoded)
    here = _here() if mode == "shared" else None
    listed, frames = bulk.place(values, runner_host, here)  # what shm cannot take: frames
    return Inputs(encoded, values, listed, frames)


_said_no_shared_memory = False


def _here() -> dict[str, Any] | None:
    """Where this kernel is (see :func:`ywmagics.bulk.host`); said once when shared memory
    cannot be used though there is some: big values then go more slowly, as frames."""
    global _said_no_shared_memory
    here = bulk.host()
    if here is None and os.path.isdir(bulk.SHM_FOLDER) and not _said_no_shared_memory:
        _said_no_shared_memory = True
        mine = os.path.join(bulk.SHM_FOLDER, f"ywmagics-{os.getuid()}")
        print(
            f"ywmagics: no private folder for shared memory: {mine} could not be made, or is "
            "not yours alone (another user's, or a link, made before yours?); big values "
            "travel as frames, more slowly. See who owns it with 'ls -ld'",
            file=sys.stderr,
        )
    return here


def bulk_request(runner_host: Any, takes_bulk: bool = True) -> dict[str, Any] | None:
    """What a run asks of the runner for its ``--out`` values: big buffers beside the JSON,
    in shared memory if it shares this machine (``None``: everything inside the JSON)."""
    mode = bulk_mode() if takes_bulk else "inline"
    if mode == "inline":
        return None
    return {"host": _here() if mode == "shared" else None}


def decode_outputs(
    encoded: Any, names: Iterable[str], buffers: Sequence[Any] = ()
) -> dict[str, Any]:
    """Decode the runner's ``capturedOut`` for ``names`` (with the bulk ``buffers`` that came
    with it); every name must be there."""
    names = list(names)
    # All or nothing: the notebook's variables change only if every one came back.
    kept = f"(no --out variable was assigned: {', '.join(names)} keep their values)"
    if not isinstance(encoded, Mapping):
        raise TransferError(
            f"the runner answered no captured variables {kept}",
            hint="it is not a python runner of this ywmagics, or failed: see %backends logs",
        )
    values: dict[str, Any] = {}
    for name in names:
        if name not in encoded:
            raise TransferError(
                f"--out {name}: the cell did not define {name!r} {kept}",
                hint=f"assign {name} in the cell, or remove it from --out",
            )
        try:
            values[name] = wire.decode(encoded[name], name, buffers)
        except wire.WireError as error:
            raise TransferError(f"--out {name}: {error} {kept}") from error
    return values


class ChunkReader:
    """Lines and raw bytes from an answer that comes in chunks (an NDJSON stream whose result
    line may be followed by frames)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""
        self._offset = 0

    def _next(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._pending, self._offset = chunk, 0
                return True
        self._pending, self._offset = b"", 0
        return False

    def lines(self) -> Iterator[bytes]:
        """Each line (without its newline) to the end; raw bytes may be read between two."""
        parts: list[bytes] = []
        while True:
            end = self._pending.find(b"\n", self._offset)
            if end >= 0:
                parts.append(self._pending[self._offset : end])
                self._offset = end + 1
                yield b"".join(parts)
                parts = []
                continue
            parts.append(self._pending[self._offset :])
            if not self._next():
                if any(parts):
                    yield b"".join(parts)
                return

    def readinto(self, view: memoryview) -> int:
        if self._offset >= len(self._pending) and not self._next():
            return 0
        count = min(view.nbytes, len(self._pending) - self._offset)
        view[:count] = memoryview(self._pending)[self._offset : self._offset + count]
        self._offset += count
        return count
