"""``pypi:NAME``: a distribution on a Python package index whose wheel ships a manifest, found
through its ``ywmagics.backends`` entry point::

    [project.entry-points."ywmagics.backends"]
    yw-weather = "yw_weather"          # the package whose folder holds ywbackend.toml

The index is the user's own (:func:`index_url`: uv's and pip's settings, never a host of ours).
``NAME#RANGE`` resolves against the versions that index has a pure wheel of (npm's range rules,
semantic versions only); the wheel is downloaded once into the cache, its hash checked against
the index's, and the manifest's folder taken out of it. The environment then installs that very
wheel file, its dependencies and ``build.modules`` from the same index (see
:class:`~ywmagics.orchestrator.environments.Installer`). What was installed (index, version,
file, SHA-256) is the manifest's :class:`Source`, kept in the environment's meta file.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import hashlib
import html.parser
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

from ywmagics.errors import BackendNotFound, InstallError, ManifestError
from ywmagics.orchestrator import toml
from ywmagics.orchestrator.manifest import MANIFEST_NAME, Manifest, Source, load_manifest
from ywmagics.orchestrator.published.cache import CachedIndex, keep
from ywmagics.spec import PYPI_PREFIX, VersionRange, is_semver, normalize_package, version_key

ENTRY_POINT_GROUP = "ywmagics.backends"
DEFAULT_INDEX = "https://pypi.org/simple"  # uv's and pip's own default, when nothing is set
_WHEEL = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(?:-\d[^-]*)?-(?P<tags>[^-]+-[^-]+-[^-]+)\.whl$"
)
_TIMEOUT = 30.0
MAX_WHEEL = 256 * 1024 * 1024


@dataclass(frozen=True)
class _Wheel:
    filename: str
    url: str
    sha256: str | None


def index_url(environ: dict[str, str] | None = None) -> tuple[str, str]:
    """The index the user's tools use, and where that was said: ``UV_DEFAULT_INDEX``,
    ``UV_INDEX_URL``, ``PIP_INDEX_URL``, uv's ``uv.toml``, pip's ``pip.conf``, else the default
    of both (PyPI)."""
    environ = dict(os.environ) if environ is None else environ
    for variable in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"):
        if environ.get(variable, "").strip():
            return environ[variable].strip().rstrip("/"), variable
    config_home = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    for file in (config_home / "uv" / "uv.toml", Path("/etc/uv/uv.toml")):
        found = _uv_index(file)
        if found:
            return found.rstrip("/"), str(file)
    pip_files = [Path(environ["PIP_CONFIG_FILE"])] if environ.get("PIP_CONFIG_FILE") else []
    pip_files += [
        config_home / "pip" / "pip.conf",
        Path.home() / ".pip" / "pip.conf",
        Path("/etc/pip.conf"),
        Path("/etc/xdg/pip/pip.conf"),
    ]
    for file in pip_files:
        parser = configparser.ConfigParser()
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(file)
            found = parser.get("global", "index-url", fallback="").strip()
            if found:
                return found.rstrip("/"), str(file)
    return DEFAULT_INDEX, "the default of uv and pip"


def _uv_index(file: Path) -> str | None:
    try:
        data = toml.loads(file.read_text())
    except (OSError, toml.TOMLDecodeError, UnicodeDecodeError):
        return None
    if isinstance(data.get("index-url"), str):
        return str(data["index-url"])
    for index in data.get("index", []) if isinstance(data.get("index"), list) else []:
        if isinstance(index, dict) and index.get("default") and isinstance(index.get("url"), str):
            return str(index["url"])
    return None


class PackageIndex(CachedIndex):
    """Resolves ``pypi:NAME#RANGE`` against the user's index; the wheels it takes are kept in
    ``cache`` (one folder per package and version)."""

    def resolve(self, name: str, version_range: VersionRange) -> Manifest:
        """The manifest of the highest version in range (downloaded the first time). Blocking:
        the orchestrator calls it in a worker thread."""
        package = name.removeprefix(PYPI_PREFIX)
        url, said_by = index_url()
        wheels = self._wheels(package, url, said_by)
        versions = {v: w for v, w in wheels.items() if is_semver(v)}
        best = version_range.best(versions)
        if best is None:
            shown = ", ".join(sorted(versions, key=version_key)) or "none"
            others = sorted(set(wheels) - set(versions))
            raise BackendNotFound(
                f"no version of {name} matches {str(version_range)!r} on the index {url}",
                hint=f"versions with a pure wheel there: {shown}"
                + (f" (not semantic versions, left out: {', '.join(others)})" if others else ""),
            )
        cached = self.cached(name, best)
        if cached is not None:
            return cached
        return self._fetch(name, best, versions[best], url)

    def _folder(self, name: str, version: str) -> Path:
        return self.cache / name.removeprefix(PYPI_PREFIX) / version

    # -- the index ----------------------------------------------------------------------------

    def _wheels(self, package: str, url: str, said_by: str) -> dict[str, _Wheel]:
        """``{version: pure wheel}`` of ``package`` on the index (its Simple API page)."""
        import httpx

        page = f"{url}/{package}/"
        try:
            response = httpx.get(
                page,
                headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"},
                timeout=_TIMEOUT,
                follow_redirects=True,
            )
        except httpx.HTTPError as error:
            raise InstallError(
                f"cannot reach the package index {url} (from {said_by}): {error}",
                hint="check the network, or the index your uv and pip settings name "
                "(UV_DEFAULT_INDEX, PIP_INDEX_URL, uv.toml, pip.conf)",
            ) from error
        if response.status_code == 404:
            raise BackendNotFound(
                f"no package {package!r} on the index {url} (from {said_by})",
                hint="check its name; a published backend is installed as 'pypi:NAME', a local "
                "one by its plain name",
            )
        if response.status_code != 200:
            raise InstallError(
                f"the package index {url} answered {response.status_code} for {package!r}",
                hint=f"from {said_by}; is it a Simple API index (PEP 503)?",
            )
        files = _files_of(response, str(response.url))
        wheels: dict[str, _Wheel] = {}
        for wheel in files:
            match = _WHEEL.match(wheel.filename)
            if match is None or normalize_package(match["name"]) != package:
                continue
            if match["tags"].split("-")[1:] != ["none", "any"]:  # a pure wheel only
                continue
            wheels.setdefault(match["version"], wheel)
        return wheels

    def _fetch(self, name: str, version: str, wheel: _Wheel, url: str) -> Manifest:
        import httpx

        def fetch(work: Path) -> Source:
            digest = hashlib.sha256()
            path = work / wheel.filename
            with httpx.stream("GET", wheel.url, timeout=_TIMEOUT, follow_redirects=True) as got:
                if got.status_code != 200:
                    raise InstallError(
                        f"cannot download {wheel.filename} from {url}: {got.status_code}"
                    )
                with path.open("wb") as file:
                    for chunk in got.iter_bytes():
                        digest.update(chunk)
                        file.write(chunk)
                        if file.tell() > MAX_WHEEL:
                            raise InstallError(f"{wheel.filename} is larger than 256 MiB")
            sha256 = digest.hexdigest()
            if wheel.sha256 is not None and wheel.sha256.lower() != sha256:
                raise InstallError(
                    f"{wheel.filename} from {url} does not have the hash the index gives "
                    f"(sha256 {sha256}, not {wheel.sha256})",
                    hint="the file changed on the way or on the index: nothing was installed",
                )
            package = name.removeprefix(PYPI_PREFIX)
            source = Source(url, package, version, wheel.filename, f"sha256:{sha256}")
            _extract_backend(path, work / "backend", name, version)
            self._manifest(name, source, work / "backend")  # refused before it is kept
            return source

        folder = self._folder(name, version)
        return self._manifest(name, keep(folder, fetch), folder / "backend")

    def _manifest(self, name: str, source: Source, folder: Path) -> Manifest:
        wheel_path = folder.parent / source.file
        manifest = load_manifest(folder / MANIFEST_NAME)
        where = f"{name} {source.version} from {source.index}"
        if normalize_package(manifest.name) != source.package:
            raise ManifestError(
                f"{where}: its manifest names the backend {manifest.name!r}, not "
                f"{source.package!r}",
                hint="a published backend's manifest 'name' is its package's name",
            )
        if manifest.version != source.version:
            raise ManifestError(
                f"{where}: its manifest says version {manifest.version}",
                hint="a published backend's manifest 'version' is its package's version",
            )
        return dataclasses.replace(
            manifest, name=name, source=dataclasses.replace(source, file=str(wheel_path))
        )


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (href, text)
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links.append((self._href, data.strip()))
            self._href = None


def _files_of(response: Any, page: str) -> list[_Wheel]:
    """The files of a Simple API page, JSON (PEP 691) or HTML (PEP 503)."""
    if response.headers.get("content-type", "").startswith("application/vnd.pypi.simple.v1+json"):
        files = response.json().get("files", [])
        return [
            _Wheel(f["filename"], urljoin(page, f["url"]), (f.get("hashes") or {}).get("sha256"))
            for f in files
            if isinstance(f, dict) and isinstance(f.get("filename"), str) and f.get("url")
        ]
    links = _Links()
    links.feed(response.text)
    found = []
    for href, text in links.links:
        url = urljoin(page, href)
        fragment = urlsplit(url).fragment
        sha256 = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
        filename = text or PurePosixPath(urlsplit(url).path).name
        found.append(_Wheel(filename, url.split("#", 1)[0], sha256))
    return found


def _extract_backend(wheel: Path, into: Path, name: str, version: str) -> None:
    """The folder of the package its entry point names, taken out of the wheel."""
    where = f"{name} {version}"
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as error:
        raise ManifestError(f"{where}: its wheel is not a zip file: {error}") from None
    with archive:
        points = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        if points:
            parser.read_string(archive.read(points[0]).decode())
        entries = (
            dict(parser.items(ENTRY_POINT_GROUP)) if parser.has_section(ENTRY_POINT_GROUP) else {}
        )
        if not entries:
            raise ManifestError(
                f"{where} is not a ywmagics backend: its wheel has no {ENTRY_POINT_GROUP!r} "
                "entry point",
                hint='its pyproject.toml needs [project.entry-points."ywmagics.backends"] '
                'NAME = "package" (the package whose folder holds ywbackend.toml); '
                "'ywmagics new-backend' makes such a project",
            )
        module = next(iter(entries.values())).split(":", 1)[0].strip()
        prefix = module.replace(".", "/") + "/"
        if f"{prefix}{MANIFEST_NAME}" not in archive.namelist():
            raise ManifestError(
                f"{where}: its entry point names {module!r}, which has no {MANIFEST_NAME}",
                hint=f"put {MANIFEST_NAME} in the folder of the package {module}",
            )
        for member in archive.infolist():
            if not member.filename.startswith(prefix) or member.is_dir():
                continue
            relative = PurePosixPath(member.filename[len(prefix) :])
            if relative.is_absolute() or ".." in relative.parts:
                raise ManifestError(f"{where}: its wheel holds {member.filename!r}: refused")
            target = into / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
