"""Moving notebook variables to a python runner and back, through the one wire codec.

``--in`` names are read from the notebook's namespace and encoded with :mod:`ywmagics.wire`;
``--out`` values come back encoded and are decoded here. Every failure names the variable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from IPython.core.error import UsageError

from ywmagics import wire
from ywmagics.errors import TransferError


def check_names(option: str, names: Iterable[str]) -> list[str]:
    """The names given to ``--in``/``--out``, each a Python identifier, without repeats."""
    checked: list[str] = []
    for name in names:
        if not name.isidentifier():
            raise UsageError(f"{option} {name}: {name!r} is not a Python variable name")
        if name not in checked:
            checked.append(name)
    return checked


def encode_inputs(namespace: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Encode the notebook variables ``names`` for ``capturedIn``."""
    encoded: dict[str, Any] = {}
    for name in names:
        if name not in namespace:
            raise UsageError(
                f"--in {name}: no variable {name!r} is defined in the notebook "
                "(run the cell that defines it first)"
            )
        try:
            encoded[name] = wire.encode(namespace[name], name)
        except wire.WireError as error:
            raise UsageError(f"--in {name}: {error}") from error
    return encoded


def decode_outputs(encoded: Any, names: Iterable[str]) -> dict[str, Any]:
    """Decode the runner's ``capturedOut`` for ``names``; every name must be there."""
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
            values[name] = wire.decode(encoded[name], name)
        except wire.WireError as error:
            raise TransferError(f"--out {name}: {error} {kept}") from error
    return values
