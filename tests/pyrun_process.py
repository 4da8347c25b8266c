"""The python runner as a real process (pyrun_server.py), laid out as the installer lays it out."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx

from ywmagics.orchestrator.environments import SHARED_MODULES

BACKEND = Path(__file__).parents[1] / "ywmagics" / "backends" / "pyrun_backend"


def lay_out(app: Path) -> Path:
    """The backend's files in ``app``, with the modules the installer puts next to them."""
    shutil.copytree(BACKEND, app, ignore=shutil.ignore_patterns("__pycache__"))
    for name, source in SHARED_MODULES.items():
        shutil.copyfile(source, app / name)
    return app


class Server:
    """A running pyrun_server process and an httpx client to it."""

    def __init__(
        self, app: Path, workdir: Path, python: str, tcp: bool, env: dict[str, str] | None = None
    ) -> None:
        self.log_path = workdir / "server.log"
        self.socket_path = workdir / "pyrun.sock"
        where = ["--port", "0"] if tcp else ["--socket", str(self.socket_path)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [python, str(app / "pyrun_server.py"), *where],
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=workdir,
                # SIGABRT dumps its threads
                env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
            )
        assert self.process.stdout is not None
        first_line = self.process.stdout.readline().decode()
        self.process.stdout.close()
        assert first_line.startswith("LISTENING "), first_line + self.log()
        if tcp:
            self.port = int(first_line.split()[1])
            self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        else:
            transport = httpx.HTTPTransport(uds=str(self.socket_path))
            self.client = httpx.Client(transport=transport, base_url="http://pyrun", timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def run(self, code: str, **fields: Any) -> dict[str, Any]:
        body = {"cellId": "test", "code": code, "capturedIn": {}, "capturedOut": [], **fields}
        response = self.client.post("/run", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def wait_exit(self, timeout: float = 10) -> int:
        """The exit code; if it does not exit in time, fail with the stacks of its threads."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            self.process.wait()
            raise AssertionError(f"still running after {timeout} s\n{self.log()}") from None

    def stop(self) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            return self.wait_exit()
        return self.process.returncode
