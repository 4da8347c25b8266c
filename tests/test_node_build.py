"""The build that a node runs where no folder is shared (placements/node_build.py), run here on
real folders and processes: the same inputs as the local installer, each step said, nothing half
built ever used, nothing of another user's run."""

from __future__ import annotations

import base64
import io
import os
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ywmagics.orchestrator.placements import node_build
from ywmagics.orchestrator.placements.node_build import Builder, BuildFailed

from .conftest import running

pytestmark = pytest.mark.slow  # venvs and build steps, real processes (about 2 s)


def _bundle(files: dict[str, str], extra: tarfile.TarInfo | None = None) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra)
    return base64.b64encode(buffer.getvalue()).decode()


def _spec(node_dir: Path, **changes: Any) -> dict[str, Any]:
    spec = {
        "dir": str(node_dir),
        "name": "demo",
        "version": "1.0.0",
        "fingerprint": "0123456789ab",
        "app": _bundle({"main.py": "print('hi')\n"}),
        "python": None,
        "requirements": [],
        "install": [["sh", "-c", "echo step said this; echo {app} > {env}/where"]],
        "data": ["Default", "demo-1.0.0"],
    }
    spec.update(changes)
    return spec


def _build(spec: dict[str, Any]) -> tuple[dict[str, str], list[tuple[str, float | None]]]:
    said: list[tuple[str, float | None]] = []
    placed = Builder(spec, lambda text, progress: said.append((text, progress))).run()
    return placed, said


def test_a_build_unpacks_runs_its_steps_and_is_found_the_next_time(tmp_path: Path) -> None:
    placed, said = _build(_spec(tmp_path / "node"))
    env = Path(placed["env"])
    assert env == tmp_path / "node" / "envs" / "demo" / "1.0.0" / "0123456789ab"
    assert (env / "app" / "main.py").read_text() == "print('hi')\n"
    assert (env / "where").read_text().strip() == placed["app"] == str(env / "app")
    assert (env / node_build.META_FILE).exists() and placed["built"] == "1"
    assert placed["python"] == sys.executable  # not a Python backend: the shim's interpreter
    assert Path(placed["data"]) == tmp_path / "node" / "data" / "Default" / "demo-1.0.0"
    assert ("install step 1/1", 0.7) in said and ("step said this", None) in said
    assert (tmp_path / "node").stat().st_mode & 0o777 == 0o700
    again, said_again = _build(_spec(tmp_path / "node"))
    assert again["built"] == "" and again["env"] == placed["env"] and said_again == []


def test_a_python_backend_gets_a_venv_of_the_requested_python(tmp_path: Path) -> None:
    placed, said = _build(_spec(tmp_path / "node", python="", install=[]))
    python = Path(placed["python"])
    assert python == Path(placed["env"]) / "venv" / "bin" / "python" and python.exists()
    assert placed["python_version"] == ".".join(str(n) for n in sys.version_info[:3])
    assert any(text.startswith("creating a Python") for text, _ in said)


def test_a_failed_step_says_why_with_its_output_and_leaves_nothing_used(tmp_path: Path) -> None:
    failing = [["sh", "-c", "echo about to fail; exit 4"]]
    with pytest.raises(BuildFailed) as failed:
        _build(_spec(tmp_path / "node", install=failing))
    assert "install step 1/1 failed" in failed.value.message and "exit 4" in failed.value.message
    assert failed.value.tail == ["about to fail"]
    assert not (tmp_path / "node" / "envs" / "demo" / "1.0.0" / "0123456789ab").exists()
    # The next build is a whole one (nothing half built is taken as done).
    placed, _ = _build(_spec(tmp_path / "node"))
    assert placed["built"] == "1"


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_a_node_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)  # nobody
    with pytest.raises(BuildFailed, match="theirs belongs to another user"):
        _build(_spec(theirs))
    # Nor one under a folder of theirs: they could swap ours for their own while we build.
    with pytest.raises(BuildFailed, match="theirs belongs to another user"):
        _build(_spec(theirs / "alice" / "yw"))


def test_a_node_dir_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BuildFailed, match="others may write to"):
        _build(_spec(shared))
    assert not (shared / "envs").exists()
    with pytest.raises(BuildFailed, match="others may write to"):
        _build(_spec(shared / "alice" / "yw"))  # a folder of ours under it could be swapped
    assert not (shared / "alice").exists()


