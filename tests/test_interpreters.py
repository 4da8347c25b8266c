"""Finding Pythons as users' machines have them: PATH, pyenv's versions, never pyenv's shims;
programs before scripts (another tool's shims), which are only run when nothing else is found."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from ywmagics.errors import ConfigurationError
from ywmagics.orchestrator import interpreters
from ywmagics.orchestrator.interpreters import (
    Interpreter,
    available_interpreters,
    by_version,
    find_python,
)

from .conftest import no_python_reason, python_of, python_or_skip

OURS = ".".join(map(str, sys.version_info[:3]))
SHORT = ".".join(map(str, sys.version_info[:2]))
TOUCH = shutil.which("touch")  # by its path: a test's PATH may have no folder that holds it


def _tripwire(path: Path, marker: Path) -> None:
    """A program that must never be run (it leaves ``marker`` if it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{TOUCH} {marker}\nexit 1\n")
    path.chmod(0o755)


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH with our Python under its usual name and pyenv's shims; a pyenv versions folder."""
    root = tmp_path / "pyenv"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / f"python{SHORT}").symlink_to(sys.executable)
    version_bin = root / "versions" / OURS / "bin"
    version_bin.mkdir(parents=True)
    (version_bin / f"python{SHORT}").symlink_to(sys.executable)  # one file, found twice
    _tripwire(root / "shims" / f"python{SHORT}", tmp_path / "shim-ran")
    _tripwire(root / "shims" / "python3.99", tmp_path / "shim-ran")
    _tripwire(version_bin / f"python{SHORT}-config", tmp_path / "config-ran")
    monkeypatch.setenv("PYENV_ROOT", str(root))
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), str(root / "shims"), "/usr/bin"]))
    return tmp_path


def test_a_version_is_found_on_path_first(machine: Path) -> None:
    found = find_python(SHORT)
    # As resolved (no link left: what was checked is what runs), from the PATH entry.
    on_path = Path(os.path.realpath(machine / "bin" / f"python{SHORT}"))
    assert found.version == OURS and found.path == on_path
    assert find_python(f"python{OURS}").version == OURS
    assert not (machine / "shim-ran").exists()


def test_every_python_is_listed_once_and_no_shim_or_config_script_runs(machine: Path) -> None:
    versions = [i.version for i in available_interpreters()]
    assert versions.count(OURS) == 1
    assert not (machine / "shim-ran").exists() and not (machine / "config-ran").exists()


def test_a_missing_version_lists_the_ones_found(machine: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"no Python 3\.99 found") as raised:
        find_python("3.99")
    assert OURS in raised.value.hint and "uv python install 3.99" in raised.value.hint
    assert not (machine / "shim-ran").exists()


