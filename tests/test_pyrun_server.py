"""The python runner as a real process: pyrun_server.py on a Unix socket (or TCP), over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ywmagics import bulk, wire
from ywmagics.orchestrator.environments import SHARED_MODULES

from .conftest import PYTHON38, needs_python38
from .pyrun_process import BACKEND, Server, lay_out


@pytest.fixture(scope="module")
def server(app: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by the module's tests (each uses its own variable names)."""
    running = Server(app, tmp_path_factory.mktemp("shared"), sys.executable, tcp=False)
    yield running
    assert running.stop() == 0, running.log()


# ---------------------------------------------------------------------------------------------
# routes and cells


def test_readiness(server: Server) -> None:
    answer = server.client.get("/").json()
    host = answer.pop("host")
    assert answer == {
        "name": "pyrun_backend",
        "version": "0.1.0",
        "python": sys.version,
        "bulk": bulk.PROTOCOL,  # it takes values' buffers beside the JSON
        "codec": wire.CODEC_VERSION,
    }
    # Where it runs, for a kernel to tell whether they share memory: this machine, this user.
    assert bulk.same_host(host, bulk.host()) and host["pid"] == server.process.pid


def test_a_cell_of_another_codec_is_refused_naming_both_versions(server: Server) -> None:
    body = {"code": "y = x", "capturedIn": {"x": 1}, "capturedOut": ["y"]}
    refused = server.client.post("/run", json={**body, "codec": wire.CODEC_VERSION + 1})
    assert refused.status_code == 400
    said = refused.json()["detail"]
    assert f"codec version {wire.CODEC_VERSION + 1}" in said
    assert f"speaks version {wire.CODEC_VERSION}" in said
    accepted = server.client.post("/run", json={**body, "codec": wire.CODEC_VERSION})
    assert accepted.json()["capturedOut"] == {"y": 1}
    raw = server.client.post("/run", json=body)  # as the tutorial's raw POST: no codec named
    assert raw.json()["capturedOut"] == {"y": 1}


def test_tutorial_cell(server: Server) -> None:
    code = (
        "import numpy\nimport sys\n\nresp = {'python': sys.version, 'numpy': numpy.__version__}\n"
    )
    result = server.run(code, cellId="tutorials.backend", capturedOut=["resp"])
    assert result["exception"] is None
    assert result["capturedOut"]["resp"]["python"] == sys.version  # readable as raw JSON
    assert result["capturedOut"]["resp"]["numpy"] == np.__version__
    assert set(result) == {"output", "error", "capturedOut", "exception", "displays"}


def test_namespace_persists_across_cells(server: Server) -> None:
    assert server.run("persist_a = 40")["exception"] is None
    result = server.run("persist_b = persist_a + n", capturedIn={"n": 2}, capturedOut=["persist_b"])
    assert result["capturedOut"] == {"persist_b": 42}


def test_values_travel_both_ways(server: Server) -> None:
    sent = {"t": (1, 2), "raw": b"\x00\x01", "s": {3}, "z": 1 + 2j, "arr": np.arange(6.0)}
    code = "back = (t[::-1], raw * 2, s | {4}, z.conjugate(), arr.reshape(2, 3) * 2)"
    result = server.run(code, capturedIn=wire.encode_namespace(sent), capturedOut=["back"])
    assert result["exception"] is None, result["exception"]
    t, raw, s, z, arr = wire.decode(result["capturedOut"]["back"])
    assert (t, raw, s, z) == ((2, 1), b"\x00\x01\x00\x01", {3, 4}, 1 - 2j)
    np.testing.assert_array_equal(arr, np.arange(6.0).reshape(2, 3) * 2)


def test_top_level_await_and_a_persistent_loop(server: Server) -> None:
    code = (
        "import asyncio\nawait asyncio.sleep(0.01)\nloop_ids = [id(asyncio.get_running_loop())]\n"
    )
    assert server.run(code)["exception"] is None
    code = "await asyncio.sleep(0)\nloop_ids.append(id(asyncio.get_running_loop()))\n"
    result = server.run(code, capturedOut=["loop_ids"])
    ids = result["capturedOut"]["loop_ids"]
    assert len(ids) == 2 and ids[0] == ids[1]


