"""``%backends`` and ``%%interpreter``: the notebook's way to install, call and run backends.

Loaded by ``%load_ext ywmagics``. Importing this module must stay cheap: httpx (the client) loads
on the first magic that needs it, ipywidgets when a progress view is drawn, and the server stack
(starlette, uvicorn) never.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import functools
import json
import re
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from IPython.core import magic as _magic
from IPython.core import magic_arguments as _magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class
from IPython.display import publish_display_data
from IPython.utils import process as _process
from traitlets import Bool, Enum, Float, Unicode, default, observe

from ywmagics.errors import YwMagicsError

if TYPE_CHECKING:
    import argparse

    from IPython.core.interactiveshell import InteractiveShell

    from ywmagics.client import BackendClient, OrchestratorClient
    from ywmagics.discovery import Connection
    from ywmagics.kernel.interpreter import Runner

_F = TypeVar("_F", bound=Callable[..., Any])

# IPython's magic_arguments and arg_split are untyped: typed doors to them.


def magic_arguments(name: str) -> Callable[[_F], _F]:
    """``name`` as typed (``%%interpreter``), so that the usage line shows it that way."""
    return _magic_arguments.magic_arguments(name[1:])  # type: ignore[no-untyped-call]


def argument(*args: Any, **kwargs: Any) -> Callable[[_F], _F]:
    return _magic_arguments.argument(*args, **kwargs)  # type: ignore[no-untyped-call]


def line_cell_magic(func: _F) -> _F:
    return cast(_F, _magic.line_cell_magic(func))


def cell_magic(func: _F) -> _F:
    return cast(_F, _magic.cell_magic(func))


def arg_split(line: str) -> list[str]:
    return _process.arg_split(line, posix=True)  # type: ignore[attr-defined,no-untyped-call,no-any-return]


def publish(data: dict[str, str]) -> None:
    publish_display_data(data)  # type: ignore[no-untyped-call]


SUBCOMMANDS = ("install", "list", "stop", "logs", "uninstall", "docs", "status")
EXIT_STOP_TIMEOUT = 3.0


# Whether anything was started in this kernel's own partition, to stop it at exit. Per process,
# not per YwMagics: %reload_ext makes a new YwMagics, and must not forget what runs.
_USED_KERNEL_PARTITION = threading.Event()


@functools.cache
def kernel_partition() -> str:
    """This kernel's own partition, ``kernel-<8 hex>``: from the Jupyter kernel id when there is
    one (so it can be told which kernel it belongs to), else random. Fixed for the process."""
    if "ipykernel" in sys.modules:
        with contextlib.suppress(Exception):
            from ipykernel.kernelapp import IPKernelApp

            if IPKernelApp.initialized():
                stem = Path(IPKernelApp.instance().connection_file).stem
                match = re.fullmatch(r"kernel-([0-9a-f]{8})-?[0-9a-f-]*", stem)
                if match:
                    return f"kernel-{match.group(1)}"
    return f"kernel-{secrets.token_hex(4)}"


def group_specs(tokens: list[str]) -> list[str]:
    """``["a#^1", "as", "x", "b"]`` -> ``["a#^1 as x", "b"]``: specs typed on one line."""
    specs: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "as":
            raise UsageError("'as' must follow a backend spec, e.g. demo_yw_backend#^0.1.1 as demo")
        if index + 1 < len(tokens) and tokens[index + 1] == "as":
            if index + 2 >= len(tokens):
                raise UsageError(f"'{token} as' needs an alias after 'as'")
            specs.append(f"{token} as {tokens[index + 2]}")
            index += 3
        else:
            specs.append(token)
            index += 1
    return specs


def parse_install_object(text: str) -> dict[str, Any]:
    """The body of ``%%backends install``: the tutorial's object, as JSON or a Python literal."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as json_error:
        try:
            data = ast.literal_eval(text.strip())  # a dict literal, never evaluated code
        except (ValueError, SyntaxError):
            raise UsageError(
                f"the cell must hold a JSON object such as "
                f'{{"modules": ["pyrun_backend#^0.1.0 as pyRunner"], "partition": "Foo"}}: '
                f"{json_error}"
            ) from None
    if isinstance(data, (list, str)):
        data = {"modules": data if isinstance(data, list) else [data]}
    if not isinstance(data, dict):
        raise UsageError(
            "the cell must hold an object with 'modules', 'configurations', 'partition'"
        )
    return data


