"""What a backend is told about where it is seen from, and its links kept inside its base path."""

from __future__ import annotations

import pytest

from ywmagics.orchestrator.forwarding import Rewriter, forwarded_headers, split_host

BASE = "/backends/app/1.0.0"
OUTER = "/user/alice/ywmagics/b/CAPABILITY"  # a proxy in front: the Jupyter server's extension


def test_the_backend_is_told_where_it_is_seen_from() -> None:
    assert dict(forwarded_headers("b-1.localhost:8765", BASE)) == {
        b"host": b"b-1.localhost:8765",
        b"x-forwarded-host": b"b-1.localhost:8765",
        b"x-forwarded-proto": b"http",
        b"x-forwarded-port": b"8765",
        b"x-forwarded-prefix": BASE.encode(),
    }
    fixed = dict(forwarded_headers("127.0.0.1:9", BASE, host="app.internal"))
    assert fixed[b"host"] == b"app.internal" and fixed[b"x-forwarded-host"] == b"127.0.0.1:9"
    assert dict(forwarded_headers("[::1]:7", BASE))[b"x-forwarded-port"] == b"7"
    assert dict(forwarded_headers("localhost", BASE))[b"x-forwarded-port"] == b"80"
    assert split_host("[::1]:7") == ("[::1]", "7") and split_host("LocalHost") == ("localhost", "")


@pytest.mark.parametrize(
    ("url", "moved"),
    [
        ("/db/", f"{BASE}/db/"),  # a trailing-slash redirect of an app that knows no base path
        ("/", f"{BASE}/"),
        (f"{BASE}/db/", f"{BASE}/db/"),  # an app that knows its base path
        (BASE, BASE),
        ("db/", "db/"),  # relative to the page: inside already
        ("?page=2", "?page=2"),
        ("http://b-1.localhost:8765/db?x=1#top", f"http://b-1.localhost:8765{BASE}/db?x=1#top"),
        ("http://backend/static/a.css", f"http://b-1.localhost:8765{BASE}/static/a.css"),
        ("http://127.0.0.1:5000/api", f"http://b-1.localhost:8765{BASE}/api"),  # its own port
        ("http://127.0.0.1:8888/lab", "http://127.0.0.1:8888/lab"),  # another server: left alone
        ("https://example.org/login", "https://example.org/login"),
        ("//cdn.example.org/x.js", "//cdn.example.org/x.js"),
        ("mailto:someone@example.org", "mailto:someone@example.org"),
        ("/backends/app/1.0.1/x", f"{BASE}/backends/app/1.0.1/x"),  # never into another backend
    ],
)
def test_links_to_the_backend_stay_in_its_base_path(url: str, moved: str) -> None:
    rewriter = Rewriter(BASE, "b-1.localhost:8765", ["b-1.localhost:8765", "127.0.0.1:5000"])
    assert rewriter.url(url) == moved


def test_the_headers_that_carry_links() -> None:
    rewriter = Rewriter(BASE, "127.0.0.1:8765", ["127.0.0.1:8765"])
    headers = [
        (b"location", b"/login"),
        (b"content-location", b"http://127.0.0.1:8765/items/3"),
        (b"refresh", b"5; url=/next"),
        (b"link", b"</style.css>; rel=preload, <https://fonts.example.org/f.woff2>; rel=font"),
        (b"x-other", b"/kept"),
    ]
    assert rewriter.headers(headers) == [
        (b"location", f"{BASE}/login".encode()),
        (b"content-location", f"http://127.0.0.1:8765{BASE}/items/3".encode()),
        (b"refresh", f"5; url={BASE}/next".encode()),
        (
            b"link",
            f"<{BASE}/style.css>; rel=preload, "
            "<https://fonts.example.org/f.woff2>; rel=font".encode(),
        ),
        (b"x-other", b"/kept"),
    ]


@pytest.mark.parametrize(
    ("url", "moved"),
    [
        ("/login", f"{OUTER}/login"),  # an app that knows no base path
        (f"{OUTER}/db/", f"{OUTER}/db/"),  # one that took the prefix it was told
        (f"{BASE}/db/?x=1", f"{OUTER}/db/?x=1"),  # one started with the orchestrator's path
        (f"http://jupyter.example{BASE}/a", f"http://jupyter.example{OUTER}/a"),
        ("http://127.0.0.1:8765/a", "http://127.0.0.1:8765/a"),  # not a name it was sent
    ],
)
def test_behind_a_proxy_in_front_links_stay_in_its_prefix(url: str, moved: str) -> None:
    rewriter = Rewriter(OUTER, "jupyter.example", ["jupyter.example"], inner_base=BASE)
    assert rewriter.url(url) == moved
