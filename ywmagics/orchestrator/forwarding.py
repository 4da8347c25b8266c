"""What a backend is told about the request it serves, and how its answer's links are kept
inside its base path: the proxy's header work, I/O-free.

A backend is served at ``/backends/NAME/VERSION/`` but sees requests for ``/``. Most apps need
nothing more: they receive the ``Host`` the client used and ``X-Forwarded-Host``, ``-Proto``,
``-Port`` and ``-Prefix`` (the base path), and the redirects and links they answer with are
rewritten: a ``Location``, ``Content-Location``, ``Refresh`` or ``Link`` that points at the
backend (the host name it was sent, the address it listens on, or a root-relative path outside
the base path) is moved into the base path, so that a redirect never leaves it. Links to other
sites are left alone.

A proxy in front of the orchestrator that holds its token (the Jupyter server's extension,
:mod:`ywmagics.jupyter`) says where *it* serves the backend, in its own ``X-Forwarded-Host``,
``-Proto`` and ``-Prefix``: the backend is then told those, and its links are kept in that
prefix (a link into the orchestrator's base path is moved there too). Anyone else's
``X-Forwarded-*`` headers are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

Headers = list[tuple[bytes, bytes]]

_REWRITTEN = {b"location", b"content-location"}
_LINK_TARGET = re.compile(rb"<([^>]*)>")
_REFRESH_URL = re.compile(rb"(url\s*=\s*)(['\"]?)([^'\";]*)", re.IGNORECASE)


def split_host(host: str) -> tuple[str, str]:
    """``(name, port)`` of a Host header, IPv6 literals kept in brackets, the name lower-cased."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name.lower() + "]", rest.removeprefix(":")
    name, _, port = host.partition(":")
    return name.lower(), port


def forwarded_headers(
    client_host: str, base_path: str, scheme: str = "http", host: str = ""
) -> Headers:
    """The headers that tell a backend where it is seen from: ``Host`` (the client's, unless
    the manifest gives one) and the ``X-Forwarded-*`` set."""
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)  # a websocket's handshake
    port = split_host(client_host)[1] or ("443" if scheme == "https" else "80")
    return [
        (b"host", (host or client_host).encode("latin-1")),
        (b"x-forwarded-host", client_host.encode("latin-1")),
        (b"x-forwarded-proto", scheme.encode()),
        (b"x-forwarded-port", port.encode()),
        (b"x-forwarded-prefix", base_path.encode("latin-1")),
    ]


class Rewriter:
    """Moves a backend's links into its base path, for one answer.

    ``client_host`` is the host the client used (the one absolute links are made to point at);
    ``backend_hosts`` are the other names the backend may use for itself (the Host it was sent,
    the address it listens on)."""

    def __init__(
        self,
        base_path: str,
        client_host: str,
        backend_hosts: Sequence[str],
        inner_base: str | None = None,
    ) -> None:
        self.base_path = base_path
        self.inner_base = inner_base  # the orchestrator's, when a proxy in front gave its own
        self.client_host = client_host
        self.own = {client_host.lower(), *(h.lower() for h in backend_hosts), "backend"}

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.netloc:
            if parts.scheme not in ("http", "https", "") or parts.netloc.lower() not in self.own:
                return url  # another site
            path = self._into(parts.path or "/")
            return urlunsplit((parts.scheme, self.client_host, path, parts.query, parts.fragment))
        if parts.scheme or not url.startswith("/"):
            return url  # mailto:, data:, or relative to the page (already inside)
        moved = self._into(parts.path)
        return url if moved == parts.path else moved + url[len(parts.path) :]

    def headers(self, headers: Sequence[tuple[bytes, bytes]]) -> Headers:
        return [(name, self._value(name, value)) for name, value in headers]

    def _value(self, name: bytes, value: bytes) -> bytes:
        if name in _REWRITTEN:
            return self._url_bytes(value)
        if name == b"link":
            return _LINK_TARGET.sub(lambda m: b"<" + self._url_bytes(m.group(1)) + b">", value)
        if name == b"refresh":
            return _REFRESH_URL.sub(
                lambda m: m.group(1) + m.group(2) + self._url_bytes(m.group(3)), value
            )
        return value

    def _url_bytes(self, value: bytes) -> bytes:
        return self.url(value.decode("latin-1").strip()).encode("latin-1")

    def _into(self, path: str) -> str:
        if _within(path, self.base_path):
            return path
        if self.inner_base is not None and _within(path, self.inner_base):
            return self.base_path + path[len(self.inner_base) :]
        return self.base_path + path


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base + "/")