def test_stdout_and_stderr(server: Server) -> None:
    code = "import sys\nprint('out', 1)\nprint('err', file=sys.stderr)\nsys.stdout.write('x')"
    result = server.run(code)
    assert result["output"] == "out 1\nx"
    assert result["error"] == "err\n"


def test_exception_with_the_cells_line_numbers(server: Server) -> None:
    code = "def fail(x):\n    return 1 / x\n\nfail(0)\n"
    result = server.run(code, cellId="c-err")
    exception = result["exception"]
    assert exception["type"] == "ZeroDivisionError"
    assert exception["message"] == "division by zero"
    assert exception["lineno"] == 2
    traceback = exception["traceback"]
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert 'File "<cell c-err>", line 4, in <module>' in traceback
    assert 'File "<cell c-err>", line 2, in fail' in traceback
    assert "return 1 / x" in traceback  # the source line is shown
    assert "pyrun_" not in traceback  # the runner's own frames are trimmed


def test_syntax_error(server: Server) -> None:
    exception = server.run("x = 1\ny = (\n", cellId="syn")["exception"]
    assert exception["type"] == "SyntaxError"
    assert exception["lineno"] == 2
    assert '"<cell syn>", line 2' in exception["traceback"]


def test_output_before_an_exception_is_kept(server: Server) -> None:
    result = server.run("print('before')\nraise ValueError('boom')")
    assert result["output"] == "before\n"
    assert result["exception"]["type"] == "ValueError"
    assert result["exception"]["message"] == "boom"


def test_captured_out_name_not_defined(server: Server) -> None:
    result = server.run("defined_here = 1", capturedOut=["defined_here", "never_defined"])
    exception = result["exception"]
    assert exception["type"] == "NameError"
    assert exception["message"] == "--out variable 'never_defined' is not defined by the cell"
    assert result["capturedOut"] == {}


def test_value_that_cannot_travel(server: Server) -> None:
    result = server.run("import threading\nlock_var = threading.Lock()", capturedOut=["lock_var"])
    exception = result["exception"]
    assert exception["type"] == "WireError"
    assert "cannot send variable 'lock_var'" in exception["message"]
    assert "lock" in exception["message"]


def test_display_bundles(server: Server) -> None:
    code = (
        "class Rich:\n"
        "    def _repr_html_(self):\n"
        "        return '<b>rich</b>'\n"
        "    def _repr_png_(self):\n"
        "        return b'\\x89PNG'\n"
        "    def __repr__(self):\n"
        "        return 'Rich()'\n"
        "display(Rich(), [1, 2], metadata={'k': 1})\n"
    )
    displays = server.run(code)["displays"]
    assert displays[0]["data"] == {
        "text/html": "<b>rich</b>",
        "image/png": "iVBORw==",
        "text/plain": "Rich()",
    }
    assert displays[1] == {"data": {"text/plain": "[1, 2]"}, "metadata": {"k": 1}}


@pytest.mark.slow  # matplotlib in the runner: half a second
def test_matplotlib_figures_come_back_as_png(server: Server) -> None:
    pytest.importorskip("matplotlib")
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3])\n"
        "print('before show')\n"
        "plt.show()\n"
        "fig, ax = plt.subplots()\n"
        "ax.plot([3, 1])\n"
        "open_figures = None\n"
    )
    result = server.run(code)
    assert result["exception"] is None, result["exception"]
    assert result["error"] == ""  # no "non-interactive backend" warning
    pngs = [d["data"]["image/png"] for d in result["displays"]]
    assert len(pngs) == 2  # the shown one, and the one left open at the end
    assert all(p.startswith("iVBORw0KGgo") for p in pngs)
    result = server.run("n_open = len(plt.get_fignums())", capturedOut=["n_open"])
    assert result["capturedOut"]["n_open"] == 0


