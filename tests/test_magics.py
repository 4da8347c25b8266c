"""The magics in a real IPython shell, against a real orchestrator and real backends.

The shell has no kernel, so progress shows as text lines (the fallback where widgets can't show).
"""

from __future__ import annotations

import html
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from IPython.core.completer import provisionalcompleter
from IPython.core.error import UsageError
from IPython.core.formatters import DisplayFormatter
from IPython.core.interactiveshell import InteractiveShell
from IPython.testing.globalipapp import get_ipython

from ywmagics.client import BackendClient, OrchestratorClient
from ywmagics.discovery import Connection
from ywmagics.errors import BackendNotFound, ConfigurationError, SpecError, StartError
from ywmagics.events import Event, EventKind
from ywmagics.kernel import (
    InterpreterTimeout,
    Interrupted,
    RemoteExecutionError,
    RunnerExited,
    YwMagics,
    _ipython,
    backends_command,
    kernel_partition,
)
from ywmagics.kernel.progress import TextProgress, Tracker, WidgetProgress, make_progress

from .dashboard_access import open_dashboard

DEMO = "demo_yw_backend#^0.1.1"
PYRUN = "pyrun_backend#^0.1.0"
# The same configuration as the example notebooks, so the session builds this environment once.
PYRUN_CONFIG = "--config pyrun_backend.build.python=3.10 --config pyrun_backend.build.modules=numpy"
TREX = "VV ^ d88"  # a piece of the trex picture

slow = pytest.mark.slow


# ---- units: no orchestrator ----------------------------------------------------------------------


def _event(kind: EventKind, progress: float | None = None, name: str = "demo") -> Event:
    return Event(kind, name, "1.0.0", "P", f"{kind.value} \x1b[1mbold\x1b[0m", progress)


def test_tracker_progress_is_monotonic_and_reaches_one() -> None:
    tracker = Tracker(expected=2)
    seen = []
    for event in [
        _event(EventKind.RESOLVED),
        _event(EventKind.BUILDING, 0.5),
        _event(EventKind.BUILDING, None),
        _event(EventKind.BUILT),
        _event(EventKind.STARTING),
        _event(EventKind.READY),
        _event(EventKind.RESOLVED, name="other"),
        _event(EventKind.REUSED, name="other"),
        _event(EventKind.READY, name="other"),
    ]:
        tracker.update(event)
        seen.append(tracker.fraction)
    assert seen == sorted(seen)
    assert seen[5] == pytest.approx(0.5)
    assert seen[-1] == pytest.approx(1.0)
    assert "\x1b" not in tracker.step and "\x1b" not in "".join(tracker.lines)


def test_text_progress_prints_lines(capsys: pytest.CaptureFixture[str]) -> None:
    view = make_progress("auto", "Installing demo", 1)  # no kernel here: text
    assert isinstance(view, TextProgress)
    view.event(_event(EventKind.READY))
    view.done([{"alias": "d", "name": "demo", "version": "1.0.0", "partition": "P"}])
    out = capsys.readouterr().out
    assert "Installing demo" in out
    assert "[demo#1.0.0 @ P] ready" in out
    assert "d: demo 1.0.0 in partition P" in out


def _tool_line(text: str, at: float, other: bool = False) -> Event:
    """A line a build tool printed (no progress of its own) for demo, or for other."""
    name, version, partition = ("other", "2.0.0", "Q") if other else ("demo", "1.0.0", "P")
    return Event(EventKind.BUILDING, name, version, partition, text, None, at)


