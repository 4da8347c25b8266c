"""Fuzzing every admin route and the proxy in-process (hypothesis, bounded): no 5xx, no hang.

The orchestrator has an empty registry, so that no example can install anything for real.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ywmagics.orchestrator.app import create_app
from ywmagics.orchestrator.service import Orchestrator, Settings

from .inprocess import BASE, TOKEN, LoopThread, sync_client

MASTER = {"Authorization": f"Bearer {TOKEN}"}
BOUNDED = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
fields = st.sampled_from(
    ["modules", "configurations", "partition", "name", "version", "all", "spec", "path", "x"]
)
bodies = st.one_of(
    json_values,
    st.dictionaries(fields, json_values, max_size=5),
    st.builds(
        lambda modules, partition: {"modules": modules, "partition": partition},
        st.lists(st.text(max_size=60), max_size=5),
        st.text(max_size=20),
    ),
)


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "empty-registry").mkdir()
    (root / "sockets").mkdir()
    orchestrator = Orchestrator(
        Settings(
            environments_dir=root / "environments",
            logs_dir=root / "logs",
            sockets_dir=root / "sockets",
            registries=[root / "empty-registry"],
            url=BASE,
        )
    )
    loop = LoopThread()
    yield sync_client(create_app(orchestrator, TOKEN), loop)
    loop.close()


def _no_fault(answer: httpx.Response) -> None:
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        assert answer.headers["x-ywmagics-error"] == "1"
        assert answer.json()["error"]["message"]


@BOUNDED
@given(path=st.sampled_from(["/install", "/stop", "/uninstall", "/browser-link"]), body=bodies)
def test_admin_posts(http: httpx.Client, path: str, body: Any) -> None:
    headers = {**MASTER, "Content-Type": "application/json"}
    _no_fault(http.post(path, headers=headers, content=json.dumps(body)))


@BOUNDED
@given(raw=st.binary(max_size=200))
def test_admin_posts_of_any_bytes(http: httpx.Client, raw: bytes) -> None:
    headers = {**MASTER, "Content-Type": "application/json"}
    for path in ("/install", "/stop", "/uninstall"):
        _no_fault(http.post(path, headers=headers, content=raw))


segment = st.text(
    st.characters(codec="ascii", exclude_characters="/?#", exclude_categories=["Cc"]), max_size=20
)


@BOUNDED
@given(name=segment, lines=st.text(max_size=8), partition=st.text(max_size=20))
def test_logs(http: httpx.Client, name: str, lines: str, partition: str) -> None:
    params = {"lines": lines, "partition": partition}
    _no_fault(http.get(f"/logs/{quote(name, safe='')}", headers=MASTER, params=params))


@BOUNDED
@given(
    name=segment,
    version=segment,
    rest=st.text(max_size=30),
    partition=st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=20),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
)
def test_the_proxy(
    http: httpx.Client, name: str, version: str, rest: str, partition: str, method: str
) -> None:
    path = "/".join(quote(part, safe="") for part in ("", "backends", name, version))
    url = f"{path}/{quote(rest, safe='/')}"
    headers = {**MASTER, "X-Backends-Partition": partition}
    answer = http.request(method, url, headers=headers, content=b"{}")
    if method != "HEAD":  # (a HEAD answer has no body to read the error from)
        _no_fault(answer)
    assert answer.status_code < 500


def test_the_fuzzed_orchestrator_still_answers(http: httpx.Client) -> None:
    assert http.get("/status", headers=MASTER).status_code == 200
