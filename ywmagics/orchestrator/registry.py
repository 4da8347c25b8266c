"""Registries: folders of backend packages, searched in order, and resolution of ``name#range``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ywmagics import paths
from ywmagics.errors import BackendNotFound, ConfigurationError
from ywmagics.orchestrator.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    load_manifest,
)
from ywmagics.spec import VersionRange

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)


def configured_registry_folders() -> list[Path]:
    """The ``registries`` list of the user's config file (:func:`ywmagics.paths.config_file`)."""
    file = paths.config_file()
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        return []
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"{file} is not valid TOML: {error}") from None
    folders = data.get("registries", [])
    if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
        raise ConfigurationError(
            f"{file}: 'registries' must be a list of folders",
            hint='e.g. registries = ["~/my-backends"]',
        )
    return [Path(f).expanduser() for f in folders]


def default_registry_folders(extra: Sequence[str | Path] = ()) -> list[Path]:
    """Bundled backends, the user's folder, folders from ``serve --registry`` and the config
    file, then ``YW_BACKENDS_PATH``."""
    folders = [paths.bundled_registry_dir(), paths.user_registry_dir()]
    folders += [Path(f).expanduser() for f in extra]
    folders += configured_registry_folders()
    folders += [
        Path(f).expanduser() for f in os.environ.get("YW_BACKENDS_PATH", "").split(os.pathsep) if f
    ]
    return folders


class Registry:
    """Finds manifests in ``folders``; the first folder that has a ``name``/``version`` wins."""

    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = list(folders)

    def manifests(self) -> dict[str, dict[str, Manifest]]:
        """``{name: {version: manifest}}`` of every backend found. Broken manifests are logged."""
        found: dict[str, dict[str, Manifest]] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            files = sorted(folder.glob(f"*/{MANIFEST_NAME}")) + sorted(
                folder.glob(f"*/*/{MANIFEST_NAME}")
            )
            for file in files:
                try:
                    manifest = load_manifest(file)
                except ManifestError as error:
                    log.warning("skipping backend: %s", error.message)
                    continue
                found.setdefault(manifest.name, {}).setdefault(manifest.version, manifest)
        return found

    def resolve(self, name: str, version_range: VersionRange) -> Manifest:
        """The highest version of ``name`` in ``version_range``, else :class:`BackendNotFound`."""
        every = self.manifests()
        versions = every.get(name)
        if not versions:
            known = ", ".join(sorted(every)) or "none"
            raise BackendNotFound(
                f"unknown backend {name!r}",
                hint=f"known backends: {known}. Registries searched: "
                + ", ".join(str(f) for f in self.folders),
            )
        best = version_range.best(versions)
        if best is None:
            raise BackendNotFound(
                f"no version of {name!r} matches {str(version_range)!r}",
                hint=f"available versions: {', '.join(sorted(versions, key=_version_key))}",
            )
        return versions[best]

    def broken(self) -> list[str]:
        """The messages of manifests that failed to load (shown by ``ywmagics registries``)."""
        errors = []
        for folder in self.folders:
            for file in [*folder.glob(f"*/{MANIFEST_NAME}"), *folder.glob(f"*/*/{MANIFEST_NAME}")]:
                try:
                    load_manifest(file)
                except ManifestError as error:
                    errors.append(error.message)
        return errors


def _version_key(version: str) -> tuple[int, ...]:
    from packaging.version import Version

    return Version(version).release
