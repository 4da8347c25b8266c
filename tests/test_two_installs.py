"""Two real ywmagics installs of one user (issue 18): what test_version_skew.py checks in one
process, with separate environments, each with its own ywmagics (skew_installs.py builds them).

"A" is this environment (the tree under test); "B" is a wheel of the same tree as ywmagics 0.2.0
speaking the next protocol and the next codec; "C" is a fresh install of this version, upgraded
in place while its orchestrator runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.version import Version

import ywmagics
from ywmagics import __version__
from ywmagics.client import BackendClient, OrchestratorClient
from ywmagics.discovery import Connection, read_discovery
from ywmagics.errors import BackendNotFound
from ywmagics.protocol import PROTOCOL_VERSION
from ywmagics.wire import CODEC_VERSION

from .conftest import echo_named, run_in_ipython, start_orchestrator, stop_orchestrator
from .skew_installs import (
    PROJECT,
    Install,
    build_wheel,
    discovery_file,
    end_orchestrator,
    install_wheel,
    make_install,
)

NEWER = "0.2.0"
# The runner's Python, named the same way by both installs: the environments they build then
# differ by what each install brings (its codec), not by the path of their interpreters.
BASE_PYTHON = str(Path(sys.executable).resolve())
RUNNER_SPEC = "pyrun_backend#^0.1.0 as r"
RUNNER = f"{RUNNER_SPEC} --config pyrun_backend.build.python={BASE_PYTHON}"  # as %backends has it
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (node_echo)")


def _upgraded_version() -> str:
    """A version that compares higher than this one, as the next release's would."""
    major, minor, micro = (*Version(__version__).release, 0, 0)[:3]
    return f"{major}.{minor}.{micro + 1}"


@pytest.fixture(scope="session")
def newer_install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """B: ywmagics 0.2.0, of the next protocol and the next codec."""
    folder = tmp_path_factory.mktemp("install-b")
    wheel = build_wheel(
        folder / "wheels", version=NEWER, protocol=PROTOCOL_VERSION + 1, codec=CODEC_VERSION + 1
    )
    assert __version__ != NEWER  # else B would not be another version
    return Install(make_install(folder / "venv", wheel))


def _ended_within(process: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _both_versions_in(text: str, older: str, older_protocol: int) -> None:
    """That ``text`` names both orchestrators' versions, as the replacement announces them."""
    assert f"ywmagics {older} (protocol {older_protocol})" in text, text
    assert f"one of ywmagics {NEWER} (protocol {PROTOCOL_VERSION + 1})" in text, text


# A kernel of B, as a user's terminal IPython: a refusal is printed, not raised, so that the
# test sees what the user reads.
TRY_THE_RUNNER = f"""
import ywmagics
print("KERNEL", ywmagics.__version__)
ip = get_ipython()
ip.run_line_magic("load_ext", "ywmagics")
try:
    ip.run_line_magic("backends", "install {RUNNER}")
except Exception as error:
    print("REFUSED", type(error).__name__, error)
else:
    print("INSTALLED")
"""
ROUND_TRIP = f"""
ip = get_ipython()
ip.run_line_magic("load_ext", "ywmagics")
ip.run_line_magic("backends", "install {RUNNER}")
n = 41
ip.run_cell_magic("interpreter", "r --in n --out x", "x = n + 1")
print("X", x)
"""


@dataclass(frozen=True)
class Busy:
    """A's orchestrator, in a private ``YW_HOME``, with an instance of node_echo running on it
    (partition ``Busy``)."""

    home: Path
    process: subprocess.Popen[bytes]
    connection: Connection
    echo: BackendClient


@pytest.fixture
def busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Busy]:
    home = tmp_path / "home"
    monkeypatch.setenv("YW_HOME", str(home))
    process, connection = start_orchestrator(home)
    try:
        clients = ywmagics.install("node_echo as echo", partition="Busy", connection=connection)
        yield Busy(home, process, connection, clients.echo)
    finally:
        stop_orchestrator(process)


