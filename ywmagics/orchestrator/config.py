"""The user's configuration file (``config.toml``), read once when the orchestrator starts.

::

    registries = ["~/my-backends"]      # more folders of backends
    idle_timeout = 1800                 # seconds with no kernel attached and nothing running,
                                        # after which the orchestrator exits (0: never)

    [supervisor]                        # how instances are kept running (all optional)
    restart_limit = 5                   # restarts in a row before an instance is given up
    restart_backoff = 0.5               # seconds before the second restart in a row; doubles
    restart_backoff_cap = 5.0           # the longest pause between two restarts
    stable_after = 60.0                 # a run this long (seconds) starts the count anew
    stop_timeout = 5.0                  # seconds between SIGTERM and SIGKILL at a stop

    [clusters.big]                      # a cluster for '--on big' ('--on slurm' needs none)
    kind = "slurm"
    partition = "gpu"                   # Slurm's partition, account and QOS (optional)
    account = "proj42"
    qos = "normal"
    srun_options = ["--exclusive"]      # more options for srun
    slurm_conf = "/etc/slurm/slurm.conf"  # default: $SLURM_CONF, else Slurm's own default
    shared_dir = "~/.ywmagics-cluster"  # a folder the nodes see too (default: the data folder)
    python = "python3"                  # the Python the nodes run the node shim with

The names of [supervisor] follow jupyter_client's restarter (``restart_limit``,
``stable_start_time``, ``shutdown_wait_time``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ywmagics import paths
from ywmagics.errors import ConfigurationError
from ywmagics.orchestrator import toml


@dataclass(frozen=True)
class SupervisorSettings:
    """How crashed instances come back, and how long a stop waits."""

    restart_limit: int = 5
    restart_backoff: float = 0.5
    restart_backoff_cap: float = 5.0
    stable_after: float = 60.0
    stop_timeout: float = 5.0

    def backoff(self, crashes_in_a_row: int) -> float:
        """The pause before restarting after the ``crashes_in_a_row``-th crash: none after the
        first, then ``restart_backoff`` doubling up to ``restart_backoff_cap``."""
        if crashes_in_a_row <= 1:
            return 0.0
        return float(
            min(self.restart_backoff_cap, self.restart_backoff * 2 ** (crashes_in_a_row - 2))
        )

    @classmethod
    def from_table(cls, table: object, where: Path) -> SupervisorSettings:
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where}: [supervisor] must be a table")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown [supervisor] setting(s): {', '.join(unknown)}",
                hint=f"settings: {', '.join(known)}",
            )
        values: dict[str, Any] = {}
        for name, value in table.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or value < 0 or (name == "restart_limit" and not isinstance(value, int)):
                kind = "a whole number" if name == "restart_limit" else "a number of seconds"
                raise ConfigurationError(
                    f"{where}: [supervisor] {name} must be {kind} (0 or more), got {value!r}"
                )
            values[name] = value
        return cls(**values)


@dataclass(frozen=True)
class ClusterSettings:
    """A cluster that ``--on NAME`` places instances on."""

    name: str = "slurm"
    kind: str = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    srun_options: tuple[str, ...] = ()
    slurm_conf: Path | None = None
    shared_dir: Path | None = None
    # Set where the nodes share no folder with this machine: environments are built on each
    # node, in this folder of the node (``~`` and ``$VAR`` are expanded there).
    node_dir: str | None = None
    python: str = "python3"

    @classmethod
    def from_table(cls, name: str, table: object, where: Path) -> ClusterSettings:
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where}: [clusters.{name}] must be a table")
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown [clusters.{name}] setting(s): {', '.join(unknown)}",
                hint=f"settings: {', '.join(sorted(known))}",
            )
        if table.get("kind", "slurm") != "slurm":
            raise ConfigurationError(
                f"{where}: [clusters.{name}] kind {table['kind']!r} is not one we place on",
                hint='kind = "slurm"',
            )
        values: dict[str, Any] = {"name": name}
        for key in ("partition", "account", "qos", "python"):
            if key in table:
                if not isinstance(table[key], str) or not table[key]:
                    raise ConfigurationError(f"{where}: [clusters.{name}] {key} must be a name")
                values[key] = table[key]
        for key in ("slurm_conf", "shared_dir"):
            if key in table:
                if not isinstance(table[key], str):
                    raise ConfigurationError(f"{where}: [clusters.{name}] {key} must be a path")
                values[key] = Path(table[key]).expanduser()
        if "node_dir" in table:
            if "shared_dir" in table:
                raise ConfigurationError(
                    f"{where}: [clusters.{name}] has both shared_dir and node_dir",
                    hint="shared_dir: the nodes see a folder of this machine; node_dir: they do "
                    "not, and build environments in a folder of their own",
                )
            node_dir = table["node_dir"]
            if not isinstance(node_dir, str) or not node_dir.strip().startswith(("/", "~", "$")):
                raise ConfigurationError(
                    f"{where}: [clusters.{name}] node_dir must be an absolute path on the nodes",
                    hint='e.g. node_dir = "/scratch/$USER/ywmagics" (expanded on the node)',
                )
            values["node_dir"] = table["node_dir"]
        options = table.get("srun_options", [])
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise ConfigurationError(
                f"{where}: [clusters.{name}] srun_options must be a list of strings",
                hint='e.g. srun_options = ["--exclusive"]',
            )
        for option in options:
            taken = _option_we_set(option)
            if taken:
                raise ConfigurationError(
                    f"{where}: [clusters.{name}] srun_options: {option!r} is not yours to set",
                    hint=f"{taken}; resources go in --resources (cpus, mem, time, gres, ...)",
                )
        values["srun_options"] = tuple(options)
        return cls(**values)


# srun options that would break what the orchestrator relies on, and why.
_SRUN_OUTPUT = (
    "srun's output is read by the orchestrator (the node shim's address is its first line)"
)
_ONE_TASK = "one job of one task runs the node shim"
_OPTIONS_WE_SET = {
    "--label": _SRUN_OUTPUT,
    "-l": _SRUN_OUTPUT,
    "--output": _SRUN_OUTPUT,
    "-o": _SRUN_OUTPUT,
    "--error": _SRUN_OUTPUT,
    "-e": _SRUN_OUTPUT,
    "--input": "the shim's configuration may come on srun's stdin",
    "-i": "the shim's configuration may come on srun's stdin",
    "--pty": _SRUN_OUTPUT,
    "--nodes": _ONE_TASK,
    "-N": _ONE_TASK,
    "--ntasks": _ONE_TASK,
    "-n": _ONE_TASK,
    "--job-name": "the job's name is how the orchestrator finds its jobs again",
    "-J": "the job's name is how the orchestrator finds its jobs again",
}


def _option_we_set(option: str) -> str | None:
    """Why ``option`` is refused in srun_options (``--label``, ``--output=x``, ``-ox``), if so."""
    for known, why in _OPTIONS_WE_SET.items():
        long = known.startswith("--")
        if option == known or (long and option.startswith(known + "=")):
            return why
        if not long and option.startswith(known) and known != "-l":  # -ofile, -N2
            return why
    return None


DEFAULT_IDLE_TIMEOUT = 1800.0  # seconds: 30 min


@dataclass(frozen=True)
class UserConfig:
    registries: list[Path] = field(default_factory=list)
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    clusters: dict[str, ClusterSettings] = field(default_factory=dict)


def load_user_config(file: Path | None = None) -> UserConfig:
    """The settings of ``file`` (default: :func:`ywmagics.paths.config_file`); defaults when it
    does not exist, :class:`ConfigurationError` naming the file when it is wrong."""
    file = file or paths.config_file()
    try:
        data = toml.loads(file.read_text())
    except FileNotFoundError:
        return UserConfig()
    except (toml.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"{file} is not valid TOML: {error}") from error
    unknown = sorted(set(data) - {"registries", "idle_timeout", "supervisor", "clusters"})
    if unknown:
        raise ConfigurationError(
            f"{file}: unknown setting(s): {', '.join(unknown)}",
            hint="the file takes 'registries = [...]', 'idle_timeout = SECONDS', a [supervisor] "
            "table and [clusters.NAME]",
        )
    idle_timeout = data.get("idle_timeout", DEFAULT_IDLE_TIMEOUT)
    if (
        isinstance(idle_timeout, bool)
        or not isinstance(idle_timeout, (int, float))
        or idle_timeout < 0
    ):
        raise ConfigurationError(
            f"{file}: idle_timeout must be a number of seconds (0: never), got {idle_timeout!r}",
            hint="e.g. idle_timeout = 1800 (30 min, the default)",
        )
    clusters = data.get("clusters", {})
    if not isinstance(clusters, dict):
        raise ConfigurationError(f"{file}: [clusters] must hold tables such as [clusters.big]")
    folders = data.get("registries", [])
    if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
        raise ConfigurationError(
            f"{file}: 'registries' must be a list of folders",
            hint='e.g. registries = ["~/my-backends"]',
        )
    return UserConfig(
        # A relative folder is the config file's neighbour: never the folder of whichever
        # process happened to start the orchestrator.
        registries=[file.parent / Path(f).expanduser() for f in folders],
        idle_timeout=float(idle_timeout),
        supervisor=SupervisorSettings.from_table(data.get("supervisor", {}), file),
        clusters={
            name: ClusterSettings.from_table(name, table, file) for name, table in clusters.items()
        },
    )
