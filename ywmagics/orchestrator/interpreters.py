"""Finding a Python interpreter the way users' machines have them.

``build.python`` accepts ``3.10``, ``python3.10``, ``3.10.13`` or a path. We look on ``PATH``, in
pyenv's versions folder and among uv's managed interpreters, and run each candidate to be sure it
works: pyenv's shims sit on ``PATH`` but fail for a version that is not active, which is also why we
hand uv an interpreter path rather than a version to look up itself.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from ywmagics.errors import ConfigurationError
from ywmagics.paths import changeable_by_others

_VERSION_REQUEST = re.compile(r"^(?:python)?(\d+(?:\.\d+){0,2})$")
_INTERPRETER_NAME = re.compile(r"^python3\.\d+$")  # not python3.11-config, python3.11-gdb.py
_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3]); print(sys.executable)"


@dataclass(frozen=True)
class Interpreter:
    path: Path
    version: str


@functools.lru_cache(maxsize=256)
def probe(path: str) -> Interpreter | None:
    """Run ``path`` to learn its version; ``None`` when it is not a working Python."""
    try:
        done = subprocess.run(
            [path, "-c", _PROBE], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) < 2:
        return None
    return Interpreter(Path(path), lines[0])


_NAME = re.compile(r"python(\d+(\.\d+)?t?)?(\.exe)?", re.IGNORECASE)
# ELF, Mach-O (thin and universal) and PE: programs, not scripts that a shell would run.
_PROGRAM_MAGIC = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"MZ")


def _not_an_interpreter(path: Path) -> str | None:
    """Why ``path`` is not to be run as a Python interpreter (it is run to learn its version),
    or ``None``: it must be named like one and be a program, not a script or anything else."""
    if not _NAME.fullmatch(path.name):
        return "its name is not python, python3 or python3.X"
    try:
        with path.open("rb") as file:  # follows links: a venv's python is one to a program
            start = file.read(4)
    except OSError as error:
        return error.strerror or str(error)
    if not start.startswith(_PROGRAM_MAGIC):
        return (
            "it is a script (a pyenv shim, say), not a program"
            if start[:2] == b"#!"
            else ("it is not a program")
        )
    if not os.access(path, os.X_OK):
        return "it is not executable"
    return changeable_by_others(path)[1]


def _pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))


def _path_folders() -> list[Path]:
    """The folders of PATH, without pyenv's shims: a shim runs pyenv (about 0.1 s) and fails for
    a version that is not active, while its interpreters are found in pyenv's versions folder."""
    root = _pyenv_root()
    folders = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        folder = Path(entry)
        if entry and not (folder.name == "shims" and folder.is_relative_to(root)):
            folders.append(folder)
    return folders


def _pyenv_versions() -> list[Path]:
    root = _pyenv_root() / "versions"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)


def _uv_managed(request: str) -> list[Path]:
    uv = uv_binary()
    if uv is None:
        return []
    done = subprocess.run(
        [
            uv,
            "python",
            "find",
            "--python-preference",
            "only-managed",
            "--no-python-downloads",
            request,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [Path(done.stdout.strip())] if done.returncode == 0 and done.stdout.strip() else []


def uv_binary() -> str | None:
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def _candidates(request: str) -> Iterator[Path]:
    """Interpreters that may be ``request``: on PATH, then in pyenv's versions folder."""
    short = ".".join(request.split(".")[:2])
    for folder in _path_folders():
        candidate = folder / f"python{short}"
        if candidate.exists():
            yield candidate
    for version_dir in _pyenv_versions():
        if version_dir.name == request or version_dir.name.startswith(request + "."):
            for name in (f"python{short}", "python3", "python"):
                candidate = version_dir / "bin" / name
                if candidate.exists():
                    yield candidate
                    break


def _probe_all(candidates: Iterable[Path]) -> list[Interpreter]:
    """The working interpreters among ``candidates``, in their order, probed in parallel (each
    probe starts a process: one after the other, a machine with many Pythons waits seconds)."""
    by_file: dict[str, str] = {}
    for candidate in candidates:  # /bin/python3.11 and /usr/bin/python3.11 are often one file
        resolved, _ = changeable_by_others(candidate)
        if resolved is not None:  # one another user could change is never run
            by_file.setdefault(str(resolved), str(resolved))
    unique = list(by_file.values())
    if not unique:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(unique))) as pool:
        found = list(pool.map(probe, unique))
    return [interpreter for interpreter in found if interpreter is not None]


def find_python(request: str) -> Interpreter:
    """The interpreter for ``request`` (empty: the orchestrator's own), or a clear error."""
    request = request.strip()
    if not request:
        found = probe(sys.executable)
        assert found is not None
        return found
    if os.sep in request or request.startswith("."):
        path = Path(request).expanduser()
        refusal = _not_an_interpreter(path)
        if refusal is not None:
            raise ConfigurationError(
                f"{request!r} is not a Python interpreter: {refusal}",
                hint="give an interpreter that only you (or root) can change, e.g. "
                "~/.pyenv/versions/3.10.13/bin/python3.10, or a version such as 3.10",
            )
        # Run, and handed to uv, as resolved when checked: no link on the way is followed again.
        resolved = changeable_by_others(path)[0]
        assert resolved is not None  # checked just above
        found = probe(str(resolved))
        if found is None:
            raise ConfigurationError(f"{request!r} is not a working Python interpreter")
        return found
    match = _VERSION_REQUEST.match(request)
    if not match:
        raise ConfigurationError(
            f"{request!r} is not a Python version",
            hint="use '3.10', 'python3.10', '3.10.13' or a path to an interpreter",
        )
    wanted = match.group(1)
    # PATH and pyenv first, uv's managed Pythons only when they have none (it costs a process).
    for candidates in (lambda: _candidates(wanted), lambda: _uv_managed(wanted)):
        for found in _probe_all(candidates()):
            if found.version == wanted or found.version.startswith(wanted + "."):
                return found
    available = ", ".join(by_version({i.version for i in available_interpreters()})) or "none"
    raise ConfigurationError(
        f"no Python {wanted} found on this machine",
        hint=f"looked {places_searched()}; Pythons found: {available}. Install it "
        f"(e.g. 'uv python install {wanted}' or pyenv) or give a path to an interpreter",
    )


def by_version(versions: Iterable[str]) -> list[str]:
    """``versions`` in numeric order: 3.8 before 3.10, as people count (not as strings)."""

    def key(version: str) -> tuple[int, Version | str]:
        try:
            return (0, Version(version))
        except InvalidVersion:  # never from a probe; kept last rather than failing the hint
            return (1, version)

    return sorted(versions, key=key)


def places_searched() -> str:
    """Where :func:`find_python` looks for a version, in its order, for messages."""
    return f"on PATH, in {_pyenv_root() / 'versions'} and among uv's managed Pythons"


def available_interpreters() -> list[Interpreter]:
    """Every working Python found on PATH and in pyenv's folder, for error messages."""
    candidates: list[Path] = []
    for folder in [*_path_folders(), *(v / "bin" for v in _pyenv_versions())]:
        if folder.is_dir():
            candidates += sorted(p for p in folder.iterdir() if _INTERPRETER_NAME.match(p.name))
    seen: dict[str, Interpreter] = {}
    for found in _probe_all(candidates):
        seen.setdefault(found.version, found)
    return list(seen.values())
