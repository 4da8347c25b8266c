"""Browsers: each backend instance's pages on an origin of their own, opened by a one-time code.

A browser cannot send the orchestrator's token, and must never hold it: cookies are not isolated
by port, so a cookie of ``127.0.0.1`` reaches every server on that host, another user's too. So:

- Each instance has a host name of its own, ``b-<16 hex>.localhost`` on the orchestrator's port
  (browsers resolve ``*.localhost`` to loopback). Its pages cannot read the orchestrator's API
  or another instance's pages: they are other origins.
- A link made for the notebook (``BackendClient.docs_url``) carries a one-time code, good for a
  few minutes and for that instance only. Opening it sets a session cookie, host-only on the
  instance's name and scoped to its path, that opens that one instance and nothing else, and
  redirects to the same address without the code (so a reload works). The cookie is
  ``SameSite=Lax``: a link opened from the notebook's page (another site) is a top-level
  navigation, whose redirect would not carry a ``Strict`` cookie; requests that other pages'
  scripts make are refused by the middleware anyway (``Origin``, ``Sec-Fetch-Site``).
- A session lasts :data:`SESSION_LIFETIME` at most and ends when its instance stops: a new
  instance, even of the same backend, has a new host name.

The dashboard's links work alike, without a cookie: see :mod:`ywmagics.orchestrator.dashboard`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

CODE_QUERY = "yw_code"
CODE_LIFETIME = 300.0
SESSION_COOKIE = "ywmagics_session"
SESSION_LIFETIME = 12 * 3600.0
LABEL_PATTERN = re.compile(r"b-[0-9a-f]{16}")
OUR_COOKIE_PREFIX = "ywmagics"  # every cookie named so is ours: never to or from a backend
# The label of dashboard codes and sessions in BrowserAccess: never an instance's (b-<hex>).
DASHBOARD_LABEL = "dashboard"
# Open to anyone who can reach the port: the page itself (no data) and the trading of a code.
PUBLIC_ROUTES = {
    ("GET", "/dashboard"),
    ("GET", "/dashboard/"),
    ("POST", "/dashboard/session"),
}
PUBLIC_PREFIX = "/dashboard/static/"
# What a dashboard session opens: what the page shows and its buttons, nothing else.
SESSION_ROUTES = {
    ("GET", "/dashboard/state"),
    ("GET", "/dashboard/stream"),
    ("GET", "/dashboard/log"),
    ("GET", "/dashboard/install-log"),
    ("POST", "/stop"),
    ("POST", "/restart"),
    ("POST", "/uninstall"),
    ("POST", "/gc"),
}


def new_label() -> str:
    return f"b-{secrets.token_hex(8)}"


def label_of_host(hostname: str) -> str | None:
    """The instance label of ``b-<hex>.localhost``, else ``None``."""
    label, dot, rest = hostname.lower().partition(".")
    if dot and rest == "localhost" and LABEL_PATTERN.fullmatch(label):
        return label
    return None


@dataclass
class _Grant:
    label: str
    expires: float


class BrowserAccess:
    """One-time codes and sessions, each bound to one instance label."""

    def __init__(self) -> None:
        self._codes: dict[str, _Grant] = {}
        self._sessions: dict[str, _Grant] = {}

    def issue_code(self, label: str) -> str:
        now = time.monotonic()
        self._codes = {c: g for c, g in self._codes.items() if g.expires > now}
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Grant(label, now + CODE_LIFETIME)
        return code

    def redeem(self, code: str, label: str) -> str | None:
        """A new session for ``label`` if ``code`` is a live code for it (used up either way,
        unless it was for another instance)."""
        grant = self._codes.get(code)
        if grant is None or grant.label != label:
            return None
        del self._codes[code]
        if grant.expires <= time.monotonic():
            return None
        now = time.monotonic()
        self._sessions = {s: g for s, g in self._sessions.items() if g.expires > now}
        session = secrets.token_urlsafe(32)
        self._sessions[session] = _Grant(label, now + SESSION_LIFETIME)
        return session

    def session_opens(self, session: str, label: str) -> bool:
        grant = self._sessions.get(session)
        return grant is not None and grant.label == label and grant.expires > time.monotonic()

    def revoke(self, label: str) -> None:
        """End every code and session of an instance that stopped."""
        self._codes = {c: g for c, g in self._codes.items() if g.label != label}
        self._sessions = {s: g for s, g in self._sessions.items() if g.label != label}


def cookie_pairs(header: str) -> Iterator[tuple[str, str, str]]:
    """``(name, value, raw piece)`` of a ``Cookie`` header, split as browsers and Starlette do
    (``;`` between cookies, the first ``=`` in each, whitespace around names and values
    dropped): what we strip is exactly what we would read."""
    for piece in header.split(";"):
        name, sep, value = piece.partition("=")
        if not sep:
            name, value = "", name
        if name.strip() or value.strip():
            yield name.strip(), value.strip(), piece


def is_ours(cookie_name: str) -> bool:
    return cookie_name.strip().lower().startswith(OUR_COOKIE_PREFIX)


def set_cookie_name(value: str) -> str:
    """The name a ``Set-Cookie`` value sets (RFC 6265 §5.2: before the first ``=`` of its first
    part, whitespace dropped)."""
    first = value.split(";", 1)[0]
    name, sep, _ = first.partition("=")
    return name.strip() if sep else ""


def is_public(method: str, path: str) -> bool:
    """Whether a route needs no credential at all (the dashboard's page and its files)."""
    if ("GET" if method == "HEAD" else method, path) in PUBLIC_ROUTES:
        return True
    return method in ("GET", "HEAD") and path.startswith(PUBLIC_PREFIX)


def dashboard_session_opens(method: str, path: str) -> bool:
    """Whether a dashboard session opens this route."""
    return (method, path) in SESSION_ROUTES
