"""The ``ywmagics`` command: run the orchestrator and manage backends from a shell."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ywmagics import commands
from ywmagics.commands import add_placement_options
from ywmagics.errors import YwMagicsError

if TYPE_CHECKING:
    from ywmagics.client import OrchestratorClient


def _client() -> OrchestratorClient:
    from ywmagics.client import OrchestratorClient

    return OrchestratorClient()


SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class QuietInterrupt:
    """Ctrl-C for ``serve``: a clean, quiet stop, whenever it comes.

    Python's own handler raises ``KeyboardInterrupt`` wherever the main thread is: amid an
    import, amid uvicorn's start (which then leaves its socket behind), or in a weakref callback,
    where it is printed as "Exception ignored" and lost (the orchestrator then runs on). So until
    uvicorn takes SIGINT over, a Ctrl-C is only noted, and handed to uvicorn as soon as it
    listens for one: it stops as after any Ctrl-C, backends and discovery file included. A
    second Ctrl-C before then does not wait for a clean stop."""

    def __init__(self) -> None:
        self.received = False
        self._handed_over = False  # uvicorn has taken SIGINT over (it gives it back at its end)
        self._finished = threading.Event()
        self._handler = self._on_sigint  # one bound method, to recognise it as ours
        self._previous: SignalHandler = None
        self._watcher = threading.Thread(
            target=self._hand_over, name="ywmagics-sigint", daemon=True
        )

    def __enter__(self) -> QuietInterrupt:
        self._previous = signal.signal(signal.SIGINT, self._handler)
        self._watcher.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._finished.set()
        self._watcher.join(1)
        signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.received and not self._handed_over:
            raise KeyboardInterrupt  # the second one: stop now, clean or not
        self.received = True

    def _hand_over(self) -> None:
        """Wait until uvicorn handles SIGINT; then pass on the one noted meanwhile, if any."""
        while not self._finished.wait(0.01):
            if signal.getsignal(signal.SIGINT) is not self._handler:
                self._handed_over = True
                if self.received:
                    _interrupt_main_thread()
                return


def _interrupt_main_thread() -> None:
    main = threading.main_thread().ident
    if hasattr(signal, "pthread_kill") and main is not None:
        signal.pthread_kill(main, signal.SIGINT)  # wakes it from a blocking call too
    else:
        signal.raise_signal(signal.SIGINT)


def cmd_serve(args: argparse.Namespace) -> int:
    with QuietInterrupt() as interrupt:  # before the server's imports: they take a while
        import logging

        from ywmagics.orchestrator.server import serve

        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
        serve(port=args.port, registries=args.registry, log_level=args.log_level)
    if interrupt.received:
        print(f"orchestrator (pid {os.getpid()}) stopped", file=sys.stderr)
        return 130  # as a shell reports a program that SIGINT ended
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from ywmagics.progress import TextProgress  # text only: no IPython, no widgets

    request = commands.build_install_request(
        args.specs, args.config, args.partition, on=args.on, resources=args.resources
    )
    client = _client()
    specs = ", ".join(str(s) for s in request.modules)
    view = TextProgress(
        f"Installing {specs} in partition {request.partition}", len(request.modules)
    )
    try:
        results = client.install(request, on_event=view.event)
    except BaseException as error:
        view.failed(error)
        raise
    view.finish()
    print(commands.format_installed(results, client.connection.url))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    listing = _client().listing()
    print(json.dumps(listing, indent=2) if args.json else commands.format_listing(listing))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    text = _client().logs(args.name, partition=args.partition, lines=args.lines)
    # Its last line may be one the backend has not ended yet: the prompt goes on a line of its own.
    print(text, end="" if text.endswith("\n") or not text else "\n")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    target = commands.stop_target(args.name, args.partition, args.all, keep_data=args.keep_data)
    stopped = _client().stop(**target.as_arguments())
    print(commands.format_stopped(stopped, target))
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    print(commands.format_removed(_client().uninstall(args.spec, args.fingerprint)))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    age: commands.Age = args.older_than
    done = _client().gc(age.days, dry_run=args.dry_run)
    print(commands.format_gc(done, age, dry_run=args.dry_run, now=time.time()))
    return 0


def _age(text: str) -> commands.Age:
    """``--older-than``'s type: argparse shows the message of this error only."""
    try:
        return commands.parse_age(text)
    except YwMagicsError as error:
        hint = f" ({error.hint})" if error.hint else ""
        raise argparse.ArgumentTypeError(error.message + hint) from error


