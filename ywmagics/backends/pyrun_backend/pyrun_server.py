"""pyrun_backend: runs Python code sent by notebook cells, in an environment of its own.

Standard library only, Python 3.8 and later, so that any Python with any modules can run it. The
wire codec ``ywmagics_wire.py`` is copied next to this file by the installer.

    python pyrun_server.py --socket PATH    # or --port N (127.0.0.1; 0 picks a free port)

prints ``LISTENING <path or port>`` on its first line of output, then serves the routes of
``pyrun_app`` until SIGTERM. Modules: ``pyrun_http`` (HTTP/1.1), ``pyrun_app`` (routes),
``pyrun_runner`` (namespace and cells), ``pyrun_signals`` (interrupts and SIGTERM),
``pyrun_display`` (mime bundles), ``pyrun_mpl_backend``.
This script is compiled at every start (scripts get no .pyc): keep it short.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyrun_runner  # found next to this file, also under python -I
from pyrun_app import NAME, App
from pyrun_signals import Terminate

MPL_BACKEND = "module://pyrun_mpl_backend"


def parse_args(argv: list[str]) -> tuple[str | None, int | None, bool]:
    """``--socket PATH`` or ``--port N``, and ``--verbose``. (argparse costs start time.)"""
    usage = "usage: pyrun_server.py (--socket PATH | --port N) [--verbose]"
    socket_path: str | None = None
    port: int | None = None
    verbose = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        option, _, value = arg.partition("=")
        if option in ("--socket", "--port") and not value:
            if not args:
                raise SystemExit(f"{usage}\n{option} needs a value")
            value = args.pop(0)
        if option == "--socket":
            socket_path = value
        elif option == "--port" and value.isdigit():
            port = int(value)
        elif arg == "--verbose":
            verbose = True
        elif arg in ("-h", "--help"):
            print(f"{__doc__}\n{usage}")
            raise SystemExit(0)
        else:
            raise SystemExit(f"{usage}\nunexpected argument {arg!r}")
    if (socket_path is None) == (port is None):
        raise SystemExit(f"{usage}\ngive one of --socket and --port")
    return socket_path, port, verbose


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse to take over a live one."""
    import socket

    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SystemExit(f"{NAME}: a server already listens on {path}")


def main(argv: list[str] | None = None) -> int:
    socket_path, port, verbose = parse_args(sys.argv[1:] if argv is None else argv)

    # Figures render off screen and come back as PNG. A backend inherited from a Jupyter
    # kernel's environment (matplotlib_inline) is not installed here: replace it too.
    backend = os.environ.get("MPLBACKEND", "")
    if not backend or "matplotlib_inline" in backend or "ipykernel" in backend:
        os.environ["MPLBACKEND"] = MPL_BACKEND
    sys.stdin = io.StringIO()  # input() in a cell fails at once instead of waiting forever

    import pyrun_http

    runner = pyrun_runner.active = pyrun_runner.Runner()
    try:
        limit = pyrun_http.max_body(os.environ.get("YW_BUILD_MAX_BODY", ""))
    except ValueError as error:
        raise SystemExit(f"{NAME}: build option max_body: {error}") from None
    handler = App.bind(runner, verbose, limit)
    server: pyrun_http.TCPServer | pyrun_http.UnixServer
    if socket_path is not None:
        _remove_stale_socket(socket_path)
        server = pyrun_http.UnixServer(socket_path, handler)
        os.chmod(socket_path, 0o600)
    else:
        server = pyrun_http.TCPServer(("127.0.0.1", port or 0), handler)
    signals = {signal.SIGTERM, signal.SIGINT}
    mask_threads = hasattr(signal, "pthread_sigmask")
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="http", daemon=True)
    runner.signals.install()
    try:  # from here on, SIGTERM raises Terminate
        where = socket_path if socket_path is not None else server.socket.getsockname()[1]
        print(f"LISTENING {where}", flush=True)
        # The HTTP threads block SIGTERM and SIGINT (threads inherit the mask of their creator),
        # so that the kernel delivers them to the main thread: one delivered to another thread
        # would not wake the main thread from a blocking wait, and only it runs Python handlers.
        if mask_threads:
            signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        thread.start()
        runner.fds.start()  # its threads, made here, block the signals too
        runner.signals.watch()
        if mask_threads:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        runner.serve()
    except Terminate:
        pass
    finally:
        if thread.ident is not None:  # started: shutdown() waits for serve_forever to return
            pyrun_http.shut_down_now(server, socket_path)
        server.server_close()
        if socket_path is not None and os.path.exists(socket_path):
            os.unlink(socket_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