def test_a_link_to_a_folder_of_ours_is_followed_once_checked(tmp_path: Path) -> None:
    real = tmp_path / "scratch" / "me"
    real.mkdir(parents=True, mode=0o700)
    (tmp_path / "link").symlink_to(real)
    placed, _ = _build(_spec(tmp_path / "link"))
    assert placed["env"].startswith(f"{real}/envs/")  # the resolved path is what is used


def test_a_variable_the_node_lacks_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("YW_NO_SUCH_VARIABLE", raising=False)
    with pytest.raises(BuildFailed, match="names a variable this node does not have"):
        _build(_spec(Path(f"{tmp_path}/$YW_NO_SUCH_VARIABLE/yw")))


@pytest.mark.parametrize("name", ["../escape", "/etc/evil"])
def test_files_outside_the_app_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BuildFailed, match="refused"):
        _build(_spec(tmp_path / "node", app=_bundle({name: "x"})))
    assert not (tmp_path / "escape").exists()


def test_a_link_in_the_files_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(BuildFailed, match="'passwd': refused"):
        _build(_spec(tmp_path / "node", app=_bundle({}, extra=link)))


@pytest.mark.parametrize("field", ["name", "version", "fingerprint"])
def test_a_name_that_is_not_one_folder_is_refused(tmp_path: Path, field: str) -> None:
    with pytest.raises(BuildFailed, match="is not a plain name"):
        Builder(_spec(tmp_path / "node", **{field: ".."}), lambda *_: None)


def test_a_cancel_ends_the_step_that_runs(tmp_path: Path) -> None:
    builder = Builder(_spec(tmp_path / "node", install=[["sleep", "30"]]), lambda *_: None)
    threading.Timer(0.3, builder.cancel).start()
    started = time.monotonic()
    with pytest.raises(BuildFailed, match="cancelled during: install step 1/1"):
        builder.run()
    assert time.monotonic() - started < 5
    assert not (tmp_path / "node" / "envs" / "demo" / "1.0.0" / "0123456789ab").exists()


def test_a_python_the_node_lacks_names_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    with pytest.raises(BuildFailed) as missing:
        node_build.find_python("3.99")
    assert "no Python 3.99 on node" in missing.value.message
    assert f"in {tmp_path / 'pyenv'}/versions" in missing.value.message
    with pytest.raises(BuildFailed, match="is not a working Python interpreter"):
        node_build.find_python("/bin/true")
    with pytest.raises(BuildFailed, match="is not a Python version"):
        node_build.find_python("three")


def test_a_step_that_leaves_a_process_behind_does_not_hold_the_build(tmp_path: Path) -> None:
    daemon = [["sh", "-c", "sleep 97 & echo left a process running"]]
    started = time.monotonic()
    placed, said = _build(_spec(tmp_path / "node", install=daemon))
    assert time.monotonic() - started < 15 and placed["built"] == "1"
    assert ("left a process running", None) in said
    time.sleep(0.2)
    assert not running("sleep", "97")  # what it left running was ended with it


def test_a_read_only_leftover_is_removed_and_built_again(tmp_path: Path) -> None:
    readonly = [["sh", "-c", "mkdir -p {env}/cache/x && chmod -R a-w {env}/cache && exit 3"]]
    with pytest.raises(BuildFailed, match="exit 3"):
        _build(_spec(tmp_path / "node", install=readonly))
    placed, _ = _build(_spec(tmp_path / "node"))
    assert placed["built"] == "1" and not (Path(placed["env"]) / "cache").exists()


def test_a_built_environment_that_lost_a_file_is_built_again(tmp_path: Path) -> None:
    placed, _ = _build(_spec(tmp_path / "node"))
    (Path(placed["app"]) / "main.py").unlink()  # a scratch purge, file by file
    again, said = _build(_spec(tmp_path / "node"))
    assert again["built"] == "1" and (Path(again["app"]) / "main.py").exists()
    assert any("without app/main.py: building it again" in text for text, _ in said)


def test_a_build_waits_its_turn_and_says_so(tmp_path: Path) -> None:
    import fcntl

    first = _spec(tmp_path / "node")
    env = tmp_path / "node" / "envs" / "demo" / "1.0.0" / "0123456789ab"
    env.parent.mkdir(parents=True)
    (tmp_path / "node").chmod(0o700)
    with open(f"{env}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another job's build
        said: list[tuple[str, float | None]] = []
        builder = Builder(first, lambda text, progress: said.append((text, progress)))
        threading.Timer(0.2, builder.cancel).start()
        with pytest.raises(BuildFailed, match="cancelled while it waited"):
            builder.run()
    assert said[0][0].startswith("waiting for another job's build of it on")