@contextlib.contextmanager
def _needs_runner(alias: str, client: BackendClient) -> Iterator[None]:
    """A backend without ``/run`` is not a python runner: say so, not "404 Not Found"."""
    from ywmagics.errors import BackendHTTPError

    try:
        yield
    except BackendHTTPError as error:
        if error.status not in (404, 405):
            raise
        raise UsageError(
            f"{alias} is {client.name} {client.version}, which runs no cells (its /run answered "
            f"{error.status}): %%interpreter needs a python runner, e.g. "
            f"%backends install pyrun_backend#^0.1.0 as {alias}"
        ) from None


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except YwMagicsError as error:
        raise error from None  # shown short: see YwMagicsError._render_traceback_


@magics_class
class YwMagics(Magics):
    """The magics of ywmagics; settings are traitlets (``%config YwMagics``)."""

    partition = Unicode(
        help="The partition used when --partition is not given. Defaults to this kernel's own "
        "partition (kernel-<id>), whose instances are stopped when the kernel shuts down.",
    ).tag(config=True)
    orchestrator_url = Unicode(
        "",
        help="Use the orchestrator at this URL instead of finding or starting one "
        "(set orchestrator_token too).",
    ).tag(config=True)
    orchestrator_token = Unicode(
        "",
        help="The token of the orchestrator given by orchestrator_url.",
    ).tag(config=True)
    install_timeout = Float(
        600.0,
        help="Seconds an install may stay silent (no event) before it is abandoned.",
    ).tag(config=True)
    run_timeout = Float(
        0.0,
        help="Default --timeout of %%interpreter cells, in seconds; 0 means no limit.",
    ).tag(config=True)
    progress = Enum(
        ["auto", "widgets", "text"],
        "auto",
        help="How install progress is shown: a widget in a kernel (auto), always a widget, or "
        "text lines.",
    ).tag(config=True)
    stop_on_exit = Bool(
        True,
        help="Stop the instances of this kernel's own partition when the kernel exits.",
    ).tag(config=True)

    @default("partition")
    def _default_partition(self) -> str:
        return kernel_partition()

    @observe("orchestrator_url", "orchestrator_token")
    def _forget_connection(self, change: dict[str, Any]) -> None:
        self._connection = None

    _connection: Connection | None

    def __init__(self, shell: InteractiveShell | None = None, **kwargs: Any) -> None:
        self._connection = None
        self._runner: Runner | None = None
        super().__init__(shell=shell, **kwargs)  # type: ignore[no-untyped-call]

    # ---- orchestrator -------------------------------------------------------------------------

    def find_orchestrator(self) -> None:
        """At load: find the running orchestrator, or start one. Never fails the load."""
        if self.orchestrator_url:
            return
        from ywmagics.discovery import read_discovery

        # A live discovery file is enough here: this keeps %load_ext free of the HTTP stack.
        if read_discovery() is not None:
            return
        try:
            with _user_errors():
                self.connection  # noqa: B018 (starts the orchestrator)
        except YwMagicsError as error:
            print(f"ywmagics: {error}\n(the magics will try again when used)", file=sys.stderr)

    @property
    def connection(self) -> Connection:
        """The orchestrator's URL and token (re-read each time: it may have been restarted)."""
        from ywmagics.discovery import Connection, read_discovery

        if self.orchestrator_url:
            if not self.orchestrator_token:
                raise UsageError("YwMagics.orchestrator_url is set but orchestrator_token is not")
            return Connection(self.orchestrator_url.rstrip("/"), self.orchestrator_token)
        found = read_discovery()
        if found is None or found != self._connection:
            from ywmagics.client import connect

            found = connect()
        self._connection = found
        return found

    def orchestrator(self, timeout: float = 60.0) -> OrchestratorClient:
        from ywmagics.client import OrchestratorClient

        return OrchestratorClient(self.connection, timeout=timeout)

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            from ywmagics.kernel.interpreter import Runner

            self._runner = Runner()
        return self._runner

    @property
    def user_ns(self) -> dict[str, Any]:
        assert self.shell is not None
        return self.shell.user_ns  # type: ignore[no-any-return]

    def bound_clients(self) -> dict[str, BackendClient]:
        """The backend clients bound to names in the notebook, by name."""
        if "ywmagics.client" not in sys.modules:
            return {}
        from ywmagics.client import BackendClient

        return {
            name: value
            for name, value in list(self.user_ns.items())
            if isinstance(value, BackendClient) and not name.startswith("_")
        }

    def client_named(self, alias: str) -> BackendClient:
        from ywmagics.client import BackendClient

        value = self.user_ns.get(alias)
        if isinstance(value, BackendClient):
            # The orchestrator may have been restarted since (new port, new token).
            current = self.connection
            if value.connection != current:
                value.connection = current
            return value
        bound = ", ".join(self.bound_clients()) or "none yet"
        if value is None:
            raise UsageError(
                f"no backend is bound to {alias!r} in this notebook (bound: {bound}); "
                f"install one first, e.g. %backends install pyrun_backend#^0.1.0 as {alias}"
            )
        raise UsageError(
            f"{alias!r} is a {type(value).__name__}, not a backend client (bound: {bound})"
        )

    # ---- argument parsing ---------------------------------------------------------------------

    @staticmethod
    def _parse(magic: Callable[..., Any], line: str) -> argparse.Namespace:
        try:
            tokens = arg_split(line)
        except ValueError as error:
            raise UsageError(f"cannot split the arguments: {error}") from None
        for index, token in enumerate(tokens):  # a trailing comment
            if token.startswith("#"):
                tokens = tokens[:index]
                break
        parser = magic.parser  # type: ignore[attr-defined]
        return parser.parse_intermixed_args(tokens)  # type: ignore[no-any-return]

    # ---- %backends ----------------------------------------------------------------------------

    @magic_arguments("%backends")
    @argument(
        "command",
        nargs="?",
        default="list",
        choices=SUBCOMMANDS,
        metavar="COMMAND",
        help="install | list | stop | logs | uninstall | docs | status (default: list)",
    )
    @argument(
        "args",
        nargs="*",
        metavar="ARG",
        help="install: SPEC [SPEC ...] with SPEC = 'name#range [as alias]'; "
        "stop, logs, docs: ALIAS (or a backend name); uninstall: name[#range]",
    )
    @argument(
        "--partition",
        "-p",
        default=None,
        help="the partition (default: this kernel's own, see %%config YwMagics)",
    )
    @argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="NAME.build.OPTION=VALUE",
        help="install: a build option, e.g. pyrun_backend.build.python=3.10 (repeatable)",
    )
    @argument("--all", action="store_true", help="stop: every running instance, in every partition")
    @argument("--lines", "-n", type=int, default=200, help="logs: how many lines (default 200)")
    @line_cell_magic
    def backends(self, line: str, cell: str | None = None) -> None:
        r"""Install, list, stop and inspect backends (local microservices run by the orchestrator).

        Install, binding each alias in the notebook to a client of the backend::

            %backends install demo_yw_backend#^0.1.1 as ywDemoClient
            %backends install demo_yw_backend#^0.1.1 as ywDemoClientInFoo --partition Foo
            %backends install pyrun_backend#^0.1.0 as pyRunner \
                --config pyrun_backend.build.python=3.10 --config pyrun_backend.build.modules=numpy

        or with the tutorial's object as the body of a cell (JSON)::

            %%backends install
            {"modules": ["pyrun_backend#^0.1.0 as pyRunner"],
             "configurations": {"pyrun_backend": {"build": {"python": "3.10", "modules": "numpy"}}},
             "partition": "Foo"}

        A range resolves like npm (^0.1.1 means >=0.1.1,<0.2.0). Progress shows as a widget in
        a notebook and as text lines elsewhere. Then, with the client::

            ywDemoClient.fetch_json("/cow-say", method="POST", json={"message": "hi"})
            await ywDemoClient.afetch_json("/hello-world")

        Other commands::

            %backends list                     running instances and installed environments
            %backends stop ALIAS               stop the instance behind ALIAS
            %backends stop [--partition P]     stop the instances of a partition (default: this
                                               kernel's)
            %backends stop --all               stop every instance
            %backends logs ALIAS [--lines N]   the last lines of the backend's log
            %backends uninstall NAME[#RANGE]   remove installed environments (stops instances)
            %backends docs ALIAS               a link to the backend's /docs page
            %backends status                   where the orchestrator runs, this kernel's partition
        """
        args = self._parse(self.backends, line)
        if cell is not None and args.command != "install":
            raise UsageError("only '%%backends install' takes a cell body")
        with _user_errors():
            if args.command == "install":
                self._install(args, cell)
            elif args.command == "list":
                self._list(args)
            elif args.command == "stop":
                self._stop(args)
            elif args.command == "logs":
                self._logs(args)
            elif args.command == "uninstall":
                self._uninstall(args)
            elif args.command == "docs":
                self._docs(args)
            else:
                self._status(args)

    def _install(self, args: argparse.Namespace, cell: str | None) -> None:
        from ywmagics.spec import InstallRequest, parse_config_option

        data: dict[str, Any] = {}
        if cell is not None and cell.strip():
            data = parse_install_object(cell)
        modules = data.get("modules") or []
        if isinstance(modules, str):
            modules = [modules]
        modules = [*modules, *group_specs(args.args)]
        if not modules:
            raise UsageError(
                "name at least one backend, e.g. "
                "%backends install demo_yw_backend#^0.1.1 as ywDemoClient"
            )
        configurations = data.get("configurations") or {}
        for option in args.config:
            parse_config_option(option, configurations)
        partition = args.partition or data.get("partition") or self.partition
        request = InstallRequest.from_object(
            {**data, "modules": modules, "configurations": configurations}, partition
        )
        self._run_install(request)

    def _run_install(self, request: Any) -> None:
        from ywmagics.client import BackendClient
        from ywmagics.kernel.progress import make_progress

        specs = ", ".join(str(s) for s in request.modules)
        view = make_progress(
            self.progress,
            f"Installing {specs} in partition {request.partition}",
            len(request.modules),
        )
        if request.partition == kernel_partition():
            _USED_KERNEL_PARTITION.set()
        try:
            with self.orchestrator(timeout=self.install_timeout) as orchestrator:
                results = orchestrator.install(request, view.event)
                connection = orchestrator.connection
        except KeyboardInterrupt as error:
            view.failed(error)
            from ywmagics.kernel.interpreter import Interrupted

            raise Interrupted("the install was interrupted (run it again to go on)") from None
        except BaseException as error:
            view.failed(error)
            raise
        for result in results:
            alias = result["alias"]
            previous = self.user_ns.get(alias)
            if previous is not None and not isinstance(previous, BackendClient):
                print(
                    f"ywmagics: {alias!r} was a {type(previous).__name__}; it is now the "
                    f"client of {result['name']}",
                    file=sys.stderr,
                )
            self.user_ns[alias] = BackendClient(
                connection, result["name"], result["version"], result["partition"]
            )
        view.done(results)

    def _list(self, args: argparse.Namespace) -> None:
        from ywmagics.cli import format_listing

        with self.orchestrator() as orchestrator:
            listing = orchestrator.list()
        print(format_listing(listing))
        bound = self.bound_clients()
        if bound:
            print("\nBound in this notebook:")
            for alias, client in bound.items():
                print(f"  {alias}: {client.name} {client.version} in partition {client.partition}")
        print(f"\nThis kernel's partition: {self.partition}")

    def _one_arg(self, args: argparse.Namespace, what: str) -> str | None:
        if len(args.args) > 1:
            raise UsageError(
                f"%backends {args.command} takes one {what}, got: {' '.join(args.args)}"
            )
        return args.args[0] if args.args else None

    def _target(self, alias: str, partition: str | None) -> tuple[str, str | None, str]:
        """(name, version, partition) of ``alias``: a bound client, else a backend name."""
        from ywmagics.client import BackendClient

        value = self.user_ns.get(alias)
        if isinstance(value, BackendClient):
            return value.name, value.version, partition or value.partition
        return alias, None, partition or self.partition

    def _stop(self, args: argparse.Namespace) -> None:
        alias = self._one_arg(args, "ALIAS")
        with self.orchestrator() as orchestrator:
            if args.all:
                if alias or args.partition:
                    raise UsageError(
                        "--all stops every instance: give it alone, or use "
                        "ALIAS or --partition instead"
                    )
                stopped = orchestrator.stop(all=True)
            elif alias:
                name, version, partition = self._target(alias, args.partition)
                stopped = orchestrator.stop(partition=partition, name=name, version=version)
            else:
                stopped = orchestrator.stop(partition=args.partition or self.partition)
        for item in stopped:
            print(f"stopped {item['name']} {item['version']} in partition {item['partition']}")
        if not stopped:
            print("nothing was running there")

    def _logs(self, args: argparse.Namespace) -> None:
        alias = self._one_arg(args, "ALIAS")
        if alias is None:
            raise UsageError("%backends logs ALIAS: name the backend")
        if args.lines < 1:
            raise UsageError("--lines must be at least 1")
        name, _, partition = self._target(alias, args.partition)
        with self.orchestrator() as orchestrator:
            print(orchestrator.logs(name, partition=partition, lines=args.lines).rstrip("\n"))

    def _uninstall(self, args: argparse.Namespace) -> None:
        spec = self._one_arg(args, "SPEC")
        if spec is None:
            raise UsageError("%backends uninstall NAME[#RANGE]: name the backend")
        from ywmagics.client import BackendClient

        value = self.user_ns.get(spec)
        if isinstance(value, BackendClient):  # an alias: the environment behind it
            spec = f"{value.name}#{value.version}"
        with self.orchestrator() as orchestrator:
            done = orchestrator.uninstall(spec)
        removed = done.get("removed") or []
        for item in removed:
            print(f"removed {item['name']} {item['version']} ({item['fingerprint']})")
        if not removed:
            print(f"no installed environment matches {spec!r}")

    def _docs(self, args: argparse.Namespace) -> None:
        alias = self._one_arg(args, "ALIAS")
        if alias is None:
            raise UsageError("%backends docs ALIAS: name the backend")
        client = self.client_named(alias)
        url = client.docs_url
        publish(
            {
                "text/plain": url,
                "text/html": f'<a href="{url}" target="_blank" rel="noopener">'
                f"{client.name} {client.version}: /docs</a>",
            }
        )

    def _status(self, args: argparse.Namespace) -> None:
        with self.orchestrator() as orchestrator:
            status = orchestrator.status()
        print(
            f"orchestrator {status.get('version', '?')} at {self.connection.url} "
            f"(pid {status.get('pid', '?')})\n"
            f"{status.get('instances', 0)} running instance(s), "
            f"{status.get('environments', 0)} installed environment(s)\n"
            f"this kernel's partition: {self.partition}"
        )

    # ---- %%interpreter ------------------------------------------------------------------------

    @magic_arguments("%%interpreter")
    @argument("alias", metavar="ALIAS", help="a python runner bound by %%backends install")
    @argument(
        "--in",
        dest="inputs",
        nargs="+",
        default=[],
        metavar="NAME",
        help="notebook variables sent to the runner before the cell runs",
    )
    @argument(
        "--out",
        dest="outputs",
        nargs="+",
        default=[],
        metavar="NAME",
        help="variables of the cell brought back into the notebook",
    )
    @argument(
        "--timeout",
        "-t",
        type=float,
        default=None,
        metavar="SECONDS",
        help="interrupt the cell after this many seconds (default: "
        "YwMagics.run_timeout, 0 = no limit)",
    )
    @cell_magic
    def interpreter(self, line: str, cell: str) -> None:
        """Run the cell in a python runner backend (``pyrun_backend``), not in this kernel.

        ::

            %backends install pyrun_backend#^0.1.0 as pyRunner -c pyrun_backend.build.modules=numpy

            %%interpreter pyRunner --in n --out pyVersion npVersion
            import numpy, sys
            pyVersion = sys.version
            npVersion = numpy.__version__ * n

        The runner keeps its variables from cell to cell (one namespace per instance, so per
        partition). ``--in`` variables are sent to it, ``--out`` ones come back into the notebook;
        numpy arrays, pandas frames, bytes, dates... travel as they are. Printed output appears
        under the cell while it runs; an exception raises here with the runner's traceback, whose
        line numbers are those of the cell. The stop button interrupts the cell in the runner.
        """
        args = self._parse(self.interpreter, line)
        from ywmagics.kernel.interpreter import (
            RemoteExecutionError,
            RunRequest,
            publish,
            writer,
        )
        from ywmagics.kernel.transfer import check_names, decode_outputs, encode_inputs

        client = self.client_named(args.alias)
        inputs = encode_inputs(self.user_ns, check_names("--in", args.inputs))
        outputs = check_names("--out", args.outputs)
        timeout = args.timeout if args.timeout is not None else self.run_timeout
        if timeout < 0:
            raise UsageError("--timeout must be positive (or 0 for no limit)")
        count = getattr(self.shell, "execution_count", 0)
        # Jupyter numbers the %%interpreter line as the cell's line 1: so do the runner's
        # tracebacks, with the body starting on line 2.
        request = RunRequest(f"In[{count}]", "\n" + cell, inputs, outputs)
        with _user_errors(), _needs_runner(args.alias, client):
            result = self.runner.run(
                client,
                request,
                alias=args.alias,
                timeout=timeout or None,
                stdout=writer("stdout"),
                stderr=writer("stderr"),
                display=publish,
            )
            exception = result.get("exception")
            if exception:
                raise RemoteExecutionError(
                    exception if isinstance(exception, dict) else {"message": str(exception)},
                    where=f"{args.alias}: {client.name} {client.version}, "
                    f"partition {client.partition}",
                )
            values = decode_outputs(result.get("capturedOut") or {}, outputs)
        self.user_ns.update(values)

    # ---- completion, exit, unload ----------------------------------------------------------------

    def complete_interpreter(self, event: Any) -> list[str]:
        """Completions after ``%%interpreter``: bound aliases, then variable names for --in."""
        words = event.line.split()
        typing_new = event.line.endswith(" ")
        position = len(words) + (1 if typing_new else 0)
        if position <= 2:
            return sorted(self.bound_clients())
        options = ["--in", "--out", "--timeout"]
        current = event.symbol or ""
        if current.startswith("-"):
            return options
        previous = [w for w in words[2:] if w.startswith("-")]
        if previous and previous[-1] == "--in":
            return sorted(n for n in self.user_ns if not n.startswith("_"))
        return options

    def complete_backends(self, event: Any) -> list[str]:
        """Completions after ``%backends``: the commands, then aliases where one is expected."""
        words = event.line.split()
        position = len(words) + (1 if event.line.endswith(" ") else 0)
        if position <= 2:
            return list(SUBCOMMANDS)
        if words[1] in ("stop", "logs", "docs", "uninstall"):
            return sorted(self.bound_clients())
        return ["--partition", "--config"] if words[1] == "install" else []

    def stop_kernel_partition(self) -> None:
        """Stop the instances of this kernel's partition (at exit; best effort, fast)."""
        if not (self.stop_on_exit and _USED_KERNEL_PARTITION.is_set()):
            return
        from ywmagics.discovery import read_discovery

        _USED_KERNEL_PARTITION.clear()
        # Never start an orchestrator here: only reach the one that runs (if any).
        with contextlib.suppress(Exception):
            connection = self.connection if self.orchestrator_url else read_discovery()
            if connection is not None:
                from ywmagics.client import OrchestratorClient

                with OrchestratorClient(connection, timeout=EXIT_STOP_TIMEOUT) as orchestrator:
                    orchestrator.stop(partition=kernel_partition())

    def register_hooks(self) -> None:
        assert self.shell is not None
        shell: Any = self.shell  # set_hook's typing differs between IPython versions
        shell.set_hook(
            "complete_command", _completer(self.complete_interpreter), str_key="%%interpreter"
        )
        shell.set_hook("complete_command", _completer(self.complete_backends), str_key="%backends")
        shell.set_hook("complete_command", _completer(self.complete_backends), str_key="%%backends")
        atexit.register(self.stop_kernel_partition)

    def unregister(self) -> None:
        """Undo :meth:`register_hooks` and the magics' registration (``%unload_ext``)."""
        atexit.unregister(self.stop_kernel_partition)
        shell = self.shell
        assert shell is not None
        dispatcher = shell.strdispatchers.get("complete_command")
        if dispatcher is not None:
            for key in ("%%interpreter", "%backends", "%%backends"):
                chain = dispatcher.strs.get(key)
                if chain is not None:
                    chain.chain = [
                        (priority, hook)
                        for priority, hook in chain.chain
                        if getattr(getattr(hook, "__func__", None), "ywmagics", None) is not self
                    ]
        manager = shell.magics_manager
        for kind, name in (("line", "backends"), ("cell", "backends"), ("cell", "interpreter")):
            manager.magics[kind].pop(name, None)
        manager.registry.pop(type(self).__name__, None)
        with contextlib.suppress(ValueError):
            cast(list[Any], shell.configurables).remove(self)
        if self._runner is not None:
            self._runner.close()
            self._runner = None


def _completer(method: Callable[[Any], list[str]]) -> Callable[[Any, Any], list[str]]:
    """Adapt ``method(event)`` to IPython's hook signature ``hook(shell, event)``."""

    def hook(shell: Any, event: Any) -> list[str]:
        return method(event)

    hook.ywmagics = method.__self__  # type: ignore[attr-defined]
    return hook
