"""The ``ywmagics`` command's own text and rules, in process (no orchestrator is started); then
``dashboard`` and ``gc`` run as users run them, against real orchestrators (slow)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import threading
import time
import urllib.parse
import webbrowser
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from ywmagics import cli
from ywmagics.client import OrchestratorClient
from ywmagics.discovery import Connection
from ywmagics.errors import SpecError
from ywmagics.paths import bundled_registry_dir
from ywmagics.spec import BackendSpec

from .conftest import TEST_REGISTRY, run_cli, start_orchestrator, stop_orchestrator
from .dashboard_access import open_dashboard

slow = pytest.mark.slow


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


class _Admin:
    """An orchestrator client's admin calls, answered as the contract says; calls are noted."""

    url = "http://127.0.0.1:4321/dashboard/#code=abc"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def dashboard_link(self) -> str:
        self.calls.append(("dashboard_link", None))
        return self.url

    def gc(self, older_than_days: float, dry_run: bool = False) -> dict[str, Any]:
        self.calls.append(("gc", (older_than_days, dry_run)))
        removed = {
            "name": "echo",
            "version": "1.0.0",
            "fingerprint": "f00",
            "path": "/envs/echo",
            "last_used": time.time() - 3 * 86400,
            "size": 3 * 2**20,
        }
        return {"removed": [removed] if older_than_days < 3 else [], "kept": []}

    def uninstall(self, spec: str, fingerprint: str | None = None) -> dict[str, Any]:
        self.calls.append(("uninstall", (spec, fingerprint)))
        return {"removed": [], "stopped_partitions": []}


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> _Admin:
    monkeypatch.setenv("YW_HOME", str(tmp_path))  # the page that opens the link is written there
    fake = _Admin()
    monkeypatch.setattr(cli, "_client", lambda: fake)
    return fake


class _Browser(webbrowser.BaseBrowser):
    def __init__(self, opens: bool = True, raises: bool = False) -> None:
        super().__init__("fake")
        self.opens, self.raises = opens, raises
        self.opened: list[str] = []

    def open(self, url: str, new: int = 0, autoraise: bool = True) -> bool:
        if self.raises:
            raise OSError("cannot run the browser")
        self.opened.append(url)
        return self.opens


