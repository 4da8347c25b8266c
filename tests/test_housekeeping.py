"""What is left by crashes is never used and is swept; state is private (no processes started
but short-lived ones)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ywmagics import paths
from ywmagics.errors import ConfigurationError
from ywmagics.orchestrator import housekeeping
from ywmagics.orchestrator.environments import META_FILE, Environment, Installer
from ywmagics.orchestrator.processes import RunningSteps, has_exited, run_logged


def _environment(installer: Installer, fingerprint: str = "f00d") -> Environment:
    """An environment on disk as a finished build leaves it."""
    path = installer.root / "echo" / "1.0.0" / fingerprint
    path.mkdir(parents=True)
    environment = Environment("echo", "1.0.0", fingerprint, path, {}, None, None, time.time())
    (path / META_FILE).write_text(json.dumps(environment.to_dict()))
    (path / "app").mkdir()
    return environment


def test_a_retired_environment_is_never_found_listed_or_started(tmp_path: Path) -> None:
    installer = Installer(tmp_path / "envs", tmp_path / "logs")
    environment = _environment(installer)
    assert installer.environments() == [environment]
    installer.retire(environment)  # where a kill -9 in the middle of an uninstall may stop
    assert installer.environments() == []
    assert installer.sweep() == [environment.path]
    assert not environment.path.exists()


def test_half_deleted_and_half_built_folders_are_not_environments(tmp_path: Path) -> None:
    installer = Installer(tmp_path / "envs", tmp_path / "logs")
    kept = _environment(installer, "keep")
    trash = _environment(installer, "x")
    trash.path.rename(trash.path.parent / ".trash-12345678")  # meta file and all
    building = _environment(installer, "y")
    building.path.rename(building.path.parent / ".tmp-y-abcd")
    folder = kept.path.parent
    (folder / "gone.lock").write_text("")  # the lock of an environment removed since
    (folder / "keep.lock").write_text("")
    assert installer.environments() == [kept]
    removed = {p.name for p in installer.sweep()}
    assert removed == {".trash-12345678", ".tmp-y-abcd", "gone.lock"}
    assert sorted(p.name for p in folder.iterdir()) == ["keep", "keep.lock"]


def test_remove_ends_the_steps_working_in_the_environment(tmp_path: Path) -> None:
    installer = Installer(tmp_path / "envs", tmp_path / "logs")
    environment = _environment(installer)
    started = threading.Event()
    codes: list[int] = []

    def compile_forever() -> None:  # as a background compile still running would
        started.set()
        code, _ = run_logged(
            ["sleep", "60"],
            log=tmp_path / "compile.log",
            running=installer.running,
            key=str(environment.path),
        )
        codes.append(code)

    worker = threading.Thread(target=compile_forever)
    worker.start()
    assert started.wait(5)
    deadline = time.monotonic() + 5
    while not installer.running._by_key.get(str(environment.path)) and time.monotonic() < deadline:
        time.sleep(0.01)
    installer.remove(environment)
    worker.join(10)
    assert codes and codes[0] != 0  # killed, not finished
    assert not environment.path.exists() and not environment.path.with_suffix(".lock").exists()
    assert not list(environment.path.parent.iterdir())  # nothing written back by the step


def test_a_step_of_a_removed_folder_is_killed_as_it_starts(tmp_path: Path) -> None:
    running = RunningSteps()
    running.end("gone")
    start = time.monotonic()
    code, _ = run_logged(["sleep", "60"], log=tmp_path / "log", running=running, key="gone")
    assert code != 0 and time.monotonic() - start < 30


def test_sockets_folders_of_dead_orchestrators_are_swept(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = housekeeping.new_sockets_dir()
    left = Path(str(mine).replace(f"yw-{os.getpid()}-", f"yw-{dead.pid}-"))
    left.mkdir()
    (left / "stale.sock").write_text("")
    alive = Path(str(mine).replace(f"yw-{os.getpid()}-", "yw-1-"))  # pid 1 lives
    alive.mkdir()
    try:
        assert has_exited(dead.pid)
        removed = housekeeping.sweep_sockets_dirs()
        assert left in removed and not left.exists()
        assert alive.exists() and mine.exists()
    finally:
        for folder in (mine, alive):
            folder.rmdir()


def test_state_made_private_closes_what_was_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YW_HOME", str(tmp_path / "home"))
    logs = paths.logs_dir() / "instances" / "P"
    logs.mkdir(parents=True, mode=0o755)
    (logs / "echo-1.0.0.log").write_text("what a backend printed")
    os.chmod(logs / "echo-1.0.0.log", 0o644)
    os.chmod(paths.logs_dir(), 0o755)
    previous = os.umask(0o022)
    try:
        housekeeping.make_state_private()
        assert os.umask(0o077) == 0o077  # what the orchestrator creates from now on is private
    finally:
        os.umask(previous)
    for path in (paths.data_dir(), paths.logs_dir(), logs, paths.environments_dir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE((logs / "echo-1.0.0.log").stat().st_mode) == 0o600


def test_a_shared_runtime_folder_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "victims-public-html"
    target.mkdir(mode=0o755)
    planted = tmp_path / "ywmagics-planted"
    planted.symlink_to(target)
    with pytest.raises(ConfigurationError, match=r"is not a folder .* refused") as raised:
        paths.private_dir(planted)
    assert "YW_HOME" in raised.value.hint
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # not followed, not changed
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(ConfigurationError, match="is not a folder"):
        paths.private_dir(a_file)
    if os.getuid() == 0:  # as root, make one that another user owns
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(ConfigurationError, match="belongs to another user"):
            paths.private_dir(theirs)


@pytest.mark.skipif(os.getuid() != 0 or sys.platform != "linux", reason="as root, on Linux")
def test_a_runtime_name_another_user_took_first_does_not_stop_us(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a shared /tmp, 'mkdir -m 777 /tmp/ywmagics-<uid>' by anyone kept us from starting.
    shared = tmp_path / "tmp"
    shared.mkdir(mode=0o1777)
    squatted = shared / f"ywmagics-{os.getuid()}"
    squatted.mkdir(mode=0o777)
    os.chown(squatted, 65534, 65534)
    monkeypatch.delenv("YW_HOME", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    found = paths.runtime_dir()
    assert found == tmp_path / "cache" / "ywmagics" / "run" / socket.gethostname()
    assert stat.S_IMODE(found.stat().st_mode) == 0o700
    assert paths.runtime_dir() == found  # every kernel finds the same one
    assert list(squatted.iterdir()) == []  # theirs: untouched, unused
    # A cache folder another user may change is no refuge: said, not used.
    shared_cache = tmp_path / "shared-cache"
    (shared_cache / "ywmagics" / "run").mkdir(parents=True)
    os.chown(shared_cache / "ywmagics" / "run", 65534, 65534)
    (shared_cache / "ywmagics" / "run").chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared_cache))
    with pytest.raises(ConfigurationError, match="belongs to another user") as refused:
        paths.runtime_dir()
    assert "YW_HOME" in refused.value.hint


def test_a_runtime_folder_that_cannot_be_made_says_what_to_set(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o500)
    if os.getuid() == 0:  # root writes anywhere: a file where a folder should be instead
        read_only.rmdir()
        read_only.write_text("")
    with pytest.raises(ConfigurationError, match=r"cannot use .* for ywmagics. private files"):
        paths.private_dir(read_only / "run")


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a small file system needs root")
def test_a_full_disk_is_said_plainly_and_leaves_nothing(tmp_path: Path) -> None:
    from ywmagics.errors import InstallError
    from ywmagics.orchestrator.manifest import load_manifest

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        backend = tmp_path / "big_backend"
        backend.mkdir()
        (backend / "ywbackend.toml").write_text(
            'name = "big_backend"\nversion = "1.0.0"\ndescription = "d"\nstart = ["true"]\n'
        )
        (backend / "data.bin").write_bytes(b"x" * 200_000)
        installer = Installer(small / "envs", tmp_path / "logs")
        manifest = load_manifest(backend / "ywbackend.toml")
        with pytest.raises(InstallError, match="no space left on device") as raised:
            installer.build(installer.plan(manifest, {}), lambda text, progress: None)
        assert str(small / "envs") in raised.value.hint
        assert [p.name for p in (small / "envs" / "big_backend" / "1.0.0").iterdir()] == [
            f"{installer.plan(manifest, {}).fingerprint}.lock"
        ]
    finally:
        subprocess.run(["umount", str(small)], check=True)
