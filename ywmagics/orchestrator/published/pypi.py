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
import json
import os
import re
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

from ywmagics.errors import BackendNotFound, InstallError, ManifestError
from ywmagics.orchestrator import toml
from ywmagics.orchestrator.manifest import MANIFEST_NAME, Manifest, Source, load_manifest
from ywmagics.orchestrator.published.cache import CachedIndex, public_url
from ywmagics.spec import PYPI_PREFIX, VersionRange, is_semver, normalize_package, version_key

ENTRY_POINT_GROUP = "ywmagics.backends"
DEFAULT_INDEX = "https://pypi.org/simple"  # uv's and pip's own default, when nothing is set
_WHEEL = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(?:-\d[^-]*)?-(?P<tags>[^-]+-[^-]+-[^-]+)\.whl$"
)
_TIMEOUT = 30.0
MAX_WHEEL = 256 * 1024 * 1024
MAX_PAGE = 64 * 1024 * 1024
PAGE_DEADLINE = 60.0  # seconds to read a package's page, in all
DOWNLOAD_DEADLINE = 600.0  # seconds to download its wheel, in all
MAX_UNPACKED = 256 * 1024 * 1024  # bytes of a backend's folder taken out of its wheel


@dataclass(frozen=True)
class _Wheel:
    filename: str
    url: str
    sha256: str | None
    yanked: bool = False


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


def index_for(source: Source) -> str:
    """The URL to build ``source``'s environment from: the index the user's settings name, when
    it is the one ``source`` came from (with the credentials those settings carry, which are
    never recorded), else the one recorded."""
    url, _ = index_url()
    return url if public_url(url) == source.index else source.index


