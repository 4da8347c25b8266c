"""``%backends`` and ``%%interpreter``: the notebook's way to install, call and run backends.

Loaded by ``%load_ext ywmagics``. Importing this module must stay cheap: httpx (the client) loads
on the first magic that needs it, ipywidgets when a progress view is drawn, and the server stack
(starlette, uvicorn) never. The subcommands of ``%backends`` live in
:mod:`ywmagics.kernel.backends_command`, the ``/run`` exchange in
:mod:`ywmagics.kernel.interpreter`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import re
import secrets
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class
from traitlets import Bool, Enum, Float, Unicode, default, observe

from ywmagics.errors import YwMagicsError
from ywmagics.kernel import _ipython, backends_command
from ywmagics.kernel._ipython import argument, cell_magic, line_cell_magic, magic_arguments_as

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ywmagics.client import BackendClient, OrchestratorClient
    from ywmagics.discovery import Connection

EXIT_STOP_TIMEOUT = 3.0
_MAGICS = (("line", "backends"), ("cell", "backends"), ("cell", "interpreter"))
_COMPLETED = ("%%interpreter", "%backends", "%%backends")

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


@magics_class
class YwMagics(Magics):
    """The magics of ywmagics; settings are traitlets (``%config YwMagics``)."""

    partition = Unicode(
        help="The partition used when --partition is not given. Defaults to this kernel's own "
        "partition (kernel-<id>), whose instances are stopped when the kernel ends.",
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
        self._backends = backends_command.BackendsCommand(self)
        super().__init__(shell=shell, **kwargs)  # type: ignore[no-untyped-call]

    # ---- orchestrator -------------------------------------------------------------------------

    def find_orchestrator(self) -> None:
        """At load: start the orchestrator when none runs, without waiting for it; the first
        magic that needs it waits (and says why, if it failed). Never fails the load."""
        if self.orchestrator_url:
            return
        from ywmagics import paths
        from ywmagics.discovery import read_discovery

        try:
            discovery = paths.discovery_file()  # a runtime folder that can't be used: said now
            # A live discovery file is enough here: this keeps %load_ext free of the HTTP stack.
            if read_discovery(discovery) is None:
                from ywmagics.client._connect import start_in_background

                start_in_background()
        except YwMagicsError as error:
            print(f"ywmagics: {error}\n(the magics will try again when used)", file=sys.stderr)

    @property
    def connection(self) -> Connection:
        """The orchestrator's URL and token (re-read each time: it may have been restarted).
        The first use waits for the orchestrator that the load started, if it did."""
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

        # The user's orchestrator, found through its discovery file, is followed when it is
        # replaced (by a kernel of a newer ywmagics, say); one named by its URL is not.
        return OrchestratorClient(
            self.connection, timeout=timeout, follow=not self.orchestrator_url
        )

    def note_partition_used(self, partition: str) -> None:
        if partition == kernel_partition():
            _USED_KERNEL_PARTITION.set()

    @property
    def user_ns(self) -> dict[str, Any]:
        assert self.shell is not None
        return self.shell.user_ns  # type: ignore[no-any-return]

    def bound_clients(self) -> dict[str, BackendClient]:
        """The backend clients bound to names in the notebook, by name."""
        if "ywmagics.client._backend" not in sys.modules:  # then no client exists yet
            return {}
        from ywmagics.client import BackendClient

        return {
            name: value
            for name, value in list(self.user_ns.items())
            if isinstance(value, BackendClient) and not name.startswith("_")
        }

    def client_named(self, alias: str) -> BackendClient:
        """The client bound to ``alias``, pointed at the orchestrator that runs now."""
        client = self.bound_clients().get(alias)
        if client is not None:
            # The orchestrator may have been restarted since (new port, new token).
            current = self.connection
            if client.connection != current:
                client.connection = current
            return client
        bound = ", ".join(self.bound_clients()) or "none yet"
        value = self.user_ns.get(alias)
        if value is None:
            raise UsageError(
                f"no backend is bound to {alias!r} in this notebook (bound: {bound}); "
                f"install one first, e.g. %backends install pyrun_backend#^0.1.0 as {alias}"
            )
        raise UsageError(
            f"{alias!r} is a {type(value).__name__}, not a backend client (bound: {bound})"
        )

    # ---- %backends ----------------------------------------------------------------------------

    @line_cell_magic
    def backends(self, line: str, cell: str | None = None) -> None:
        parsed = backends_command.parse(line)
        if parsed is None:  # help was asked for, and shown
            return
        self._backends.run(*parsed, cell)

    backends.__doc__ = (
        inspect.cleandoc(
            r"""Install, list, stop and inspect backends (local services run by the orchestrator).

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

            %backends list                     running instances and installed environments (a
                                               table in a notebook)
            %backends stop ALIAS               stop the instance behind ALIAS
            %backends stop [--partition P]     stop the instances of a partition (default: this
                                               kernel's)
            %backends stop --all               stop every instance
            %backends logs ALIAS [--lines N]   the last lines of the backend's log
            %backends uninstall NAME[#RANGE]   remove installed environments (stops instances)
            %backends docs ALIAS               a link to the backend's /docs page
            %backends status                   where the orchestrator runs, this kernel's partition
            %backends dashboard [--inline]     a link to the live dashboard of every backend
                                               (--inline: the page itself, in the output area)

        ``%backends COMMAND --help`` shows one command's options. All of them:
        """
        )
        + "\n\n"
        + backends_command.usage()
    )

    # ---- %%interpreter ------------------------------------------------------------------------

    @magic_arguments_as("%%interpreter")
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
        args = self.interpreter.parser.parse_intermixed_args(  # type: ignore[attr-defined]
            _ipython.split_line(line)
        )
        from ywmagics.kernel.interpreter import run_interpreter_cell
        from ywmagics.kernel.transfer import check_names

        client = self.client_named(args.alias)
        inputs = check_names("--in", args.inputs)
        outputs = check_names("--out", args.outputs)
        timeout = args.timeout if args.timeout is not None else self.run_timeout
        if timeout < 0:
            raise UsageError("--timeout must be positive (or 0 for no limit)")
        # The number Jupyter shows for this cell: IPython 9 counts the next one already while
        # a cell runs, 8 does not; the cell's own ExecutionResult knows, in both.
        running = getattr(getattr(self.shell, "displayhook", None), "exec_result", None)
        count = getattr(running, "execution_count", None) or getattr(
            self.shell, "execution_count", 0
        )
        values = run_interpreter_cell(
            client,
            args.alias,
            # Jupyter numbers the %%interpreter line as the cell's line 1: so do the
            # runner's tracebacks, with the body starting on line 2.
            "\n" + cell,
            namespace=self.user_ns,
            inputs=inputs,
            outputs=outputs,
            timeout=timeout or None,
            cell_id=f"In[{count}]",
        )
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

                orchestrator = OrchestratorClient(connection, timeout=EXIT_STOP_TIMEOUT)
                orchestrator.stop(partition=kernel_partition())

    def register_hooks(self) -> None:
        shell = self.shell
        _ipython.add_completer(shell, self, "%%interpreter", self.complete_interpreter)
        for key in ("%backends", "%%backends"):
            _ipython.add_completer(shell, self, key, self._backends.complete)
        atexit.register(self.stop_kernel_partition)

    def unregister(self) -> None:
        """Undo :meth:`register_hooks` and the magics' registration (``%unload_ext``)."""
        atexit.unregister(self.stop_kernel_partition)
        _ipython.remove_completers(self.shell, self, _COMPLETED)
        _ipython.unregister_magics(self.shell, self, _MAGICS)