def test_text_progress_sums_up_a_line_per_package(capsys: pytest.CaptureFixture[str]) -> None:
    # What uv prints while it installs, each line an event: shown as one line at the step's end.
    view = TextProgress("Installing demo", 2)
    view.event(Event(EventKind.BUILDING, "demo", "1.0.0", "P", "installing fastapi", 0.3, 10.0))
    view.event(_tool_line("Resolved 3 packages in 120ms", 10.1))
    view.event(_tool_line("Downloading numpy (16.1MiB)", 10.2))
    view.event(_tool_line("Downloading pydantic-core (2.0MiB)", 10.2))
    view.event(_tool_line(" Downloaded pydantic-core", 10.4))
    view.event(Event(EventKind.BUILDING, "other", "2.0.0", "Q", "installing x", 0.3, 10.5))
    view.event(_tool_line(" Downloaded numpy", 10.8))
    view.event(_tool_line("warning: numpy has no wheel for this platform", 10.85))
    view.event(_tool_line("Installed 3 packages in 20ms", 10.9))
    for package in ("fastapi==0.115.0", "numpy==2.0.1", "pydantic-core==2.2.0"):
        view.event(_tool_line(f" + {package}", 10.9))
    view.event(Event(EventKind.BUILDING, "demo", "1.0.0", "P", "compiling bytecode", 0.5, 11.2))
    view.event(_tool_line("Successfully installed a-1.0 b_c-2.1", 11.0, other=True))
    view.event(_tool_line("Audited 1 package in 2ms", 11.3))
    view.failed(RuntimeError("stopped"))
    assert capsys.readouterr().out.splitlines() == [
        "Installing demo",
        "[demo#1.0.0 @ P] building: installing fastapi",
        "[other#2.0.0 @ Q] building: installing x",
        "[demo#1.0.0 @ P] building: warning: numpy has no wheel for this platform",
        "[demo#1.0.0 @ P] building: installed 3 packages in 1.2 s, slowest download: numpy 0.6 s",
        "[demo#1.0.0 @ P] building: compiling bytecode",
        "[other#2.0.0 @ Q] building: installed 2 packages in 0.5 s",
        "[demo#1.0.0 @ P] building: Audited 1 package in 2ms",  # a few lines: as they are
        "install failed",
    ]
    # The widget's log keeps every line.
    assert len(view.tracker.lines) == 15


def test_widget_progress_success_and_failure(shell: InteractiveShell) -> None:
    view = WidgetProgress("Installing demo", 1)
    view.event(_event(EventKind.RESOLVED))
    view.event(_event(EventKind.BUILDING, 0.5))
    assert 0 < view.bar.value < view.bar.max
    assert "building" in view.step.value
    view.done([{"alias": "d", "name": "demo", "version": "1.0.0", "partition": "P"}])
    assert view.bar.value == view.bar.max
    assert view.bar.bar_style == "success"

    # Failed before any progress (build.python=3.99, say): red all along, not a grey 0 %.
    failing = WidgetProgress("Installing broken", 1)
    failing.failed(StartError("did not start", log_tail="BROKEN_START: cannot bind"))
    assert failing.bar.bar_style == "danger" and failing.bar.value == failing.bar.max
    assert failing.percent.value == "failed" and "error is below" in failing.step.value
    # The error is shown once, as the cell's error (IPython shows it): not in the view too.
    assert "BROKEN_START" not in failing.message.value + failing.log.value
    assert failing.accordion.selected_index is None  # the log stays folded
    # close them now: closing at interpreter exit would find the comm machinery gone
    import ipywidgets  # type: ignore[import-untyped]

    ipywidgets.Widget.close_all()


class _Orchestrator:
    """The admin calls ``%backends list`` and ``dashboard`` make, answered as the contract says."""

    def __init__(self) -> None:
        self.links = 0

    def dashboard_link(self) -> str:
        self.links += 1
        return f"http://127.0.0.1:4321/dashboard/#code=c{self.links}&x=<y>"

    def listing(self) -> dict[str, Any]:
        instance = {
            "partition": "P",
            "name": "<echo>",
            "version": "1.0.0",
            "state": "ready",
            "config": {},
            "pid": 42,
            "uptime": 5.0,
            "restarts": 0,
            "installed_by": "",
        }
        return {"instances": [instance], "environments": []}


class _Magics:
    partition = "kernel-0000abcd"

    def __init__(self) -> None:
        self.orchestrator_client = _Orchestrator()

    def orchestrator(self, timeout: float = 60.0) -> _Orchestrator:
        return self.orchestrator_client

    def bound_clients(self) -> dict[str, Any]:
        return {"e": types.SimpleNamespace(name="<echo>", version="1.0.0", partition="P")}


def _run(command: backends_command.BackendsCommand, line: str) -> None:
    parsed = backends_command.parse(line)
    assert parsed is not None
    command.run(*parsed, None)


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = []
    monkeypatch.setattr(_ipython, "publish", lambda bundle, *rest: shown.append(bundle))
    monkeypatch.setattr(_ipython, "display", shown.append)
    return shown


