"""The public surface: what ``ywmagics`` exports, and what importing it costs."""

from __future__ import annotations

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


def test_importing_loads_neither_the_server_nor_the_notebook_stack() -> None:
    probe = (
        "import sys, ywmagics; ywmagics.install; "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'IPython', 'ipywidgets') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_orchestrator_never_loads_the_client_or_the_kernel_side() -> None:
    probe = (
        "import sys, ywmagics.orchestrator.server; "
        "print(sorted(m for m in sys.modules if m.startswith(('ywmagics.client', "
        "'ywmagics.kernel', 'IPython'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