def test_reset(start_server: Callable[..., Server]) -> None:
    server = start_server()
    server.run("to_forget = 1")
    assert server.client.post("/reset").json() == {"reset": True}
    assert server.run("to_forget")["exception"]["type"] == "NameError"
    assert server.run("display")["exception"] is None  # still there after a reset


def test_bad_requests(server: Server) -> None:
    for body in (b"not json", b"[1]", b'{"capturedOut": []}', b'{"code": "1", "capturedOut": 3}'):
        response = server.client.post(
            "/run", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, body
        assert response.json()["detail"]
    assert server.client.get("/nowhere").status_code == 404
    assert server.client.get("/run").status_code == 405
    assert server.client.get("/").status_code == 200  # the connection still works
    head = server.client.head("/")
    assert head.status_code == 200 and head.content == b""
    assert server.client.get("/").json()["name"] == "pyrun_backend"


def test_chunked_request_body(server: Server) -> None:
    body = json.dumps({"cellId": "c", "code": "chunked_v = 5", "capturedOut": ["chunked_v"]})

    def parts() -> Iterator[bytes]:
        yield body[:10].encode()
        yield body[10:].encode()

    response = server.client.post("/run", content=parts())
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.json()["capturedOut"] == {"chunked_v": 5}


def test_keep_alive(server: Server) -> None:
    request = b"GET / HTTP/1.1\r\nHost: pyrun\r\n\r\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(server.socket_path))
        sock.sendall(request + request)  # two requests on one connection
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 2 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.count(b'"name": "pyrun_backend"') == 2


def test_concurrent_requests_run_one_at_a_time(server: Server) -> None:
    results: dict[int, dict[str, Any]] = {}

    def run(i: int) -> None:
        results[i] = server.run(f"import time\nprint({i})\ntime.sleep(0.05)\nprint({i})")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert {i: r["output"] for i, r in results.items()} == {i: f"{i}\n{i}\n" for i in range(4)}


# ---------------------------------------------------------------------------------------------
# streaming and interrupt


def test_streaming_ndjson(server: Server) -> None:
    code = (
        "import sys, time\n"
        "print('first')\n"
        "sys.stdout.write('no newline')\n"
        "time.sleep(0.4)\n"
        "print('oops', file=sys.stderr)\n"
        "display(7)\n"
        "streamed = 1\n"
    )
    body = {"cellId": "s", "code": code, "capturedIn": {}, "capturedOut": ["streamed"]}
    arrivals: list[tuple[float, dict[str, Any]]] = []
    start = time.monotonic()
    headers = {"Accept": "application/x-ndjson"}
    with server.client.stream("POST", "/run", json=body, headers=headers) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        for line in response.iter_lines():
            arrivals.append((time.monotonic() - start, json.loads(line)))
    events = [event for _, event in arrivals]
    assert events[:2] == [
        {"started": True},
        {"stream": "stdout", "text": "first\nno newline"},  # one batch
    ]
    assert arrivals[1][0] < 0.3  # text without a newline did not wait for the cell's end
    assert events[2:4] == [
        {"stream": "stderr", "text": "oops\n"},
        {"display": {"data": {"text/plain": "7"}, "metadata": {}}},
    ]
    result = events[-1]["result"]
    assert len(events) == 5
    assert arrivals[-1][0] >= 0.4
    assert result["capturedOut"] == {"streamed": 1}
    # What was streamed is not sent a second time in the result.
    assert (result["output"], result["error"], result["displays"]) == ("", "", [])


@pytest.mark.slow  # subprocesses of the cell: most of a second
def test_output_that_bypasses_sys_stdout_reaches_the_cell(server: Server) -> None:
    # As ipykernel does: what a subprocess, C code or a thread writes to the descriptors goes
    # to the cell that runs, before its result; the runner's own messages stay in the log.
    code = (
        "import ctypes, os, subprocess, sys, threading\n"
        "print('python first')\n"
        "subprocess.run(['echo', 'from a subprocess'])\n"
        "subprocess.run(['sh', '-c', 'echo to fd 2 >&2'])\n"
        "os.write(1, b'straight to fd 1\\n')\n"
        "ctypes.CDLL(None).printf(b'from C printf\\n')\n"
        "t = threading.Thread(target=lambda: sys.__stdout__.write('a thread, to __stdout__\\n'))\n"
        "t.start(); t.join()\n"
    )
    result = server.run(code, cellId="fds")
    assert result["exception"] is None
    out = result["output"].splitlines()
    assert out[0] == "python first"
    assert set(out[1:]) == {
        "from a subprocess",
        "straight to fd 1",
        "from C printf",
        "a thread, to __stdout__",
    }
    assert result["error"] == "to fd 2\n"
    # Between cells, it goes to the log as before.
    server.run("import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 0.3; echo late >&2'])\n")
    time.sleep(0.8)
    assert "late" in server.log()
    assert server.run("x = 1")["output"] == ""


def test_input_is_asked_of_the_client_that_offers_stdin(server: Server) -> None:
    code = "import getpass\nname = input('who? ')\nsecret = getpass.getpass('key: ')\n"
    body = {
        "cellId": "in", "code": code, "capturedIn": {}, "capturedOut": ["name", "secret"],
        "runId": "asking", "stdin": True,
    }  # fmt: skip
    headers = {"Accept": "application/x-ndjson"}
    answers = iter(["Ada", "s3cret"])
    events = []
    with server.client.stream("POST", "/run", json=body, headers=headers) as response:
        for line in response.iter_lines():
            event = json.loads(line)
            events.append(event)
            if "input_request" in event:
                answered = server.client.post(
                    "/input", json={"runId": "asking", "value": next(answers)}
                )
                assert answered.json() == {"answered": True}
    asked = [e["input_request"] for e in events if "input_request" in e]
    assert asked == [
        {"prompt": "who? ", "password": False},
        {"prompt": "key: ", "password": True},
    ]
    assert events[-1]["result"]["capturedOut"] == {"name": "Ada", "secret": "s3cret"}
    # A client with no stdin to offer says why; the cell's input() raises EOFError with it.
    body = {**body, "code": "input()", "capturedOut": [], "runId": "no-stdin"}
    with server.client.stream("POST", "/run", json=body, headers=headers) as response:
        for line in response.iter_lines():
            if "input_request" in json.loads(line):
                server.client.post("/input", json={"runId": "no-stdin", "eof": "none here"})
            last = json.loads(line)
    assert last["result"]["exception"]["type"] == "EOFError"
    assert last["result"]["exception"]["message"] == "none here"
    # Without "stdin", input() fails at once, as before: no client waits to answer it.
    result = server.run("input()")
    assert result["exception"]["type"] == "EOFError"
    assert "offers none" in result["exception"]["message"]
    assert server.client.post("/input", json={"runId": "gone", "value": "x"}).json() == {
        "answered": False
    }


def test_printed_lines_go_in_batches_in_their_order(server: Server) -> None:
    # One event per print made a loop of prints twenty times slower than in a kernel.
    code = (
        "import sys\n"
        "for i in range(20000):\n"
        "    print('line', i)\n"
        "    if i % 5000 == 4999:\n"
        "        print('mark', i, file=sys.stderr)\n"
    )
    body = {"cellId": "b", "code": code, "capturedIn": {}, "capturedOut": []}
    headers = {"Accept": "application/x-ndjson"}
    with server.client.stream("POST", "/run", json=body, headers=headers) as response:
        events = [json.loads(line) for line in response.iter_lines()]
    texts = [(e["stream"], e["text"]) for e in events if "stream" in e]
    assert len(texts) < 60, len(texts)
    expected: list[tuple[str, str]] = []
    for i in range(20000):
        expected.append(("stdout", f"line {i}\n"))
        if i % 5000 == 4999:
            expected.append(("stderr", f"mark {i}\n"))
    merged: list[tuple[str, str]] = []  # the same text, batched: joined per stream run
    for stream, text in expected:
        if merged and merged[-1][0] == stream:
            merged[-1] = (stream, merged[-1][1] + text)
        else:
            merged.append((stream, text))
    joined: list[tuple[str, str]] = []
    for stream, text in texts:
        if joined and joined[-1][0] == stream:
            joined[-1] = (stream, joined[-1][1] + text)
        else:
            joined.append((stream, text))
    assert joined == merged  # every line, stdout and stderr in their order


@pytest.mark.parametrize(
    "code",
    [
        "import time\nprint('started')\nwhile True:\n    time.sleep(0.01)\n",
        "import time\nprint('started')\ntime.sleep(60)\n",
        "import asyncio\nprint('started')\nawait asyncio.sleep(60)\n",
    ],
    ids=["sleep_loop", "long_sleep", "await"],
)
def test_interrupt(server: Server, code: str) -> None:
    body = {"cellId": "intr", "code": code, "capturedIn": {}, "capturedOut": []}
    headers = {"Accept": "application/x-ndjson"}
    start = time.monotonic()
    with server.client.stream("POST", "/run", json=body, headers=headers) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines)) == {"started": True}
        assert json.loads(next(lines)) == {"stream": "stdout", "text": "started\n"}
        time.sleep(0.2)  # in the loop or the long call by now
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(server.socket_path))) as other:
            assert other.post("http://pyrun/interrupt").json() == {"interrupted": True}
        result = json.loads(list(lines)[-1])["result"]
    assert time.monotonic() - start < 5
    exception = result["exception"]
    assert exception["type"] == "KeyboardInterrupt"
    assert exception["lineno"] in (3, 4)
    assert '"<cell intr>"' in exception["traceback"]
    assert "pyrun_" not in exception["traceback"]
    assert server.run("after_interrupt = 1")["exception"] is None  # the runner goes on


