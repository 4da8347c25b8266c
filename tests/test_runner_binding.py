"""Runners and the kernels that use them, in real kernels: an alias is bound to the runner it
installed (a call that would reach an instance of another configuration is refused, with what
happened and how to keep both, never run on the other one), and a kernel's own runners end with
it, however it ends."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from ywmagics.client import OrchestratorClient
from ywmagics.discovery import Connection, pid_alive

pytestmark = pytest.mark.slow  # real kernels, runners on two Pythons

PYRUN = "pyrun_backend#^0.1.0"


class Kernel:
    """A real kernel (the test venv's ``python3``), with the extension loaded."""

    def __init__(self) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel()
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.pid = int(self.run("import os; print(os.getpid())")[0])
        self.run("%load_ext ywmagics")

    def run(self, code: str) -> tuple[str, dict[str, Any] | None]:
        """What the cell printed (stdout and stderr), and its error (``ename``, ``evalue``)."""
        printed: list[str] = []
        error: dict[str, Any] | None = None

        def hook(message: dict[str, Any]) -> None:
            nonlocal error
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                printed.append(content["text"])
            elif kind == "error":
                error = content
            elif kind in ("execute_result", "display_data"):
                printed.append(content["data"].get("text/plain", ""))

        self.client.execute_interactive(code, output_hook=hook, allow_stdin=False, timeout=180)
        return "".join(printed).strip(), error

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernels(orchestrator: Connection) -> Iterator[tuple[Kernel, Kernel]]:
    first, second = Kernel(), Kernel()
    yield first, second
    first.close()
    second.close()


def test_another_kernels_install_is_refused_not_run_on(kernels: tuple[Kernel, Kernel]) -> None:
    first, second = kernels
    install = f"%backends install {PYRUN} as {{}} --partition Shared --config "
    install += "pyrun_backend.build.python={}"
    printed, error = first.run(install.format("pyA", "3.10"))
    assert error is None, error
    version = "%%interpreter pyA --out v\nimport sys; v = '%d.%d' % sys.version_info[:2]\n"
    assert first.run(version + "print(v)") == ("3.10", None)
    # Another notebook installs the same backend in the same partition, on another Python.
    assert second.run(install.format("pyB", "3.12"))[1] is None
    printed, error = first.run(version)
    assert error is not None and error["ename"] == "InstanceReplaced", (printed, error)
    # (as the environment of each was first asked for: '3.12' or 'python3.12', one build)
    had, now = error["evalue"].split("it now runs with", 1)
    assert "python='3.10'" in had and "3.12'" in now.split(",")[0]
    assert f"alias 'pyB' of kernel {second.pid}" in error["evalue"]
    assert "--partition" in error["evalue"]  # how to keep both
    printed, error = first.run("print(v)")
    assert (printed, error) == ("3.10", None)  # nothing came back from the wrong runner
    assert second.run(version.replace("pyA", "pyB") + "print(v)") == ("3.12", None)


def test_an_install_that_replaces_another_alias_says_so(kernels: tuple[Kernel, Kernel]) -> None:
    first, _ = kernels
    install = (
        "%backends install node_echo as {} --partition Warn --config node_echo.build.greeting={}"
    )
    assert first.run(install.format("e1", "one"))[1] is None
    printed, error = first.run(install.format("e2", "two"))
    assert error is None, error
    assert "installing 'e2' replaced the instance of 'e1'" in printed
    assert "--partition" in printed
    printed, error = first.run("e1.fetch_json('/')")
    assert error is not None and error["ename"] == "InstanceReplaced", (printed, error)
    assert "greeting='one'" in error["evalue"] and "greeting='two'" in error["evalue"]
    assert first.run("e2.fetch_json('/')") == ("{'name': 'node_echo'}", None)
    # The same configuration again: no replacement, no warning, both aliases work.
    printed, error = first.run(install.format("e3", "two"))
    assert error is None and "replaced" not in printed
    assert first.run("e3.fetch_json('/') == e2.fetch_json('/')") == ("True", None)


def _kernel_instances(connection: Connection, partition: str) -> list[dict[str, Any]]:
    listing = OrchestratorClient(connection).listing()["instances"]
    return [i for i in listing if i["partition"] == partition]


def _gone_within(seconds: float, connection: Connection, partition: str, pid: int) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _kernel_instances(connection, partition) and not pid_alive(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("how", ["SIGKILL", "restart now"])
def test_a_kernel_that_dies_uncleanly_takes_its_runners_along(
    orchestrator: Connection, how: str
) -> None:
    kernel = Kernel()
    try:
        partition = kernel.run("print(get_ipython().find_magic('backends').__self__.partition)")[0]
        assert partition.startswith("kernel-")
        assert kernel.run(f"%backends install {PYRUN} as py")[1] is None
        assert kernel.run("%%interpreter py\nx = 'from before'")[1] is None
        (runner,) = _kernel_instances(orchestrator, partition)
        if how == "SIGKILL":  # no exit hook runs
            os.kill(kernel.pid, signal.SIGKILL)
        else:
            kernel.manager.restart_kernel(now=True)
            kernel.client.wait_for_ready(timeout=60)
        assert _gone_within(10, orchestrator, partition, runner["pid"])
        if how == "restart now":  # same partition name, a fresh runner: nothing from before
            kernel.run("%load_ext ywmagics")
            assert kernel.run(f"%backends install {PYRUN} as py")[1] is None
            printed, error = kernel.run("%%interpreter py\nprint('x' in globals())")
            assert (printed, error) == ("False", None)
    finally:
        kernel.close()


def test_a_cells_output_comes_whole_and_in_order(orchestrator: Connection) -> None:
    kernel = Kernel()
    try:
        assert kernel.run(f"%backends install {PYRUN} as py")[1] is None
        code = (
            "%%interpreter py\n"
            "import sys\n"
            "for i in range(3000):\n"
            "    print('out', i)\n"
            "print('err 1', file=sys.stderr)\n"
            "print('out after err')\n"
            "display('shown')\n"
            "print('out after display')\n"
            "raise ValueError('at the end')\n"
        )
        sequence: list[tuple[str, str]] = []

        def hook(message: dict[str, Any]) -> None:
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                if sequence and sequence[-1][0] == content["name"]:
                    sequence[-1] = (content["name"], sequence[-1][1] + content["text"])
                else:
                    sequence.append((content["name"], content["text"]))
            elif kind == "display_data":
                sequence.append(("display", content["data"]["text/plain"]))
            elif kind == "error":
                sequence.append(("error", content["ename"]))

        kernel.client.execute_interactive(code, output_hook=hook, timeout=120)
        lines = "".join(f"out {i}\n" for i in range(3000))
        assert sequence == [
            ("stdout", lines),
            ("stderr", "err 1\n"),
            ("stdout", "out after err\n"),
            ("display", "'shown'"),
            ("stdout", "out after display\n"),
            ("error", "RemoteExecutionError"),
        ]
    finally:
        kernel.close()


def _run_and_interrupt(kernel: Kernel, code: str, after: str) -> list[tuple[str, str]]:
    """Run ``code``; press stop once ``after`` was printed; what came, until the kernel idles."""
    msg_id = kernel.client.execute(code)
    came: list[tuple[str, str]] = []
    pressed = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        message = kernel.client.get_iopub_msg(timeout=30)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            came.append((content["name"], content["text"]))
            if not pressed and after in "".join(text for _, text in came):
                kernel.manager.interrupt_kernel()
                pressed = True
        elif kind == "error":
            came.append(("error", f"{content['ename']}: {content['evalue']}"))
        elif kind == "status" and content["execution_state"] == "idle":
            break
    assert pressed, came
    return came


def test_what_a_cell_prints_after_an_interrupt_is_shown(orchestrator: Connection) -> None:
    kernel = Kernel()
    try:
        assert kernel.run(f"%backends install {PYRUN} as py")[1] is None
        came = _run_and_interrupt(
            kernel,
            "%%interpreter py\nimport time\ntry:\n    print('sleeping', flush=True)\n"
            "    time.sleep(30)\nfinally:\n    print('cleaned up')\n",
            after="sleeping",
        )
        text = "".join(text for kind, text in came if kind == "stdout")
        assert text == "sleeping\ncleaned up\n"
        kind, message = came[-1]
        assert kind == "error" and "interrupted in the runner" in message
        # A cell that catches the interrupt and goes on is not "interrupted": it ends, and its
        # values come back.
        came = _run_and_interrupt(
            kernel,
            "%%interpreter py --out v\nimport time\ntry:\n    print('sleeping', flush=True)\n"
            "    time.sleep(30)\nexcept KeyboardInterrupt:\n    print('caught')\n"
            "for i in range(3):\n    time.sleep(0.2)\n    print('going on', i)\nv = 'done'\n",
            after="sleeping",
        )
        assert [kind for kind, _ in came if kind == "error"] == []
        text = "".join(text for kind, text in came if kind == "stdout")
        assert text == "sleeping\ncaught\ngoing on 0\ngoing on 1\ngoing on 2\n"
        assert kernel.run("print(v)") == ("done", None)
    finally:
        kernel.close()


def test_a_subprocess_output_shows_in_the_cell(orchestrator: Connection) -> None:
    kernel = Kernel()
    try:
        assert kernel.run(f"%backends install {PYRUN} as py")[1] is None
        code = "%%interpreter py\nimport subprocess\nsubprocess.run(['echo', 'from a subprocess'])"
        printed, error = kernel.run(code)
        assert error is None and "from a subprocess" in printed
    finally:
        kernel.close()


def test_input_in_a_cell_is_asked_through_the_kernels_stdin(orchestrator: Connection) -> None:
    kernel = Kernel()
    try:
        assert kernel.run(f"%backends install {PYRUN} as py")[1] is None
        prompts: list[str] = []

        def answer(message: dict[str, Any]) -> None:
            prompts.append(message["content"]["prompt"])
            kernel.client.input("Ada")

        code = "%%interpreter py --out name\nname = input('who? ')\nprint('hello', name)"
        outputs: list[str] = []
        reply = kernel.client.execute_interactive(
            code,
            allow_stdin=True,
            stdin_hook=answer,
            output_hook=lambda m: outputs.append(m["content"].get("text", "")),
            timeout=60,
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        assert prompts == ["who? "]
        assert "hello Ada" in "".join(outputs)
        assert kernel.run("print(name)") == ("Ada", None)
        # A frontend without stdin: a clear error in the cell, not a hang.
        printed, error = kernel.run("%%interpreter py\ninput('who? ')")
        assert error is not None and "no stdin" in error["evalue"], (printed, error)
    finally:
        kernel.close()


def test_a_runners_traceback_names_the_cell_as_jupyter_numbers_it(
    orchestrator: Connection,
) -> None:
    kernel = Kernel()
    try:
        assert kernel.run(f"%backends install {PYRUN} as py")[1] is None
        errors: list[dict[str, Any]] = []
        reply = kernel.client.execute_interactive(
            "%%interpreter py\n1 / 0",
            allow_stdin=False,
            output_hook=lambda m: errors.append(m["content"]) if m["msg_type"] == "error" else 0,
            timeout=60,
        )
        number = reply["content"]["execution_count"]
        traceback = "\n".join(errors[0]["traceback"])
        assert f"In[{number}]" in traceback and f"In[{number + 1}]" not in traceback, traceback
    finally:
        kernel.close()