def test_dashboard_shows_a_new_link_each_time_or_the_page_inline(
    published: list[Any],
) -> None:
    command = backends_command.BackendsCommand(cast(YwMagics, _Magics()))
    _run(command, "dashboard")
    _run(command, "dashboard")
    first, second = published
    assert first["text/plain"] == "http://127.0.0.1:4321/dashboard/#code=c1&x=<y>"
    assert second["text/plain"].endswith("#code=c2&x=<y>")  # a link's code works once
    assert first["text/html"].startswith(
        '<a href="http://127.0.0.1:4321/dashboard/#code=c1&amp;x=&lt;y&gt;" target="_blank"'
    )
    _run(command, "dashboard --inline")
    _run(command, "dashboard --height 300 --inline")
    inline, taller = published[2:]
    assert inline["text/plain"].endswith("#code=c3&x=<y>")
    assert inline["text/html"].startswith(
        '<iframe src="http://127.0.0.1:4321/dashboard/#code=c3&amp;x=&lt;y&gt;" width="100%" '
        'height="600"'
    )
    assert 'height="300"' in taller["text/html"]
    for line, message in (
        ("dashboard --height 300", "give --inline too"),
        ("dashboard --inline --height 0", "must be a positive number"),
        ("dashboard --inline --height tall", "invalid int value: 'tall'"),
        ("dashboard extra", "unrecognized arguments: extra"),
    ):
        with pytest.raises(UsageError, match=message):
            _run(command, line)
    assert len(published) == 4
    assert {"--inline", "--height"} <= set(
        command.complete(types.SimpleNamespace(line="%backends dashboard --", symbol="--"))
    )
    assert "dashboard" in command.complete(types.SimpleNamespace(line="%backends ", symbol=""))


def test_list_is_a_table_in_notebooks_and_text_in_terminals(
    published: list[Any], shell: InteractiveShell
) -> None:
    command = backends_command.BackendsCommand(cast(YwMagics, _Magics()))
    _run(command, "list")
    (shown,) = published
    # What IPython makes of it: in a kernel both forms (a notebook shows the HTML), in a
    # terminal the text only.
    data, _ = DisplayFormatter().format(shown)
    assert shell.display_formatter.format(shown)[0] == {"text/plain": data["text/plain"]}
    assert data["text/plain"].splitlines()[:3] == [
        "Running instances:",
        "PARTITION  NAME    VERSION  STATE  CONFIG  PID  UPTIME",
        "P          <echo>  1.0.0    ready  -       42   5s",
    ]
    assert data["text/plain"].endswith(
        "Bound in this notebook:\n  e: <echo> 1.0.0 in partition P\n\n"
        "This kernel's partition: kernel-0000abcd"
    )
    assert repr(shown) == data["text/plain"]
    page = data["text/html"]
    assert ">&lt;echo&gt;</td>" in page and "<echo>" not in page
    assert ">restarts</th>" in page and ">installed by</th>" in page and ">alias</th>" in page
    assert "<code>kernel-0000abcd</code>" in page


# ---- the shell ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    ip = get_ipython()
    yield ip
    if "ywmagics" in ip.extension_manager.loaded:
        ip.run_line_magic("unload_ext", "ywmagics")


@pytest.fixture(scope="module")
def magics(shell: InteractiveShell, orchestrator: Connection) -> Iterator[YwMagics]:
    shell.run_line_magic("load_ext", "ywmagics")
    found = shell.magics_manager.registry["YwMagics"]
    assert isinstance(found, YwMagics)
    yield found
    client = OrchestratorClient(orchestrator)
    client.stop(partition=found.partition)


def run_line(shell: InteractiveShell, line: str) -> Any:
    name, _, rest = line.lstrip("%").partition(" ")
    return shell.run_line_magic(name, rest)


@slow
def test_load_ext_is_fast_and_loads_no_server_stack(orchestrator: Connection) -> None:
    code = (
        "import sys, time\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "start = time.perf_counter()\n"
        "ip.run_line_magic('load_ext', 'ywmagics')\n"
        "elapsed = time.perf_counter() - start\n"
        "heavy = [m for m in ('starlette', 'uvicorn', 'ipywidgets', 'httpx') if m in sys.modules]\n"
        "registered = 'backends' in ip.magics_manager.magics['line']\n"
        "import json; print(json.dumps([elapsed, heavy, registered]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
        check=True,
    )
    elapsed, heavy, registered = json.loads(result.stdout.strip().splitlines()[-1])
    assert registered and heavy == [], result.stdout + result.stderr
    assert elapsed < 1.0  # the benchmark measures it finely; this catches regressions


@slow
def test_help_shows_every_option(magics: YwMagics, shell: InteractiveShell) -> None:
    backends_doc = shell.find_line_magic("backends").__doc__
    for text in (
        "%backends install [--partition PARTITION]",
        "--config <NAME.build.OPTION=VALUE>, -c <NAME.build.OPTION=VALUE>",
        "%backends stop [--partition PARTITION] [--all] [--keep-data] [ALIAS]",
        "%backends logs [--partition PARTITION] [--lines LINES] [ALIAS]",
        "%backends uninstall [NAME[#RANGE]]",
        "%backends docs [ALIAS] [PATH]",
        "%backends status",
        "%backends list",
        '%%backends install\n    {"modules"',  # the cell form
    ):
        assert text in backends_doc, text
    interpreter_doc = shell.find_cell_magic("interpreter").__doc__
    for text in ("%%interpreter [--in NAME", "--out NAME", "--timeout SECONDS", "ALIAS"):
        assert text in interpreter_doc, text


