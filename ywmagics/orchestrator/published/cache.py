"""The cache of published backends: one folder per index, package and version, whole or not
there, fetched once however many installs ask at the same time."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ywmagics.errors import ManifestError
from ywmagics.orchestrator.manifest import Manifest, Source
from ywmagics.spec import VersionRange

log = logging.getLogger("ywmagics.orchestrator")

SOURCE_FILE = "source.json"


def public_url(url: str) -> str:
    """``url`` without the user name and password an index URL may carry (a token): what is
    recorded and shown."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class CachedIndex:
    """What an index keeps in its cache folder: ``CACHE/<index>/<package>/<version>/``, with
    the backend's files in ``backend/`` and its :class:`Source`."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def cached(self, name: str, version: str, index: str) -> Manifest | None:
        """The manifest of a version fetched before from ``index`` (no request is made)."""
        folder = self._folder(index, name, version)
        source = _kept_source(folder)
        if source is None:
            return None
        try:
            return self._manifest(name, source, folder / "backend")
        except ManifestError:
            return None

    def keep(
        self, index: str, name: str, version: str, fetch: Callable[[Path], Source]
    ) -> Manifest:
        """The manifest of ``name`` ``version`` from ``index``: what is kept, else what ``fetch``
        puts in a fresh folder, renamed into place only once complete. Installs that ask at
        once take turns: one fetches, the others find it kept."""
        import filelock

        folder = self._folder(index, name, version)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(folder) + ".lock"):
            source = _kept_source(folder)
            if source is None:
                work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
                try:
                    source = fetch(work)
                    text = json.dumps(dataclasses.asdict(source), indent=2)
                    (work / SOURCE_FILE).write_text(text)
                    shutil.rmtree(folder, ignore_errors=True)  # incomplete: no source file
                    os.rename(work, folder)
                except BaseException:
                    shutil.rmtree(work, ignore_errors=True)
                    raise
        return self._manifest(name, source, folder / "backend")

    def cached_versions(self, index: str, name: str) -> list[str]:
        """The versions of ``name`` kept from ``index``."""
        package = self._folder(index, name, "-").parent
        return sorted(v.parent.name for v in package.glob(f"*/{SOURCE_FILE}"))

    def offline(self, index: str, name: str, version_range: VersionRange) -> Manifest | None:
        """For an index that cannot be reached: the highest version in range kept from it."""
        best = version_range.best(self.cached_versions(index, name))
        if best is None:
            return None
        log.warning(
            "%s: the index %s cannot be reached; using %s, fetched from it before",
            name,
            public_url(index),
            best,
        )
        return self.cached(name, best, index)

    def sweep(self) -> list[Path]:
        """Remove what fetches cut short left (at the orchestrator's start)."""
        removed = []
        for partial in self.cache.glob("*/*/.*"):
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
                removed.append(partial)
        return removed

    def _folder(self, index: str, name: str, version: str) -> Path:
        key = hashlib.sha256(public_url(index).encode()).hexdigest()[:12]
        return self.cache / key / self._package_folder(name) / version

    def _package_folder(self, name: str) -> str:
        raise NotImplementedError

    def _manifest(self, name: str, source: Source, folder: Path) -> Manifest:
        raise NotImplementedError


def _kept_source(folder: Path) -> Source | None:
    try:
        return Source(**json.loads((folder / SOURCE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
