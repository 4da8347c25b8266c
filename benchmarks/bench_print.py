"""A loop of prints in a ``%%interpreter`` cell against the same loop in a plain kernel cell, in
one real kernel, timed by the client until every line has arrived (issue 9: output at kernel
speed; goal <= 1.5x).

    python benchmarks/bench_print.py [--lines 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from jupyter_client.manager import KernelManager

from _common import private_orchestrator, report


def _timed(client: Any, code: str, lines: int) -> float:
    seen = 0

    def hook(message: dict[str, Any]) -> None:
        nonlocal seen
        if message["msg_type"] == "stream":
            seen += message["content"]["text"].count("\n")
        elif message["msg_type"] == "error":
            raise RuntimeError(message["content"]["evalue"])

    start = time.perf_counter()
    client.execute_interactive(code, output_hook=hook, timeout=600)
    took = time.perf_counter() - start
    assert seen == lines, (seen, lines)  # every line came
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    loop = f"for i in range({args.lines}):\n    print('line', i)\n"
    with private_orchestrator():
        manager = KernelManager(kernel_name="python3")
        manager.start_kernel()
        client = manager.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            client.execute_interactive(
                "%load_ext ywmagics\n%backends install pyrun_backend#^0.1.0 as py", timeout=300
            )
            ours: list[float] = []
            plain: list[float] = []
            for _ in range(args.rounds):  # interleaved: machine noise hits both alike
                plain.append(_timed(client, loop, args.lines))
                ours.append(_timed(client, "%%interpreter py\n" + loop, args.lines))
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)
    report(
        f"{args.lines} printed lines: %%interpreter cell vs plain kernel cell",
        ours,
        plain,
        goal="<= 1.5",
    )


if __name__ == "__main__":
    main()
