"""Rich display: objects as Jupyter mime bundles ``{"data": {mime: value}, "metadata": {}}``.

Like IPython's display formatter: ``_repr_mimebundle_``, then each ``_repr_*_`` method, and always
``text/plain`` (the repr). A matplotlib figure becomes ``image/png``. Values are strings (binary
data in base64), except JSON mime types whose value is the JSON data itself.
"""

from __future__ import annotations

import binascii
import io
import json
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RICH_REPRS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("text/latex", "_repr_latex_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
)


def _base64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def safe_repr(obj: object) -> str:
    try:
        return repr(obj)
    except Exception as exc:
        return f"<{type(obj).__name__} object (repr failed: {exc!r})>"


def is_figure(obj: object) -> bool:
    figure = sys.modules.get("matplotlib.figure")
    return figure is not None and isinstance(obj, figure.Figure)


def figure_png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return _base64(buffer.getvalue())


def mime_value(mime: str, value: Any) -> Any:
    """What JSON carries for one mime type: JSON data as is, bytes in base64, the rest as str."""
    if mime == "application/json" or mime.endswith("+json"):
        try:
            json.dumps(value, allow_nan=False)
            return value
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, (bytes, bytearray)):
        return _base64(bytes(value))
    return value if isinstance(value, str) else str(value)


def _print_failure() -> None:
    import traceback

    traceback.print_exc()  # to the cell's stderr, as IPython does for a failing formatter


def mime_bundle(obj: Any, include: Any = None, exclude: Any = None) -> dict[str, Any]:
    """The mime bundle of ``obj``; ``include``/``exclude`` filter mime types."""
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    if is_figure(obj):
        data["image/png"] = figure_png(obj)
    elif not isinstance(obj, type):  # a class's _repr_*_ are unbound methods: use its repr
        method = getattr(obj, "_repr_mimebundle_", None)
        if callable(method):
            try:
                found = method(include=include, exclude=exclude)
                if isinstance(found, tuple):
                    found, meta = found
                    metadata.update(meta or {})
                for mime, value in (found or {}).items():
                    data[mime] = mime_value(mime, value)
            except Exception:
                _print_failure()
        for mime, attribute in RICH_REPRS:
            method = getattr(obj, attribute, None)
            if mime in data or not callable(method):
                continue
            try:
                value = method()
            except Exception:
                _print_failure()
                continue
            if isinstance(value, tuple):
                value, meta = value
                metadata[mime] = meta
            if value is not None:
                data[mime] = mime_value(mime, value)
    data.setdefault("text/plain", safe_repr(obj))
    if include:
        data = {mime: value for mime, value in data.items() if mime in include}
    if exclude:
        data = {mime: value for mime, value in data.items() if mime not in exclude}
    return {"data": data, "metadata": metadata}
