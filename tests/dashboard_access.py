"""What the dashboard page does with a link, done by hand: load the page, trade the one-time code
in the link's fragment for a session, read the state with it."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx


def open_dashboard(url: str) -> dict[str, Any]:
    """Follow a dashboard link as the page does; return the state it shows. The link's code is
    spent after this (a second exchange is refused)."""
    parts = urlsplit(url)
    assert parts.path == "/dashboard/", url
    base = f"{parts.scheme}://{parts.netloc}"
    page = httpx.get(f"{base}/dashboard/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # Notebooks are served from loopback origins: the page may be framed by them (--inline).
    assert "frame-ancestors http://127.0.0.1:*" in page.headers["content-security-policy"]
    code = parse_qs(parts.fragment)["code"][0]
    answer = httpx.post(f"{base}/dashboard/session", json={"code": code})
    assert answer.status_code == 200, answer.text
    session = answer.json()["session"]
    state = httpx.get(f"{base}/dashboard/state", headers={"Authorization": f"Bearer {session}"})
    assert state.status_code == 200, state.text
    spent = httpx.post(f"{base}/dashboard/session", json={"code": code})
    assert spent.status_code == 401  # a link works once: each tab needs its own
    return dict(state.json())
