"""Finding a Python interpreter the way users' machines have them.

``build.python`` accepts ``3.10``, ``python3.10``, ``3.10.13`` or a path. We look for programs on
``PATH`` and in pyenv's versions folder, then among uv's managed interpreters, and last at scripts
on ``PATH``; each candidate is run to be sure it works. Scripts come last because a version
manager's shim is one: pyenv's takes 0.1-1 s to fail for a version that is not active (which is
also why we hand uv an interpreter path rather than a version to look up itself). A pyenv shim is
never run: it names its pyenv's root, whose versions folder holds the interpreters it would run.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from ywmagics.errors import ConfigurationError
from ywmagics.portable import changeable_by_others

_VERSION_REQUEST = re.compile(r"^(?:python)?(\d+(?:\.\d+){0,2})$")
_INTERPRETER_NAME = re.compile(r"^python3\.\d+$")  # not python3.11-config, python3.11-gdb.py
_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3]); print(sys.executable)"
# The line of a pyenv shim that names its root (``pyenv init`` writes it into every shim).
_PYENV_SHIM_ROOT = re.compile(rb'^export PYENV_ROOT="([^"\n]+)"$', re.MULTILINE)


@dataclass(frozen=True)
class Interpreter:
    path: Path
    version: str


@functools.lru_cache(maxsize=256)
def probe(path: str) -> Interpreter | None:
    """Run ``path`` to learn its version; ``None`` when it is not a working Python."""
    try:  # -S: without site, a probe takes half the time (site is most of a start)
        done = subprocess.run(
            [path, "-S", "-c", _PROBE], capture_output=True, text=True, timeout=20, check=False
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
    if not _is_program(start):
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


def _is_program(start: bytes | None) -> bool:
    return start is not None and start.startswith(_PROGRAM_MAGIC)


def _start_of(path: Path, size: int = 4) -> bytes | None:
    try:
        with path.open("rb") as file:  # follows links: a venv's python is one to a program
            return file.read(size)
    except OSError:
        return None


def _pyenv_shim_root(path: Path) -> Path | None:
    """The root of the pyenv whose shim ``path`` is, or ``None`` when it is not one."""
    start = _start_of(path, 1024)
    if start is None or not start.startswith(b"#!") or b"pyenv" not in start:
        return None
    found = _PYENV_SHIM_ROOT.search(start)
    return Path(os.fsdecode(found.group(1))) if found else None


@dataclass
class _OnPath:
    """The interpreters PATH offers, sorted by what running them costs: programs (a few ms);
    scripts (another tool's shims or wrappers: a shim may take a second to fail for a version
    its tool has not made active); and pyenv shims, never run: the roots they name."""

    programs: list[Path] = field(default_factory=list)
    scripts: list[Path] = field(default_factory=list)
    pyenv_roots: list[Path] = field(default_factory=list)

    def pyenv_root(self, root: Path) -> None:
        if root not in self.pyenv_roots:
            self.pyenv_roots.append(root)


def _on_path(names: Callable[[Path], Iterable[Path]]) -> _OnPath:
    """The files ``names(folder)`` gives for the folders of PATH, sorted by kind (reading their
    first bytes, never running them), each kind in PATH's order."""
    found = _OnPath()
    root = _pyenv_root()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        folder = Path(entry)
        if not entry:
            continue
        if folder.name == "shims" and folder.is_relative_to(root):  # PYENV_ROOT's: all shims
            found.pyenv_root(root)
            continue
        for candidate in names(folder):
            if _is_program(_start_of(candidate)):
                found.programs.append(candidate)
            elif (shim_root := _pyenv_shim_root(candidate)) is not None:
                found.pyenv_root(shim_root)
            else:
                found.scripts.append(candidate)
    return found


def _named(name: str) -> Callable[[Path], Iterable[Path]]:
    return lambda folder: [folder / name] if (folder / name).is_file() else []


def _interpreter_files(folder: Path) -> list[Path]:
    """The files of ``folder`` named ``python3.X`` (not python3.11-config, python3.11-gdb.py)."""
    try:
        names = sorted(p for p in folder.iterdir() if _INTERPRETER_NAME.match(p.name))
    except OSError:  # a PATH entry that is no folder, or one we may not read
        return []
    return [path for path in names if path.is_file()]


def _pyenv_versions(shim_roots: Iterable[Path] = ()) -> list[Path]:
    """The version folders of pyenv (PYENV_ROOT's, then those of the shims on PATH), the newest
    of each root first."""
    roots = [_pyenv_root()]
    roots += [root for root in shim_roots if root not in roots]
    found = []
    for root in roots:
        versions = root / "versions"
        try:
            folders = {p.name: p for p in versions.iterdir() if p.is_dir()}
        except OSError:  # no pyenv there, or one we may not read (another user's)
            continue
        numbered = [name for name in by_version(folders) if _is_version(name)]
        others = sorted(name for name in folders if not _is_version(name))  # 3.13.0t, pypy
        found += [folders[name] for name in [*reversed(numbered), *others]]
    return found


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


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


def _in_pyenv(request: str, shim_roots: Iterable[Path]) -> Iterator[Path]:
    """The interpreters of pyenv's versions that may be ``request``, the newest first."""
    short = ".".join(request.split(".")[:2])
    for version_dir in _pyenv_versions(shim_roots):
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


def check_request(request: str) -> str:
    """The version that ``request`` asks for, or the error of one that is neither a version nor
    a path (also for interpreters looked for elsewhere: on a cluster's node)."""
    request = request.strip()
    if not request or os.sep in request or request.startswith("."):
        return request
    match = _VERSION_REQUEST.match(request)
    if not match:
        raise ConfigurationError(
            f"{request!r} is not a Python version",
            hint="use '3.10', 'python3.10', '3.10.13' or a path to an interpreter",
        )
    return match.group(1)


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
    wanted = check_request(request)
    on_path = _on_path(_named(f"python{'.'.join(wanted.split('.')[:2])}"))
    # Cheapest first, each group probed in parallel: programs on PATH and in pyenv (PATH's
    # first), uv's managed Pythons only when they have none (asking costs a process), scripts
    # last (a shim of another tool may be slow to fail).
    groups: tuple[Callable[[], Iterable[Path]], ...] = (
        lambda: [*on_path.programs, *_in_pyenv(wanted, on_path.pyenv_roots)],
        lambda: _uv_managed(wanted),
        lambda: on_path.scripts,
    )
    for candidates in groups:
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
    on_path = _on_path(_interpreter_files)
    candidates = [*on_path.programs, *on_path.scripts]
    for version_dir in _pyenv_versions(on_path.pyenv_roots):
        candidates += _interpreter_files(version_dir / "bin")
    seen: dict[str, Interpreter] = {}
    for found in _probe_all(candidates):
        seen.setdefault(found.version, found)
    return list(seen.values())