@pytest.mark.slow  # two installs' orchestrators, a runner's environment, kernels
@needs_node
def test_a_kernel_of_another_protocol_never_uses_the_running_orchestrator(
    busy: Busy, newer_install: Install
) -> None:
    home, process, connection, echo = busy.home, busy.process, busy.connection, busy.echo
    try:
        refused = newer_install.ipython(TRY_THE_RUNNER, home)
        said = refused.stdout + refused.stderr
        assert f"KERNEL {NEWER}" in said, said  # B's own ywmagics, not the tree's
        assert "REFUSED" in said, said
        assert f"ywmagics {__version__}, protocol {PROTOCOL_VERSION}," in said, said
        assert f"({NEWER}, protocol {PROTOCOL_VERSION + 1})" in said, said
        # A's orchestrator runs on, alone, and serves its instance.
        assert process.poll() is None
        assert read_discovery(discovery_file(home)) == connection
        answer = httpx.get(f"{connection.url}/status", headers=connection.headers)
        assert answer.status_code == 200 and answer.json()["instances"] == 1, answer.text
        assert echo.fetch_json("/echo", method="POST", json={"x": 1})["x"] == 1
        # Idle now: B's next kernel replaces it with its own, says so, and runs cells on it.
        OrchestratorClient(connection).stop(partition="Busy")
        replaced = newer_install.ipython(ROUND_TRIP, home)
        assert replaced.returncode == 0, replaced.stdout[-3000:] + replaced.stderr[-3000:]
        assert "X 42" in replaced.stdout, replaced.stdout
        _both_versions_in(replaced.stderr, __version__, PROTOCOL_VERSION)
        assert _ended_within(process, 20), "A's orchestrator was kept"
        newer = read_discovery(discovery_file(home))
        assert newer is not None and newer.pid != connection.pid
        assert (newer.version, newer.protocol) == (NEWER, PROTOCOL_VERSION + 1)
    finally:
        newer_install.shutdown(home)


@dataclass(frozen=True)
class CodecScenario:
    """What happened when B built the runner's environment, then A installed the same."""

    newer_meta: dict[str, Any]  # the ywmeta.json of B's environment
    meta: dict[str, Any]  # of A's
    events: list[str]  # the texts of A's install events
    said: str  # A's kernel's output


def _environments(home: Path) -> dict[Path, dict[str, Any]]:
    """The complete environments of the runner in ``home``, by folder: their meta files."""
    found = (home / "data" / "environments" / "pyrun_backend").glob("*/*/ywmeta.json")
    return {meta.parent: json.loads(meta.read_text()) for meta in found}


@pytest.fixture(scope="module")
def codec_scenario(
    tmp_path_factory: pytest.TempPathFactory, newer_install: Install
) -> Iterator[CodecScenario]:
    """B builds the runner's environment with its orchestrator, which is then stopped; A
    installs the same spec, with the same config, and runs a cell. Shared by the two tests
    below: it builds two environments, and each checks another part of what happened."""
    home = tmp_path_factory.mktemp("codec") / "home"
    process, _ = newer_install.serve(home)
    try:
        built = newer_install.run("-m", "ywmagics", "install", *RUNNER.split(), home=home)
        assert built.returncode == 0, built.stdout + built.stderr
    finally:
        newer_install.shutdown(home)
        stop_orchestrator(process)
    ((newer_folder, newer_meta),) = _environments(home).items()
    events: list[str] = []
    try:
        with pytest.MonkeyPatch.context() as patch:  # A's client in this process, in home
            patch.setenv("YW_HOME", str(home))
            ywmagics.install(
                RUNNER_SPEC,
                partition="A",
                configurations={"pyrun_backend": {"build": {"python": BASE_PYTHON}}},
                on_event=lambda event: events.append(event.text),
            )
        # A kernel of A, on the orchestrator that install started; it shuts it down at its end.
        said = run_in_ipython(ROUND_TRIP, Install(Path(sys.executable)).env(home))
    finally:
        end_orchestrator(home)
    (meta,) = (m for folder, m in _environments(home).items() if folder != newer_folder)
    yield CodecScenario(newer_meta, meta, events, said)


@pytest.mark.slow  # two installs' orchestrators, two environments, a kernel
def test_a_runner_built_by_another_codec_is_not_used_by_this_one(
    codec_scenario: CodecScenario,
) -> None:
    newer, ours = codec_scenario.newer_meta, codec_scenario.meta
    assert (newer["built_by"], newer["codec"]) == (NEWER, CODEC_VERSION + 1)
    assert (ours["built_by"], ours["codec"]) == (__version__, CODEC_VERSION)
    assert ours["path"] != newer["path"]
    assert ours["config"] == newer["config"]  # the same request: only the installs differ
    assert "X 42" in codec_scenario.said, codec_scenario.said


@pytest.mark.slow  # shares the environments of the test above
def test_the_rebuild_is_announced(codec_scenario: CodecScenario) -> None:
    announced = [
        text
        for text in codec_scenario.events
        if f"built by ywmagics {NEWER}" in text and "codec" in text
    ]
    assert announced, codec_scenario.events


@pytest.fixture(scope="session")
def upgrade_wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """C's wheels: this version, and the next one of the same protocol and codec."""
    folder = tmp_path_factory.mktemp("wheels-c")
    return (
        build_wheel(folder, version=__version__),
        build_wheel(folder, version=_upgraded_version()),
    )


