"""A backend on Slurm against the same backend on this machine, in the same run.

- start: an install of node_echo (environment already built) to its ready, ``--on slurm`` (srun
  allocates, starts the node shim, which starts the backend) against a local start.
- request: sequential GETs through the proxy to the backend, through the shim (TLS to the node,
  then its Unix socket) against the local instance (its Unix socket). Goal: at most 0.5 ms more.

Brings up a one-node Slurm of its own (tests/slurm_cluster.py: root, Debian's slurm-wlm and
munge), on loopback, so the figures are the shim's and Slurm's costs, not a network's.

    python benchmarks/bench_slurm.py [--repeat 5] [--requests 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

import ywmagics
from ywmagics.discovery import Connection

from _common import private_orchestrator, report

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests.slurm_cluster import SlurmCluster  # the project's test cluster

REGISTRY = Path(__file__).parents[1] / "tests" / "resources" / "registry"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    os.environ["YW_BACKENDS_PATH"] = str(REGISTRY)
    with tempfile.TemporaryDirectory(prefix="ywbench-slurm-") as folder:
        home = Path(folder, "home")
        home.mkdir()
        with SlurmCluster.up(Path(folder, "cluster")) as cluster:
            os.environ["SLURM_CONF"] = str(cluster.conf)
            with private_orchestrator(home) as connection:
                measure(connection, args.repeat, args.requests)


def measure(connection: Connection, repeat: int, requests: int) -> None:
    admin = ywmagics.OrchestratorClient(connection)
    starts: dict[str, list[float]] = {"slurm": [], "local": []}
    for _ in range(repeat + 1):  # the first builds the environment: not counted
        for where, on in (("local", None), ("slurm", "slurm")):
            partition = f"Bench{where}"
            began = time.perf_counter()
            ywmagics.install(
                {"modules": ["node_echo"], "partition": partition, "on": on},
                connection=connection,
            )
            starts[where].append(time.perf_counter() - began)
            admin.stop(partition=partition)
    report(
        "start to ready (install of a built environment)",
        starts["slurm"][1:],
        starts["local"][1:],
    )
    latencies: dict[str, list[float]] = {}
    with httpx.Client(timeout=30) as http:
        for where, on in (("local", None), ("slurm", "slurm")):
            partition = f"Bench{where}"
            ywmagics.install(
                {"modules": ["node_echo"], "partition": partition, "on": on},
                connection=connection,
            )
            url = f"{connection.url}/backends/node_echo/1.0.0/hits"
            headers = {**connection.headers, "X-Backends-Partition": partition}
            for _ in range(100):  # warm: pooled connections on each hop
                http.get(url, headers=headers).raise_for_status()
            times = []
            for _ in range(requests):
                began = time.perf_counter()
                http.get(url, headers=headers)
                times.append(time.perf_counter() - began)
            latencies[where] = times
    report(
        "one GET through the proxy (sequential, kept alive)",
        latencies["slurm"],
        latencies["local"],
        unit="ms",
        goal="at most 0.5 ms more",
    )
    added = statistics.median(latencies["slurm"]) - statistics.median(latencies["local"])
    print(f"  added by the shim and TLS: {added * 1000:.3f} ms (median)")


if __name__ == "__main__":
    main()
