"""The "Python 3 (ywmagics)" kernel spec: what gets installed, and that it preloads the magics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ywmagics import cli
from ywmagics.discovery import Connection
from ywmagics.kernel.kernelspec import DISPLAY_NAME, KERNEL_NAME, install_kernel_spec, kernel_json

STATIC_SPEC = Path(__file__).parent.parent / "kernel_spec" / "kernel.json"


def test_install_into_a_prefix(tmp_path: Path) -> None:
    folder = Path(install_kernel_spec(prefix=str(tmp_path)))
    assert folder == tmp_path / "share" / "jupyter" / "kernels" / KERNEL_NAME
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["display_name"] == DISPLAY_NAME == "Python 3 (ywmagics)"
    assert spec["language"] == "python"
    assert spec["argv"][0] == sys.executable  # the Python where ywmagics is installed
    assert spec["argv"][1:] == [
        "-m", "ipykernel_launcher", "-f", "{connection_file}",
        "--IPKernelApp.extensions=ywmagics",
    ]  # fmt: skip
    assert (folder / "logo-64x64.png").exists()
    # installing again replaces it
    assert Path(install_kernel_spec(prefix=str(tmp_path))) == folder


def test_static_kernel_spec_matches(tmp_path: Path) -> None:
    """``kernel_spec/kernel.json`` (shipped as data files) is the installed one with "python"."""
    static = json.loads(STATIC_SPEC.read_text())
    assert static == kernel_json("python")


@pytest.mark.parametrize("flags", [[], ["--user"]])
def test_cli_kernel_install_is_for_the_user_by_default(
    flags: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As 'python -m ipykernel install --user', which every guide shows: never system-wide.
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))
    assert cli.main(["kernel", "install", *flags]) == 0
    folder = tmp_path / "kernels" / KERNEL_NAME
    assert (folder / "kernel.json").exists()
    assert capsys.readouterr().out.splitlines() == [
        f"installed the kernel 'Python 3 (ywmagics)' for your user, in {folder}",
        "'jupyter kernelspec list' lists it as 'ywmagics'",
    ]


def test_cli_kernel_install_under_a_prefix_says_how_jupyter_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "user"))
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    assert cli.main(["kernel", "install", "--prefix", str(tmp_path / "env")]) == 0
    folder = tmp_path / "env" / "share" / "jupyter" / "kernels" / KERNEL_NAME
    assert (folder / "kernel.json").exists()
    assert not (tmp_path / "user").exists()
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"installed the kernel 'Python 3 (ywmagics)' under {tmp_path / 'env'}, in {folder}",
        "'jupyter kernelspec list' lists it as 'ywmagics'",
        f"Jupyter does not look there: set JUPYTER_PATH={tmp_path / 'env' / 'share' / 'jupyter'} "
        "where Jupyter runs, or install with --user or --sys-prefix",
    ]
    assert err == ""
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert cli.main(["kernel", "install", "--sys-prefix"]) == 0
    assert (tmp_path / "venv" / "share" / "jupyter" / "kernels" / KERNEL_NAME).is_dir()


def test_cli_kernel_install_help_says_where_each_flag_installs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["kernel", "install", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "By default for your user only, as 'python -m ipykernel install --user' does" in text
    assert "--user for your user, in Jupyter's per-user folder (the default)" in text
    assert f"--sys-prefix in this Python's environment ({sys.prefix})" in text
    assert "--prefix PATH under PATH/share/jupyter/kernels" in text


@pytest.mark.slow
def test_the_kernel_preloads_the_extension(
    orchestrator: Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Here, not at every collection of the fast suite: they load in ~2 s (jsonschema's formats).
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    install_kernel_spec(prefix=str(tmp_path))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    nb = new_notebook(cells=[new_code_cell("%backends status")])  # no %load_ext
    NotebookClient(
        nb, kernel_name=KERNEL_NAME, timeout=60, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert f"at {orchestrator.url}" in text, nb.cells[0].outputs
    assert "this kernel's partition: kernel-" in text
