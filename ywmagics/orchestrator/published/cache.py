"""The cache of published backends: one folder per package and version, whole or not there."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ywmagics.errors import ManifestError
from ywmagics.orchestrator.manifest import Manifest, Source

SOURCE_FILE = "source.json"


def keep(folder: Path, fetch: Callable[[Path], Source]) -> Source:
    """Fill ``folder`` with what ``fetch`` puts in a fresh folder (the backend's files in
    ``backend/``), then its :class:`Source`: renamed into place only once complete, so that a
    fetch cut short leaves nothing that is used."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        source = fetch(work)
        (work / SOURCE_FILE).write_text(json.dumps(dataclasses.asdict(source), indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return source


def kept_source(folder: Path) -> Source | None:
    """The :class:`Source` of what ``folder`` holds, if it was kept whole."""
    try:
        return Source(**json.loads((folder / SOURCE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


class CachedIndex:
    """What an index keeps in its cache folder: one folder per package and version."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def cached(self, name: str, version: str) -> Manifest | None:
        """The manifest of a version fetched before (no request: for restarts)."""
        folder = self._folder(name, version)
        source = kept_source(folder)
        if source is None:
            return None
        try:
            return self._manifest(name, source, folder / "backend")
        except ManifestError:
            return None

    def _folder(self, name: str, version: str) -> Path:
        raise NotImplementedError

    def _manifest(self, name: str, source: Source, folder: Path) -> Manifest:
        raise NotImplementedError
