"""Published backends: installed from a package index the user's tools are set to use, by a
prefixed name (``pypi:NAME``, ``npm:NAME``; a plain name is always a local registry's, so no
published name can shadow a local backend). What is fetched is kept in a cache, one folder per
package and version (:mod:`~ywmagics.orchestrator.published.cache`); the manifest's
:class:`~ywmagics.orchestrator.manifest.Source` says where it came from.

- :mod:`~ywmagics.orchestrator.published.pypi`: a wheel on a Python package index;
- :mod:`~ywmagics.orchestrator.published.npm`: an npm package.
"""

from __future__ import annotations

from pathlib import Path

from ywmagics.orchestrator.manifest import Manifest
from ywmagics.orchestrator.published.npm import NpmRegistry
from ywmagics.orchestrator.published.pypi import PackageIndex
from ywmagics.spec import NPM_PREFIX, VersionRange


class Published:
    """The package indexes, by the prefix of a backend's name."""

    def __init__(self, cache: Path) -> None:
        self.pypi = PackageIndex(cache / "pypi")
        self.npm = NpmRegistry(cache / "npm")

    def _index(self, name: str) -> PackageIndex | NpmRegistry:
        return self.npm if name.startswith(NPM_PREFIX) else self.pypi

    def resolve(self, name: str, version_range: VersionRange) -> Manifest:
        """Blocking: the index is asked (in a worker thread of the orchestrator)."""
        return self._index(name).resolve(name, version_range)

    def cached(self, name: str, version: str, index: str) -> Manifest | None:
        """A version fetched before from ``index``; the index is not asked."""
        return self._index(name).cached(name, version, index)

    def sweep(self) -> list[Path]:
        """What fetches cut short left in the cache (at the orchestrator's start)."""
        return self.pypi.sweep() + self.npm.sweep()