@slow
def test_options_of_another_subcommand_are_refused(
    magics: YwMagics, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    for line, message in (
        ("%backends list extra", "unrecognized arguments: extra"),
        ("%backends list --all", "unrecognized arguments: --all"),
        ("%backends status --partition P", "unrecognized arguments: --partition P"),
        ("%backends install demo --lines 5", "unrecognized arguments: --lines 5"),
        ("%backends logs a b", "unrecognized arguments: b"),
        ("%backends --partition P", "invalid choice: '--partition'"),
    ):
        with pytest.raises(UsageError, match=message):
            run_line(shell, line)
    run_line(shell, "%backends stop --help")
    assert (
        "%backends stop [--partition PARTITION] [--all] [--keep-data] [ALIAS]"
        in capsys.readouterr().out
    )
    run_line(shell, "%backends -h")
    assert "%backends logs [--partition PARTITION]" in capsys.readouterr().out
    # Options may come before their subcommand, as they did.
    run_line(shell, "%backends --partition NoSuchPartition stop")
    assert "no instance in partition NoSuchPartition" in capsys.readouterr().out


@slow
def test_settings_are_traitlets(
    magics: YwMagics, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    assert magics.partition == kernel_partition()
    assert magics.partition.startswith("kernel-") and len(magics.partition) == 15
    run_line(shell, "%config YwMagics")
    out = capsys.readouterr().out
    for name in ("partition", "orchestrator_url", "install_timeout", "run_timeout", "progress"):
        assert f"YwMagics.{name}" in out
    run_line(shell, "%config YwMagics.run_timeout = 12.5")
    assert magics.run_timeout == 12.5
    run_line(shell, "%config YwMagics.run_timeout = 0")


@slow
def test_install_line_binds_a_client_and_prints_progress(
    magics: YwMagics, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    run_line(shell, f"%backends install {DEMO} as ywDemoClient  # a comment")
    out = capsys.readouterr().out
    assert f"[demo_yw_backend#0.1.1 @ {magics.partition}] resolved" in out
    assert f"[demo_yw_backend#0.1.1 @ {magics.partition}] ready" in out
    client = shell.user_ns["ywDemoClient"]
    assert isinstance(client, BackendClient)
    assert (client.name, client.version, client.partition) == (
        "demo_yw_backend",
        "0.1.1",
        magics.partition,
    )
    picture = client.fetch_json(
        "/cow-say", method="POST", json={"message": "hello backends", "character": "trex"}
    )
    assert "hello backends" in picture and TREX in picture
    assert client.fetch_json("/partition-echo") == {"partition": magics.partition}


@slow
def test_install_cell_form_with_partition_and_config(
    magics: YwMagics, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    body = json.dumps({"modules": [f"{DEMO} as ywDemoClientInFoo"], "partition": "Foo"})
    shell.run_cell_magic("backends", "install", body)
    client = shell.user_ns["ywDemoClientInFoo"]
    assert client.partition == "Foo"
    assert client.fetch_json("/partition-echo") == {"partition": "Foo"}
    # --partition on the line wins over the body's.
    shell.run_cell_magic("backends", "install --partition Foo2", body)
    assert shell.user_ns["ywDemoClientInFoo"].partition == "Foo2"
    run_line(shell, "%backends stop --partition Foo2")
    assert "stopped demo_yw_backend 0.1.1 in partition Foo2" in capsys.readouterr().out


@slow
def test_install_errors_are_clear(
    magics: YwMagics, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(BackendNotFound, match="no_such_backend"):
        run_line(shell, "%backends install no_such_backend as x")
    with pytest.raises(ConfigurationError, match="not a configuration option"):
        run_line(shell, f"%backends install {DEMO} --config demo_yw_backend=1")
    with pytest.raises(SpecError):
        run_line(shell, "%backends install demo_yw_backend#^0.1.1 as not-an-identifier")
    with pytest.raises(UsageError, match="name at least one backend"):
        run_line(shell, "%backends install")
    with pytest.raises(UsageError, match="JSON object"):
        shell.run_cell_magic("backends", "install", "{not json")
    with pytest.raises(UsageError, match="invalid choice"):
        run_line(shell, "%backends frobnicate")
    # An unquoted list of modules: its second word would be a backend of its own.
    line = "%backends install pyrun_backend as r --config pyrun_backend.build.modules=numpy pandas"
    with pytest.raises(UsageError, match="unknown backend 'pandas'") as raised:
        run_line(shell, line)
    assert 'quote it (--config pyrun_backend.build.modules="numpy pandas")' in str(raised.value)
    assert "join with commas (--config pyrun_backend.build.modules=numpy,pandas)" in str(
        raised.value
    )
    capsys.readouterr()
    with pytest.raises(StartError) as raised:
        run_line(shell, "%backends install broken_start as broken --partition Broken")
    assert "BROKEN_START" in str(raised.value)
    assert "install failed" in capsys.readouterr().out
    # IPython shows such errors short: their message, not the magic's stack.
    lines = raised.value._render_traceback_()  # type: ignore[attr-defined]
    assert "StartError" in lines[0] and any("BROKEN_START" in line for line in lines)


@slow
def test_list_logs_docs_status(
    magics: YwMagics, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    run_line(shell, f"%backends install {DEMO} as ywDemoClient")
    capsys.readouterr()
    run_line(shell, "%backends list")
    out = capsys.readouterr().out
    assert "Running instances:" in out and "Installed environments:" in out
    assert magics.partition in out and "demo_yw_backend" in out
    assert f"ywDemoClient: demo_yw_backend 0.1.1 in partition {magics.partition}" in out
    run_line(shell, "%backends logs ywDemoClient --lines 50")
    assert "Application startup complete" in capsys.readouterr().out
    run_line(shell, "%backends docs ywDemoClient")
    out = capsys.readouterr().out
    assert "/backends/demo_yw_backend/0.1.1/docs" in out
    run_line(shell, "%backends status")
    out = capsys.readouterr().out
    assert "orchestrator" in out and magics.partition in out
    with pytest.raises(UsageError, match="no backend is bound to 'nobody'"):
        run_line(shell, "%backends docs nobody")
    # A page the backend does not have: said, not linked to a bare 404.
    with pytest.raises(UsageError, match=r"has no /nothing-here page: GET /nothing-here answered"):
        run_line(shell, "%backends docs ywDemoClient /nothing-here")
    run_line(shell, "%backends docs ywDemoClient /redoc")
    assert "/backends/demo_yw_backend/0.1.1/redoc" in capsys.readouterr().out


@slow
def test_stop_by_alias(
    magics: YwMagics,
    shell: InteractiveShell,
    orchestrator: Connection,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_line(shell, f"%backends install {DEMO} as stopMe --partition StopMe")
    capsys.readouterr()
    run_line(shell, "%backends stop stopMe")
    assert "stopped demo_yw_backend 0.1.1 in partition StopMe" in capsys.readouterr().out
    client = OrchestratorClient(orchestrator)
    partitions = {i["partition"] for i in client.listing()["instances"]}
    assert "StopMe" not in partitions
    run_line(shell, "%backends stop --partition StopMe")
    assert "nothing was running there" in capsys.readouterr().out
    run_line(shell, "%backends stop stopMe")  # stopped already: no error, as a second stop
    assert "nothing was running there" in capsys.readouterr().out
    # A name that is no alias and runs nowhere: an error, as logs and docs give.
    with pytest.raises(UsageError, match="no backend is bound to 'nonexistent'"):
        run_line(shell, "%backends stop nonexistent")
    for line in ("%backends stop stopMe --all", "%backends stop --all --partition StopMe"):
        with pytest.raises(UsageError, match="give it alone"):
            run_line(shell, line)


@pytest.fixture(scope="module")
def runner(magics: YwMagics, shell: InteractiveShell) -> BackendClient:
    run_line(shell, f"%backends install {PYRUN} as pyRunner {PYRUN_CONFIG}")
    client = shell.user_ns["pyRunner"]
    assert isinstance(client, BackendClient)
    return client


@slow
def test_interpreter_in_and_out(
    runner: BackendClient, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.user_ns["n"] = 3
    shell.run_cell_magic(
        "interpreter",
        "pyRunner --in n --out pyVersion npVersion",
        (
            "import numpy, sys\n"
            "print('hello from the runner')\n"
            "pyVersion = sys.version\n"
            "npVersion = numpy.__version__ * n\n"
        ),
    )
    assert shell.user_ns["pyVersion"].startswith("3.10")
    version = shell.user_ns["npVersion"]
    assert len(version) % 3 == 0 and version[: len(version) // 3][0].isdigit()
    assert "hello from the runner" in capsys.readouterr().out


@slow
def test_interpreter_keeps_state_and_numpy_round_trip(
    runner: BackendClient, shell: InteractiveShell
) -> None:
    np = pytest.importorskip("numpy")
    shell.user_ns["matrix"] = np.arange(12, dtype=np.float32).reshape(3, 4)
    shell.run_cell_magic("interpreter", "pyRunner --in matrix", "kept = matrix * 2")
    shell.run_cell_magic(
        "interpreter", "pyRunner --out back dtype", ("back = kept.T\ndtype = str(kept.dtype)")
    )
    back = shell.user_ns["back"]
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    assert (back == (shell.user_ns["matrix"] * 2).T).all()
    assert shell.user_ns["dtype"] == "float32"


@slow
def test_interpreter_streams_output_while_the_cell_runs(
    runner: BackendClient, shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[float, str]] = []

    class Recorder(io.StringIO):
        def write(self, text: str) -> int:
            writes.append((time.monotonic(), text))
            return len(text)

    monkeypatch.setattr(sys, "stdout", Recorder())
    shell.run_cell_magic(
        "interpreter",
        "pyRunner",
        ("import time\nprint('first', flush=True)\ntime.sleep(0.6)\nprint('second')\n"),
    )
    monkeypatch.undo()
    first = next(t for t, text in writes if "first" in text)
    second = next(t for t, text in writes if "second" in text)
    assert second - first > 0.4  # "first" was shown before the cell ended


@slow
def test_interpreter_displays(
    runner: BackendClient, shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "IPython.display.publish_display_data",
        lambda data, metadata=None, **kw: published.append(data),
    )
    shell.run_cell_magic(
        "interpreter",
        "pyRunner",
        (
            "class Badge:\n"
            "    def _repr_html_(self):\n"
            "        return '<b>from the runner</b>'\n"
            "display(Badge())\n"
        ),
    )
    assert any(d.get("text/html") == "<b>from the runner</b>" for d in published)


@slow
def test_interpreter_exception_has_the_cell_traceback(
    runner: BackendClient, shell: InteractiveShell
) -> None:
    with pytest.raises(RemoteExecutionError) as raised:
        shell.run_cell_magic("interpreter", "pyRunner", "a = 1\nb = 0\nc = a / b\n")
    error = raised.value
    assert error.remote_type == "ZeroDivisionError"
    # Numbered as Jupyter shows the cell: the %%interpreter line is line 1.
    assert error.lineno == 4
    assert "line 4" in error.remote_traceback
    lines = error._render_traceback_()
    assert "ZeroDivisionError" in lines[0] and "pyRunner" in lines[0]
    assert any("c = a / b" in line for line in lines)
    assert not any("magics.py" in line or "httpx" in line for line in lines)
    # run_cell shows it that way and records it as the cell's error
    result = shell.run_cell("%%interpreter pyRunner\nraise ValueError('boom')\n")
    assert isinstance(result.error_in_exec, RemoteExecutionError)
    assert "ValueError: boom" in str(result.error_in_exec)


@slow
def test_interpreter_variable_errors_name_the_variable(
    runner: BackendClient, shell: InteractiveShell
) -> None:
    shell.user_ns.pop("never_defined", None)
    with pytest.raises(UsageError, match="--in never_defined: no variable 'never_defined'"):
        shell.run_cell_magic("interpreter", "pyRunner --in never_defined", "pass")
    shell.user_ns["a_function"] = lambda: 1
    with pytest.raises(UsageError, match="a_function"):
        shell.run_cell_magic("interpreter", "pyRunner --in a_function", "pass")
    with pytest.raises(RemoteExecutionError, match="not_made"):
        shell.run_cell_magic("interpreter", "pyRunner --out not_made", "pass")
    with pytest.raises(RemoteExecutionError, match="fn"):
        shell.run_cell_magic("interpreter", "pyRunner --out fn", "fn = lambda: 1")
    with pytest.raises(UsageError, match="not a Python variable name"):
        shell.run_cell_magic("interpreter", "pyRunner --out 1x", "pass")
    with pytest.raises(UsageError, match="no backend is bound to 'nobody'"):
        shell.run_cell_magic("interpreter", "nobody", "pass")


@slow
def test_interpreter_timeout_interrupts_the_runner(
    runner: BackendClient, shell: InteractiveShell
) -> None:
    start = time.monotonic()
    with pytest.raises(InterpreterTimeout, match="timeout"):
        shell.run_cell_magic(
            "interpreter", "pyRunner --timeout 0.5", "import time\ntime.sleep(30)\n"
        )
    assert time.monotonic() - start < 10
    shell.run_cell_magic("interpreter", "pyRunner --out alive", "alive = True")
    assert shell.user_ns["alive"] is True


@slow
def test_keyboard_interrupt_interrupts_the_runner(
    runner: BackendClient, shell: InteractiveShell
) -> None:
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(Interrupted, match="interrupted in the runner"):
            shell.run_cell_magic("interpreter", "pyRunner", "import time\ntime.sleep(30)\n")
    finally:
        timer.cancel()
    assert time.monotonic() - start < 10
    # the runner stopped the cell: the next one runs at once
    start = time.monotonic()
    shell.run_cell_magic("interpreter", "pyRunner --out after", "after = 'interrupt'")
    assert shell.user_ns["after"] == "interrupt"
    assert time.monotonic() - start < 5


@slow
def test_completion_of_aliases(runner: BackendClient, shell: InteractiveShell) -> None:
    def complete(line: str) -> set[str]:
        with provisionalcompleter():  # the API Jupyter frontends use
            return {c.text for c in shell.Completer.completions(line, len(line))}

    assert "pyRunner" in complete("%%interpreter pyR")
    # After %%interpreter, aliases only: not Python's keywords and names beside them.
    offered = complete("%%interpreter ")
    assert "pyRunner" in offered and not offered & {"and", "if", "in", "print"}
    assert offered <= set(shell.magics_manager.registry["YwMagics"].bound_clients())
    assert complete("%%interpreter pyRunner --") == {"--in", "--out", "--timeout"}
    assert "install" in complete("%backends in")
    assert "pyRunner" in complete("%backends logs pyR")


@slow
def test_kernel_partition_is_stopped_at_exit(
    magics: YwMagics, shell: InteractiveShell, orchestrator: Connection
) -> None:
    run_line(shell, f"%backends install {DEMO} as ywDemoClient")
    client = OrchestratorClient(orchestrator)
    assert magics.partition in {i["partition"] for i in client.listing()["instances"]}
    magics.stop_kernel_partition()  # what atexit calls
    assert magics.partition not in {i["partition"] for i in client.listing()["instances"]}


@slow
def test_unload_and_reload(magics: YwMagics, shell: InteractiveShell) -> None:
    shell.run_line_magic("unload_ext", "ywmagics")
    assert "backends" not in shell.magics_manager.magics["line"]
    assert "interpreter" not in shell.magics_manager.magics["cell"]
    assert magics not in shell.configurables
    shell.run_line_magic("load_ext", "ywmagics")
    assert "backends" in shell.magics_manager.magics["line"]
    reloaded = shell.magics_manager.registry["YwMagics"]
    assert reloaded.partition == magics.partition  # one partition per kernel process


def _terminal_ipython(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by terminal IPython (``ipython -c``), in another process."""
    return subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", "--quick", "--colors=NoColor", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )


@slow
def test_terminal_ipython_prints_text_and_never_hangs(orchestrator: Connection) -> None:
    code = f"%load_ext ywmagics\n%backends install {DEMO} as demo\nprint(demo.partition)\n"
    result = _terminal_ipython(code)
    assert result.returncode == 0, result.stderr
    partition = result.stdout.strip().splitlines()[-1]
    assert partition.startswith("kernel-")
    assert f"[demo_yw_backend#0.1.1 @ {partition}] ready" in result.stdout
    # that shell exited: its own partition was stopped
    client = OrchestratorClient(orchestrator)
    assert partition not in {i["partition"] for i in client.listing()["instances"]}


@slow
def test_a_runner_that_exits_says_so_and_the_next_cell_runs(
    magics: YwMagics, shell: InteractiveShell
) -> None:
    run_line(shell, f"%backends install {PYRUN} as exiting --partition Exiting")
    shell.run_cell_magic("interpreter", "exiting", "kept = 1")
    with pytest.raises(RunnerExited, match="exited while running the cell") as raised:
        shell.run_cell_magic("interpreter", "exiting", "import os\nos._exit(3)")
    assert "%backends logs exiting" in raised.value.hint
    # The next cell runs in a fresh runner: its variables are gone, as the error said.
    shell.run_cell_magic("interpreter", "exiting --out fresh", "fresh = 'kept' not in globals()")
    assert shell.user_ns["fresh"] is True


@slow
def test_interpreter_on_a_backend_that_runs_no_cells(
    magics: YwMagics, shell: InteractiveShell
) -> None:
    run_line(shell, f"%backends install {DEMO} as notARunner --partition NotARunner")
    with pytest.raises(UsageError, match="runs no cells") as raised:
        shell.run_cell_magic("interpreter", "notARunner", "x = 1")
    assert "pyrun_backend" in str(raised.value)


@slow
def test_load_ext_with_an_unusable_runtime_folder_says_what_to_set(tmp_path: Path) -> None:
    blocked = tmp_path / "home"
    blocked.write_text("a file where YW_HOME's folder should be")
    code = "from IPython.core.interactiveshell import InteractiveShell\n"
    code += "InteractiveShell.instance().run_line_magic('load_ext', 'ywmagics')\nprint('loaded')\n"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "YW_HOME": str(blocked)},
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "loaded", result.stderr
    assert "cannot use" in result.stderr and "set YW_HOME" in result.stderr
    assert "Traceback" not in result.stderr


@slow
def test_docs_opens_the_home_page_else_docs_else_the_root(
    magics: YwMagics,
    shell: InteractiveShell,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_line(shell, "%backends install data_keeper as keeper --partition Home")
    run_line(shell, "%backends install node_unix as named --partition Home")
    capsys.readouterr()
    run_line(shell, "%backends docs keeper")  # no /docs page: its root
    assert "/backends/data_keeper/1.0.0/?" in capsys.readouterr().out
    run_line(shell, "%backends docs named")  # the manifest's home
    assert "/backends/node_unix/1.0.0/welcome?" in capsys.readouterr().out
    # A path is text in the link's markup, never markup of its own.
    shown: list[dict[str, str]] = []
    monkeypatch.setattr(_ipython, "publish", lambda bundle, *rest: shown.append(bundle))
    run_line(shell, '%backends docs named "/a?x=1&y=<b>"')
    assert "&amp;y=&lt;b&gt;" in shown[0]["text/html"] and "<b>" not in shown[0]["text/html"]
    run_line(shell, "%backends stop --partition Home")


@slow
def test_dashboard_link_and_inline_page(
    magics: YwMagics,
    shell: InteractiveShell,
    orchestrator: Connection,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_line(shell, "%backends dashboard")  # this shell shows the text form: the URL
    url = capsys.readouterr().out.strip()
    assert url.startswith(f"{orchestrator.url}/dashboard/#code=")
    assert open_dashboard(url)["orchestrator"]["pid"] == orchestrator.pid
    shown: list[dict[str, str]] = []
    monkeypatch.setattr(_ipython, "publish", lambda bundle, *rest: shown.append(bundle))
    run_line(shell, "%backends dashboard")
    run_line(shell, "%backends dashboard --inline --height 500")
    link, inline = shown
    assert len({url, link["text/plain"], inline["text/plain"]}) == 3  # a new link each time
    assert link["text/html"].startswith(
        f'<a href="{html.escape(link["text/plain"])}" target="_blank"'
    )
    assert inline["text/html"].startswith(
        f'<iframe src="{html.escape(inline["text/plain"])}" width="100%" height="500"'
    )
    open_dashboard(link["text/plain"])
    open_dashboard(inline["text/plain"])


@slow
def test_list_shows_a_table_in_a_notebook_and_text_in_a_terminal(
    orchestrator: Connection, tmp_path: Path
) -> None:
    # A real kernel, run as Jupyter runs it: what it sends is what the notebook shows.
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [
        "%load_ext ywmagics",
        "%backends install node_echo as echo --partition ListedHere",
        "%backends list",
        "%backends dashboard --inline",
    ]
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    try:
        NotebookClient(nb, kernel_name="python3", timeout=120).execute(cwd=str(tmp_path))
        (table,) = [o for o in nb.cells[2].outputs if o.output_type == "display_data"]
        assert table.data["text/plain"].startswith("Running instances:")
        page = table.data["text/html"]
        assert ">ListedHere</td>" in page and ">node_echo</td>" in page
        assert ">installed by</th>" in page and "alias &#x27;echo&#x27; of kernel" in page
        assert "<strong>Bound in this notebook</strong>" in page and ">echo</td>" in page
        (frame,) = nb.cells[3].outputs
        assert frame.data["text/html"].startswith('<iframe src="http://127.0.0.1:')
        open_dashboard(frame.data["text/plain"])
    finally:
        OrchestratorClient(orchestrator).stop(partition="ListedHere")
    # A terminal shows the text, and the link on a line of its own.
    code = "%load_ext ywmagics\n%backends list\n%backends dashboard\n"
    result = _terminal_ipython(code)
    assert result.returncode == 0, result.stderr
    assert "Running instances:" in result.stdout and "<table" not in result.stdout
    open_dashboard(result.stdout.strip().splitlines()[-1])
