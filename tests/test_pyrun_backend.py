"""pyrun_backend through a real orchestrator, in environments built by uv on other Pythons."""

from __future__ import annotations

from typing import Any

import pytest

import ywmagics
from ywmagics.client import BackendClient
from ywmagics.discovery import Connection
from ywmagics.errors import ConfigurationError
from ywmagics.orchestrator.interpreters import find_python

from .conftest import run_concurrently

pytestmark = pytest.mark.slow  # builds runner environments on other Pythons


def _run(
    client: BackendClient, code: str, out: list[str], captured_in: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The tutorial's raw call: POST /run with cellId, code, capturedIn, capturedOut."""
    answer = client.fetch_json(
        "/run",
        method="POST",
        json={
            "cellId": "tests.pyrun",
            "code": code,
            "capturedIn": captured_in or {},
            "capturedOut": out,
        },
    )
    assert isinstance(answer, dict)
    return answer


def _pyrun(
    orchestrator: Connection, partition: str, python: str, modules: str = "", alias: str = "py"
) -> BackendClient:
    return ywmagics.install(
        {
            "modules": [f"pyrun_backend#^0.1.0 as {alias}"],
            "configurations": {"pyrun_backend": {"build": {"python": python, "modules": modules}}},
        },
        partition=partition,
        connection=orchestrator,
    )[alias]


def test_two_pythons_in_two_partitions_at_once(orchestrator: Connection) -> None:
    # Built concurrently, as two notebooks would: 3.10 with numpy, 3.12 without.
    clients: dict[str, BackendClient] = {}

    def install(target: tuple[str, str, str]) -> None:
        partition, python, modules = target
        clients[partition] = _pyrun(orchestrator, partition, python, modules)

    targets = [("Py310", "3.10", "numpy"), ("Py312", "python3.12", "")]
    assert run_concurrently(install, targets) == []

    code = "import sys\nversion = sys.version.split()[0]"
    assert _run(clients["Py310"], code, ["version"])["capturedOut"]["version"].startswith("3.10.")
    assert _run(clients["Py312"], code, ["version"])["capturedOut"]["version"].startswith("3.12.")

    numpy_code = "import numpy\nresp = {'numpy': numpy.__version__}"
    with_numpy = _run(clients["Py310"], numpy_code, ["resp"])
    assert with_numpy["exception"] is None and with_numpy["capturedOut"]["resp"]["numpy"]
    without = _run(clients["Py312"], numpy_code, ["resp"])
    assert without["exception"]["type"] in ("ModuleNotFoundError", "ImportError")


def test_tutorial_cell_output_namespace_and_errors(orchestrator: Connection) -> None:
    py = _pyrun(orchestrator, "Tutorial", "3.10", "numpy")
    first = _run(
        py,
        "import numpy\nimport sys\nresp = {'python': sys.version, "
        "'numpy': numpy.__version__}\nprint('computed')",
        ["resp"],
    )
    assert first["output"] == "computed\n" and first["error"] == ""
    assert first["capturedOut"]["resp"]["python"].startswith("3.10")
    # The namespace persists between calls, and capturedIn feeds it.
    second = _run(py, "total = n * 2 + len(resp)", ["total"], {"n": 20})
    assert second["capturedOut"]["total"] == 42
    failing = _run(py, "x = 1\n\nraise ValueError('bad value')", [])
    assert failing["exception"]["type"] == "ValueError"
    assert failing["exception"]["lineno"] == 3
    assert "bad value" in failing["exception"]["traceback"]


def test_missing_python_version_fails_fast_with_the_list(orchestrator: Connection) -> None:
    with pytest.raises(ConfigurationError, match=r"no Python 3\.99 found") as error:
        _pyrun(orchestrator, "Missing", "3.99")
    assert find_python("3.10").version in error.value.hint


def test_missing_strings_survive_pandas_3_to_pandas_2(orchestrator: Connection) -> None:
    pd = pytest.importorskip("pandas")
    from ywmagics import wire

    py = _pyrun(orchestrator, "Pandas2", "3.10", "pandas<3")
    series = pd.Series(["a", None, "c"])
    answer = _run(
        py,
        "import pandas\nversion = pandas.__version__\nmissing = s.isna().tolist()\nback = s",
        ["version", "missing", "back"],
        {"s": wire.encode(series, "s")},
    )
    assert answer["exception"] is None, answer["exception"]
    out = answer["capturedOut"]
    assert out["version"].startswith("2.")
    assert out["missing"] == [False, True, False]  # not the text 'None'
    assert wire.decode(out["back"]).isna().tolist() == [False, True, False]