@pytest.mark.slow  # orchestrators of an install upgraded in place
@needs_node
def test_an_upgrade_while_the_orchestrator_runs(
    tmp_path: Path, upgrade_wheels: tuple[Path, Path]
) -> None:
    current, upgrade = upgrade_wheels
    upgraded = _upgraded_version()
    install = Install(make_install(tmp_path / "venv", current))
    home = tmp_path / "home"
    process, older = install.serve(home)
    try:
        install_wheel(install.python, upgrade)  # as 'pip install -U ywmagics' while it runs
        said = install.run("-c", "import ywmagics; print(ywmagics.__version__)", home=home)
        assert said.stdout.strip() == upgraded, said.stdout + said.stderr
        assert process.poll() is None
        # A new client of the upgraded install, with nothing running on the older orchestrator.
        client = install.run(
            "-m", "ywmagics", "install", "node_echo", "--partition", "Upgraded", home=home
        )
        assert client.returncode == 0, client.stdout + client.stderr
        assert _ended_within(process, 20), "the older orchestrator was kept"
        newer = read_discovery(discovery_file(home))
        assert newer is not None and newer.pid != older.pid
        assert (newer.version, newer.protocol) == (upgraded, PROTOCOL_VERSION)
        assert f"ywmagics {__version__}" in client.stderr, client.stderr
        assert f"ywmagics {upgraded}" in client.stderr, client.stderr
    finally:
        stop_orchestrator(process)
        install.shutdown(home)


@pytest.fixture(scope="session")
def next_release(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """The next release of this protocol, bundling one backend more (their_echo 2.0.0, a copy
    of the tests' node_echo), as a newer ywmagics brings backends an older one lacks."""
    folder = tmp_path_factory.mktemp("install-next")
    echo = echo_named(folder / "their_echo", "their_echo", "2.0.0")
    wheel = build_wheel(
        folder / "wheels", version=_upgraded_version(), bundling={"their_echo": echo}
    )
    return Install(make_install(folder / "venv", wheel))


@pytest.mark.slow  # two installs, an orchestrator, a kernel, backends
@needs_node
def test_a_kernel_of_a_newer_release_installs_its_bundled_backends_on_an_older_orchestrator(
    busy: Busy, next_release: Install
) -> None:
    connection = busy.connection  # A's, busy: it is kept
    with pytest.raises(BackendNotFound, match="their_echo"):
        ywmagics.install("their_echo", partition="Mine", connection=connection)  # not A's
    ran = next_release.ipython(
        "ip = get_ipython()\n"
        "ip.run_line_magic('load_ext', 'ywmagics')\n"
        "ip.run_line_magic('backends', 'install their_echo#^2.0.0 as e')\n"
        "print('ECHO', e.fetch_json('/echo', method='POST', json={'n': 1}))\n",
        busy.home,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "ECHO {'n': 1, 'partition':" in ran.stdout, ran.stdout
    # Used, and said: an older orchestrator of the same protocol, with work on it.
    assert f"older than this environment's {_upgraded_version()}" in ran.stderr, ran.stderr
    assert busy.process.poll() is None
    assert read_discovery(discovery_file(busy.home)) == connection


@pytest.mark.slow  # an install, its orchestrator
@pytest.mark.parametrize("found_in", ["its folder", "a relative PYTHONPATH"])
def test_a_client_whose_ywmagics_comes_from_its_path_starts_an_orchestrator_of_that_one(
    found_in: str, tmp_path: Path, newer_install: Install
) -> None:
    # B's interpreter, with this tree's ywmagics first (a checkout next to a notebook, in its
    # folder or on a relative PYTHONPATH): the orchestrator it starts runs in another folder.
    home = tmp_path / "home"
    env = newer_install.env(home)
    if found_in == "its folder":
        folder = PROJECT  # 'python -c' looks there first
    else:
        folder, env["PYTHONPATH"] = PROJECT.parent, PROJECT.name
    script = (
        "import ywmagics\n"
        "from ywmagics.client import connect\n"
        "found = connect()\n"
        "print(ywmagics.__version__, found.version, found.pid)\n"
    )
    try:
        said = [
            subprocess.run(
                [str(newer_install.python), "-c", script],
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            for _ in range(2)
        ]
        for ran in said:
            assert ran.returncode == 0, ran.stdout + ran.stderr
            assert "in its place" not in ran.stderr, ran.stderr  # not replaced, again and again
        versions = [ran.stdout.split() for ran in said]
        assert versions[0][:2] == [__version__, __version__], versions
        assert versions[0] == versions[1]  # the same one, found again
    finally:
        end_orchestrator(home)
