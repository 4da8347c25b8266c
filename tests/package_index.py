"""A real Python package index on loopback for the tests (``pypiserver``, from PyPI), and wheels
made here, as ``uv build`` would make them, so that nothing is fetched from elsewhere."""

from __future__ import annotations

import base64
import hashlib
import shutil
import sys
import zipfile
from pathlib import Path

from .local_server import ServerProcess, free_port


def make_wheel(
    folder: Path,
    name: str,
    version: str,
    files: dict[str, str],
    *,
    entry_point: str | None = None,
    requires: tuple[str, ...] = (),
) -> Path:
    """A pure wheel of distribution ``name`` holding ``files`` (path -> text); with
    ``entry_point`` (a package), the ``ywmagics.backends`` entry point that names it."""
    stem = f"{name.replace('-', '_')}-{version}"
    dist_info = f"{stem}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    contents = dict(files)
    contents[f"{dist_info}/METADATA"] = metadata
    contents[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: ywmagics-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if entry_point is not None:
        contents[f"{dist_info}/entry_points.txt"] = f"[ywmagics.backends]\n{name} = {entry_point}\n"
    record = []
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    contents[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{stem}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, text in contents.items():
            archive.writestr(path, text)
    return wheel


class PackageServer(ServerProcess):
    """``pypi-server`` serving ``packages`` on 127.0.0.1, no fallback to PyPI; releasing is
    putting a wheel in that folder (it reads the folder at each request)."""

    def __init__(self, packages: Path) -> None:
        super().__init__(packages.parent / "pypi-server.log")
        self.packages = packages
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/simple"

    def release(self, wheel: Path) -> None:
        shutil.copy(wheel, self.packages / wheel.name)

    def __enter__(self) -> PackageServer:
        self.packages.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        server = Path(sys.executable).with_name("pypi-server")
        argv = [str(server), "run", "-i", "127.0.0.1", "-p", str(self.port), "-a", ".", "-P", "."]
        self.start([*argv, "--disable-fallback", str(self.packages)], f"{self.url}/")
        return self
