"""The user's config file: registries and the supervisor's restart settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from ywmagics.errors import ConfigurationError
from ywmagics.orchestrator.config import SupervisorSettings, load_user_config


def test_no_file_means_the_defaults(tmp_path: Path) -> None:
    config = load_user_config(tmp_path / "config.toml")
    assert config.registries == []
    assert config.supervisor == SupervisorSettings()


def test_registries_and_supervisor_settings(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text(
        'registries = ["~/mine", "/opt/backends", "beside"]\n'
        "[supervisor]\nrestart_limit = 2\nrestart_backoff = 0.01\nstop_timeout = 1.5\n"
    )
    config = load_user_config(file)
    # A relative folder is the config file's neighbour, whoever starts the orchestrator where.
    assert config.registries == [
        Path("~/mine").expanduser(),
        Path("/opt/backends"),
        tmp_path / "beside",
    ]
    assert config.supervisor == SupervisorSettings(
        restart_limit=2, restart_backoff=0.01, stop_timeout=1.5
    )


def test_backoff_none_then_doubling_up_to_the_cap() -> None:
    settings = SupervisorSettings(restart_backoff=0.5, restart_backoff_cap=3.0)
    assert [settings.backoff(n) for n in range(1, 7)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("registries = 'x'\n", "'registries' must be a list of folders"),
        ("colour = 1\n", "unknown setting(s): colour"),
        ("[supervisor]\nrestart_limits = 1\n", "unknown [supervisor] setting(s): restart_limits"),
        ("[supervisor]\nrestart_limit = 1.5\n", "restart_limit must be a whole number"),
        ("[supervisor]\nstop_timeout = -1\n", "stop_timeout must be a number of seconds"),
        ("[supervisor]\nstop_timeout = true\n", "stop_timeout must be a number of seconds"),
        ("supervisor = 3\n", "[supervisor] must be a table"),
        ("registries = [\n", "is not valid TOML"),
    ],
)
def test_a_wrong_file_is_a_clear_error_naming_it(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "config.toml"
    file.write_text(text)
    with pytest.raises(ConfigurationError) as error:
        load_user_config(file)
    assert message in error.value.message and str(file) in error.value.message


def test_clusters_are_read_with_their_settings(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text(
        '[clusters.big]\nkind = "slurm"\npartition = "gpu"\naccount = "proj42"\n'
        'srun_options = ["--exclusive"]\nshared_dir = "~/shared"\n'
    )
    (big,) = load_user_config(file).clusters.values()
    assert (big.name, big.kind, big.partition, big.account) == ("big", "slurm", "gpu", "proj42")
    assert big.srun_options == ("--exclusive",) and big.python == "python3"
    kept = ["--exclusive", "-c4", "--nodelist=n1", "-p", "gpu", "--export=ALL"]
    text = f"[clusters.ok]\nsrun_options = {kept!r}\n".replace("'", '"')
    file.write_text(text)
    assert load_user_config(file).clusters["ok"].srun_options == tuple(kept)
    assert big.shared_dir == Path("~/shared").expanduser() and big.node_dir is None


def test_a_cluster_without_a_shared_folder_keeps_its_node_dir_for_the_node(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text('[clusters.far]\nnode_dir = "~/scratch/$USER/yw"\n')
    (far,) = load_user_config(file).clusters.values()
    assert far.node_dir == "~/scratch/$USER/yw"  # expanded on the node, not here


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[clusters.big]\nkind = "k8s"', "kind 'k8s' is not one we place on"),
        ("[clusters.big]\nnodes = 3", r"unknown \[clusters.big\] setting\(s\): nodes"),
        ('[clusters.big]\nsrun_options = "--exclusive"', "srun_options must be a list"),
        ("clusters = 3", r"\[clusters\] must hold tables"),
        ('[clusters.big]\nnode_dir = "/n"\nshared_dir = "/s"', "both shared_dir and node_dir"),
        ('[clusters.big]\nnode_dir = " "', "node_dir must be an absolute path on the nodes"),
        ('[clusters.big]\nnode_dir = "scratch/yw"', "node_dir must be an absolute path"),
        ('[clusters.big]\nsrun_options = ["--label"]', "'--label' is not yours to set"),
        ('[clusters.big]\nsrun_options = ["-ofile"]', "srun's output is read by the orchestrator"),
        ('[clusters.big]\nsrun_options = ["--ntasks=4"]', "one job of one task runs the node shim"),
        ('[clusters.big]\nsrun_options = ["-J", "x"]', "the job's name is how"),
    ],
)
def test_a_wrong_cluster_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "config.toml"
    file.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        load_user_config(file)


def test_idle_timeout_is_seconds_thirty_minutes_by_default(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    assert load_user_config(file).idle_timeout == 1800  # no file
    file.write_text("idle_timeout = 0\n")
    assert load_user_config(file).idle_timeout == 0
    for wrong in ("-1", '"30m"', "true"):
        file.write_text(f"idle_timeout = {wrong}\n")
        with pytest.raises(ConfigurationError, match="idle_timeout must be a number of seconds"):
            load_user_config(file)
