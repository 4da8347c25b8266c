"""A real npm registry on loopback for the tests: verdaccio 6.8.0 (from npm; 6.10 wants Node 22,
and 6.8.0 needs node-fetch pinned to 2.7.0 to install on Node 20), with no uplink, so that no
request leaves loopback. It is installed once per machine into a cache folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx

from .local_server import ServerProcess, free_port

VERSION = "6.8.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ywmagics-tests"


def verdaccio() -> Path:
    """The verdaccio program, installed with npm the first time (about 12 s)."""
    import filelock

    folder = CACHE / f"verdaccio-{VERSION}"
    program = folder / "node_modules" / ".bin" / "verdaccio"
    CACHE.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(folder) + ".lock"):
        if program.exists():
            return program
        folder.mkdir(exist_ok=True)
        package = {
            "name": "ywmagics-test-registry",
            "private": True,
            "dependencies": {"verdaccio": VERSION},
            "overrides": {"node-fetch": "2.7.0"},
        }
        (folder / "package.json").write_text(json.dumps(package))
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return program


class NpmRegistry(ServerProcess):
    """verdaccio serving a private storage folder on 127.0.0.1; ``publish`` runs ``npm
    publish`` as a user registered there; ``env`` is what makes a user's npm use it."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder / "verdaccio.log")
        self.folder = folder
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def env(self) -> dict[str, str]:
        """The user's npm settings: this registry, and nothing else (no proxy for loopback)."""
        return {
            "npm_config_registry": self.url,
            "npm_config_userconfig": str(self.folder / "user.npmrc"),
            "npm_config_cache": str(self.folder / "npm-cache"),
        }

    def publish(self, package: Path, tag: str = "latest") -> None:
        subprocess.run(
            [
                "npm",
                "publish",
                "--ignore-scripts",
                "--tag",
                tag,
                "--userconfig",
                str(self.folder / "publisher.npmrc"),
            ],
            cwd=package,
            env={**os.environ, "npm_config_cache": str(self.folder / "npm-cache")},
            check=True,
            capture_output=True,
            timeout=120,
        )

    def __enter__(self) -> NpmRegistry:
        program = verdaccio()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.folder / "config.yaml").write_text(
            f"storage: {self.folder / 'storage'}\n"
            f"auth:\n  htpasswd:\n    file: {self.folder / 'htpasswd'}\n    max_users: 10\n"
            "uplinks: {}\n"  # nothing is fetched from elsewhere
            "packages:\n  '**':\n    access: $all\n    publish: $authenticated\n"
            "log: { type: stdout, format: pretty, level: warn }\n"
        )
        (self.folder / "user.npmrc").write_text(f"registry={self.url}\n")
        config = str(self.folder / "config.yaml")
        argv = [str(program), "--config", config, "--listen", f"127.0.0.1:{self.port}"]
        self.start(argv, f"{self.url}-/ping", cwd=self.folder)
        user = {"name": "yw", "password": "yw-test-password"}
        token = httpx.put(f"{self.url}-/user/org.couchdb.user:yw", json=user).json()["token"]
        (self.folder / "publisher.npmrc").write_text(
            f"registry={self.url}\n//127.0.0.1:{self.port}/:_authToken={token}\n"
        )
        return self


def npm_package(
    folder: Path, name: str, version: str, files: dict[str, str], **fields: object
) -> Path:
    """A folder with a package.json (``fields`` added to it) and ``files``, ready to publish."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(json.dumps({"name": name, "version": version, **fields}))
    for path, text in files.items():
        (folder / path).write_text(text)
    return folder
