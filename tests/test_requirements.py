"""build.modules and build.python: requirements and interpreters only, never options or scripts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ywmagics.errors import ConfigurationError
from ywmagics.orchestrator.environments import Installer
from ywmagics.orchestrator.interpreters import find_python
from ywmagics.orchestrator.manifest import load_manifest
from ywmagics.orchestrator.requirements import parse_requirements

PYRUN = Path(__file__).parents[1] / "ywmagics" / "backends" / "pyrun_backend" / "ywbackend.toml"


def test_requirements_separated_by_spaces_or_commas() -> None:
    assert parse_requirements("numpy pandas>=2,<3, scipy==1.13") == (
        "numpy",
        "pandas<3,>=2",
        "scipy==1.13",
    )
    assert parse_requirements("  six\tidna  ") == parse_requirements("six idna") == ("six", "idna")
    assert parse_requirements("") == ()
    assert parse_requirements("demo[extra] @ file:///wheels/demo-1.0-py3-none-any.whl") == (
        "demo[extra] @ file:///wheels/demo-1.0-py3-none-any.whl",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("--target /tmp/elsewhere six", "not options: '--target'"),
        ("--index-url http://127.0.0.1:9/simple six", "not options: '--index-url'"),
        ("-r /etc/passwd", "not options: '-r'"),
        ("six; touch /tmp/x", "'six;' is not a requirement"),
        ("$(id)", "'$(id)' is not a requirement"),
    ],
)
def test_options_and_what_is_no_requirement_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"build\.modules") as raised:
        parse_requirements(text)
    assert message in raised.value.message


def test_requirements_written_differently_are_one_environment(tmp_path: Path) -> None:
    installer = Installer(tmp_path / "envs", tmp_path / "logs")
    manifest = load_manifest(PYRUN)
    one = installer.plan(manifest, manifest.build_config({"modules": "six idna"}))
    same = installer.plan(manifest, manifest.build_config({"modules": " six,  idna "}))
    other = installer.plan(manifest, manifest.build_config({"modules": "six"}))
    assert one.fingerprint == same.fingerprint != other.fingerprint


def _tripwire(path: Path, marker: Path) -> Path:
    path.write_text(f"#!/bin/sh\ntouch {marker}\necho 3.10.0\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("python3", "it is a script (a pyenv shim, say), not a program"),
        ("sh", "its name is not python"),
        ("python3.10", "it is a script"),
    ],
)
def test_build_python_never_runs_a_script(tmp_path: Path, name: str, message: str) -> None:
    marker = tmp_path / "ran"
    program = _tripwire(tmp_path / name, marker)
    with pytest.raises(ConfigurationError, match="is not a Python interpreter") as raised:
        find_python(str(program))
    assert message in raised.value.message and not marker.exists()


def test_build_python_takes_a_real_interpreter_or_a_version(tmp_path: Path) -> None:
    # As resolved: what was checked is what is run (a venv's python is a link to its base).
    assert find_python(sys.executable).path == Path(os.path.realpath(sys.executable))
    with pytest.raises(ConfigurationError, match="is not a Python interpreter"):
        find_python(str(tmp_path / "python3"))  # missing
    with pytest.raises(ConfigurationError, match="is not a Python version"):
        find_python("--version")
    with pytest.raises(ConfigurationError, match="is not a Python version"):
        find_python("3.11; true")
    with pytest.raises(ConfigurationError, match="its name is not python"):
        find_python("/bin/sh")
