"""``%backends``: one parser per subcommand, and the subcommands' bodies.

Each body is the shared command layer (:mod:`ywmagics.commands`) plus a client call and what the
notebook needs on top: aliases bound to clients, the kernel's own partition, progress views.
An option that does not belong to the subcommand is refused, as ``ywmagics`` refuses it.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ywmagics import commands
from ywmagics.errors import BackendNotFound, SpecError
from ywmagics.kernel import _ipython

if TYPE_CHECKING:
    from ywmagics.client import BackendClient
    from ywmagics.kernel.magics import YwMagics
    from ywmagics.spec import InstallRequest


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _ipython.parser_class()(
        prog=f"backends {command}",  # the formatter adds the %
        description=description,
        formatter_class=_ipython.help_formatter(),
    )
    return parser


def _partition_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--partition",
        "-p",
        default=None,
        help=f"the partition {what} (default: this kernel's own, see %%config YwMagics)",
    )


INLINE_HEIGHT = 600  # pixels: the dashboard's tables and a log, without a scroll bar at once


def build_parsers() -> dict[str, argparse.ArgumentParser]:
    install = _parser("install", "install and start backends, binding each alias to a client")
    install.add_argument(
        "specs", nargs="*", metavar="SPEC", help="name#range [as alias], e.g. demo#^0.1.1 as demo"
    )
    _partition_option(install, "to start them in")
    install.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="NAME.build.OPTION=VALUE",
        help="a build option, e.g. pyrun_backend.build.python=3.10 (repeatable)",
    )
    commands.add_placement_options(install)
    listing = _parser("list", "running instances, installed environments, bound aliases")
    stop = _parser("stop", "stop the instance behind ALIAS, a partition's, or every instance")
    stop.add_argument("alias", nargs="?", metavar="ALIAS", help="a bound alias, or a backend name")
    _partition_option(stop, "to stop")
    stop.add_argument("--all", action="store_true", help="every running instance, everywhere")
    stop.add_argument(
        "--keep-data",
        action="store_true",
        help="keep each instance's data folder ({data}), deleted with it by default",
    )
    logs = _parser("logs", "the last lines of a backend's log")
    logs.add_argument("alias", nargs="?", metavar="ALIAS", help="a bound alias, or a backend name")
    _partition_option(logs, "of the instance")
    logs.add_argument("--lines", "-n", type=int, default=200, help="how many (default 200)")
    uninstall = _parser("uninstall", "remove installed environments (stops their instances)")
    uninstall.add_argument("spec", nargs="?", metavar="NAME[#RANGE]", help="or a bound alias")
    docs = _parser("docs", "a link to the backend's /docs page (a one-time code, not the token)")
    docs.add_argument("alias", nargs="?", metavar="ALIAS", help="a bound alias")
    docs.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help="another page (default: the manifest's home, else /docs if it has one, else /)",
    )
    status = _parser("status", "where the orchestrator runs, and this kernel's partition")
    dashboard = _parser(
        "dashboard",
        "a link to the live dashboard of every backend (a one-time code, not the token)",
    )
    dashboard.add_argument(
        "--inline", action="store_true", help="show the page here, in the output area"
    )
    dashboard.add_argument(
        "--height",
        type=int,
        default=None,
        metavar="PIXELS",
        help=f"the height of the --inline page (default {INLINE_HEIGHT})",
    )
    return {
        "install": install,
        "list": listing,
        "stop": stop,
        "logs": logs,
        "uninstall": uninstall,
        "docs": docs,
        "status": status,
        "dashboard": dashboard,
    }


PARSERS = build_parsers()
SUBCOMMANDS = tuple(PARSERS)


def usage() -> str:
    """Every subcommand's usage and options, for ``%backends?``."""
    return "\n".join(parser.format_help() for parser in PARSERS.values())


