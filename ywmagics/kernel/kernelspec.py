"""The "Python 3 (ywmagics)" Jupyter kernel: IPython's kernel with the extension preloaded."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ywmagics.errors import YwMagicsError

KERNEL_NAME = "ywmagics"
DISPLAY_NAME = "Python 3 (ywmagics)"


def kernel_json(executable: str | None = None) -> dict[str, Any]:
    """The kernel.json; ``argv[0]`` is this Python, where ywmagics is installed."""
    return {
        "argv": [
            executable or sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--IPKernelApp.extensions=ywmagics",
        ],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": True},
    }


def _logos() -> list[Path]:
    try:
        from ipykernel.kernelspec import RESOURCES
    except ImportError:
        return []
    return sorted(Path(RESOURCES).glob("logo-*"))


def install_kernel_spec(prefix: str | None = None) -> str:
    """Install the kernel spec for this user (Jupyter's per-user folder, where
    ``python -m ipykernel install --user`` puts one), or under ``prefix`` (``sys.prefix``: the
    Jupyter of a virtualenv or conda environment), and return the folder it went to."""
    manager = _kernel_spec_manager()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / KERNEL_NAME
        folder.mkdir()
        (folder / "kernel.json").write_text(json.dumps(kernel_json(), indent=1) + "\n")
        for logo in _logos():
            shutil.copy(logo, folder / logo.name)
        return str(
            manager.install_kernel_spec(
                str(folder), kernel_name=KERNEL_NAME, user=prefix is None, prefix=prefix
            )
        )


def jupyter_looks_in(folder: str) -> bool:
    """Whether Jupyter finds a kernel spec installed in ``folder`` (a prefix of one's own is
    found only when ``JUPYTER_PATH`` names it)."""
    kernels = Path(folder).parent.resolve()
    return any(Path(d).resolve() == kernels for d in _kernel_spec_manager().kernel_dirs)


def _kernel_spec_manager() -> Any:
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        raise YwMagicsError(
            "installing a kernel needs jupyter_client and ipykernel",
            hint="pip install ipykernel",
        ) from None
    return KernelSpecManager()