class PackageIndex(CachedIndex):
    """Resolves ``pypi:NAME#RANGE`` against the user's index; the wheels it takes are kept in
    the cache."""

    def resolve(self, name: str, version_range: VersionRange) -> Manifest:
        """The manifest of the highest version in range (downloaded the first time). Blocking:
        the orchestrator calls it in a worker thread."""
        package = name.removeprefix(PYPI_PREFIX)
        url, said_by = index_url()
        try:
            wheels = self._wheels(package, url, said_by, exact=_exact(version_range))
        except InstallError:
            kept = self.offline(url, name, version_range)
            if kept is None:
                raise
            return kept
        versions = {v: w for v, w in wheels.items() if is_semver(v)}
        best = version_range.best(versions)
        if best is None:
            shown = ", ".join(sorted(versions, key=version_key)) or "none"
            others = sorted(set(wheels) - set(versions))
            raise BackendNotFound(
                f"no version of {name} matches {str(version_range)!r} on the index "
                f"{public_url(url)}",
                hint=f"versions with a pure wheel there: {shown}"
                + (f" (not semantic versions, left out: {', '.join(others)})" if others else ""),
            )
        cached = self.cached(name, best, url)
        wheel = versions[best]
        if cached is not None and cached.source is not None:
            if wheel.sha256 is None or cached.source.digest == f"sha256:{wheel.sha256.lower()}":
                return cached
            raise InstallError(
                f"{name} {best} on the index {public_url(url)} is not the file fetched from it "
                f"before ({cached.source.digest}, now sha256:{wheel.sha256})",
                hint="a release must never change: ask its publisher; nothing was installed",
            )
        return self.keep(url, name, best, lambda work: self._fetch(name, best, wheel, url, work))

    def _package_folder(self, name: str) -> str:
        return name.removeprefix(PYPI_PREFIX)

    # -- the index ----------------------------------------------------------------------------

    def _wheels(self, package: str, url: str, said_by: str, exact: bool) -> dict[str, _Wheel]:
        """``{version: pure wheel}`` of ``package`` on the index (its Simple API page); a
        yanked one only when asked for by its exact version (PEP 592)."""
        import httpx

        page = f"{url}/{package}/"
        where = f"{public_url(url)} (from {said_by})"
        try:
            response = _get(page, "application/vnd.pypi.simple.v1+json, text/html;q=0.1")
        except (httpx.HTTPError, TimeoutError) as error:
            raise InstallError(
                f"cannot reach the package index {where}: {error}",
                hint="check the network, or the index your uv and pip settings name "
                "(UV_DEFAULT_INDEX, PIP_INDEX_URL, uv.toml, pip.conf)",
            ) from None
        if response.status_code == 404:
            raise BackendNotFound(
                f"no package {package!r} on the index {where}",
                hint="check its name; a published backend is installed as 'pypi:NAME', a local "
                "one by its plain name",
            )
        if response.status_code != 200:
            raise InstallError(
                f"the package index {where} answered {response.status_code} for {package!r}",
                hint="is it a Simple API index (PEP 503), and are its credentials in the URL?",
            )
        wheels: dict[str, _Wheel] = {}
        for wheel in _files_of(response, str(response.url)):
            match = _WHEEL.match(wheel.filename)
            if match is None or normalize_package(match["name"]) != package:
                continue
            python, abi, platform = match["tags"].split("-")
            if (abi, platform) != ("none", "any") or "py3" not in python.split("."):
                continue  # a pure Python 3 wheel only
            if wheel.yanked and not exact:
                continue
            wheels.setdefault(match["version"], wheel)
        return wheels

    def _fetch(self, name: str, version: str, wheel: _Wheel, url: str, work: Path) -> Source:
        import httpx

        digest = hashlib.sha256()
        path = work / wheel.filename
        deadline = time.monotonic() + DOWNLOAD_DEADLINE
        try:
            with httpx.stream(
                "GET", wheel.url, timeout=httpx.Timeout(_TIMEOUT, connect=10), follow_redirects=True
            ) as got:
                if got.status_code != 200:
                    raise InstallError(
                        f"cannot download {wheel.filename} from {public_url(url)}: "
                        f"{got.status_code}"
                    )
                with path.open("wb") as file:
                    for chunk in got.iter_bytes():
                        digest.update(chunk)
                        file.write(chunk)
                        if file.tell() > MAX_WHEEL:
                            raise InstallError(f"{wheel.filename} is larger than 256 MiB")
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"not done in {DOWNLOAD_DEADLINE:g} s")
        except (httpx.HTTPError, TimeoutError) as error:
            raise InstallError(
                f"downloading {wheel.filename} from {public_url(url)} failed: {error}",
                hint="nothing was kept; install again",
            ) from None
        sha256 = digest.hexdigest()
        if wheel.sha256 is not None and wheel.sha256.lower() != sha256:
            raise InstallError(
                f"{wheel.filename} from {public_url(url)} does not have the hash the index "
                f"gives (sha256 {sha256}, not {wheel.sha256})",
                hint="the file changed on the way or on the index: nothing was installed",
            )
        package = name.removeprefix(PYPI_PREFIX)
        source = Source(public_url(url), package, version, wheel.filename, f"sha256:{sha256}")
        _extract_backend(path, work / "backend", name, version)
        self._manifest(name, source, work / "backend")  # refused before it is kept
        return source

    def _manifest(self, name: str, source: Source, folder: Path) -> Manifest:
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
        return dataclasses.replace(manifest, name=name, source=source)


@dataclass(frozen=True)
class _Page:
    status_code: int
    headers: dict[str, str]
    text: str
    url: str

    def json(self) -> Any:
        return json.loads(self.text)


def _get(url: str, accept: str) -> _Page:
    """A Simple API page, read within PAGE_DEADLINE seconds in all (httpx's timeouts are per
    read: an index that sends a byte now and then would hold the install forever)."""
    import httpx

    deadline = time.monotonic() + PAGE_DEADLINE
    chunks: list[bytes] = []
    with httpx.stream(
        "GET",
        url,
        headers={"Accept": accept},
        timeout=httpx.Timeout(_TIMEOUT, connect=10),
        follow_redirects=True,
    ) as response:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            if time.monotonic() > deadline or sum(map(len, chunks)) > MAX_PAGE:
                raise TimeoutError(f"its page was not read in {PAGE_DEADLINE:g} s")
        return _Page(
            response.status_code,
            {k.lower(): v for k, v in response.headers.items()},
            b"".join(chunks).decode(response.encoding or "utf-8", errors="replace"),
            str(response.url),
        )