def test_interrupt_when_idle(server: Server) -> None:
    assert server.client.post("/interrupt").json() == {"interrupted": False}
    assert server.client.get("/").status_code == 200


# ---------------------------------------------------------------------------------------------
# processes


def test_tcp_port(start_server: Callable[..., Server]) -> None:
    server = start_server(tcp=True)
    assert server.port > 0
    assert server.client.get("/").json()["name"] == "pyrun_backend"
    assert server.run("tcp_v = 3", capturedOut=["tcp_v"])["capturedOut"] == {"tcp_v": 3}


def test_what_a_cell_prints_before_os_exit_is_sent(start_server: Callable[..., Server]) -> None:
    server = start_server()
    code = "import os, subprocess\nprint('last words')\nsubprocess.run(['echo', 'and theirs'])\n"
    code += "os._exit(3)\n"
    body = {"cellId": "exit", "code": code, "capturedIn": {}, "capturedOut": []}
    headers = {"Accept": "application/x-ndjson"}
    texts = []
    with (
        server.client.stream("POST", "/run", json=body, headers=headers) as response,
        contextlib.suppress(httpx.HTTPError),  # the answer breaks off: the process ended
    ):
        for line in response.iter_lines():
            event = json.loads(line)
            if "stream" in event:
                texts.append(event["text"])
    assert "".join(texts) == "last words\nand theirs\n"
    assert server.wait_exit() == 3