def test_dashboard_prints_the_link_on_a_line_of_its_own_and_opens_it(
    admin: _Admin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    browser = _Browser()
    monkeypatch.setattr(webbrowser, "get", lambda using=None: browser)
    assert cli.main(["dashboard"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[-1] == admin.url
    # The browser is started on a private page that leads to the link: a command line is
    # readable by every local user, and the link's code could be spent by one of them.
    (opened,) = browser.opened
    assert admin.url not in opened and "abc" not in opened
    page = Path(urllib.parse.urlsplit(opened).path)
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    assert f'content="0;url={admin.url}"' in page.read_text() and out.err == ""
    # --no-browser: printed only, and each run makes a new link (a link's code works once).
    assert cli.main(["dashboard", "--no-browser"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == admin.url
    assert browser.opened == [opened] and len(admin.calls) == 2


@pytest.mark.parametrize("where", ["none", "refuses", "console", "raises"])
def test_dashboard_without_a_browser_prints_the_link_and_succeeds(
    where: str, admin: _Admin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BROWSER", raising=False)

    def found(using: str | None = None) -> webbrowser.BaseBrowser:
        if where == "none":
            raise webbrowser.Error("could not locate runnable browser")
        if where == "console":  # what webbrowser falls back to without a display: lynx, w3m
            return webbrowser.GenericBrowser("/bin/false")
        return _Browser(opens=False, raises=where == "raises")

    monkeypatch.setattr(webbrowser, "get", found)
    assert cli.main(["dashboard"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[-1] == admin.url
    assert "No browser to open here" in out.err and "ssh -L 4321:127.0.0.1:4321" in out.err


def test_gc_sends_days_and_says_what_it_freed(
    admin: _Admin, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["gc", "--older-than", "12h", "--dry-run"]) == 0
    assert admin.calls[-1] == ("gc", (0.5, True))
    assert capsys.readouterr().out.splitlines() == [
        "would remove echo 1.0.0 (f00), last used 3 days ago, 3.0 MiB: /envs/echo",
        "would free 3.0 MiB (1 environment)",
    ]
    assert cli.main(["gc", "--older-than", "2w"]) == 0
    assert admin.calls[-1] == ("gc", (14.0, False))
    assert capsys.readouterr().out == "nothing unused for more than 2 weeks\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gc", "--older-than", "soon"], "argument --older-than: 'soon' is not a duration (a"),
        (["gc", "--older-than", "-3d"], "argument --older-than: expected one argument"),
        (["gc"], "the following arguments are required: --older-than"),
        (["dashboard", "--inline"], "unrecognized arguments: --inline"),
    ],
)
def test_argument_errors(
    argv: list[str], message: str, admin: _Admin, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err
    assert admin.calls == []  # refused before anything was asked of the orchestrator


def test_uninstall_by_fingerprint(admin: _Admin) -> None:
    assert cli.main(["uninstall", "echo#1.0.0", "--fingerprint", "f00"]) == 0
    assert cli.main(["uninstall", "echo"]) == 0
    assert admin.calls == [("uninstall", ("echo#1.0.0", "f00")), ("uninstall", ("echo", None))]


# ---- against real orchestrators ------------------------------------------------------------------


@slow
def test_dashboard_prints_a_link_that_opens_the_page(orchestrator: Connection) -> None:
    done = run_cli("dashboard", "--no-browser")
    assert done.returncode == 0, done.stderr
    url = done.stdout.splitlines()[-1]
    assert url.startswith(f"{orchestrator.url}/dashboard/#code=")
    assert orchestrator.token not in done.stdout  # never the master token
    state = open_dashboard(url)
    assert state["orchestrator"]["pid"] == orchestrator.pid
    # Where no browser can be found (no display: CI, SSH), the link is printed all the same.
    headless = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = run_cli("dashboard", env={**headless, "BROWSER": ""})
    assert done.returncode == 0, done.stderr
    assert "No browser to open here" in done.stderr
    open_dashboard(done.stdout.splitlines()[-1])  # a new link: the first one is spent


@slow
def test_gc_removes_the_environments_nothing_runs(tmp_path: Path) -> None:
    # An orchestrator of its own: a gc of everything unused would remove the session's too.
    home = tmp_path / "home"
    process, connection = start_orchestrator(home)
    env = {**os.environ, "YW_HOME": str(home), "YW_BACKENDS_PATH": str(TEST_REGISTRY)}
    try:
        for name, partition in (("node_unix", "Unused"), ("node_echo", "Running")):
            done = run_cli("install", name, "--partition", partition, env=env)
            assert done.returncode == 0, done.stderr
        assert run_cli("stop", "--partition", "Unused", env=env).returncode == 0
        environments = OrchestratorClient(connection).listing()["environments"]
        unused = next(e for e in environments if e["name"] == "node_unix")
        running = next(e for e in environments if e["name"] == "node_echo")

        dry = run_cli("gc", "--older-than", "0d", "--dry-run", env=env)
        assert dry.returncode == 0, dry.stderr
        first, last = dry.stdout.splitlines()
        assert first.startswith(
            f"would remove node_unix 1.0.0 ({unused['fingerprint']}), last used"
        )
        assert first.endswith(f": {unused['path']}")
        assert last.startswith("would free ") and last.endswith(" (1 environment)")
        assert Path(unused["path"]).is_dir()

        done = run_cli("gc", "--older-than", "0d", env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"removed node_unix 1.0.0 ({unused['fingerprint']})")
        assert not Path(unused["path"]).exists()
        assert Path(running["path"]).is_dir()  # its instance runs: kept
        assert run_cli("gc", "--older-than", "0d", env=env).stdout == (
            "nothing unused for more than 0 days\n"
        )
    finally:
        stop_orchestrator(process)


@slow
def test_uninstall_by_fingerprint_and_restart(orchestrator: Connection) -> None:
    client = OrchestratorClient(orchestrator)
    # An environment of its own (another build option): the session's node_echo stays.
    done = run_cli(
        "install",
        "node_echo",
        "--partition",
        "Fingerprint",
        "--config",
        "node_echo.build.greeting=fp",
    )
    assert done.returncode == 0, done.stderr
    (instance,) = [i for i in client.listing()["instances"] if i["partition"] == "Fingerprint"]
    restarted = client.restart("Fingerprint", "node_echo", instance["version"])
    assert restarted["state"] == "ready" and restarted["restarts"] == instance["restarts"] + 1
    assert restarted["pid"] != instance["pid"]
    wrong = run_cli("uninstall", "node_echo", "--fingerprint", "0123456789ab")
    assert wrong.returncode == 2 and "with fingerprint 0123456789ab" in wrong.stderr
    done = run_cli("uninstall", "node_echo", "--fingerprint", instance["fingerprint"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"removed node_echo 1.0.0 ({instance['fingerprint']}) from ")
    fingerprints = {e["fingerprint"] for e in client.listing()["environments"]}
    assert instance["fingerprint"] not in fingerprints
    assert "Fingerprint" not in {i["partition"] for i in client.listing()["instances"]}
