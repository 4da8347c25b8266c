"""Building environments for real: uv, the venv + pip fallback, interrupted builds, failed
builds, bytecode (compiled once the backend runs, not before)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ywmagics
from ywmagics.errors import ConfigurationError, InstallError
from ywmagics.orchestrator.environments import META_FILE, Installer
from ywmagics.orchestrator.interpreters import find_python
from ywmagics.orchestrator.manifest import load_manifest
from ywmagics.paths import bundled_registry_dir
from ywmagics.wire import CODEC_VERSION

PYRUN = bundled_registry_dir() / "pyrun_backend" / "ywbackend.toml"


def _quiet(text: str, progress: float | None) -> None:
    pass


@pytest.mark.slow
def test_uv_build_is_complete_and_compiled_once_the_backend_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UV_COMPILE_BYTECODE", "1")  # a user's uv setting: not for this build
    # The backend as a checkout may hold it: with caches of tools, which are not the backend.
    backend = tmp_path / "pyrun_backend"
    shutil.copytree(PYRUN.parent, backend, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    for cache in (".mypy_cache", ".ruff_cache", ".git"):
        (backend / cache).mkdir()
        (backend / cache / "big").write_bytes(b"x" * 1000)
    installer = Installer(tmp_path / "envs", tmp_path / "logs")
    manifest = load_manifest(backend / "ywbackend.toml")
    plan = installer.plan(manifest, manifest.build_config({"python": "3.10", "modules": "six"}))
    steps: list[str] = []
    environment, built = installer.build(plan, lambda text, progress: steps.append(text))
    assert built and environment.python_version and environment.python_version.startswith("3.10")
    assert (environment.path / META_FILE).exists()
    # What built it, and the codec it shares with kernels: shown by 'ywmagics list'.
    assert (environment.built_by, environment.codec) == (ywmagics.__version__, CODEC_VERSION)
    assert installer.environments() == [environment]
    assert not any(
        (environment.app / cache).exists() for cache in (".mypy_cache", ".ruff_cache", ".git")
    )
    # The modules shared with the kernel side are there, as they are in ywmagics.
    package = Path(__file__).parents[1] / "ywmagics"
    for name, source in (("ywmagics_wire.py", "wire.py"), ("ywmagics_bulk.py", "bulk.py")):
        assert (environment.app / name).read_bytes() == (package / source).read_bytes()
    # No bytecode is compiled before the backend can start (it would delay its first answer)...
    assert not any("compil" in step for step in steps)
    assert not list(environment.path.rglob("*.pyc"))
    # ...but once it runs: then the runner starts from bytecode even where
    # PYTHONDONTWRITEBYTECODE is set, and its bytecode names the files where they are.
    installer.compile_environment(environment)
    assert (environment.path / ".compiled").exists()
    compiled = list((environment.app / "__pycache__").glob("pyrun_runner.*.pyc"))
    assert compiled
    filename = subprocess.run(
        [
            str(environment.python_bin),
            "-c",
            f"import marshal; print(marshal.loads(open({str(compiled[0])!r}, 'rb').read()[16:])"
            ".co_filename)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert filename == str(environment.app / "pyrun_runner.py")
    # Asked again, it is found, not built.
    again, built_again = installer.build(plan, _quiet)
    assert again.path == environment.path and not built_again


@pytest.mark.slow
def test_a_module_that_cannot_be_installed_fails_the_build_clearly(tmp_path: Path) -> None:
    installer = Installer(tmp_path / "envs", tmp_path / "logs")
    manifest = load_manifest(PYRUN)
    missing = "ywmagics-no-such-distribution-anywhere"
    config = manifest.build_config({"python": "3.10", "modules": missing})
    plan = installer.plan(manifest, config)
    with pytest.raises(InstallError, match=f"failed: installing {missing}") as raised:
        installer.build(plan, _quiet)
    assert missing in raised.value.log_tail and "install log" in raised.value.hint
    assert installer.find(plan) is None and not installer.final_path(plan).exists()


@pytest.mark.slow
def test_an_interrupted_build_is_never_used_and_is_swept(tmp_path: Path) -> None:
    installer = Installer(tmp_path / "envs", tmp_path / "logs")
    manifest = load_manifest(PYRUN)
    plan = installer.plan(manifest, manifest.build_config({}))
    final = installer.final_path(plan)
    # What a build killed half-way leaves: its temporary folder, and (worse) a final folder
    # without the meta file that is written last.
    leftover = final.parent / f".tmp-{plan.fingerprint}-deadbeef"
    (leftover / "venv").mkdir(parents=True)
    (final / "venv").mkdir(parents=True)
    assert installer.find(plan) is None
    environment, built = installer.build(plan, _quiet)
    assert built and not leftover.exists()
    assert (environment.path / META_FILE).exists()
    assert [e.fingerprint for e in installer.environments()] == [plan.fingerprint]


@pytest.mark.slow
def test_venv_and_pip_when_uv_is_not_usable(tmp_path: Path) -> None:
    installer = Installer(tmp_path / "envs", tmp_path / "logs")
    installer.uv = None
    manifest = load_manifest(PYRUN)
    plan = installer.plan(manifest, manifest.build_config({"python": sys.executable}))
    steps: list[str] = []
    environment, _ = installer.build(plan, lambda text, progress: steps.append(text))
    assert any("(venv)" in step for step in steps)
    assert environment.python_bin is not None and environment.python_bin.exists()


def test_python_by_version_name_or_path(tmp_path: Path) -> None:
    by_version = find_python("3.10")
    assert find_python("python3.10") == by_version
    assert find_python(str(by_version.path)).version == by_version.version
    with pytest.raises(ConfigurationError, match="is not a Python interpreter"):
        find_python(str(tmp_path / "nothing" / "python"))
    with pytest.raises(ConfigurationError, match="is not a Python version"):
        find_python("snake")


def test_a_new_codec_or_transport_means_a_new_python_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ywmagics.orchestrator import environments

    installer = Installer(tmp_path / "envs", tmp_path / "logs")
    manifest = load_manifest(PYRUN)
    before = installer.plan(manifest, manifest.build_config({})).fingerprint
    # Another ywmagics's wire.py or bulk.py: a runner built with the old copies must not serve.
    monkeypatch.setattr(environments, "_SHARED_DIGEST", "another version")
    assert installer.plan(manifest, manifest.build_config({})).fingerprint != before


def test_a_meta_file_of_another_version_is_read_for_what_this_one_knows(tmp_path: Path) -> None:
    installer = Installer(tmp_path / "envs", tmp_path / "logs")
    meta = {
        "name": "app", "version": "1.0.0", "fingerprint": "abc123def456", "config": {},
        "python": None, "python_version": None, "created": 1.0,
    }  # fmt: skip
    newer = tmp_path / "envs" / "app" / "1.0.0" / "abc123def456"
    newer.mkdir(parents=True)
    (newer / META_FILE).write_text(json.dumps({**meta, "said_by_a_newer_version": [1]}))
    broken = tmp_path / "envs" / "app" / "1.0.1" / "abc123def456"
    broken.mkdir(parents=True)
    (broken / META_FILE).write_text(json.dumps({"name": "app"}))  # not ours: skipped
    (found,) = installer.environments()
    assert (found.name, found.path, found.built_by, found.codec) == ("app", newer, None, None)


def test_the_environments_another_version_built_with_the_same_options_are_named(
    tmp_path: Path,
) -> None:
    installer = Installer(tmp_path / "envs", tmp_path / "logs")
    manifest = load_manifest(PYRUN)
    plan = installer.plan(manifest, manifest.build_config({}))
    other = {"python": "4.0", "modules": "six"}

    def lay(fingerprint: str, config: dict[str, str], built_by: str | None) -> Path:
        folder = installer.final_path(plan).parent / fingerprint
        folder.mkdir(parents=True)
        meta = {
            "name": manifest.name, "version": manifest.version, "fingerprint": fingerprint,
            "config": config, "python": None, "python_version": None, "created": 1.0,
            "built_by": built_by, "codec": 99,
        }  # fmt: skip
        (folder / META_FILE).write_text(json.dumps(meta))
        return folder

    theirs = lay("aaaaaaaaaaaa", plan.config, "9.9.9")  # another version, the same options
    older = lay("bbbbbbbbbbbb", plan.config, None)  # one that did not say
    lay("cccccccccccc", other, "9.9.9")  # other options: another environment anyway
    lay("dddddddddddd", plan.config, ywmagics.__version__)  # this version's own
    found = installer.built_by_others(plan)
    assert sorted(e.path for e in found) == sorted([theirs, older])