def parse(line: str) -> tuple[str, argparse.Namespace] | None:
    """The subcommand (``list`` when none is given) and its arguments; ``None`` when help was
    asked for (and printed)."""
    tokens = _ipython.split_line(line)
    if tokens in (["-h"], ["--help"]):
        print(usage())
        return None
    # The subcommand is the first word that names one (options may come before it).
    first = next((i for i, token in enumerate(tokens) if token in PARSERS), None)
    if first is not None and all(t.startswith("-") or i > 0 for i, t in enumerate(tokens[:first])):
        command, rest = tokens[first], tokens[:first] + tokens[first + 1 :]
    else:
        command, rest = (tokens[0], tokens[1:]) if tokens else ("list", [])
    parser = PARSERS.get(command)
    if parser is None:
        raise UsageError(
            f"argument COMMAND: invalid choice: {command!r} (choose from {', '.join(SUBCOMMANDS)})"
        )
    if "-h" in rest or "--help" in rest:
        print(parser.format_help())
        return None
    args = parser.parse_intermixed_args(rest)
    if command == "install":
        args.after_config = _words_after_config(rest)
    return command, args


def _words_after_config(tokens: list[str]) -> dict[str, str]:
    """Specs typed right after a ``--config`` value, by name, with that value: an unquoted
    ``modules=numpy pandas`` makes ``pandas`` a backend spec of its own."""
    found = {}
    for i, token in enumerate(tokens):
        if token.startswith("-"):
            continue
        if i >= 2 and tokens[i - 2] in ("--config", "-c"):
            value = tokens[i - 1]
        elif i >= 1 and tokens[i - 1].startswith("--config="):
            value = tokens[i - 1].split("=", 1)[1]
        else:
            continue
        found[token.split("#")[0]] = value
    return found


@contextlib.contextmanager
def _as_usage_errors() -> Iterator[None]:
    """What the user typed is wrong: IPython's way to say so is a ``UsageError``."""
    try:
        yield
    except SpecError as error:
        raise UsageError(str(error)) from error


