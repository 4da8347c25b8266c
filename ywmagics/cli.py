"""The ``ywmagics`` command: run the orchestrator and manage backends from a shell."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ywmagics import commands
from ywmagics.errors import YwMagicsError

if TYPE_CHECKING:
    from ywmagics.client import OrchestratorClient


def _client() -> OrchestratorClient:
    from ywmagics.client import OrchestratorClient

    return OrchestratorClient()


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from ywmagics.orchestrator.server import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    serve(port=args.port, registries=args.registry, log_level=args.log_level)
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    request = commands.build_install_request(args.specs, args.config, args.partition)
    client = _client()
    results = client.install(request, on_event=lambda e: print(e, flush=True))
    print(commands.format_installed(results, client.connection.url))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    listing = _client().listing()
    print(json.dumps(listing, indent=2) if args.json else commands.format_listing(listing))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    print(_client().logs(args.name, partition=args.partition, lines=args.lines), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    target = commands.stop_target(args.name, args.partition, args.all)
    stopped = _client().stop(**target.as_arguments())
    print(commands.format_stopped(stopped, target))
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    print(commands.format_removed(_client().uninstall(args.spec)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ywmagics import paths
    from ywmagics.client import find_orchestrator

    connection = find_orchestrator()
    if connection is None:
        print(f"no orchestrator is running (discovery file: {paths.discovery_file()})")
        return 1
    status = _client().status()
    print(f"{commands.format_status(status)}\ndiscovery file: {paths.discovery_file()}")
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


def cmd_registries(args: argparse.Namespace) -> int:
    from ywmagics.client import find_orchestrator
    from ywmagics.orchestrator.registry import Registry, default_registry_folders

    # A running orchestrator may have been given more folders (serve --registry): ask it.
    connection = find_orchestrator()
    if connection is not None:
        registry = Registry([Path(f) for f in _client().status()["registries"]])
    else:
        registry = Registry(default_registry_folders())
    for folder in registry.folders:
        print(f"{folder}{'' if folder.is_dir() else '  (does not exist)'}")
    for name, versions in sorted(registry.manifests().items()):
        print(f"  {name}: {', '.join(sorted(versions))}")
    for problem in registry.broken():
        print(f"  broken: {problem}")
    return 0


def cmd_new_backend(args: argparse.Namespace) -> int:
    from ywmagics import paths
    from ywmagics.spec import validate_name

    name = validate_name(args.name)
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


def cmd_kernel_install(args: argparse.Namespace) -> int:
    from ywmagics.kernel.kernelspec import install_kernel_spec

    path = install_kernel_spec(user=args.user, prefix=sys.prefix if args.sys_prefix else None)
    print(f"installed kernel 'Python 3 (ywmagics)' in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ywmagics", description=__doc__)
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
    stop.set_defaults(run=cmd_stop)

    uninstall = commands.add_parser("uninstall", help="remove environments (stops instances)")
    uninstall.add_argument("spec", help="name or name#range")
    uninstall.set_defaults(run=cmd_uninstall)

    commands.add_parser("status", help="where the orchestrator is").set_defaults(run=cmd_status)
    commands.add_parser("shutdown", help="stop the orchestrator and its backends").set_defaults(
        run=cmd_shutdown
    )
    commands.add_parser("registries", help="the backend folders and what they hold").set_defaults(
        run=cmd_registries
    )

    new = commands.add_parser("new-backend", help="create a backend from the template")
    new.add_argument("name")
    new.add_argument("--dir", help="where (default: your registry folder)")
    new.set_defaults(run=cmd_new_backend)

    kernel = commands.add_parser("kernel", help="Jupyter kernel spec")
    kernel_commands = kernel.add_subparsers(dest="kernel_command", required=True)
    kernel_install = kernel_commands.add_parser("install", help="install 'Python 3 (ywmagics)'")
    where = kernel_install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true")
    where.add_argument("--sys-prefix", action="store_true")
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
