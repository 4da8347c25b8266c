"""``npm:NAME``: an npm package whose ``package.json`` carries the manifest in its ``ywbackend``
field (every key of ``ywbackend.toml`` but ``name`` and ``version``, which are the package's)::

    {"name": "@acme/yw-tiles", "version": "2.0.1",
     "ywbackend": {"runtime": "command", "start": ["node", "{app}/server.js", "{socket}"]}}

npm itself is asked (``npm view``, ``npm pack``), so the registry, scopes and tokens are the
user's own (``.npmrc``, ``npm_config_*``); nothing here names a host. The tarball is unpacked into
the cache; its dependencies are installed into the environment by ``npm install`` from the same
registry, as the first install step.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from ywmagics.errors import BackendNotFound, InstallError, ManifestError
from ywmagics.orchestrator.manifest import Manifest, Source, manifest_of
from ywmagics.orchestrator.published.cache import CachedIndex, public_url
from ywmagics.spec import VersionRange, is_semver, npm_package, version_key

FIELD = "ywbackend"
DEFAULT_REGISTRY = "https://registry.npmjs.org/"  # npm's own default, when nothing is set
# Unreachable registries, as npm says them.
_NETWORK_CODES = {"ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNRESET"}
DEPENDENCIES = ("npm", "install", "--omit=dev", "--no-audit", "--no-fund", "--prefix", "{app}")


class NpmRegistry(CachedIndex):
    """Resolves ``npm:NAME#RANGE`` with the user's npm; what it takes is kept in the cache."""

    def resolve(self, name: str, version_range: VersionRange) -> Manifest:
        """The manifest of the version npm would pick (fetched the first time). Blocking."""
        package = npm_package(name)
        registry = self._registry(package)
        try:
            listed = self._npm(registry, "view", package, "versions", "dist-tags")
        except InstallError:
            kept = self.offline(registry, name, version_range)
            if kept is None:
                raise
            return kept
        listed = listed if isinstance(listed, dict) else {"versions": listed}
        versions = listed.get("versions") or []
        versions = [versions] if isinstance(versions, str) else list(versions)
        latest = str((listed.get("dist-tags") or {}).get("latest") or "")
        # As npm picks: the 'latest' tag when it is in range, else the highest in range.
        best = latest if latest in versions and version_range.matches(latest) else None
        best = best or version_range.best(versions)
        if best is None:
            shown = ", ".join(sorted((v for v in versions if is_semver(v)), key=version_key))
            raise BackendNotFound(
                f"no version of {package} matches {str(version_range)!r} on the npm registry "
                f"{public_url(registry)}",
                hint=f"versions there: {shown or 'none'}",
            )
        cached = self.cached(name, best, registry)
        if cached is not None:
            return cached

        def fetch(work: Path) -> Source:
            (packed,) = self._npm(
                registry, "pack", f"{package}@{best}", "--pack-destination", str(work), cwd=work
            )
            tarball = work / PurePosixPath(str(packed["filename"])).name
            _unpack(tarball, work / "backend", package, best)
            source = Source(
                public_url(registry), package, best, tarball.name, str(packed["integrity"])
            )
            self._manifest(name, source, work / "backend")  # refused before it is kept
            return source

        return self.keep(registry, name, best, fetch)

    def _package_folder(self, name: str) -> str:
        return npm_package(name).replace("/", "+")

    def _registry(self, package: str) -> str:
        """The registry npm uses for ``package`` (its scope's, if the user set one)."""
        if package.startswith("@"):
            scoped = self._npm(None, "config", "get", f"{package.split('/')[0]}:registry")
            if isinstance(scoped, str) and scoped not in ("", "undefined"):
                return scoped
        found = self._npm(None, "config", "get", "registry")
        return found if isinstance(found, str) and found else DEFAULT_REGISTRY

    def _npm(self, registry: str | None, *args: str, cwd: Path | None = None) -> Any:
        """What ``npm ARGS --json`` says (its error, raised as ours)."""
        npm = shutil.which("npm")
        if npm is None:
            raise InstallError(
                "npm is not on PATH: it is how backends published on npm are installed",
                hint="install Node.js and npm, or install a backend of a local registry",
            )
        self.cache.mkdir(parents=True, exist_ok=True)
        # A project of its own: npm looks for a project's .npmrc up from its folder, and stops
        # at the first package.json (else one in a folder above, maybe another user's, would
        # set the registry).
        marker = self.cache / "package.json"
        if not marker.exists():
            marker.write_text('{"private": true}\n')
        try:
            done = subprocess.run(
                [npm, *args, "--json"],
                cwd=cwd or self.cache,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise InstallError(f"npm {args[0]} took more than 120 s", hint=f"{registry}") from None
        try:
            said = json.loads(done.stdout) if done.stdout.strip() else None
        except ValueError:
            said = done.stdout.strip()
        error = said.get("error") if isinstance(said, dict) else None
        if done.returncode == 0 and error is None:
            return said
        error = error if isinstance(error, dict) else {}
        code, summary = str(error.get("code", "")), str(error.get("summary") or done.stderr)
        package = args[1] if len(args) > 1 else ""
        if code == "E404":
            raise BackendNotFound(
                f"no package {package!r} on the npm registry {public_url(registry or '')}",
                hint="check its name; a published backend is installed as 'npm:NAME', a local "
                "one by its plain name",
            )
        if code in _NETWORK_CODES:
            raise InstallError(
                f"cannot reach the npm registry {public_url(registry or '')}: {summary.strip()}",
                hint="check the network, or the registry your npm settings name (.npmrc, "
                "npm_config_registry)",
            )
        raise InstallError(
            f"npm {' '.join(args[:2])} failed: {summary.strip() or f'exit {done.returncode}'}",
            hint=f"the npm registry: {registry}" if registry else "",
        )

    def _manifest(self, name: str, source: Source, folder: Path) -> Manifest:
        where = folder / "package.json"
        about = f"npm:{source.package} {source.version} from {source.index}"
        try:
            package = json.loads(where.read_text())
        except (OSError, ValueError) as error:
            raise ManifestError(f"{about}: no readable package.json ({error})") from None
        fields = package.get(FIELD)
        if not isinstance(fields, dict):
            raise ManifestError(
                f"{about} is not a ywmagics backend: its package.json has no {FIELD!r} field",
                hint=f'add "{FIELD}": {{"runtime": "command", "start": [...]}} to its '
                "package.json (the keys of ywbackend.toml); 'ywmagics new-backend --node' "
                "makes such a project",
            )
        taken = sorted({"name", "version"} & set(fields))
        if taken:
            raise ManifestError(
                f"{about}: its {FIELD!r} field gives {', '.join(taken)}",
                hint="a published backend's name and version are its package's",
            )
        data = {
            "description": package.get("description") or f"{source.package} (npm)",
            **fields,
            "name": source.package.rsplit("/", 1)[-1],
            "version": source.version,
        }
        manifest = manifest_of(data, where, folder)
        install = manifest.install
        if package.get("dependencies"):  # from the registry it came from, as npm is set
            install = (DEPENDENCIES, *install)
        return dataclasses.replace(manifest, name=name, install=install, source=source)


# Scripts npm runs for a project of its own but not for a package installed from a registry:
# left out, so that 'npm install' in the environment does what installing the package would.
_PROJECT_SCRIPTS = ("prepare", "preprepare", "postprepare", "prepublish", "prepublishOnly")
MAX_UNPACKED = 256 * 1024 * 1024


def _unpack(tarball: Path, into: Path, package: str, version: str) -> None:
    """The package's files, out of its tarball's first folder (``package/``, as npm takes any):
    plain files and folders only, all inside, at most MAX_UNPACKED bytes."""
    where = f"{package} {version}"
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = [m for m in tar.getmembers() if not m.isdir()]
            if sum(m.size for m in members) > MAX_UNPACKED:
                raise ManifestError(
                    f"{where}: its files are more than {MAX_UNPACKED // 2**20} MiB: refused"
                )
            for member in members:
                relative = PurePosixPath(member.name)
                if relative.is_absolute() or ".." in relative.parts or not member.isfile():
                    raise ManifestError(f"{where}: its tarball holds {member.name!r}: refused")
                if len(relative.parts) < 2:
                    continue
                target = into / PurePosixPath(*relative.parts[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
                target.chmod(0o755 if member.mode & 0o111 else 0o644)
    except (tarfile.TarError, OSError) as error:
        raise InstallError(f"cannot unpack {tarball.name}: {error}") from None
    manifest = into / "package.json"
    try:
        package_json = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return  # said when the manifest is read
    scripts = package_json.get("scripts")
    if isinstance(scripts, dict) and set(_PROJECT_SCRIPTS) & set(scripts):
        package_json["scripts"] = {k: v for k, v in scripts.items() if k not in _PROJECT_SCRIPTS}
        manifest.write_text(json.dumps(package_json, indent=2))
