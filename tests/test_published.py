"""Published backends from real package indexes on loopback (pypiserver; verdaccio for npm):
released, installed with ``pypi:NAME#RANGE`` or ``npm:NAME#RANGE``, called, a new release picked
by the range, uninstalled; every error names the index. Nothing may leave loopback: the
orchestrator's proxy settings point at a closed port for every other host."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ywmagics
from ywmagics.client import OrchestratorClient
from ywmagics.commands import format_listing
from ywmagics.discovery import Connection
from ywmagics.errors import BackendNotFound, InstallError, ManifestError
from ywmagics.events import Event

from .conftest import run_concurrently, run_in_ipython, start_orchestrator, stop_orchestrator
from .npm_registry import NpmRegistry, npm_package
from .package_index import PackageServer, make_wheel

pytestmark = pytest.mark.slow  # a package index, an orchestrator, environments built with uv

SERVER = r"""
import http.server, json, socketserver, sys
import yw_helper

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(
            {"version": "@VERSION@", "helper": yw_helper.VERSION, "file": __file__}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

Server(sys.argv[1], Handler).serve_forever()
"""
MANIFEST = """
name = "yw-weather"
version = "@VERSION@"
description = "A published test backend: its version, and that of a dependency from the index."
runtime = "python"
start = ["{python}", "-m", "yw_weather", "{socket}"]
listen = "unix"

[build.modules]
default = ""
help = "Extra requirements, from the same index."
"""


def weather(folder: Path, version: str, *, entry_point: bool = True) -> Path:
    files = {
        "yw_weather/__init__.py": "",
        "yw_weather/__main__.py": SERVER.replace("@VERSION@", version),
        "yw_weather/ywbackend.toml": MANIFEST.replace("@VERSION@", version),
    }
    return make_wheel(
        folder,
        "yw-weather",
        version,
        files,
        entry_point="yw_weather" if entry_point else None,
        requires=("yw-helper>=1",),
    )


def _only_loopback(index: PackageServer) -> dict[str, str]:
    """The user's index, as uv and pip read it; any other host goes to a closed port."""
    closed = "http://127.0.0.1:9"
    env = {"UV_DEFAULT_INDEX": index.url, "NO_PROXY": "127.0.0.1,localhost"}
    env.update(dict.fromkeys(["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"], closed))
    return {**env, **{name.lower(): value for name, value in env.items()}}


@pytest.fixture
def index(tmp_path: Path) -> Iterator[PackageServer]:
    with PackageServer(tmp_path / "index" / "packages") as server:
        server.release(
            make_wheel(
                tmp_path / "built",
                "yw-helper",
                "1.0.0",
                {"yw_helper/__init__.py": "VERSION = '1.0.0'\n"},
            )
        )
        yield server


@pytest.fixture
def orchestrator(
    index: PackageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Connection]:
    yield from _serving(_only_loopback(index), tmp_path, monkeypatch)


def _serving(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Connection]:
    """An orchestrator whose environment has ``env`` (the user's index settings)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    process, connection = start_orchestrator(tmp_path / "home")
    yield connection
    stop_orchestrator(process)


def test_a_published_backend_installs_from_the_index_and_a_new_release_is_picked(
    index: PackageServer, orchestrator: Connection, tmp_path: Path
) -> None:
    first = weather(tmp_path / "built", "1.2.0")
    index.release(first)
    client = ywmagics.install("pypi:yw-weather#^1.2 as weather", connection=orchestrator).weather
    answer = client.fetch_json("/")
    assert (answer["version"], answer["helper"]) == ("1.2.0", "1.0.0")
    assert "/site-packages/yw_weather/" in answer["file"]  # the wheel installed, not a copy
    listing = OrchestratorClient(orchestrator).listing()
    (environment,) = listing["environments"]
    assert environment["name"] == "pypi:yw-weather"
    source = environment["source"]
    assert (source["index"], source["package"], source["version"]) == (
        index.url,
        "yw-weather",
        "1.2.0",
    )
    assert source["digest"] == f"sha256:{hashlib.sha256(first.read_bytes()).hexdigest()}"
    shown = format_listing(listing)
    assert f"yw-weather 1.2.0 from {index.url} ({source['digest'][:19]}..." in shown

    # A new release: the same range now takes it.
    index.release(weather(tmp_path / "built", "1.3.0"))
    again = ywmagics.install("pypi:yw-weather#^1.2 as weather", connection=orchestrator).weather
    assert again.fetch_json("/")["version"] == "1.3.0"

    removed = OrchestratorClient(orchestrator).uninstall("pypi:yw-weather")
    assert sorted(e["version"] for e in removed["removed"]) == ["1.2.0", "1.3.0"]
    assert OrchestratorClient(orchestrator).listing()["environments"] == []


def test_concurrent_installs_fetch_once_and_run_the_recorded_wheel(
    index: PackageServer, orchestrator: Connection, tmp_path: Path
) -> None:
    wheel = weather(tmp_path / "built", "1.2.0")
    index.release(wheel)

    def install(partition: str) -> None:
        got = ywmagics.install(
            "pypi:yw-weather#^1.2 as w", partition=partition, connection=orchestrator
        )
        assert got.w.fetch_json("/")["version"] == "1.2.0"

    assert run_concurrently(install, [f"P{n}" for n in range(5)]) == []
    (environment,) = OrchestratorClient(orchestrator).listing()["environments"]
    assert (
        environment["source"]["digest"]
        == f"sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}"
    )
    assert ":" not in environment["path"]  # a PATH-like variable naming it stays whole
    # The stop takes the name as the user spells it.
    stopped = OrchestratorClient(orchestrator).stop(name="pypi:Yw_Weather", partition="P0")
    assert [s["partition"] for s in stopped] == ["P0"]


def test_modules_cannot_replace_the_wheel_unseen(
    index: PackageServer, orchestrator: Connection, tmp_path: Path
) -> None:
    index.release(weather(tmp_path / "built", "1.1.0"))
    index.release(weather(tmp_path / "built", "1.2.0"))
    with pytest.raises(InstallError) as conflict:
        ywmagics.install(
            "pypi:yw-weather#1.2.0 as w",
            configurations={"pypi:yw-weather": {"build": {"modules": "yw-weather<1.2"}}},
            connection=orchestrator,
        )
    assert "installing yw-weather 1.2.0 from" in conflict.value.message
    assert "yw-weather" in conflict.value.log_tail  # the resolver's own words: a conflict


def test_a_token_in_the_index_url_is_never_shown_recorded_or_on_a_command_line(
    index: PackageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index.release(weather(tmp_path / "built", "1.2.0"))
    secret = "sekrit-token-42"
    with_token = index.url.replace("http://", f"http://__token__:{secret}@")
    env = {**_only_loopback(index), "UV_DEFAULT_INDEX": with_token}
    home = tmp_path / "home"
    for connection in _serving(env, tmp_path, monkeypatch):
        events: list[Event] = []
        ywmagics.install("pypi:yw-weather as w", connection=connection, on_event=events.append)
        listing = OrchestratorClient(connection).listing()
        assert listing["environments"][0]["source"]["index"] == index.url
        assert secret not in json.dumps(listing) + json.dumps([e.to_dict() for e in events])
    files = [f for f in home.rglob("*") if f.is_file() and f.suffix in (".json", ".log")]
    assert files and not [f for f in files if secret in f.read_text(errors="replace")]


def test_a_version_fetched_before_installs_while_the_index_is_down(
    index: PackageServer, orchestrator: Connection, tmp_path: Path
) -> None:
    index.release(weather(tmp_path / "built", "1.2.0"))
    ywmagics.install("pypi:yw-weather#^1.2 as w", connection=orchestrator)
    OrchestratorClient(orchestrator).stop(partition="Default")
    index.stop()
    again = ywmagics.install("pypi:yw-weather#^1.2 as w", connection=orchestrator).w
    assert again.fetch_json("/")["version"] == "1.2.0"


def test_what_an_index_lacks_is_a_clear_error_naming_it(
    index: PackageServer, orchestrator: Connection, tmp_path: Path
) -> None:
    index.release(weather(tmp_path / "built", "1.2.0"))
    with pytest.raises(BackendNotFound) as unknown:
        ywmagics.install("pypi:yw-nothing", connection=orchestrator)
    assert f"no package 'yw-nothing' on the index {index.url} (from UV_DEFAULT_INDEX)" in str(
        unknown.value.message
    )
    with pytest.raises(BackendNotFound) as out_of_range:
        ywmagics.install("pypi:yw-weather#^3", connection=orchestrator)
    assert f"no version of pypi:yw-weather matches '^3' on the index {index.url}" in (
        out_of_range.value.message
    )
    assert "versions with a pure wheel there: 1.2.0" in out_of_range.value.hint
    # A plain name is a local backend's: an index's never shadows it.
    with pytest.raises(BackendNotFound, match="unknown backend 'yw-weather'"):
        ywmagics.install("yw-weather as w", connection=orchestrator)
    # A package that is not a backend.
    index.release(weather(tmp_path / "plain", "2.0.0", entry_point=False))
    with pytest.raises(ManifestError) as not_a_backend:
        ywmagics.install("pypi:yw-weather#^2", connection=orchestrator)
    assert "pypi:yw-weather 2.0.0 is not a ywmagics backend" in not_a_backend.value.message
    assert "ywmagics.backends" in not_a_backend.value.hint


def test_the_kernel_installs_a_published_backend_with_the_magic(
    index: PackageServer, tmp_path: Path
) -> None:
    index.release(weather(tmp_path / "built", "1.2.0"))
    env = {**os.environ, **_only_loopback(index), "YW_HOME": str(tmp_path / "kernel-home")}
    code = """
ip = get_ipython()
ip.run_line_magic("load_ext", "ywmagics")
ip.run_line_magic("backends", "install pypi:yw-weather#^1.2")
print("VERSION", yw_weather.fetch_json("/")["version"])
"""
    # The default alias: the package's name as an identifier.
    assert "VERSION 1.2.0" in run_in_ipython(code, env)


TILES_SERVER = r"""
const http = require("http");
const dep = require("yw-dep");
http.createServer((request, response) => {
  response.setHeader("Content-Type", "application/json");
  response.end(JSON.stringify({ version: "@VERSION@", dep: dep.VERSION, dir: __dirname }));
}).listen(process.argv[2]);
"""


def tiles(folder: Path, version: str, **fields: object) -> Path:
    manifest = {"runtime": "command", "start": ["node", "{app}/server.js", "{socket}"]}
    return npm_package(
        folder / version,
        "@acme/yw-tiles",
        version,
        {"server.js": TILES_SERVER.replace("@VERSION@", version)},
        dependencies={"yw-dep": "^1.0.0"},
        **({"ywbackend": manifest} | fields),
    )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[NpmRegistry]:
    with NpmRegistry(tmp_path / "npm-registry") as running:
        dep = npm_package(
            tmp_path / "dep", "yw-dep", "1.0.0", {"index.js": "exports.VERSION = '1.0.0';\n"}
        )
        running.publish(dep)
        yield running


@pytest.fixture
def npm_orchestrator(
    registry: NpmRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Connection]:
    closed = "http://127.0.0.1:9"  # any host but loopback: refused
    env = {**registry.env, "npm_config_proxy": closed, "npm_config_https_proxy": closed}
    env["npm_config_noproxy"] = "127.0.0.1,localhost"
    yield from _serving(env, tmp_path, monkeypatch)


def test_an_npm_backend_installs_from_the_registry_and_a_new_release_is_picked(
    registry: NpmRegistry, npm_orchestrator: Connection, tmp_path: Path
) -> None:
    registry.publish(tiles(tmp_path / "tiles", "2.0.1"))
    client = ywmagics.install("npm:@acme/yw-tiles#~2.0 as tiles", connection=npm_orchestrator).tiles
    answer = client.fetch_json("/")
    assert (answer["version"], answer["dep"]) == ("2.0.1", "1.0.0")  # its dependency, from there
    (environment,) = OrchestratorClient(npm_orchestrator).listing()["environments"]
    assert environment["name"] == "npm:@acme+yw-tiles"
    source = environment["source"]
    assert (source["index"], source["package"], source["version"]) == (
        registry.url,
        "@acme/yw-tiles",
        "2.0.1",
    )
    assert source["digest"].startswith("sha512-")
    registry.publish(tiles(tmp_path / "tiles", "2.0.5"))
    again = ywmagics.install("npm:@acme/yw-tiles#~2.0", connection=npm_orchestrator).yw_tiles
    assert again.fetch_json("/")["version"] == "2.0.5"
    removed = OrchestratorClient(npm_orchestrator).uninstall("npm:@acme/yw-tiles")
    assert sorted(e["version"] for e in removed["removed"]) == ["2.0.1", "2.0.5"]


def test_npm_picks_as_npm_does_and_a_projects_own_scripts_do_not_run(
    registry: NpmRegistry, npm_orchestrator: Connection, tmp_path: Path
) -> None:
    # 'latest' is 2.0.1; 2.0.5 is a 'next' release, which npm does not take for ~2.0.
    registry.publish(tiles(tmp_path / "tiles", "2.0.1", scripts={"prepare": "husky"}))
    registry.publish(tiles(tmp_path / "tiles", "2.0.5"), tag="next")
    tiles_client = ywmagics.install("npm:@acme/yw-tiles#~2.0", connection=npm_orchestrator)
    # Its 'prepare' (a tool of its own repository) did not run, as for a dependency.
    assert tiles_client.yw_tiles.fetch_json("/")["version"] == "2.0.1"


def test_what_an_npm_registry_lacks_is_a_clear_error_naming_it(
    registry: NpmRegistry, npm_orchestrator: Connection, tmp_path: Path
) -> None:
    registry.publish(tiles(tmp_path / "tiles", "2.0.1"))
    with pytest.raises(BackendNotFound) as unknown:
        ywmagics.install("npm:yw-nothing", connection=npm_orchestrator)
    assert f"no package 'yw-nothing' on the npm registry {registry.url}" in unknown.value.message
    with pytest.raises(BackendNotFound) as out_of_range:
        ywmagics.install("npm:@acme/yw-tiles#~3.0", connection=npm_orchestrator)
    assert "no version of @acme/yw-tiles matches '~3.0'" in out_of_range.value.message
    assert out_of_range.value.hint == "versions there: 2.0.1"
    registry.publish(
        npm_package(tmp_path / "plain", "yw-plain", "1.0.0", {"index.js": ""}, description="x")
    )
    with pytest.raises(ManifestError) as not_a_backend:
        ywmagics.install("npm:yw-plain", connection=npm_orchestrator)
    assert "is not a ywmagics backend: its package.json has no 'ywbackend' field" in (
        not_a_backend.value.message
    )


def _new_backend(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ywmagics", "new-backend", *args], check=True)


def test_new_backend_makes_a_python_project_that_builds_releases_and_runs(
    index: PackageServer, orchestrator: Connection, tmp_path: Path
) -> None:
    project = tmp_path / "yw-demo"
    _new_backend("yw-demo", "--python", "--dir", str(project))
    uv = Path(sys.executable).with_name("uv")
    subprocess.run([str(uv), "build", "--wheel", "--quiet"], cwd=project, check=True)
    (wheel,) = (project / "dist").glob("*.whl")
    index.release(wheel)
    demo = ywmagics.install("pypi:yw-demo#^0.1.0", connection=orchestrator).yw_demo
    assert demo.fetch_json("/") == {
        "backend": "yw-demo",
        "version": "0.1.0",
        "partition": "Default",
    }


def test_new_backend_makes_a_node_project_that_publishes_and_runs(
    registry: NpmRegistry, npm_orchestrator: Connection, tmp_path: Path
) -> None:
    project = tmp_path / "yw-demo-js"
    _new_backend("yw-demo-js", "--node", "--dir", str(project))
    registry.publish(project)
    demo = ywmagics.install("npm:yw-demo-js#^0.1.0", connection=npm_orchestrator).yw_demo_js
    assert demo.fetch_json("/") == {
        "backend": "yw-demo-js",
        "version": "0.1.0",
        "partition": "Default",
    }
