"""Real, separate ywmagics installs of one user, as version skew tests need them (issue 18).

A wheel is built from this source tree with another version (and, if asked, another protocol or
codec), and installed into a virtualenv of its own. Such an install only differs from a user's in
where its dependencies come from: it sees the test environment's site-packages *after* its own
(a ``.pth`` line), so nothing is downloaded, while its ``ywmagics`` is the wheel's: a ``.pth``
file's plain lines are appended to ``sys.path``, and the ``.pth`` files of the folder so added (the
test environment's editable install of ywmagics among them) are not processed.

One trap remains, which :meth:`Install.run` avoids: ``python -c`` and ``python -m`` put the
current folder first on ``sys.path``, so an install's Python run from the project's root would
import the project's ``ywmagics`` instead of its own. Every process of an install runs in its
private ``YW_HOME`` (or its own folder).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from uv import find_uv_bin

from ywmagics.discovery import Connection, pid_alive, read_discovery

from .conftest import TEST_REGISTRY, start_orchestrator

PROJECT = Path(__file__).parents[1]
UV = str(find_uv_bin())
# What a tree copied without git must leave out: caches and environments, not sources.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", "__pycache__", "*.pyc", ".venv", "venv", "dist", "build", ".mypy_cache", ".ruff_cache"
)


def _source_files(root: Path) -> list[Path]:
    """The project's files, relative to ``root``: git's tracked ones and the new ones not yet
    added (another engineer's new module must be in the wheel), not the ignored ones; a tracked
    file deleted in the work tree is left out, as a build from the work tree would."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({Path(name) for name in listed.split("\0") if name and (root / name).is_file()})


def copy_sources(root: Path, destination: Path) -> None:
    """The source tree of ``root`` at ``destination``: git's files when it is a clone, else the
    whole tree but its caches (an unpacked sdist, say)."""
    if not (root / ".git").exists():
        shutil.copytree(root, destination, ignore=_NOT_SOURCES, dirs_exist_ok=True)
        return
    for relative in _source_files(root):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)


def _rewrite(path: Path, pattern: str, replacement: str) -> None:
    """Make the one line of ``path`` that ``pattern`` matches ``replacement``; fail if there is
    not exactly one (a renamed constant would otherwise leave a test testing nothing)."""
    text = path.read_text()
    changed, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count == 1, f"{path}: {pattern!r} matched {count} lines, not 1"
    written = re.search(f"^{re.escape(replacement)}", changed, flags=re.MULTILINE)
    assert written is not None, f"{path}: {replacement!r} not written"
    path.write_text(changed)


