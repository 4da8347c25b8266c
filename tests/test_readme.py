"""The README, followed as a newcomer would: its install command in a fresh virtualenv, then its
quick start pasted into a notebook of the kernel that install provides."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

pytestmark = pytest.mark.slow  # a virtualenv, a pip install, a kernel, an orchestrator

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The text of the README section headed ``## title``, up to the next heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^##? )", README, re.M | re.S)
    assert match, f"the README has no '## {title}' section"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def test_the_readme_sections_a_newcomer_follows_are_there() -> None:
    assert code_blocks(section("Run the tutorial"), "bash") == [
        "pip install -e . && ywmagics tutorial\n"
    ]
    assert README.index("## Run the tutorial") < README.index("## Install")  # at the top
    assert code_blocks(section("Install"), "bash") == ["pip install -e .\n"]
    assert code_blocks(section("Test"), "bash")[:1] == [
        'pip install -e ".[test]" && python -m pytest\n'
    ]
    cells = code_blocks(section("Quick start"), "python")
    assert cells[0].strip() == "%load_ext ywmagics" and len(cells) >= 5


def test_the_install_then_the_quick_start_in_a_fresh_virtualenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "YW_HOME": str(tmp_path / "home"),  # an orchestrator of its own, as on a new machine
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    (install,) = code_blocks(section("Install"), "bash")
    done = subprocess.run(
        shlex.split(install), cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # What the README says pip did: the kernel is in the environment, and Jupyter lists it.
    listed = subprocess.run(
        [str(venv / "bin" / "jupyter"), "kernelspec", "list", "--json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    kernels = json.loads(listed.stdout)["kernelspecs"]
    assert Path(kernels["ywmagics"]["resource_dir"]) == venv / "share/jupyter/kernels/ywmagics"
    # None of the test tools came with it: the user's install is light.
    for tool in ("pytest", "mypy", "ruff", "pandas", "matplotlib"):
        assert not list((venv / "lib").glob(f"python*/site-packages/{tool}")), tool

    # The main job, the command the README puts at the top (its install part was just run).
    (main_job,) = code_blocks(section("Run the tutorial"), "bash")
    tutorial = main_job.split("&&")[1].split()
    ran = subprocess.run(
        [str(venv / "bin" / tutorial[0]), *tutorial[1:]],
        env=env, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    said = ran.stdout
    assert "hello backends" in said  # cow-say, through the proxy
    assert re.search(r"^squares computed by Python 3\.\d+\.\d+: \[0, 1, 4, 9\]$", said, re.M)
    assert "the runner gets Python" in said or "the runner uses this one" in said
    assert "Alice sees: set in Alice's runner" in said
    assert "Bob sees:   <not defined in Bob's runner>" in said
    assert said.rstrip().endswith(
        "the same tutorial in JupyterLab:  ywmagics tutorial --lab\n"
        "  the dashboard of what runs:       ywmagics dashboard"
    )

    # Here, not at every collection of the fast suite: they load in ~2 s (jsonschema's formats).
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    cells = code_blocks(section("Quick start"), "python")
    nb = new_notebook(cells=[new_code_cell(cell.strip()) for cell in cells])
    # The installed kernel, run as a Jupyter of that environment runs it ("python" is its own).
    manager = KernelSpecManager(kernel_dirs=[str(venv / "share/jupyter/kernels")])
    spec = manager.get_kernel_spec("ywmagics")
    assert spec.argv[0] == "python"
    spec_dir = tmp_path / "kernels" / "ywmagics"
    spec_dir.mkdir(parents=True)
    kernel_env = {k: env[k] for k in ("PATH", "VIRTUAL_ENV", "YW_HOME")}
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                **spec.to_dict(),
                "argv": [str(venv / "bin/python"), *spec.argv[1:]],
                "env": kernel_env,
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))  # first in the kernels' search path
    try:
        NotebookClient(
            nb, kernel_name="ywmagics", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        subprocess.run(
            [str(venv / "bin" / "ywmagics"), "shutdown"], env=env, capture_output=True, check=False
        )
    outputs = "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for cell in nb.cells
        for output in cell.outputs
    )
    assert not [o for cell in nb.cells for o in cell.outputs if o.output_type == "error"]
    assert "hello backends" in outputs  # the cow-say answer
    assert "/backends/demo_yw_backend/" in outputs  # url_base
    import_numpy_version = re.search(r"^(3\.10\.\d+) .*? ((\d+\.\d+\.\d+)\3)$", outputs, re.M)
    assert import_numpy_version, outputs[-2000:]  # the runner's Python and numpy, doubled
    nbformat.validate(nb)
