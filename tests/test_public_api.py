"""The public surface: what ``ywmagics`` exports, and what importing it costs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import ywmagics
from ywmagics import errors


def test_every_exported_name_exists() -> None:
    missing = [name for name in ywmagics.__all__ if not hasattr(ywmagics, name)]
    assert missing == []
    assert sorted(ywmagics.__all__) == sorted(set(ywmagics.__all__))


def _drawn_tree() -> dict[str, str]:
    """``{class: parent}`` as drawn in the docstring of ``ywmagics.errors``."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^(\s*(?:[│ ]\s*)*)(?:[├└]── )?([A-Z]\w+)\b", line)
        if not match or not match.group(2).endswith(
            (
                "Error",
                "NotFound",
                "Exited",
                "Timeout",
                "Unavailable",
                "Replaced",
                "Stopping",
                "Busy",
            )
        ):
            continue
        depth = len(match.group(1)) + (0 if "──" not in line else 4)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[match.group(2)] = stack[-1][1] if stack else ""
        stack.append((depth, match.group(2)))
    return parents


def test_errors_form_the_one_tree_drawn_in_errors_py() -> None:
    drawn = _drawn_tree()
    defined = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.YwMagicsError)
    }
    assert set(drawn) == set(defined)  # every public exception is drawn, and only those
    for name, parent in drawn.items():
        if parent:
            assert defined[parent] in defined[name].__bases__, (name, parent)
    exported = {n for n in ywmagics.__all__ if n in defined}
    assert exported == set(defined)  # and exported by the package


@pytest.mark.parametrize("name", sorted(errors._BY_NAME))
def test_an_error_sent_over_http_comes_back_as_its_class(name: str) -> None:
    cls = errors._BY_NAME[name]
    sent = cls("what went wrong", hint="what to do", log_tail="a log line")
    back = errors.error_from_dict(json.loads(json.dumps(sent.to_dict())))
    assert type(back) is cls
    assert (back.message, back.hint, back.log_tail) == (
        "what went wrong",
        "what to do",
        "a log line",
    )


def _loaded_by(statement: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with one of ``prefixes`` that ``statement`` loads, in a fresh Python."""
    probe = (
        f"import json, sys; {statement}; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_importing_loads_neither_the_server_nor_the_notebook_stack() -> None:
    heavy = ("starlette", "uvicorn", "IPython", "ipywidgets")
    assert _loaded_by("import ywmagics; ywmagics.install", heavy) == []


def test_the_orchestrator_never_loads_the_client_or_the_kernel_side() -> None:
    other_parts = ("ywmagics.client", "ywmagics.kernel", "IPython", "httpx")
    assert _loaded_by("import ywmagics.orchestrator.server", other_parts) == []


def test_the_command_line_install_loads_no_notebook_stack() -> None:
    # what 'ywmagics install' imports to show its progress as text
    code = "import ywmagics.cli; from ywmagics.progress import TextProgress"
    assert _loaded_by(code, ("ywmagics.kernel", "IPython", "ipywidgets")) == []