class BackendsCommand:
    """The bodies of ``%backends``'s subcommands, over the magics' connection and namespace."""

    def __init__(self, magics: YwMagics) -> None:
        self.magics = magics

    def run(self, command: str, args: argparse.Namespace, cell: str | None) -> None:
        if cell is not None and command != "install":
            raise UsageError("only '%%backends install' takes a cell body")
        body: dict[str, Callable[[argparse.Namespace], None]] = {
            "list": self.listing,
            "stop": self.stop,
            "logs": self.logs,
            "uninstall": self.uninstall,
            "docs": self.docs,
            "status": self.status,
            "dashboard": self.dashboard,
        }
        if command == "install":
            self.install(args, cell)
        else:
            body[command](args)

    # -- install -------------------------------------------------------------------------------

    def install(self, args: argparse.Namespace, cell: str | None) -> None:
        with _as_usage_errors():
            data = commands.parse_install_object(cell) if cell and cell.strip() else {}
            if not (args.specs or data.get("modules")):
                raise SpecError(
                    "name at least one backend, e.g. "
                    "%backends install demo_yw_backend#^0.1.1 as ywDemoClient"
                )
        request = commands.build_install_request(
            args.specs,
            args.config,
            args.partition,
            data,
            self.magics.partition,
            on=args.on,
            resources=args.resources,
        )
        try:
            self.run_install(request)
        except BackendNotFound as error:
            unknown = re.match(r"unknown backend '([^']+)'", error.message)
            value = getattr(args, "after_config", {}).get(unknown.group(1)) if unknown else None
            if unknown is None or value is None:
                raise
            name = unknown.group(1)
            option, _, first = value.partition("=")
            raise UsageError(
                f"{error.message}. It came right after --config {value}: if it is part of that "
                f'value, quote it (--config {option}="{first} {name}") or join with commas '
                f"(--config {option}={first},{name})"
            ) from error

    def run_install(self, request: InstallRequest) -> None:
        from ywmagics.client import BackendClient
        from ywmagics.kernel.interpreter import Interrupted
        from ywmagics.kernel.progress import make_progress

        magics = self.magics
        specs = ", ".join(str(s) for s in request.modules)
        view = make_progress(
            magics.progress,
            f"Installing {specs} in partition {request.partition}",
            len(request.modules),
        )
        magics.note_partition_used(request.partition)
        try:
            orchestrator = magics.orchestrator(timeout=magics.install_timeout)
            from ywmagics.kernel.magics import kernel_partition

            # The kernel owns its own partition: stopped when it ends, even by SIGKILL.
            own = request.partition == kernel_partition()
            results = orchestrator.install(
                request, view.event, f"kernel {os.getpid()}", os.getpid() if own else None
            )
        except KeyboardInterrupt as interrupt:
            view.failed(interrupt)
            raise Interrupted("the install was interrupted (run it again to go on)") from interrupt
        except BaseException as error:
            view.failed(error)
            raise
        bound_before = magics.bound_clients()
        for result in results:
            alias = result["alias"]
            _warn_of_replaced(bound_before, result)
            previous = magics.user_ns.get(alias)
            if previous is not None and not isinstance(previous, BackendClient):
                print(
                    f"ywmagics: {alias!r} was a {type(previous).__name__}; it is now the "
                    f"client of {result['name']}",
                    file=sys.stderr,
                )
            magics.user_ns[alias] = BackendClient(
                orchestrator.connection,
                result["name"],
                result["version"],
                result["partition"],
                follow=not magics.orchestrator_url,  # the user's own, found through discovery
                fingerprint=result.get("fingerprint"),
            )
        view.done(results)

    # -- the others ----------------------------------------------------------------------------

    def listing(self, args: argparse.Namespace) -> None:
        listing = self.magics.orchestrator().listing()
        bound = [
            {"alias": a, "name": c.name, "version": c.version, "partition": c.partition}
            for a, c in self.magics.bound_clients().items()
        ]
        text = commands.format_listing(listing)
        if bound:
            text += "\n\nBound in this notebook:"
            for b in bound:
                text += (
                    f"\n  {b['alias']}: {b['name']} {b['version']} in partition {b['partition']}"
                )
        text += f"\n\nThis kernel's partition: {self.magics.partition}"
        html_text = commands.format_listing_html(
            listing, now=time.time(), bound=bound, partition=self.magics.partition
        )
        _ipython.display(RichText(text, html_text))

    def _target(self, alias: str, partition: str | None) -> tuple[str, str | None, str]:
        """(name, version, partition) of ``alias``: a bound client, else a backend name."""
        client = self._bound(alias)
        if client is not None:
            return client.name, client.version, partition or client.partition
        return alias, None, partition or self.magics.partition

    def _bound(self, alias: str) -> BackendClient | None:
        return self.magics.bound_clients().get(alias)

    def stop(self, args: argparse.Namespace) -> None:
        name = version = None
        partition = args.partition
        if args.alias and not args.all:
            name, version, partition = self._target(args.alias, args.partition)
        elif not (args.alias or args.all):
            partition = args.partition or self.magics.partition
        with _as_usage_errors():
            target = commands.stop_target(
                name or args.alias, partition, args.all, version=version, keep_data=args.keep_data
            )
        stopped = self.magics.orchestrator().stop(**target.as_arguments())
        if not stopped and args.alias and not args.all and self._bound(args.alias) is None:
            # A name that is neither an alias nor a backend that runs: most likely a typo. Said
            # as logs and docs say it (an alias that ran and stopped already is no error).
            bound = ", ".join(self.magics.bound_clients()) or "none yet"
            raise UsageError(
                f"no backend is bound to {args.alias!r} in this notebook (bound: {bound}), and "
                f"no instance of a backend named {args.alias!r} runs in partition {partition!r}; "
                "%backends list shows what runs"
            )
        print(commands.format_stopped(stopped, target))

    def logs(self, args: argparse.Namespace) -> None:
        if args.alias is None:
            raise UsageError("%backends logs ALIAS: name the backend")
        if args.lines < 1:
            raise UsageError("--lines must be at least 1")
        name, _, partition = self._target(args.alias, args.partition)
        text = self.magics.orchestrator().logs(name, partition=partition, lines=args.lines)
        print(text.rstrip("\n"))

    def uninstall(self, args: argparse.Namespace) -> None:
        spec = args.spec
        if spec is None:
            raise UsageError("%backends uninstall NAME[#RANGE]: name the backend")
        client = self._bound(spec)
        if client is not None:  # an alias: the environment behind it
            spec = f"{client.name}#{client.version}"
        print(commands.format_removed(self.magics.orchestrator().uninstall(spec)))

    def docs(self, args: argparse.Namespace) -> None:
        if args.alias is None:
            raise UsageError("%backends docs ALIAS: name the backend")
        client = self.magics.client_named(args.alias)
        if args.path is None:
            path = self._home_page(client)
        else:
            path = "/" + args.path.lstrip("/")
            # A link to a page that is not there would open a bare 404: say so here instead.
            if client.fetch(path, timeout=10).status_code == 404:
                raise UsageError(
                    f"{args.alias} ({client.name} {client.version}) has no {path} page: GET "
                    f"{path} answered 404. Give the page to open: %backends docs {args.alias} /"
                )
        url = client.browser_url(path)
        _ipython.publish(
            {
                "text/plain": url,
                # The path may come from a manifest: text in the notebook, never markup.
                "text/html": f'<a href="{html.escape(url)}" target="_blank" rel="noopener">'
                f"{html.escape(f'{client.name} {client.version}: {path}')}</a>",
            }
        )

    def _home_page(self, client: BackendClient) -> str:
        """The page its manifest names as ``home``; else ``/docs`` when it has one (FastAPI's
        and many frameworks' API page), else its root."""
        for instance in self.magics.orchestrator().listing()["instances"]:
            if (instance["partition"], instance["name"], instance["version"]) == (
                client.partition,
                client.name,
                client.version,
            ) and instance.get("home"):
                return str(instance["home"])
        return "/docs" if client.fetch("/docs", timeout=10).status_code != 404 else "/"

    def status(self, args: argparse.Namespace) -> None:
        status = self.magics.orchestrator().status()
        print(f"{commands.format_status(status)}\nthis kernel's partition: {self.magics.partition}")

    def dashboard(self, args: argparse.Namespace) -> None:
        if args.height is not None and not args.inline:
            raise UsageError("--height is the height of the --inline page: give --inline too")
        height = INLINE_HEIGHT if args.height is None else args.height
        if height < 1:
            raise UsageError("--height must be a positive number of pixels")
        url = self.magics.orchestrator().dashboard_link()  # one each time: its code works once
        if args.inline:
            # The page allows being framed by loopback origins only (its frame-ancestors).
            markup = (
                f'<iframe src="{html.escape(url)}" width="100%" height="{height}" '
                'style="border: 1px solid #ccc" title="ywmagics dashboard"></iframe>'
            )
        else:
            markup = (
                f'<a href="{html.escape(url)}" target="_blank" rel="noopener">Open the ywmagics '
                "dashboard</a> (the link works once: run <code>%backends dashboard</code> again "
                "for another tab)"
            )
        _ipython.publish({"text/plain": url, "text/html": markup})

    def complete(self, event: Any) -> list[str]:
        """Completions after ``%backends``: the commands, then aliases where one is expected."""
        words = event.line.split()
        position = len(words) + (1 if event.line.endswith(" ") else 0)
        if position <= 2:
            return list(SUBCOMMANDS)
        if words[1] in ("stop", "logs", "docs", "uninstall"):
            return sorted(self.magics.bound_clients())
        parser = PARSERS.get(words[1])
        if parser is None:
            return []
        return [o for action in parser._actions for o in action.option_strings if o[:2] == "--"]


class RichText:
    """A text and its HTML twin, displayed as one output: IPython picks the richest form its
    frontend shows (the HTML in a notebook, the text in a terminal), as for its own objects."""

    def __init__(self, text: str, html: str) -> None:
        self.text = text
        self.html = html

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text)

    def _repr_html_(self) -> str:
        return self.html


def _warn_of_replaced(bound: dict[str, BackendClient], result: dict[str, Any]) -> None:
    """Say which of this notebook's aliases an install left without its instance: one key
    (partition, name, version) runs one configuration at a time."""
    for other, client in bound.items():
        if (
            other != result["alias"]
            and (client.partition, client.name, client.version)
            == (result["partition"], result["name"], result["version"])
            and client.fingerprint
            and client.fingerprint == result.get("replaced")
        ):
            print(
                f"ywmagics: installing {result['alias']!r} replaced the instance of {other!r} "
                f"({client.name} {client.version} in partition {client.partition!r}, another "
                f"configuration): {other!r} now refuses to run. To keep both, install one of "
                "them with --partition NAME.",
                file=sys.stderr,
            )