def cmd_dashboard(args: argparse.Namespace) -> int:
    url = _client().dashboard_link()
    if url.startswith("/"):  # through the Jupyter server this terminal runs under
        print(
            "The dashboard, through this Jupyter server: after its address in your browser "
            f"(this link works once):\n{url}"
        )
        return 0
    # The URL alone on its line: a terminal makes it a link, and it is copied whole.
    print(f"The dashboard (this link works once; run 'ywmagics dashboard' for another tab):\n{url}")
    if not args.no_browser and not open_in_browser(url):
        port = urlsplit(url).port
        print(
            "No browser to open here: open the link in yours (from another machine, forward the "
            f"port first: ssh -L {port}:127.0.0.1:{port} THIS-HOST)",
            file=sys.stderr,
        )
    return 0


def open_in_browser(url: str) -> bool:
    """Open ``url`` in the desktop's browser; ``False`` where there is none (over SSH, in a
    container), never an error. Without a display, ``webbrowser`` falls back to a text browser
    (lynx, w3m) that would take this terminal over: that one is used only if ``BROWSER`` says so.

    The browser is started on a private page that leads to ``url`` (as Jupyter does), not on
    ``url``: a command line is readable by every local user (``ps``), and a link's one-time
    code could be spent by one of them before the browser is up."""
    import webbrowser

    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    if type(browser) is webbrowser.GenericBrowser and not os.environ.get("BROWSER"):
        return False  # a console browser (GenericBrowser runs in the foreground)
    page = opener_page(url)
    try:
        if browser.open(page.as_uri(), new=2):
            return True
    except (OSError, webbrowser.Error):
        pass
    page.unlink(missing_ok=True)  # no browser took it: its code is not left lying about
    return False


def opener_page(url: str) -> Path:
    """A page in the private runtime folder that sends the browser on to ``url``."""
    import html

    from ywmagics import paths

    page = paths.runtime_dir() / "dashboard-open.html"
    target = html.escape(url, quote=True)
    text = (
        f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={target}">'
        f'<title>ywmagics dashboard</title><p><a href="{target}">Open the dashboard</a></p>\n'
    )
    staged = page.with_name(f".{page.name}.{os.getpid()}")
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(staged, page)  # whole or not at all, for a browser that reads it at once
    return page