def test_sigterm_exits_cleanly(start_server: Callable[..., Server]) -> None:
    server = start_server()
    server.run("x = 1")
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0, server.log()
    assert not server.socket_path.exists()


def test_sigterm_right_after_start(start_server: Callable[..., Server]) -> None:
    server = start_server()
    server.process.send_signal(signal.SIGTERM)  # while it may still be starting its threads
    assert server.wait_exit() == 0, server.log()
    assert server.log() == ""


def test_sigterm_during_a_cell(start_server: Callable[..., Server]) -> None:
    server = start_server()
    body = {"code": "print('started')\nimport time\ntime.sleep(60)"}
    headers = {"Accept": "application/x-ndjson"}
    start = time.monotonic()
    events: list[dict[str, Any]] = []
    with server.client.stream("POST", "/run", json=body, headers=headers) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines)) == {"started": True}
        assert json.loads(next(lines)) == {"stream": "stdout", "text": "started\n"}
        server.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(httpx.HTTPError):  # it may end before the answer is complete
            events.extend(json.loads(line) for line in lines)
    assert server.wait_exit() == 0, server.log()
    assert time.monotonic() - start < 5
    if events:
        assert events[-1]["result"]["exception"]["type"] == "Terminated"


@needs_python38
def test_runs_on_python38(start_server: Callable[..., Server]) -> None:
    server = start_server(python=str(PYTHON38))
    assert server.client.get("/").json()["python"].startswith("3.8.")
    code = (
        "import asyncio, sys\n"
        "await asyncio.sleep(0)\n"
        "out = (sys.version_info[:2], t[::-1], b)\n"
        "print('hello from', sys.version_info[:2])\n"
    )
    captured_in = wire.encode_namespace({"t": (1, 2), "b": b"\x00"})
    result = server.run(code, capturedIn=captured_in, capturedOut=["out"])
    assert result["exception"] is None, result["exception"]
    assert wire.decode(result["capturedOut"]["out"]) == ((3, 8), (2, 1), b"\x00")
    exception = server.run("def f():\n    1 / 0\nf()", cellId="py38")["exception"]
    assert exception["lineno"] == 2 and "pyrun_" not in exception["traceback"]
    assert server.stop() == 0


