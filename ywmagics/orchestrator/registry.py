"""Registries: folders of backend packages, searched in order, and resolution of ``name#range``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ywmagics import paths
from ywmagics.errors import BackendNotFound, ConfigurationError, ManifestError
from ywmagics.orchestrator.config import load_user_config
from ywmagics.orchestrator.manifest import (
    MANIFEST_NAME,
    Manifest,
    folder_signature,
    load_manifest,
)
from ywmagics.orchestrator.published import Published
from ywmagics.portable import changeable_by_others
from ywmagics.spec import VersionRange, is_published, version_key

log = logging.getLogger(__name__)


def default_registry_folders(
    extra: Sequence[str | Path] = (), configured: Sequence[Path] | None = None
) -> list[Path]:
    """Bundled backends, the user's folder, folders from ``serve --registry`` and the config
    file (``configured``, read from it when not given), then ``YW_BACKENDS_PATH``."""
    folders = [paths.bundled_registry_dir(), paths.user_registry_dir()]
    folders += [Path(f).expanduser() for f in extra]
    folders += load_user_config().registries if configured is None else configured
    folders += [
        Path(f).expanduser() for f in os.environ.get("YW_BACKENDS_PATH", "").split(os.pathsep) if f
    ]
    return folders


def client_bundled_folder(text: str) -> Path | None:
    """The bundled backends' folder a client names (its own ywmagics's ``backends``), checked,
    with no link left; ``None`` when it is not one that this machine sees (a client in a
    container, or reached through a tunnel: the orchestrator's own bundled backends serve it).

    One that another user could change is refused: its manifests' commands would run as you."""
    folder = Path(text)
    try:
        seen = (
            folder.is_absolute()
            and folder.name == paths.bundled_registry_dir().name
            and folder.is_dir()
            and (folder.parent / "_version.py").is_file()
        )
    except (OSError, ValueError):  # a name too long, a folder we may not enter
        seen = False
    if not seen:
        return None
    resolved, why = changeable_by_others(folder)
    if resolved is None:
        raise ConfigurationError(
            f"the bundled backends' folder this client names ({text[:300]}) could be changed "
            f"by another user ({why}): its backends are not installed from it",
            hint="install ywmagics where only you (or root) can write",
        )
    return resolved


class Registry:
    """Finds manifests in ``folders``; the first folder that has a ``name``/``version`` wins.
    ``pypi:NAME`` and ``npm:NAME`` are looked up on the user's package indexes instead (never in
    the folders), what they fetch kept in ``published_cache``."""

    def __init__(self, folders: Sequence[Path], published_cache: Path | None = None) -> None:
        self.folders = list(folders)
        self.published = Published(published_cache) if published_cache else None
        # Folders are scanned at each install (a new backend is found without a restart); a
        # manifest is read and its folder hashed again only when one of its files changed.
        self._loaded: dict[Path, tuple[object, Manifest | ManifestError]] = {}
        # The bundled folders of clients of other installs (see searched): what was installed
        # from them must still be at hand when its instance is started again.
        self.client_bundled: list[Path] = []

    def searched(self, bundled: Path | None = None) -> list[Path]:
        """The folders searched for a client whose ywmagics bundles the backends of
        ``bundled``: those in place of this install's (a kernel gets its own version's
        bundled backends, whichever version runs the orchestrator), then the others."""
        if bundled is None or bundled == paths.bundled_registry_dir():
            return self.folders
        return [bundled, *(f for f in self.folders if f != paths.bundled_registry_dir())]

    def _scan(self, folders: Sequence[Path] | None = None) -> Iterator[Manifest | ManifestError]:
        for folder in self.folders if folders is None else folders:
            if not folder.is_dir():
                continue
            files = sorted(folder.glob(f"*/{MANIFEST_NAME}")) + sorted(
                folder.glob(f"*/*/{MANIFEST_NAME}")
            )
            for file in files:
                signature = folder_signature(file.parent)
                cached = self._loaded.get(file)
                if cached is None or cached[0] != signature:
                    try:
                        loaded: Manifest | ManifestError = load_manifest(file)
                    except ManifestError as error:
                        loaded = error
                    cached = self._loaded[file] = (signature, loaded)
                yield cached[1]

    def manifests(self, folders: Sequence[Path] | None = None) -> dict[str, dict[str, Manifest]]:
        """``{name: {version: manifest}}`` of every backend found (in ``folders``, by default
        the registry's). Broken manifests are logged."""
        found: dict[str, dict[str, Manifest]] = {}
        for manifest in self._scan(folders):
            if isinstance(manifest, ManifestError):
                log.warning("skipping backend: %s", manifest.message)
                continue
            found.setdefault(manifest.name, {}).setdefault(manifest.version, manifest)
        return found

    def resolve(
        self, name: str, version_range: VersionRange, bundled: Path | None = None
    ) -> Manifest:
        """The highest version of ``name`` in ``version_range``, else :class:`BackendNotFound`;
        ``bundled``, the client's bundled backends (see :meth:`searched`). Blocking for a
        published one (the index is asked)."""
        if is_published(name):
            return self._published().resolve(name, version_range)
        folders = self.searched(bundled)
        if (
            bundled is not None
            and folders is not self.folders
            and bundled not in self.client_bundled
        ):
            self.client_bundled.append(bundled)  # its instances may start again later
        every = self.manifests(folders)
        versions = every.get(name)
        broken = self._broken_named(name)
        if broken is not None and (not versions or version_range.best(versions) is None):
            raise broken  # what the user asked for is there, but its manifest is wrong
        if not versions:
            known = ", ".join(sorted(every)) or "none"
            raise BackendNotFound(
                f"unknown backend {name!r}",
                hint=f"known backends: {known}. Registries searched: "
                + ", ".join(str(f) for f in folders),
            )
        best = version_range.best(versions)
        if best is None:
            raise BackendNotFound(
                f"no version of {name!r} matches {str(version_range)!r}",
                hint=f"available versions: {', '.join(sorted(versions, key=version_key))}",
            )
        return versions[best]

    def known(self, name: str, version: str, index: str | None = None) -> Manifest | None:
        """The manifest of ``name`` ``version`` if it is at hand: in a folder, or a published
        one fetched before from ``index`` (the index is not asked)."""
        if is_published(name):
            return self._published().cached(name, version, index) if index else None
        known = self.manifests().get(name, {}).get(version)
        if known is None and self.client_bundled:
            known = self.manifests(self.client_bundled).get(name, {}).get(version)
        return known

    def _published(self) -> Published:
        if self.published is None:
            raise BackendNotFound("this registry has no cache for published backends")
        return self.published

    def _broken_named(self, name: str) -> ManifestError | None:
        """A manifest that failed to load, in a folder named ``name`` (or ``name/VERSION``)."""
        for file, (_, loaded) in self._loaded.items():
            if isinstance(loaded, ManifestError) and name in (
                file.parent.name,
                file.parent.parent.name,
            ):
                return ManifestError(
                    f"the manifest of {name!r} is wrong: {loaded.message}",
                    hint=loaded.hint or "fix it; 'ywmagics registries' lists every broken manifest",
                )
        return None

    def broken(self) -> list[str]:
        """The messages of manifests that failed to load (shown by ``ywmagics registries``)."""
        return [m.message for m in self._scan() if isinstance(m, ManifestError)]
