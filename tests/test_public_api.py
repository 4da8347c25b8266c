"""The public surface: what ``ywmagics`` exports, and what importing it costs."""

from __future__ import annotations

import json
import subprocess
import sys

import ywmagics


def test_every_exported_name_exists() -> None:
    missing = [name for name in ywmagics.__all__ if not hasattr(ywmagics, name)]
    assert missing == []
    assert sorted(ywmagics.__all__) == sorted(set(ywmagics.__all__))


def test_errors_form_one_tree() -> None:
    errors = [getattr(ywmagics, n) for n in ywmagics.__all__ if n.endswith(("Error", "NotFound"))]
    assert errors and all(issubclass(e, ywmagics.YwMagicsError) for e in errors)


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
    other_parts = ("ywmagics.client", "ywmagics.kernel", "IPython")
    assert _loaded_by("import ywmagics.orchestrator.server", other_parts) == []
