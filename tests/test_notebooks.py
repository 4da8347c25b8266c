"""The example notebooks, executed in real kernels (nbclient) against a real orchestrator.

The kernels inherit ``YW_HOME`` from the ``orchestrator`` fixture, so they find the session's
orchestrator. Widget state is stored (``store_widget_state``), as a notebook saved from JupyterLab
would hold it, and checked; the ``text/plain`` alternative of each progress view is what
frontends without widgets (nbconvert, papermill) show, and is checked too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ywmagics.client import OrchestratorClient
from ywmagics.discovery import Connection

# nbformat and nbclient load in ~2 s here (jsonschema's format checkers): imported by the
# tests that run them, not at every collection of the fast suite.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from nbformat import NotebookNode

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).parent.parent / "example_notebooks"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
TREX = "VV ^ d88"  # a piece of the trex picture


def execute(nb: NotebookNode, cwd: Path) -> NotebookNode:
    from nbclient import NotebookClient

    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=180,
        store_widget_state=True,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def run_example(name: str, cwd: Path) -> NotebookNode:
    import nbformat

    return execute(nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4), cwd)


def code_cells(nb: NotebookNode) -> list[NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def cell_starting(nb: NotebookNode, start: str, index: int = 0) -> NotebookNode:
    cells = [cell for cell in code_cells(nb) if cell.source.startswith(start)]
    assert cells, f"no cell starts with {start!r}"
    return cells[index]


def text_of(cell: NotebookNode) -> str:
    """Everything a reader without widgets sees under the cell."""
    parts: list[str] = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.append(output.data.get("text/plain", ""))
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}\n" + "\n".join(output.traceback))
    return "".join(parts)


def error_of(cell: NotebookNode) -> NotebookNode:
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert errors, f"cell did not raise: {cell.source}"
    return errors[0]


def widget_models(nb: NotebookNode, model_name: str) -> list[dict[str, Any]]:
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return [m["state"] for m in state.values() if m["model_name"] == model_name]


def check_progress_views(nb: NotebookNode, count: int, style: str = "success") -> None:
    bars = widget_models(nb, "FloatProgressModel")
    assert len(bars) == count
    for bar in bars:
        assert bar["value"] == bar["max"] == 1.0
        assert bar["bar_style"] == style
    assert widget_models(nb, "AccordionModel") and widget_models(nb, "TextareaModel")


def instance_partitions(connection: Connection) -> set[str]:
    client = OrchestratorClient(connection)
    return {i["partition"] for i in client.listing()["instances"]}


@pytest.fixture
def cwd(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_01_getting_started(orchestrator: Connection, cwd: Path) -> None:
    nb = run_example("01_getting_started", cwd)
    install = cell_starting(nb, "%backends install")
    view = [o for o in install.outputs if o.output_type == "display_data"]
    assert len(view) == 1
    assert "application/vnd.jupyter.widget-view+json" in view[0].data
    # the text alternative holds the event log, as the text fallback would print it
    fallback = view[0].data["text/plain"]
    match = re.search(r"in partition (kernel-[0-9a-f]{8})", fallback)
    assert match, fallback
    partition = match.group(1)
    assert f"[demo_yw_backend#0.1.1 @ {partition}] resolved" in fallback
    assert f"[demo_yw_backend#0.1.1 @ {partition}] ready" in fallback
    assert "\x1b[" not in fallback
    check_progress_views(nb, 1)

    assert "/backends/demo_yw_backend/0.1.1" in text_of(cell_starting(nb, 'print(f"Backend'))
    picture = text_of(cell_starting(nb, "body = "))
    assert "hello backends" in picture and TREX in picture
    docs = cell_starting(nb, "%backends docs").outputs[0].data
    assert "/backends/demo_yw_backend/0.1.1/docs" in docs["text/html"]
    concurrent = text_of(cell_starting(nb, "import asyncio"))
    assert "{'message': 'Hello world'}" in concurrent and "async!" in concurrent
    assert "status: 422" in text_of(cell_starting(nb, "from ywmagics import BackendHTTPError"))
    # the kernel has exited: the instances of its own partition were stopped with it
    assert partition not in instance_partitions(orchestrator)


def test_02_configuration(orchestrator: Connection, cwd: Path) -> None:
    nb = run_example("02_configuration", cwd)
    check_progress_views(nb, 2)
    again = text_of(cell_starting(nb, "%%backends install"))
    assert "reused" in again  # the cell form asked for the same environment
    assert "python=3.10 modules=numpy" in text_of(cell_starting(nb, "%backends list"))
    raw = text_of(cell_starting(nb, "body = "))
    assert re.search(r"^Python version: 3\.10\.", raw, re.M), raw
    assert re.search(r"^Numpy version: \d+\.\d+", raw, re.M), raw
    versions = text_of(cell_starting(nb, "print(pyVersion)")).splitlines()
    assert versions[0].startswith("3.10")
    assert re.fullmatch(r"\d+\.\d+\.\d+", versions[1])


def test_03_interpreter_cells(orchestrator: Connection, cwd: Path) -> None:
    nb = run_example("03_interpreter_cells", cwd)
    check_progress_views(nb, 1)
    assert re.search(
        r"squares computed by Python 3\.10\.\d+: \[0, 1, 4, 9\]",
        text_of(cell_starting(nb, 'print(f"squares')),
    )
    streamed = cell_starting(nb, "%%interpreter pyRunner\nimport time")
    # printed while the cell ran: several stream outputs, not one at the end
    assert len([o for o in streamed.outputs if o.output_type == "stream"]) >= 3
    assert "step 2 of 3" in text_of(streamed) and "done" in text_of(streamed)
    assert text_of(cell_starting(nb, "counter")).strip() == "1"

    # The deliberate errors are caught, so that the notebook runs to its end (papermill).
    assert [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"] == []
    traceback = text_of(cell_starting(nb, "from ywmagics import RemoteExecutionError"))
    assert "ZeroDivisionError" in traceback
    # line 4 as Jupyter numbers the cell: the %%interpreter line is line 1
    assert "line 4" in traceback and "ratio = total / (len(values) - 3)" in traceback
    assert "magics.py" not in traceback  # the runner's traceback, not the kernel's stack

    travel = text_of(
        cell_starting(nb, 'try:\n    get_ipython().run_cell_magic("interpreter", "pyRunner --out')
    )
    assert "'square'" in travel and "function" in travel

    assert "ndarray float64 (4, 3) total: 66.0" in text_of(cell_starting(nb, "assert (transposed"))
    # 200 MB there and back through a real kernel (its speed is bench_transfer's to measure)
    assert re.search(
        r"200 MB there and 200 MB back in \d+\.\d\d s",
        text_of(cell_starting(nb, "seconds = time.perf_counter() - started")),
    )
    badge = cell_starting(nb, "%%interpreter pyRunner\nclass Badge")
    assert badge.outputs[0].data["text/html"] == "<b>computed in the runner</b>"
    timeout = text_of(cell_starting(nb, "%%interpreter pyRunner --timeout 1"))
    assert "interrupted after 1 s, as --timeout 1 asked" in timeout
    assert "still alive, and counter is 1" in text_of(
        cell_starting(nb, "%%interpreter pyRunner\nprint")
    )


def test_04_partitions(orchestrator: Connection, cwd: Path) -> None:
    nb = run_example("04_partitions", cwd)
    check_progress_views(nb, 3)
    assert "{'partition': 'Foo'}" in text_of(cell_starting(nb, "ywDemoClientInFoo.fetch_json"))
    seen = text_of(cell_starting(nb, 'print("Alice sees:"'))
    assert "Alice sees: set in Alice's runner" in seen
    assert "Bob sees:   <secret is not defined in Bob's runner>" in seen
    listing = text_of(cell_starting(nb, "%backends list"))
    for partition in ("Foo", "Alice", "Bob"):
        assert re.search(rf"^{partition}\s", listing, re.M)
    assert not {"Foo", "Alice", "Bob"} & instance_partitions(orchestrator)


def test_05_more(orchestrator: Connection, cwd: Path) -> None:
    nb = run_example("05_more", cwd)
    assert "Application startup complete" in text_of(cell_starting(nb, "%backends logs"))
    assert "YwMagics.partition" in text_of(cell_starting(nb, "%config YwMagics"))
    api = text_of(cell_starting(nb, "import ywmagics"))
    assert "'ready']" in api and "Hello world" in api
    assert "Scripts" not in instance_partitions(orchestrator)


def test_failed_install_turns_the_widget_red(orchestrator: Connection, cwd: Path) -> None:
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(
        cells=[
            new_code_cell("%load_ext ywmagics"),
            new_code_cell("%backends install broken_start as broken --partition Broken"),
        ]
    )
    nb.cells[1].metadata["tags"] = ["raises-exception"]
    execute(nb, cwd)
    error = error_of(nb.cells[1])
    assert error.ename == "StartError"
    assert "BROKEN_START" in "\n".join(error.traceback)
    assert len(error.traceback) < 15  # the message, not the magic's stack
    bars = widget_models(nb, "FloatProgressModel")
    assert [bar["bar_style"] for bar in bars] == ["danger"]
    assert [bar["value"] for bar in bars] == [bars[0]["max"]]  # whole, even failed at 0 %
    # The error is shown once, as the cell's error: not again in the widget, its log folded.
    labels = [m["value"] for m in widget_models(nb, "LabelModel")]
    assert "install failed: the error is below" in labels and "failed" in labels
    shown = labels + [m["value"] for m in widget_models(nb, "HTMLModel")]
    assert not any("BROKEN_START" in m for m in shown)
    assert all(m["selected_index"] is None for m in widget_models(nb, "AccordionModel"))
    fallback = nb.cells[1].outputs[0].data["text/plain"]
    assert "install failed" in fallback and "BROKEN_START" not in fallback


@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")))
def test_an_example_runs_unattended_under_papermill(
    orchestrator: Connection, cwd: Path, name: str
) -> None:
    # papermill stops at any error output, whatever the cell's tags: the deliberate errors of
    # the examples are caught.
    done = subprocess.run(
        [
            sys.executable, "-m", "papermill", str(NOTEBOOKS / f"{name}.ipynb"),
            str(cwd / f"{name}.out.ipynb"), "--cwd", str(cwd), "--no-progress-bar",
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