def cmd_status(args: argparse.Namespace) -> int:
    from ywmagics import paths
    from ywmagics.client import find_orchestrator

    connection = find_orchestrator()
    if connection is None:
        print(f"no orchestrator is running (discovery file: {paths.discovery_file()})")
        return 1
    from ywmagics import __version__
    from ywmagics.client import OrchestratorClient
    from ywmagics.protocol import PROTOCOL_VERSION

    status = OrchestratorClient(connection).status()  # of whatever version: that is asked too
    print(f"{commands.format_status(status)}\ndiscovery file: {paths.discovery_file()}")
    print(f"this environment: ywmagics {__version__} (protocol {PROTOCOL_VERSION})")
    if connection.protocol != PROTOCOL_VERSION:
        print(
            "the orchestrator speaks another protocol: kernels of this environment refuse it; "
            "stop it with 'ywmagics shutdown' when nothing runs on it"
        )
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    from ywmagics.client import OrchestratorClient, find_orchestrator
    from ywmagics.discovery import pid_alive

    connection = find_orchestrator()
    if connection is None:
        print("no orchestrator is running")
        return 0
    OrchestratorClient(connection).shutdown()
    deadline = time.monotonic() + 15
    while pid_alive(connection.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(connection.pid):
        print(
            f"orchestrator (pid {connection.pid}) is still stopping its backends after 15 s",
            file=sys.stderr,
        )
        return 1
    print(f"orchestrator (pid {connection.pid}) stopped")
    return 0


@dataclass
class RegistryListing:
    """One registry folder as ``ywmagics registries`` shows it."""

    origin: str  # what put it in the search order: bundled, yours, the config file...
    folder: Path
    backends: list[dict[str, str]] = field(default_factory=list)  # name, version, folder, note
    broken: list[str] = field(default_factory=list)


def cmd_registries(args: argparse.Namespace) -> int:
    from ywmagics.client import find_orchestrator
    from ywmagics.orchestrator.registry import default_registry_folders

    # A running orchestrator may have been given more folders (serve --registry): ask it.
    if find_orchestrator() is not None:
        folders = [Path(f) for f in _client().status()["registries"]]
    else:
        folders = default_registry_folders()
    print(format_registries(list_registries(folders)))
    return 0


def list_registries(folders: Sequence[Path]) -> list[RegistryListing]:
    """What each folder holds, in search order; a version an earlier folder has too is marked
    as not used (the first one wins)."""
    from ywmagics.orchestrator.registry import Registry
    from ywmagics.spec import version_key

    listings = []
    seen: dict[tuple[str, str], int] = {}
    for number, (folder, origin) in enumerate(zip(folders, _origins(folders), strict=True), 1):
        registry = Registry([folder])
        listing = RegistryListing(origin, folder, broken=registry.broken())
        for name, versions in sorted(registry.manifests().items()):
            for version in sorted(versions, key=version_key):
                first = seen.setdefault((name, version), number)
                listing.backends.append(
                    {
                        "name": name,
                        "version": version,
                        "folder": _relative(versions[version].folder, folder),
                        "note": f"not used: registry {first} comes first"
                        if first != number
                        else "",
                    }
                )
        listings.append(listing)
    return listings


def _origins(folders: Sequence[Path]) -> list[str]:
    """What put each folder in the search order (the one that comes first, when several did)."""
    from ywmagics import paths
    from ywmagics.orchestrator.config import load_user_config

    named = {
        paths.bundled_registry_dir(): "bundled with ywmagics",
        paths.user_registry_dir(): "your own backends",
    }
    for folder in load_user_config().registries:
        named.setdefault(folder, f"from {paths.config_file()}")
    for entry in os.environ.get("YW_BACKENDS_PATH", "").split(os.pathsep):
        if entry:
            named.setdefault(Path(entry).expanduser(), "from YW_BACKENDS_PATH")
    return [named.get(folder, "from serve --registry") for folder in folders]


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:  # reached through a link out of the folder
        return str(path)


def format_registries(listings: Sequence[RegistryListing]) -> str:
    """Each registry, numbered in search order with its folder, then its backends (one line per
    version, aligned as ``pip list`` aligns them) and its broken manifests."""
    from ywmagics.commands import table

    blocks = [
        "Registries, in the order they are searched (the first with a backend's version wins):"
    ]
    for number, listing in enumerate(listings, 1):
        lines = [f"{number}. {listing.origin}: {listing.folder}{_missing(listing)}"]
        columns = ["name", "version", "folder"]
        if any(row["note"] for row in listing.backends):
            columns.append("note")
        lines += table(listing.backends, columns).splitlines()
        lines += [f"broken: {problem}" for problem in listing.broken]
        blocks.append("\n   ".join(lines))
    return "\n\n".join(blocks)


def _missing(listing: RegistryListing) -> str:
    from ywmagics import paths

    if listing.folder.is_dir():
        return ""
    if listing.folder == paths.user_registry_dir():
        return " (does not exist yet: 'ywmagics new-backend NAME' makes it)"
    return " (does not exist)"


def cmd_new_backend(args: argparse.Namespace) -> int:
    from ywmagics import paths

    if args.python or args.node:
        return _new_package(args.name, "python" if args.python else "node", args.dir)
    name = installable_name(args.name)
    target = Path(args.dir) if args.dir else paths.user_registry_dir() / name
    if target.exists():
        raise YwMagicsError(f"{target} already exists", hint="choose another folder with --dir")
    template = Path(__file__).parent / "templates" / "python_backend"
    shutil.copytree(template, target, ignore=shutil.ignore_patterns("__pycache__"))
    for file in (target / "ywbackend.toml", target / "README.md", target / "app.py"):
        if file.exists():
            file.write_text(file.read_text().replace("my_backend", name))
    print(f"created {target}; install it with: ywmagics install {name}")
    return 0


def _new_package(name: str, kind: str, folder: str | None) -> int:
    """A project that builds a backend to release on a package index: a Python distribution
    (``pypi:NAME``) or an npm package (``npm:NAME``)."""
    from ywmagics.spec import NPM_PREFIX, PYPI_PREFIX, default_alias, npm_package, validate_name

    prefix = PYPI_PREFIX if kind == "python" else NPM_PREFIX
    published = validate_name(prefix + name)
    package = published[len(PYPI_PREFIX) :] if kind == "python" else npm_package(published)
    if package != name:
        raise YwMagicsError(
            f"{name!r} is not a package name as the index writes it",
            hint=f"use {package!r}",
        )
    module = default_alias(published)
    if not module.isidentifier():
        raise YwMagicsError(
            f"{name!r} cannot name a new backend: its client's alias would be {module!r}, "
            "which is not a Python identifier",
            hint="start the name with a letter, e.g. 'yw-' + the name",
        )
    target = Path(folder) if folder else Path.cwd() / package.rsplit("/", 1)[-1]
    if target.exists():
        raise YwMagicsError(f"{target} already exists", hint="choose another folder with --dir")
    template = Path(__file__).parent / "templates" / f"{kind}_package"
    shutil.copytree(template, target, ignore=shutil.ignore_patterns("__pycache__"))
    if kind == "python":
        (target / "src" / "my_module").rename(target / "src" / module)
    for file in target.rglob("*"):
        if file.is_file():
            text = file.read_text().replace("my_module", module)
            file.write_text(text.replace("my_backend", package))
    release = "uv build && uv publish" if kind == "python" else "npm publish"
    print(
        f"created {target}; release it with '{release}' (see its README.md), then install it "
        f"with: %backends install {prefix}{package}#^0.1.0"
    )
    return 0


def installable_name(name: str) -> str:
    """``name`` if a backend can be made with it: one that ``ywmagics install NAME`` (or
    ``%backends install NAME``) takes as it is, as the backend's name and as the alias its
    client is bound to. The rules are install's own, not a copy of them."""
    from ywmagics.errors import SpecError

    if _install_takes(name):
        return name
    suggestion = re.sub(r"\W", "_", name)
    raise SpecError(
        f"{name!r} cannot name a new backend: 'install {name}' takes it as the backend's name "
        "and as the alias of its client, and an alias must be a Python identifier",
        hint="use at most 64 letters, digits and '_', starting with a letter, e.g. "
        + repr(suggestion if _install_takes(suggestion) else "my_backend"),
    )


def _install_takes(name: str) -> bool:
    from ywmagics.errors import SpecError
    from ywmagics.spec import BackendSpec

    try:
        spec = BackendSpec.parse(name)  # with no 'as', the alias is the name
    except SpecError:
        return False
    return spec.name == spec.alias == name  # not 'a#1' nor 'a as b': a name, whole


def cmd_tutorial(args: argparse.Namespace) -> int:
    from ywmagics import tutorial

    return tutorial.open_lab(args.yes) if args.lab else tutorial.run()


def cmd_kernel_install(args: argparse.Namespace) -> int:
    from ywmagics.kernel.kernelspec import (
        DISPLAY_NAME,
        KERNEL_NAME,
        install_kernel_spec,
        jupyter_looks_in,
    )

    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install_kernel_spec(prefix=prefix)
    whose = "for your user" if prefix is None else f"under {prefix}"
    print(f"installed the kernel {DISPLAY_NAME!r} {whose}, in {path}")
    print(f"'jupyter kernelspec list' lists it as {KERNEL_NAME!r}")
    if not jupyter_looks_in(path):
        print(
            f"Jupyter does not look there: set JUPYTER_PATH={Path(path).parents[1]} "
            "where Jupyter runs, or install with --user or --sys-prefix"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ywmagics",
        description="Run the ywmagics orchestrator and manage its backends from a shell.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the orchestrator in the foreground")
    serve.add_argument("--port", type=int, default=0, help="TCP port (default: any free one)")
    serve.add_argument(
        "--registry", action="append", default=[], help="an extra folder of backends (repeatable)"
    )
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(run=cmd_serve)

    install = commands.add_parser("install", help="install and start backends")
    install.add_argument("specs", nargs="+", metavar="SPEC", help="name#range [as alias]")
    install.add_argument("--partition", default=None)
    install.add_argument("--config", action="append", default=[], metavar="NAME.build.OPTION=VALUE")
    add_placement_options(install)
    install.set_defaults(run=cmd_install)

    listing = commands.add_parser("list", help="running instances and installed environments")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_list)

    logs = commands.add_parser("logs", help="the log of a running backend")
    logs.add_argument("name")
    logs.add_argument("--partition", default="Default")
    logs.add_argument("--lines", type=int, default=200)
    logs.set_defaults(run=cmd_logs)

    stop = commands.add_parser("stop", help="stop instances")
    stop.add_argument("name", nargs="?")
    stop.add_argument("--partition")
    stop.add_argument("--all", action="store_true")
    stop.add_argument(
        "--keep-data",
        action="store_true",
        help="keep each instance's data folder ({data}), deleted with it by default",
    )
    stop.set_defaults(run=cmd_stop)

    uninstall = commands.add_parser("uninstall", help="remove environments (stops instances)")
    uninstall.add_argument("spec", help="name or name#range")
    uninstall.add_argument(
        "--fingerprint", help="only the environment of this build (see 'ywmagics list')"
    )
    uninstall.set_defaults(run=cmd_uninstall)

    gc = commands.add_parser(
        "gc", help="remove environments that nothing runs and nothing used for a while"
    )
    gc.add_argument(
        "--older-than",
        required=True,
        type=_age,
        metavar="AGE",
        help="unused for longer than this: 30d, 12h, 90min, 2w (a bare number is days)",
    )
    gc.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    gc.set_defaults(run=cmd_gc)

    dashboard = commands.add_parser(
        "dashboard", help="open the live dashboard page (prints its link)"
    )
    dashboard.add_argument(
        "--no-browser", action="store_true", help="only print the link, open no browser"
    )
    dashboard.set_defaults(run=cmd_dashboard)

    commands.add_parser("status", help="where the orchestrator is").set_defaults(run=cmd_status)
    commands.add_parser("shutdown", help="stop the orchestrator and its backends").set_defaults(
        run=cmd_shutdown
    )
    commands.add_parser("registries", help="the backend folders and what they hold").set_defaults(
        run=cmd_registries
    )

    new = commands.add_parser("new-backend", help="create a backend from the template")
    new.add_argument("name")
    new.add_argument(
        "--dir", help="where (default: your registry folder; with --python/--node, ./NAME)"
    )
    kind = new.add_mutually_exclusive_group()
    kind.add_argument(
        "--python", action="store_true", help="a Python package to release on an index (pypi:)"
    )
    kind.add_argument("--node", action="store_true", help="an npm package to release (npm:)")
    new.set_defaults(run=cmd_new_backend)

    tutorial = commands.add_parser(
        "tutorial", help="run the backends tutorial in this terminal (--lab: in JupyterLab)"
    )
    tutorial.add_argument(
        "--lab", action="store_true", help="open the tutorial's notebooks in JupyterLab"
    )
    tutorial.add_argument(
        "--yes", action="store_true", help="with --lab: install JupyterLab without asking"
    )
    tutorial.set_defaults(run=cmd_tutorial)

    kernel = commands.add_parser("kernel", help="Jupyter kernel spec")
    kernel_commands = kernel.add_subparsers(dest="kernel_command", required=True)
    kernel_install = kernel_commands.add_parser(
        "install",
        help="install 'Python 3 (ywmagics)'",
        description="Install the Jupyter kernel 'Python 3 (ywmagics)': this Python, with "
        "'%load_ext ywmagics' run at its start. By default for your user only, as "
        "'python -m ipykernel install --user' does (ipykernel's own default is system-wide).",
    )
    where = kernel_install.add_mutually_exclusive_group()
    where.add_argument(
        "--user",
        action="store_true",
        help="for your user, in Jupyter's per-user folder (the default)",
    )
    where.add_argument(
        "--sys-prefix",
        action="store_true",
        help=f"in this Python's environment ({sys.prefix}): for the Jupyter of a virtualenv or "
        "conda environment",
    )
    where.add_argument(
        "--prefix",
        metavar="PATH",
        help="under PATH/share/jupyter/kernels (Jupyter looks there when JUPYTER_PATH names "
        "PATH/share/jupyter)",
    )
    kernel_install.set_defaults(run=cmd_kernel_install)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except YwMagicsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