def _exact(version_range: VersionRange) -> bool:
    return is_semver(str(version_range).strip())


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, bool]] = []  # (href, text, yanked)
        self._link: tuple[str, bool] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            found = dict(attrs)
            href = found.get("href")
            self._link = (href, "data-yanked" in found) if href else None

    def handle_data(self, data: str) -> None:
        if self._link is not None:
            self.links.append((self._link[0], data.strip(), self._link[1]))
            self._link = None


def _files_of(response: Any, page: str) -> list[_Wheel]:
    """The files of a Simple API page, JSON (PEP 691) or HTML (PEP 503); names that are not one
    plain file name are left out."""
    found: list[_Wheel] = []
    if response.headers.get("content-type", "").startswith("application/vnd.pypi.simple.v1+json"):
        for f in response.json().get("files", []):
            if isinstance(f, dict) and isinstance(f.get("filename"), str) and f.get("url"):
                sha256 = (f.get("hashes") or {}).get("sha256")
                found.append(
                    _Wheel(f["filename"], urljoin(page, f["url"]), sha256, bool(f.get("yanked")))
                )
    else:
        links = _Links()
        links.feed(response.text)
        for href, text, yanked in links.links:
            url = urljoin(page, href)
            fragment = urlsplit(url).fragment
            sha256 = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
            filename = text or PurePosixPath(urlsplit(url).path).name
            found.append(_Wheel(filename, url.split("#", 1)[0], sha256, yanked))
    return [f for f in found if "/" not in f.filename and not f.filename.startswith(".")]


def _extract_backend(wheel: Path, into: Path, name: str, version: str) -> None:
    """The folder of the package its entry point names, taken out of the wheel (at most
    MAX_UNPACKED bytes)."""
    where = f"{name} {version}"
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as error:
        raise ManifestError(f"{where}: its wheel is not a zip file: {error}") from None
    with archive:
        module = _entry_point(archive, where, name.removeprefix(PYPI_PREFIX))
        prefix = module.replace(".", "/") + "/"
        if f"{prefix}{MANIFEST_NAME}" not in archive.namelist():
            raise ManifestError(
                f"{where}: its entry point names {module!r}, which has no {MANIFEST_NAME}",
                hint=f"put {MANIFEST_NAME} in the folder of the package {module}",
            )
        members = [m for m in archive.infolist() if m.filename.startswith(prefix)]
        if sum(m.file_size for m in members) > MAX_UNPACKED:
            raise ManifestError(
                f"{where}: its backend's folder is more than {MAX_UNPACKED // 2**20} MiB "
                "unpacked: refused"
            )
        for member in members:
            if member.is_dir():
                continue
            relative = PurePosixPath(member.filename[len(prefix) :])
            if relative.is_absolute() or ".." in relative.parts:
                raise ManifestError(f"{where}: its wheel holds {member.filename!r}: refused")
            target = into / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)


def _entry_point(archive: zipfile.ZipFile, where: str, package: str) -> str:
    """The package named by the wheel's own ``ywmagics.backends`` entry point (that of its
    root ``.dist-info``; the entry named after the distribution first)."""
    points = [
        n
        for n in archive.namelist()
        if n.count("/") == 1
        and n.endswith(".dist-info/entry_points.txt")
        and normalize_package(n.split("-", 1)[0]) == package
    ]
    parser = configparser.RawConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        if points:
            parser.read_string(archive.read(points[0]).decode())
    except (configparser.Error, UnicodeDecodeError) as error:
        raise ManifestError(f"{where}: its entry_points.txt cannot be read: {error}") from None
    entries = dict(parser.items(ENTRY_POINT_GROUP)) if parser.has_section(ENTRY_POINT_GROUP) else {}
    if not entries:
        raise ManifestError(
            f"{where} is not a ywmagics backend: its wheel has no {ENTRY_POINT_GROUP!r} "
            "entry point",
            hint='its pyproject.toml needs [project.entry-points."ywmagics.backends"] '
            'NAME = "package" (the package whose folder holds ywbackend.toml); '
            "'ywmagics new-backend NAME --python' makes such a project",
        )
    own = next((v for k, v in entries.items() if normalize_package(k) == package), None)
    module = (own or next(iter(entries.values()))).split(":", 1)[0].strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", module):
        raise ManifestError(f"{where}: its entry point names {module!r}, not a package")
    return module