def test_runner_constants_match_python() -> None:
    import ast
    import inspect

    source = (BACKEND / "pyrun_runner.py").read_text()
    assert f"PyCF_ALLOW_TOP_LEVEL_AWAIT = {ast.PyCF_ALLOW_TOP_LEVEL_AWAIT:#x}" in source
    assert f"CO_COROUTINE = {inspect.CO_COROUTINE:#x}" in source


def test_no_import_outside_the_standard_library() -> None:
    import ast

    ours = {path.stem for path in BACKEND.glob("*.py")} | {
        Path(name).stem for name in SHARED_MODULES
    }
    for path in BACKEND.glob("pyrun_*.py"):
        if path.name == "pyrun_mpl_backend.py":
            continue  # imported by matplotlib, where matplotlib is installed
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ours, (path.name, name)
    assert os.access(BACKEND / "pyrun_server.py", os.R_OK)


@pytest.mark.slow  # a whole mypy run: seconds
def test_the_runner_type_checks_as_installed(tmp_path: Path) -> None:
    # As the installer lays it out: the backend's files with the codec next to them. (mypy checks
    # for 3.10 at the oldest; that the runner runs on 3.8 is tested by running it there.)
    app = lay_out(tmp_path / "app")
    (app / "mypy.ini").write_text("[mypy]\nstrict = True\npython_version = 3.10\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--explicit-package-bases",
            *sorted(p.name for p in app.glob("*.py")),
        ],
        cwd=app,
        env={**os.environ, "MYPYPATH": str(app)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_interrupt_by_run_id_leaves_other_cells_alone(server: Server, tmp_path: Path) -> None:
    # Two clients share one runner (a named partition): one's stop button or timeout must not
    # interrupt the other's cell, and a cell still waiting its turn is cancelled, not run.
    go_on = tmp_path / "go-on"
    running = {
        "cellId": "a",
        "code": (
            "import os, time\n"
            f"while not os.path.exists({str(go_on)!r}):\n"
            "    time.sleep(0.01)\n"
            "running_done = 1"
        ),
        "capturedIn": {},
        "capturedOut": ["running_done"],
        "runId": "run-a",
    }
    waiting = {
        "cellId": "b",
        "code": "waiting_ran = 1",
        "capturedIn": {},
        "capturedOut": [],
        "runId": "run-b",
    }
    results: dict[str, Any] = {}
    started = threading.Event()

    def run(body: dict[str, Any]) -> None:
        with (
            httpx.Client(
                transport=httpx.HTTPTransport(uds=str(server.socket_path)), timeout=30
            ) as client,
            client.stream(
                "POST", "http://pyrun/run", json=body, headers={"Accept": "application/x-ndjson"}
            ) as answer,
        ):
            for line in answer.iter_lines():
                item = json.loads(line) if line else {}
                if "started" in item:
                    started.set()
                if "result" in item:
                    results[body["runId"]] = item["result"]

    threads = [threading.Thread(target=run, args=(body,)) for body in (running, waiting)]
    threads[0].start()
    assert started.wait(10)  # run-a runs
    threads[1].start()
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(server.socket_path))) as other:

        def interrupt(run_id: str) -> Any:
            return other.post("http://pyrun/interrupt", json={"runId": run_id}).json()

        deadline = time.monotonic() + 10
        while interrupt("run-b") != {"interrupted": True}:  # once run-b waits in the queue
            assert time.monotonic() < deadline, "run-b never reached the runner"
            time.sleep(0.01)
        assert interrupt("no-such-run") == {"interrupted": False}
    go_on.touch()
    for thread in threads:
        thread.join(10)
    assert results["run-a"]["exception"] is None
    assert results["run-a"]["capturedOut"] == {"running_done": 1}
    assert results["run-b"]["exception"]["type"] == "KeyboardInterrupt"
    assert "cancelled before it started" in results["run-b"]["exception"]["message"]
    names = server.run("names = sorted(globals())", capturedOut=["names"])["capturedOut"]["names"]
    assert "running_done" in names and "waiting_ran" not in names