def build_wheel(
    out_dir: Path,
    *,
    version: str,
    protocol: int | None = None,
    codec: int | None = None,
    bundling: dict[str, Path] | None = None,
) -> Path:
    """A wheel of this source tree as ywmagics ``version`` (its package metadata and
    ``__version__``), speaking ``protocol`` (``PROTOCOL_VERSION``) and ``codec``
    (``CODEC_VERSION``) when given, and bundling the backends of ``bundling`` too (their
    folders, by the name they take among the bundled ones); built into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ywmagics-src-") as folder:
        source = Path(folder)
        copy_sources(PROJECT, source)
        for name, backend in (bundling or {}).items():
            shutil.copytree(backend, source / "ywmagics" / "backends" / name)
        _rewrite(
            source / "ywmagics" / "_version.py",
            r'^__version__ = ".*"$',
            f'__version__ = "{version}"',
        )
        _rewrite(source / "pyproject.toml", r'^version = ".*"$', f'version = "{version}"')
        if protocol is not None:
            _rewrite(
                source / "ywmagics" / "protocol.py",
                r"^PROTOCOL_VERSION = \d+",
                f"PROTOCOL_VERSION = {protocol}",
            )
        if codec is not None:
            _rewrite(
                source / "ywmagics" / "wire.py", r"^CODEC_VERSION = \d+", f"CODEC_VERSION = {codec}"
            )
        # uv builds with hatchling from its cache (the test environment has none): under a
        # second, where pip would need hatchling installed here.
        built = subprocess.run(
            [UV, "build", "--wheel", "--no-config", "--out-dir", str(out_dir), str(source)],
            capture_output=True,
            text=True,
            check=False,
            env=_without_virtualenv(),
        )
        assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = out_dir.glob(f"ywmagics-{version}-*.whl")
    return wheel


def _without_virtualenv() -> dict[str, str]:
    # uv acts on $VIRTUAL_ENV first: not on the test environment, whatever activated it.
    return {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}


def _site_packages(python: str) -> Path:
    found = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(python).parent,  # not a folder with a package of its own
    )
    return Path(found.stdout.strip())


def make_install(path: Path, wheel: Path) -> Path:
    """A virtualenv at ``path`` with ``wheel`` installed, seeing this test environment's
    packages after its own (see the module's docstring); its python. Checked: it imports the
    wheel's ywmagics, not the project's, and its command runs."""
    subprocess.run(
        [UV, "venv", "--quiet", "--no-config", "--python", sys.executable, str(path)],
        check=True,
        env=_without_virtualenv(),
    )
    python = path / "bin" / "python"
    install_wheel(python, wheel)
    # "zz": after the wheel's own .pth files, if it had some; a path line, never processed.
    (_site_packages(str(python)) / "zz_test_environment.pth").write_text(
        f"{_site_packages(sys.executable)}\n"
    )
    version = wheel.name.split("-")[1]
    said = Install(python).run(
        "-c", "import ywmagics; print(ywmagics.__file__, ywmagics.__version__)"
    )
    where, version_said = said.stdout.split()
    assert Path(where).is_relative_to(path), f"{python} imports the ywmagics of {where}"
    assert version_said == version, said.stdout
    helped = Install(python).run("-m", "ywmagics", "--help")
    assert helped.returncode == 0 and "serve" in helped.stdout, helped.stdout + helped.stderr
    return python


def install_wheel(python: Path, wheel: Path) -> None:
    """Install ``wheel`` into the environment of ``python`` (over the ywmagics it has: an
    upgrade), without its dependencies, which the environment already sees."""
    uv_pip = [UV, "pip", "install", "--quiet", "--no-config", "--python", str(python)]
    installed = subprocess.run(
        [*uv_pip, "--no-deps", "--reinstall", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
        env=_without_virtualenv(),
    )
    assert installed.returncode == 0, installed.stderr


@dataclass(frozen=True)
class Install:
    """One ywmagics install (a Python with its own ywmagics), run as a user of it would: with
    its ``bin`` first on ``PATH``, in a folder of no project."""

    python: Path

    def env(self, home: Path | None = None) -> dict[str, str]:
        """The environment of its processes, with the private ``YW_HOME`` ``home`` (and the
        tests' registry, for their cheap backends)."""
        env = {**os.environ, "VIRTUAL_ENV": str(self.python.parent.parent)}
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        env["YW_BACKENDS_PATH"] = str(TEST_REGISTRY)
        if home is not None:
            env["YW_HOME"] = str(home)
        return env

    def run(
        self, *args: str, home: Path | None = None, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        """``python ARGS``, to its end; run in ``home`` (else the install's own folder), never
        in the project's root, whose ``ywmagics`` it would import (see the module's docstring)."""
        return subprocess.run(
            [str(self.python), *args],
            env=self.env(home),
            cwd=home or self.python.parent.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ipython(
        self, code: str, home: Path, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        """``code`` run in a real IPython of this install (as a user's terminal would), with
        the private ``YW_HOME`` ``home``; the orchestrator it starts is left running."""
        return self.run(
            "-m", "IPython", "--no-banner", "--quick", "-c", code, home=home, timeout=timeout
        )

    def serve(
        self, home: Path, timeout: float = 30.0
    ) -> tuple[subprocess.Popen[bytes], Connection]:
        """Its orchestrator (``python -m ywmagics serve``) for ``home``, once its discovery file
        is written; its output goes to ``home/serve.log``."""
        return start_orchestrator(
            home, timeout=timeout, python=str(self.python), env=self.env(home), cwd=home
        )

    def shutdown(self, home: Path) -> None:
        """Stop the orchestrator of ``home`` as a user would (``ywmagics shutdown`` of this
        install); one that is still there after it is ended by its pid."""
        self.run("-m", "ywmagics", "shutdown", home=home, timeout=60)
        end_orchestrator(home)


def discovery_file(home: Path) -> Path:
    """Where the orchestrator of ``YW_HOME=home`` publishes itself (``paths.discovery_file``)."""
    return home / "run" / "orchestrator.json"


def end_orchestrator(home: Path) -> None:
    """End the orchestrator of ``home``, if one still runs: SIGTERM (it stops its backends),
    then SIGKILL after 20 s."""
    connection = read_discovery(discovery_file(home))
    if connection is None or not pid_alive(connection.pid):
        return
    os.kill(connection.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while pid_alive(connection.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(connection.pid):
        os.kill(connection.pid, signal.SIGKILL)
