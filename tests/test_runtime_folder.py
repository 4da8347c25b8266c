"""An ``XDG_RUNTIME_DIR`` that ywmagics refuses: said once, with why and where its files went."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ywmagics import paths

pytestmark = pytest.mark.skipif(
    sys.platform in ("darwin", "win32"), reason="XDG_RUNTIME_DIR is for Linux and the BSDs"
)


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An XDG_RUNTIME_DIR that anyone may write to; a private temporary folder."""
    folder = tmp_path / "run-user"
    folder.mkdir()
    folder.chmod(0o777)
    temporary = tmp_path / "tmp"
    temporary.mkdir(mode=0o700)
    monkeypatch.delenv("YW_HOME", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    paths._warn_refused_once.cache_clear()
    return folder


def _refusal(session: Path, why: str, instead: Path) -> str:
    return (
        f"ywmagics does not use XDG_RUNTIME_DIR={session}: {why}. The orchestrator's discovery "
        f"file, log and socket are in {instead} instead (set XDG_RUNTIME_DIR to a folder of "
        "yours with mode 0700, or YW_HOME, to choose)"
    )


def test_a_runtime_folder_others_may_write_to_is_said_once(
    session: Path, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    instead = Path(tempfile.gettempdir(), f"ywmagics-{os.getuid()}")
    with caplog.at_level(logging.WARNING, logger="ywmagics"):
        found = [paths.runtime_dir() for _ in range(3)]  # a command looks it up several times
    assert found == [instead] * 3
    assert [r.getMessage() for r in caplog.records] == [
        _refusal(session, f"others may write to {session}", instead)
    ]
    assert [str(w.message) for w in recwarn] == []  # platformdirs' own warning is not given
    assert list(session.iterdir()) == []  # nothing made in it


def test_a_runtime_folder_others_may_enter_is_refused_and_a_private_one_used(
    session: Path, caplog: pytest.LogCaptureFixture
) -> None:
    session.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="ywmagics"):
        instead = paths.runtime_dir()
    assert [r.getMessage() for r in caplog.records] == [
        _refusal(session, "its mode is 0755, not 0700: others may enter it", instead)
    ]
    session.chmod(0o700)
    assert paths.runtime_dir() == session / "ywmagics"
    assert paths.session_folder_problem(Path("relative")) == "it is not an absolute path"
    assert paths.session_folder_problem(session / "missing") == "No such file or directory"


def test_a_command_says_it_once(session: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(session),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "TMPDIR": tempfile.gettempdir(),
    }
    env.pop("YW_HOME", None)
    done = subprocess.run(
        [sys.executable, "-m", "ywmagics", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    instead = Path(tempfile.gettempdir(), f"ywmagics-{os.getuid()}")
    assert (
        done.stdout == f"no orchestrator is running (discovery file: {instead}/orchestrator.json)\n"
    )
    assert done.stderr == _refusal(session, f"others may write to {session}", instead) + "\n"
