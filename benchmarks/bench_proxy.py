"""The proxy's added latency per request: through the orchestrator against straight to the backend.

Both go to the same pyrun instance (GET /, its readiness answer), from the same kind of httpx
client, in the same run. Goal: at most 0.5 ms added per hop.

    python benchmarks/bench_proxy.py [--requests 3000]
"""

from __future__ import annotations

import argparse

import httpx

import ywmagics
from ywmagics.client import OrchestratorClient

from _common import private_orchestrator, report, timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--backend", default="pyrun_backend")
    args = parser.parse_args()
    with private_orchestrator() as connection:
        client = ywmagics.install(
            f"{args.backend} as b", partition="Bench", connection=connection
        ).b
        instance = next(
            i
            for i in OrchestratorClient(connection).listing()["instances"]
            if i["partition"] == "Bench"
        )
        proxied_url = client.url_base + "/"
        headers = {**connection.headers, "X-Backends-Partition": "Bench"}
        with (
            httpx.Client() as through,
            httpx.Client(transport=httpx.HTTPTransport(uds=instance["listen"])) as direct,
        ):

            def via_proxy() -> None:
                through.get(proxied_url, headers=headers).raise_for_status()

            def straight() -> None:
                direct.get("http://backend/").raise_for_status()

            for warm in (via_proxy, straight):
                timed(warm, 200)
            # Interleave rounds so that machine noise hits both alike.
            ours: list[float] = []
            base: list[float] = []
            for _ in range(10):
                ours += timed(via_proxy, args.requests // 10)
                base += timed(straight, args.requests // 10)
        report(
            f"GET / on {args.backend}: through the orchestrator vs straight to its socket",
            ours,
            base,
            unit="ms",
            goal="added <= 0.5 ms per hop",
        )
        added = (sorted(ours)[len(ours) // 2] - sorted(base)[len(base) // 2]) * 1000
        print(f"  added by the proxy: {added:.3f} ms per request")


if __name__ == "__main__":
    main()
