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


def install_kernel_spec(user: bool = False, prefix: str | None = None) -> str:
    """Install the kernel spec (for this user, or under ``prefix``, e.g. ``sys.prefix``) and
    return the folder it went to."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        raise YwMagicsError(
            "installing a kernel needs jupyter_client and ipykernel",
            hint="pip install ipykernel",
        ) from None
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / KERNEL_NAME
        folder.mkdir()
        (folder / "kernel.json").write_text(json.dumps(kernel_json(), indent=1) + "\n")
        for logo in _logos():
            shutil.copy(logo, folder / logo.name)
        return str(
            KernelSpecManager().install_kernel_spec(
                str(folder), kernel_name=KERNEL_NAME, user=user, prefix=prefix
            )
        )