def test_the_value_of_a_last_expression_shows_like_in_a_notebook(server: Server) -> None:
    shown = server.run("x = 2\nx * 21")
    assert shown["displays"] == [{"data": {"text/plain": "42"}, "metadata": {}}]
    assert server.run("x * 21;")["displays"] == []  # a trailing ';' hides it, as in IPython
    assert server.run("None")["displays"] == []
    awaited = server.run(
        "import asyncio\nawait asyncio.sleep(0)\nasyncio.get_running_loop() is not None"
    )
    assert awaited["exception"] is None
    assert awaited["displays"] == [{"data": {"text/plain": "True"}, "metadata": {}}]
    assert server.run("y = _ * 2", capturedOut=["y"])["capturedOut"] == {"y": 2}


def test_a_body_over_the_limit_is_refused_unread(start_server: Callable[..., Server]) -> None:
    server = start_server(env={"YW_BUILD_MAX_BODY": "1MiB"})
    code = "x = 1  # " + "p" * (2 << 20)
    body = {"cellId": "big", "code": code, "capturedIn": {}, "capturedOut": []}
    answer = server.client.post("/run", json=body)
    assert answer.status_code == 413
    assert "larger than this runner takes (1048576 bytes)" in answer.json()["detail"]
    assert "pyrun_backend.build.max_body" in answer.json()["detail"]

    def pieces() -> Iterator[bytes]:
        yield json.dumps(body).encode()

    chunked = server.client.post("/run", content=pieces())
    assert chunked.status_code == 413
    assert server.run("small = 1")["exception"] is None  # and it goes on


def test_sizes_of_the_body_limit() -> None:
    sys.path.insert(0, str(BACKEND))
    try:
        import pyrun_http
    finally:
        sys.path.remove(str(BACKEND))
    for size, expected in [
        ("512MiB", 512 << 20),
        ("2GiB", 2 << 30),
        ("3 gib", 3 << 30),
        ("100MB", 10**8),
        ("1048576", 1 << 20),
        ("", 2 << 30),
    ]:
        assert pyrun_http.max_body(size) == expected, size
    with pytest.raises(ValueError, match="is not a size"):
        pyrun_http.max_body("lots")


def test_only_recent_cells_sources_are_kept(server: Server) -> None:
    for n in range(230):
        server.run(f"cell_{n} = {n}", cellId=f"In[{n}]")
    count = "import linecache\nkept = sorted(k for k in linecache.cache if k.startswith('<cell'))"
    kept = server.run(count, cellId="count", capturedOut=["kept"])["capturedOut"]["kept"]
    assert 0 < len(kept) <= 200 and "<cell In[229]>" in kept and "<cell In[0]>" not in kept
    assert server.client.post("/reset").json() == {"reset": True}
    after = server.run(count, cellId="count", capturedOut=["kept"])["capturedOut"]["kept"]
    assert after == ["<cell count>"]
