"""The ``ywmagics`` command's own text and rules, in process (no orchestrator is started)."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

from ywmagics import cli
from ywmagics.errors import SpecError
from ywmagics.paths import bundled_registry_dir
from ywmagics.spec import BackendSpec

from .conftest import TEST_REGISTRY


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``YW_HOME`` of its own, where no orchestrator runs."""
    monkeypatch.setenv("YW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("YW_BACKENDS_PATH", "")
    return tmp_path / "home"


class _Logs:
    def __init__(self, text: str) -> None:
        self.text = text

    def logs(self, name: str, *, partition: str, lines: int) -> str:
        return self.text


@pytest.mark.parametrize(
    ("log", "shown"),
    [
        ("--- start\nlistening\nhalf a li", "--- start\nlistening\nhalf a li\n"),
        ("--- start\nlistening\n", "--- start\nlistening\n"),
        ("", ""),
    ],
)
def test_logs_end_with_a_newline(
    log: str, shown: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The last line of a running backend's log may be unfinished: the prompt went after it.
    monkeypatch.setattr(cli, "_client", lambda: _Logs(log))
    assert cli.main(["logs", "echo"]) == 0
    assert capsys.readouterr().out == shown


def _backend(registry: Path, folder: str, name: str, version: str) -> None:
    shutil.copytree(TEST_REGISTRY / "node_echo", registry / folder)
    manifest = registry / folder / "ywbackend.toml"
    text = manifest.read_text().replace('name = "node_echo"', f'name = "{name}"')
    manifest.write_text(text.replace('version = "1.0.0"', f'version = "{version}"'))


def test_registries_show_each_folder_then_its_backends_aligned(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _backend(first, "echo", "echo", "1.0.0")
    _backend(first, "echo-2/2.0.0", "echo", "2.0.0")
    _backend(first, "a_much_longer_name", "a_much_longer_name", "0.1.0")
    _backend(second, "echo", "echo", "1.0.0")  # also in the first: not used
    (second / "broken").mkdir()
    (second / "broken" / "ywbackend.toml").write_text('name = "broken"\n')
    monkeypatch.setenv("YW_BACKENDS_PATH", f"{first}:{second}")
    assert cli.main(["registries"]) == 0
    blocks = capsys.readouterr().out.split("\n\n")
    assert blocks[0] == (
        "Registries, in the order they are searched (the first with a backend's version wins):"
    )
    assert blocks[1].splitlines()[0] == f"1. bundled with ywmagics: {bundled_registry_dir()}"
    assert "   demo_yw_backend  0.1.1    demo_yw_backend" in blocks[1]
    assert blocks[2] == (
        f"2. your own backends: {home / 'data' / 'backends'} "
        "(does not exist yet: 'ywmagics new-backend NAME' makes it)\n   (none)"
    )
    assert blocks[3].splitlines() == [
        f"3. from YW_BACKENDS_PATH: {first}",
        "   NAME                VERSION  FOLDER",
        "   a_much_longer_name  0.1.0    a_much_longer_name",
        "   echo                1.0.0    echo",
        "   echo                2.0.0    echo-2/2.0.0",
    ]
    lines = blocks[4].splitlines()
    assert lines[:3] == [
        f"4. from YW_BACKENDS_PATH: {second}",
        "   NAME  VERSION  FOLDER  NOTE",
        "   echo  1.0.0    echo    not used: registry 3 comes first",
    ]
    assert lines[3].startswith("   broken: ") and "ywbackend.toml" in lines[3]


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("my-backend", "'my_backend'"),
        ("my.backend", "'my_backend'"),
        ("as", "'my_backend'"),
        ("9lives", "'my_backend'"),
        ("a#1.0.0", "'a_1_0_0'"),
        ("a as b", "'a_as_b'"),
    ],
)
def test_new_backend_refuses_a_name_install_would_refuse(
    name: str,
    suggestion: str,
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'my-backend' is a valid backend name, but 'install my-backend' takes it as the alias of
    # its client too, which must be a Python identifier: refused at install, so refused here.
    if name in ("my-backend", "my.backend", "as"):
        with pytest.raises(SpecError, match="cannot be used as an alias"):
            BackendSpec.parse(name)
    assert cli.main(["new-backend", name, "--dir", str(tmp_path / "made")]) == 2
    error = capsys.readouterr().err
    assert f"{name!r} cannot name a new backend" in error
    assert "an alias must be a Python identifier" in error
    assert (
        f"Hint: use at most 64 letters, digits and '_', starting with a letter, e.g. {suggestion}"
        in error
    )
    assert not (tmp_path / "made").exists()


def test_new_backend_makes_one_install_takes_as_it_is(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ywmagics.orchestrator.registry import Registry

    assert cli.main(["new-backend", "my_backend2", "--dir", str(tmp_path / "made")]) == 0
    assert "install it with: ywmagics install my_backend2" in capsys.readouterr().out
    # What that install does first: parse the spec (the alias is the name), find the manifest.
    spec = BackendSpec.parse("my_backend2")
    assert spec.alias == "my_backend2"
    assert Registry([tmp_path]).resolve(spec.name, spec.range).folder == tmp_path / "made"
    with pytest.raises(SpecError, match="'_private' cannot name a new backend"):
        cli.installable_name("_private")


def _sigint() -> None:
    """A Ctrl-C, to the main thread as a terminal sends it (handled before this returns)."""
    signal.raise_signal(signal.SIGINT)


def test_a_ctrl_c_before_uvicorn_listens_is_handed_to_it() -> None:
    handed: list[int] = []

    def uvicorns(signum: int, frame: FrameType | None) -> None:
        handed.append(signum)

    previous = signal.getsignal(signal.SIGINT)
    with cli.QuietInterrupt() as interrupt:
        _sigint()  # during the start: noted, nothing raised
        assert interrupt.received and not handed
        ours = signal.signal(signal.SIGINT, uvicorns)  # as uvicorn.Server.capture_signals does
        deadline = time.monotonic() + 5
        while not handed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handed == [signal.SIGINT]
        signal.signal(signal.SIGINT, ours)  # uvicorn gives it back...
        _sigint()  # ... and raises again the one it handled: noted, not raised
    assert signal.getsignal(signal.SIGINT) is previous
    assert not any(t.name == "ywmagics-sigint" for t in threading.enumerate())


def test_a_second_ctrl_c_during_the_start_stops_at_once() -> None:
    with cli.QuietInterrupt(), pytest.raises(KeyboardInterrupt):
        _sigint()
        _sigint()


def test_help_reads_as_plain_text() -> None:
    from ywmagics.cli import build_parser

    assert "``" not in build_parser().format_help()  # no reStructuredText markup in a terminal