def test_the_pythons_found_are_listed_in_numeric_order(
    machine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As strings, 3.10 sorts before 3.8: the hint read as if the newest were missing.
    found = [
        Interpreter(Path(f"/opt/python{v}"), v) for v in ("3.10.13", "3.8.18", "3.12.1", "3.9.18")
    ]
    monkeypatch.setattr(interpreters, "available_interpreters", lambda: found)
    with pytest.raises(ConfigurationError) as raised:
        find_python("3.99")
    assert "Pythons found: 3.8.18, 3.9.18, 3.10.13, 3.12.1." in raised.value.hint
    assert by_version(["3.10", "3.9.1", "3.9", "3.11.0rc1", "3.11.0"]) == [
        "3.9", "3.9.1", "3.10", "3.11.0rc1", "3.11.0",
    ]  # fmt: skip


def test_a_missing_python_says_where_it_was_looked_for(machine: Path) -> None:
    with pytest.raises(ConfigurationError) as raised:
        find_python("3.99")
    assert f"looked on PATH, in {machine / 'pyenv' / 'versions'} and among uv's" in (
        raised.value.hint
    )
    # A test that needs a Python skips with the same words: which version, where it looked.
    assert python_of("3.99") is None
    reason = no_python_reason("3.99")
    assert reason.startswith("needs Python 3.99: none found on PATH, in ")
    assert str(machine / "pyenv" / "versions") in reason and "uv python install 3.99" in reason
    with pytest.raises(pytest.skip.Exception, match=r"needs Python 3\.99: none found"):
        python_or_skip("3.99")


def _pyenv_shim(path: Path, root: Path, marker: Path) -> None:
    """A shim as ``pyenv rehash`` writes it (it leaves ``marker`` if it is run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '#!/usr/bin/env bash\nset -e\n[ -n "$PYENV_DEBUG" ] && set -x\n\n'
        f'program="${{0##*/}}"\n\nexport PYENV_ROOT="{root}"\n{TOUCH} {marker}\n'
        f'exec "{root}/libexec/pyenv" exec "$program" "$@"\n'
    )
    path.chmod(0o755)


def test_a_pyenv_shim_is_never_run_but_its_root_is_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PYENV_ROOT names no pyenv (unset, or another one): the shim on PATH names its own root.
    root = tmp_path / "elsewhere" / "pyenv"
    version_bin = root / "versions" / OURS / "bin"
    version_bin.mkdir(parents=True)
    (version_bin / f"python{SHORT}").symlink_to(sys.executable)
    _pyenv_shim(tmp_path / "shims" / f"python{SHORT}", root, tmp_path / "shim-ran")
    _pyenv_shim(tmp_path / "shims" / "python3.99", root, tmp_path / "shim-ran")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setenv("PATH", str(tmp_path / "shims"))
    found = find_python(SHORT)
    assert found.path == Path(os.path.realpath(version_bin / f"python{SHORT}"))
    assert found.version == OURS
    assert [i.version for i in available_interpreters()] == [OURS]
    with pytest.raises(ConfigurationError, match=r"no Python 3\.99 found"):
        find_python("3.99")
    assert not (tmp_path / "shim-ran").exists()


def test_a_program_is_found_before_a_script_that_comes_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another version manager's shim (asdf's, say) may take a second to fail: it is run only
    # when no program is found, even when it comes first on PATH.
    _tripwire(tmp_path / "asdf" / f"python{SHORT}", tmp_path / "script-ran")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / f"python{SHORT}").symlink_to(sys.executable)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "asdf"), str(tmp_path / "bin")]))
    found = find_python(SHORT)
    assert found.path == Path(os.path.realpath(sys.executable)) and found.version == OURS
    assert not (tmp_path / "script-ran").exists()


def test_a_script_on_path_is_still_used_when_nothing_else_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wrapper script (as some distributions ship) is how this machine has that Python.
    wrapper = tmp_path / "wrappers" / f"python{SHORT}"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setenv("PATH", str(wrapper.parent))
    monkeypatch.setattr(interpreters, "_uv_managed", lambda request: [])
    assert find_python(SHORT) == Interpreter(wrapper, OURS)


def test_pyenv_versions_are_tried_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As strings, 3.9 sorts after 3.10; a build that is no plain version comes after the others.
    versions = tmp_path / "pyenv" / "versions"
    for name in ("3.9.18", "3.10.13", "3.13.0t", "3.13.0", "pypy3.10-7.3.15"):
        (versions / name).mkdir(parents=True)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    assert [p.name for p in interpreters._pyenv_versions()] == [
        "3.13.0", "3.10.13", "3.9.18", "3.13.0t", "pypy3.10-7.3.15",
    ]  # fmt: skip


def test_a_pyenv_root_that_cannot_be_read_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another user's PYENV_ROOT (found through a shim on PATH, say): searched, never a crash.
    real = Path.iterdir

    def iterdir(self: Path) -> Any:
        if self == tmp_path / "theirs" / "versions":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    (tmp_path / "theirs" / "versions" / "3.10.13").mkdir(parents=True)
    monkeypatch.setattr(Path, "iterdir", iterdir)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "theirs"))
    assert interpreters._pyenv_versions() == []


@pytest.mark.parametrize("request_", ["3.x", "snake", "3.10.1.2"])
def test_a_request_that_is_no_version_is_refused(request_: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a Python version"):
        find_python(request_)


def test_a_path_that_is_no_interpreter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is not a Python interpreter"):
        find_python(str(tmp_path / "python"))


def _a_program_named_python(folder: Path) -> Path:
    """A copy of a program that is no Python: if it were run, the probe would fail with another
    message than the refusal."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "python3"
    program.write_bytes(Path("/bin/true").read_bytes())
    program.chmod(0o755)
    return program


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_an_interpreter_another_user_owns_or_may_change_is_never_run(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    theirs = _a_program_named_python(tmp_path / "theirs")
    os.chown(theirs, 65534, 65534)  # nobody's
    with pytest.raises(ConfigurationError, match="python3 belongs to another user"):
        find_python(str(theirs))
    open_folder = tmp_path / "open"
    mine = _a_program_named_python(open_folder)
    open_folder.chmod(0o777)  # anyone may swap the file
    with pytest.raises(ConfigurationError, match=r"others may write to .*open"):
        find_python(str(mine))
    open_folder.chmod(0o775)
    os.chown(open_folder, -1, 65534)  # writable by a group of others
    with pytest.raises(ConfigurationError, match=r"others may write to .*open"):
        find_python(str(mine))
    os.chown(open_folder, -1, os.getgid())  # by a group of my own (umask 002 setups)
    with pytest.raises(ConfigurationError, match="not a working Python interpreter"):
        find_python(str(mine))
    link = tmp_path / "link" / "python3"  # mine, but leading to theirs
    link.parent.mkdir()
    link.symlink_to(theirs)
    with pytest.raises(ConfigurationError, match="belongs to another user"):
        find_python(str(link))
    # Mine, in a sticky folder anyone may write to (as /tmp): nobody else can replace it.
    open_folder.chmod(0o1777)
    with pytest.raises(ConfigurationError, match="not a working Python interpreter"):
        find_python(str(mine))  # it was run: it is no Python
    assert find_python(sys.executable).version == OURS


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_every_link_on_the_way_to_an_interpreter_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # trusted/link1 -> theirs/link2 -> a folder with a python: mine, but reached through a link
    # another user may swap at any time. Resolved at once, that link was never looked at.
    tmp_path.chmod(0o755)
    real = tmp_path / "real"
    _a_program_named_python(real)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "link2").symlink_to(real)
    os.lchown(theirs / "link2", 65534, 65534)
    os.chown(theirs, 65534, 65534)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "link1").symlink_to(theirs / "link2")
    with pytest.raises(ConfigurationError, match="belongs to another user"):
        find_python(str(trusted / "link1" / "python3"))
    # Nor is one looked up by version run from a PATH folder another user may change.
    _tripwire(real / "python3.99", tmp_path / "ran")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setenv("PATH", f"{trusted / 'link1'}:/usr/bin")
    with pytest.raises(ConfigurationError, match=r"no Python 3\.99"):
        find_python("3.99")
    assert not (tmp_path / "ran").exists()
    monkeypatch.setenv("PATH", f"{real}:/usr/bin")  # the same folder, reached safely: run
    with pytest.raises(ConfigurationError, match=r"no Python 3\.99"):
        find_python("3.99")
    assert (tmp_path / "ran").exists()
    from ywmagics.orchestrator.interpreters import changeable_by_others

    # A chain of links that are all mine is followed, and handed on resolved.
    (tmp_path / "mine").symlink_to(real)
    assert changeable_by_others(tmp_path / "mine" / "python3")[0] == real / "python3"
