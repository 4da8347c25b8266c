"""What the proxy costs: through the orchestrator, against straight to the backend, and beside
jupyter-server-proxy serving the same backend, all in the same run with the same raw client.

Backends: ``pyrun_backend`` (bundled; a stdlib threaded server) and ``asgi_bench`` (this folder's
``backends/``: the smallest uvicorn app). The client is a raw HTTP/1.1 keep-alive one
(``_rawload.py``), so that what is measured is the hops, not a client library. Latency rounds are
interleaved so that machine noise hits every target alike. jupyter-server-proxy is installed by
the benchmark into a temporary environment (uv, from PyPI) and proxies the same app run on TCP.

Goals (issue 8): added latency <= 0.12 ms per request; throughput at c=64 >= 0.6x direct.

    python benchmarks/bench_proxy.py [--seconds 3] [--requests 2000] [--no-jsp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

import ywmagics
from ywmagics.client import OrchestratorClient

from _common import private_orchestrator
from _rawload import Opener, latencies, opener, throughput

HERE = Path(__file__).parent
CONCURRENCY = (1, 8, 64)
TCP_LABEL = "asgi_bench: straight to TCP (run by hand)"
JSP_LABEL = "asgi_bench (TCP): through jupyter-server-proxy"
OURS_BASELINE = "asgi_bench: straight to its Unix socket"


@dataclass
class Target:
    label: str
    open: Opener
    request: bytes
    baseline: str = ""  # the label of the target it is compared with
    latency: list[float] | None = None
    rps: dict[int, tuple[float, int]] | None = None


def _get(path: str, host: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *headers, "", ""]
    return "\r\n".join(lines).encode()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(url: str, headers: dict[str, str] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, headers=headers, timeout=2).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


@contextlib.contextmanager
def _served_on_tcp(python: Path) -> Iterator[int]:
    """``asgi_bench`` run by hand on a TCP port, by its environment's own Python."""
    port = _free_port()
    server = HERE / "backends" / "asgi_bench" / "server.py"
    process = subprocess.Popen([str(python), str(server), "--port", str(port)])
    try:
        _wait_for(f"http://127.0.0.1:{port}/")
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def _jupyter_server_proxy(work: Path) -> Iterator[tuple[int, str]]:
    """A Jupyter server with jupyter-server-proxy, installed here from PyPI: (port, token)."""
    venv = work / "jsp"
    subprocess.run([sys.executable, "-m", "uv", "venv", "-q", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = ["jupyter-server>=2", "jupyter-server-proxy>=4"]
    subprocess.run(
        [sys.executable, "-m", "uv", "pip", "install", "-q", "--python", str(python), *install],
        check=True,
    )
    port, token = _free_port(), secrets.token_hex(16)
    log = (work / "jsp.log").open("ab")
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(work / "jconf"),
        "JUPYTER_RUNTIME_DIR": str(work / "jrun"),
    }
    process = subprocess.Popen(
        [
            str(python), "-m", "jupyter_server", "--no-browser", f"--port={port}",
            f"--IdentityProvider.token={token}", "--ServerApp.log_level=WARN",
            f"--ServerApp.root_dir={work}", "--allow-root",  # CI runs as root
        ],
        env=env,
        stdout=log,
        stderr=log,
    )  # fmt: skip
    try:
        try:
            _wait_for(f"http://127.0.0.1:{port}/api/status", {"Authorization": f"token {token}"})
        except RuntimeError:
            raise RuntimeError((work / "jsp.log").read_text()[-3000:]) from None
        yield port, token
    finally:
        process.terminate()
        process.wait(30)
        log.close()


async def _measure(targets: list[Target], requests: int, seconds: float) -> None:
    for target in targets:  # warm: pools filled, code paths hot
        await latencies(target.open, target.request, 300)
    rounds = 10
    for target in targets:
        target.latency = []
    for _ in range(rounds):
        for target in targets:
            assert target.latency is not None
            target.latency += await latencies(target.open, target.request, requests // rounds)
    for target in targets:
        target.rps = {}
        for clients in CONCURRENCY:
            target.rps[clients] = await throughput(target.open, target.request, clients, seconds)


def _report(targets: list[Target]) -> None:
    by_label = {t.label: t for t in targets}
    median = {t.label: statistics.median(t.latency or [0.0]) * 1000 for t in targets}
    print(
        f"{'target':44} {'latency':>9} {'added':>8}   "
        + "   ".join(f"{'c=' + str(c):>15}" for c in CONCURRENCY)
    )
    for target in targets:
        base = by_label.get(target.baseline)
        added = f"{median[target.label] - median[base.label]:+.3f}" if base else ""
        cells = []
        for clients in CONCURRENCY:
            rps, errors = (target.rps or {})[clients]
            ratio = ""
            if base is not None:
                ratio = f" ({rps / (base.rps or {})[clients][0]:.2f}x)"
            cells.append(f"{rps:7.0f}{ratio:>8}" + (f" {errors} err" if errors else ""))
        print(f"{target.label:44} {median[target.label]:7.3f}ms {added:>8}   " + "   ".join(cells))
    print("latency: median ms per request, one client; added: against the baseline named in")
    print("the target; rps: answers per second, in brackets the ratio to that baseline.")
    ours, unix = by_label["asgi_bench: through the orchestrator"], by_label[OURS_BASELINE]
    tcp = by_label.get(TCP_LABEL)
    added = median[ours.label] - median[unix.label]
    print(f"goal: added <= 0.12 ms per request: {added:.3f} ms {_mark(added <= 0.12)}")
    for base in (unix, tcp):
        if base is not None:
            ratio = (ours.rps or {})[64][0] / (base.rps or {})[64][0]
            print(f"goal: c=64 >= 0.6x {base.label}: {ratio:.2f}x {_mark(ratio >= 0.6)}")
    jsp = by_label.get(JSP_LABEL)
    if jsp is not None:
        for clients in CONCURRENCY:
            times = (ours.rps or {})[clients][0] / (jsp.rps or {})[clients][0]
            print(f"beside jupyter-server-proxy at c={clients}: {times:.1f}x its throughput")
        print(f"  and {median[jsp.label] / median[ours.label]:.1f}x less latency")


def _mark(met: bool) -> str:
    return "(met)" if met else "(NOT met)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    parser.add_argument("--requests", type=int, default=2000, help="latency samples per target")
    parser.add_argument("--no-jsp", action="store_true", help="skip jupyter-server-proxy")
    args = parser.parse_args()
    os.environ["YW_BACKENDS_PATH"] = str(HERE / "backends")
    with (
        tempfile.TemporaryDirectory(prefix="ywbench-proxy-") as folder,
        contextlib.ExitStack() as stack,
    ):
        work = Path(folder)
        (work / "home").mkdir()
        connection = stack.enter_context(private_orchestrator(work / "home"))
        port = int(connection.url.rsplit(":", 1)[1])
        ywmagics.install(
            {"modules": ["pyrun_backend", "asgi_bench"]}, partition="Bench", connection=connection
        )
        listen = {
            i["name"]: i["listen"]
            for i in OrchestratorClient(connection).listing()["instances"]
            if i["partition"] == "Bench"
        }
        auth = (f"Authorization: Bearer {connection.token}", "X-Backends-Partition: Bench")
        orchestrator = opener(port=port)
        targets: list[Target] = []
        for name, version in (("asgi_bench", "1.0.0"), ("pyrun_backend", "0.1.0")):
            direct = f"{name}: straight to its Unix socket"
            targets.append(Target(direct, opener(uds=listen[name]), _get("/", "localhost")))
            targets.append(
                Target(
                    f"{name}: through the orchestrator",
                    orchestrator,
                    _get(f"/backends/{name}/{version}/", f"127.0.0.1:{port}", *auth),
                    baseline=direct,
                )
            )
        python = next(
            (work / "home" / "data" / "environments" / "asgi_bench").glob("*/*/venv/bin/python")
        )
        tcp_port = stack.enter_context(_served_on_tcp(python))
        tcp = TCP_LABEL
        targets.append(Target(tcp, opener(port=tcp_port), _get("/", f"127.0.0.1:{tcp_port}")))
        if not args.no_jsp:
            print("installing jupyter-server-proxy from PyPI ...", flush=True)
            jsp_port, token = stack.enter_context(_jupyter_server_proxy(work))
            targets.append(
                Target(
                    JSP_LABEL,
                    opener(port=jsp_port),
                    _get(
                        f"/proxy/{tcp_port}/",
                        f"127.0.0.1:{jsp_port}",
                        f"Authorization: token {token}",
                    ),
                    baseline=tcp,
                )
            )
        asyncio.run(_measure(targets, args.requests, args.seconds))
        _report(targets)


if __name__ == "__main__":
    main()
