"""Running the orchestrator: one per user, found through a discovery file.

The listening socket is bound here and handed to uvicorn (no bind-close-rebind race); the discovery
file (URL, token, pid; mode 0600) is written atomically once the server accepts connections and
removed when it stops. Stopping, by Ctrl-C, SIGTERM or ``POST /shutdown``, stops every backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from ywmagics import __version__, bulk, paths
from ywmagics.discovery import answers, read_discovery, write_discovery
from ywmagics.orchestrator import housekeeping
from ywmagics.orchestrator.app import create_app
from ywmagics.orchestrator.config import load_user_config
from ywmagics.orchestrator.connections import KEEP_ALIVE_TIMEOUT, GuardedHttpToolsProtocol
from ywmagics.orchestrator.registry import default_registry_folders
from ywmagics.orchestrator.service import Orchestrator, Settings
from ywmagics.protocol import PROTOCOL_VERSION

log = logging.getLogger("ywmagics.orchestrator")


# What uvicorn logs for each bad connection: anyone on the machine can cause as many as they
# like, and the log would grow without end.
_CLIENT_NOISE = {
    "Invalid HTTP request received.",
    "Unsupported upgrade request.",
    "ASGI callable returned without completing handshake.",
}


class ClientNoiseLimit(logging.Filter):
    """Lets at most ``per_minute`` of uvicorn's bad-connection lines through each minute, and
    says when it starts dropping them."""

    def __init__(self, per_minute: int = 20) -> None:
        super().__init__()
        self.per_minute = per_minute
        self._window = 0.0
        self._count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in _CLIENT_NOISE:
            return True
        now = time.monotonic()
        if now - self._window >= 60:
            self._window, self._count = now, 0
        self._count += 1
        if self._count == self.per_minute + 1:
            record.msg = f"{record.msg} (more such lines are dropped for a minute)"
        return self._count <= self.per_minute + 1


class _Server(uvicorn.Server):
    """uvicorn's server, ending the orchestrator's endless answers (the event streams, followed
    logs) as its shutdown begins: it waits for open answers, for a whole graceful timeout."""

    def __init__(
        self,
        config: uvicorn.Config,
        streams_end: Callable[[], None],
        unpublish: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self._streams_end = streams_end
        self._unpublish = unpublish

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The discovery file goes before the port closes: a port that another local user can
        # bind once it is free must not be advertised meanwhile, with our token.
        self._unpublish()
        self._streams_end()
        await super().shutdown(sockets)


def serve(port: int = 0, registries: Sequence[str | Path] = (), log_level: str = "warning") -> None:
    """Run the orchestrator in the foreground until it is told to stop."""
    discovery = paths.discovery_file()
    existing = read_discovery(discovery)
    if existing is not None and existing.pid != os.getpid() and answers(existing):
        raise SystemExit(
            f"an orchestrator already runs (pid {existing.pid}, {existing.url}); "
            "stop it first with 'ywmagics shutdown'"
        )
    housekeeping.make_state_private()
    housekeeping.raise_open_files_limit()
    housekeeping.sweep_sockets_dirs()
    bulk.sweep()  # what transfers cut short left in shared memory (the folder is the user's)
    token = secrets.token_urlsafe(32)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(socket.SOMAXCONN)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    # The same server on a Unix socket of the private runtime folder: backends in private
    # network namespaces reach the orchestrator there (their connector relays the port).
    unix_path = paths.runtime_dir() / "orchestrator.sock"
    with contextlib.suppress(FileNotFoundError):
        unix_path.unlink()  # a dead orchestrator's (a live one was refused above)
    unix_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_listener.bind(str(unix_path))
    unix_inode = unix_path.stat().st_ino  # ours to remove at the end, not a successor's
    unix_listener.listen(socket.SOMAXCONN)
    user_config = load_user_config()
    sockets_dir = housekeeping.new_sockets_dir()
    orchestrator = Orchestrator(
        Settings(
            environments_dir=paths.environments_dir(),
            logs_dir=paths.logs_dir(),
            sockets_dir=sockets_dir,
            registries=default_registry_folders(registries, user_config.registries),
            url=url,
            supervisor=user_config.supervisor,
            unix_socket=unix_path,
            clusters=user_config.clusters,
            idle_timeout=user_config.idle_timeout,
        )
    )
    # Before serving: a build that starts later must not lose its folder to the sweep.
    for leftover in orchestrator.installer.sweep():
        log.info("removed %s (left by an interrupted build or removal)", leftover)
    if orchestrator.registry.published is not None:
        for leftover in orchestrator.registry.published.sweep():
            log.info("removed %s (left by an interrupted download)", leftover)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        write_discovery(
            {
                "url": url,
                "token": token,
                "pid": os.getpid(),
                "version": __version__,
                "protocol": PROTOCOL_VERSION,
                "started": time.time(),
            },
            discovery,
        )
        print(
            f"ywmagics orchestrator {__version__} listening on {url} (pid {os.getpid()})",
            file=sys.stderr,
            flush=True,
        )
        orchestrator.start(exit_when_idle=exit_idle)
        try:
            yield
        finally:
            await orchestrator.shutdown()
            unpublish()
            if published_until_now:  # else the socket may be a newer orchestrator's by now
                with contextlib.suppress(FileNotFoundError, OSError):
                    if unix_path.stat().st_ino == unix_inode:
                        unix_path.unlink()
            shutil.rmtree(sockets_dir, ignore_errors=True)

    published_until_now = False

    def unpublish() -> None:
        nonlocal published_until_now
        current = read_discovery(discovery)
        if current is not None and current.pid == os.getpid():
            published_until_now = True
            with contextlib.suppress(FileNotFoundError):
                discovery.unlink()

    server: uvicorn.Server | None = None

    def request_exit() -> None:
        if server is not None:
            server.should_exit = True

    def exit_idle(why: str) -> None:
        log.warning("exiting: %s", why)
        print(f"ywmagics orchestrator exits: {why}", file=sys.stderr, flush=True)
        request_exit()

    app = create_app(orchestrator, token, lifespan, request_exit)
    config = uvicorn.Config(
        app,
        http=GuardedHttpToolsProtocol,  # headers deadline, cap on connections waiting for them
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,  # uvicorn would close idle ones at 5 s
        log_level=log_level,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=5,
        proxy_headers=False,  # nothing stands in front of us: no X-Forwarded-* to trust
        server_header=False,
        date_header=False,  # the backends' own Date passes through; no second one
    )
    logging.getLogger("uvicorn.error").addFilter(ClientNoiseLimit())  # after uvicorn's set-up
    server = _Server(config, orchestrator.bus.close, unpublish)
    server.run(sockets=[listener, unix_listener])
