"""Shared fixtures: a real orchestrator process in a private ``YW_HOME`` for the whole session."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ywmagics.discovery import Connection, pid_alive, read_discovery

from .pyrun_process import Server, lay_out

RESOURCES = Path(__file__).parent / "resources"


def python_of(version: str) -> str | None:
    """An interpreter of ``version`` found as the orchestrator finds them (PATH, pyenv, uv)."""
    from ywmagics.errors import ConfigurationError
    from ywmagics.orchestrator.interpreters import find_python

    try:
        return str(find_python(version).path)
    except ConfigurationError:
        return None


def no_python_reason(version: str) -> str:
    """Why a test that needs Python ``version`` is skipped: which one, and where it was looked for
    (where ``build.python`` finds them)."""
    from ywmagics.orchestrator.interpreters import places_searched

    return (
        f"needs Python {version}: none found {places_searched()} "
        f"(install one with 'uv python install {version}' or pyenv)"
    )


def python_or_skip(version: str) -> str:
    """The interpreter of ``version``; the test is skipped, saying why, when there is none."""
    found = python_of(version)
    if found is None:
        pytest.skip(no_python_reason(version))
    return found


PYTHON38 = python_of("3.8")
needs_python38 = pytest.mark.skipif(PYTHON38 is None, reason=no_python_reason("3.8"))
TEST_REGISTRY = RESOURCES / "registry"


def echo_named(folder: Path, name: str, version: str) -> Path:
    """A copy of the test registry's node_echo at ``folder``, as backend ``name`` ``version``
    (a backend that only some registry or install has)."""
    shutil.copytree(TEST_REGISTRY / "node_echo", folder)
    manifest = folder / "ywbackend.toml"
    text = manifest.read_text().replace('"node_echo"', f'"{name}"')
    manifest.write_text(text.replace('version = "1.0.0"', f'version = "{version}"'))
    return folder


def start_orchestrator(
    home: Path,
    *,
    timeout: float = 30.0,
    nofile: int | None = None,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start ``ywmagics serve`` with ``YW_HOME=home``; wait until its discovery file is written.
    ``nofile`` sets its limit of open files (soft and hard), as a stricter machine would;
    ``python``, ``env`` and ``cwd``, those of another install (see skew_installs.py)."""
    if env is None:
        env = {**os.environ, "YW_HOME": str(home), "YW_BACKENDS_PATH": str(TEST_REGISTRY)}
    home.mkdir(parents=True, exist_ok=True)
    command = [python, "-m", "ywmagics", "serve"]
    if nofile is not None:
        command = ["prlimit", f"--nofile={nofile}:{nofile}", *command]
    # Private, as the log of an orchestrator that a client starts is (in its runtime folder).
    descriptor = os.open(home / "serve.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "ab") as log:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout
    discovery = home / "run" / "orchestrator.json"
    while time.monotonic() < deadline:
        connection = read_discovery(discovery)
        if connection is not None and connection.pid == process.pid:
            return process, connection
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    raise RuntimeError((home / "serve.log").read_text())


def run_in_ipython(code: str, env: dict[str, str], timeout: float = 240) -> str:
    """Run ``code`` in a real IPython (as a user's terminal would) with ``env``, then shut down
    the orchestrator it started; its output, or an AssertionError with its end."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "IPython", "--no-banner", "--quick", "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout
    finally:
        subprocess.run(
            [sys.executable, "-m", "ywmagics", "shutdown"], env=env, timeout=60, check=False
        )


def running(*argv: str) -> bool:
    """Whether a process of this machine runs exactly ``argv`` (any user's)."""
    wanted = b"".join(arg.encode() + b"\0" for arg in argv)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == wanted:
                    return True
            except OSError:  # ended meanwhile
                continue
    return False


def run_concurrently(
    function: Callable[[Any], object], arguments: list[Any]
) -> list[BaseException]:
    """Call ``function`` with each argument, each in its own thread (as several kernels would);
    return what they raised."""
    failures: list[BaseException] = []

    def call(argument: Any) -> None:
        try:
            function(argument)
        except BaseException as error:  # returned to the test
            failures.append(error)

    threads = [threading.Thread(target=call, args=(a,)) for a in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return failures


def stop_orchestrator(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def orchestrator_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private ``YW_HOME`` for the session, so tests never touch the user's orchestrator."""
    home = tmp_path_factory.mktemp("ywhome")
    saved = {k: os.environ.get(k) for k in ("YW_HOME", "YW_BACKENDS_PATH")}
    os.environ["YW_HOME"] = str(home)
    os.environ["YW_BACKENDS_PATH"] = str(TEST_REGISTRY)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def orchestrator(orchestrator_home: Path) -> Iterator[Connection]:
    """A real orchestrator process shared by the session's tests."""
    process, connection = start_orchestrator(orchestrator_home)
    yield connection
    stop_orchestrator(process)
    assert not pid_alive(process.pid)


@pytest.fixture(scope="module")  # not longer: Playwright's loop must not outlive its tests
def browser() -> Iterator[Any]:
    """A real Chromium (Debian's, which ``.ci/run`` installs), driven by Playwright."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if chromium is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's)")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",  # the tests run as root
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        launched.close()


# --- a python runner process, without an orchestrator -----------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The backend folder as the installer lays it out: its files plus the shared modules."""
    return lay_out(tmp_path_factory.mktemp("app") / "pyrun_backend")


@pytest.fixture
def start_server(app: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers for one test; each is stopped at the end."""
    servers: list[Server] = []

    def start(
        python: str = sys.executable, tcp: bool = False, env: dict[str, str] | None = None
    ) -> Server:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        servers.append(Server(app, workdir, python, tcp, env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The ``ywmagics`` command, as a user runs it, in another process."""
    return subprocess.run(
        [sys.executable, "-m", "ywmagics", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Recorder(http.server.BaseHTTPRequestHandler):
    """Another local server, as another user may run one: it keeps what browsers send it."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        self.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        body = b"<!doctype html><title>elsewhere</title><img src='/pixel'>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[int]:
    """Another local web server, as another user may run one: a site of another origin."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
