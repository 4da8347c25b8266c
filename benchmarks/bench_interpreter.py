"""A trivial ``%%interpreter`` cell against a Jupyter kernel's own execute, and against a direct
HTTP call to the runner, all measured in the same run.

- ours: ``ip.run_cell_magic("interpreter", "py", "x = 1")`` in an IPython shell (the magic's
  whole cost: request, streaming answer, namespace update);
- baseline 1: ``x = 1`` executed by a real ipykernel through jupyter_client (request, reply and
  the kernel's idle status), the round trip a notebook pays for any cell (goal: ratio ≤ 0.5);
- baseline 2: ``POST /run`` straight to the runner's Unix socket (goal: ratio ≤ 3);
- in one real kernel, the whole execute of ``%%interpreter py --out x`` / ``x = 1`` against the
  whole execute of a plain ``x = 1`` cell, as a notebook user waits for them (goal: ≤ 1.2).

    python benchmarks/bench_interpreter.py [--cells 300]
"""

from __future__ import annotations

import argparse

import httpx
from IPython.core.interactiveshell import InteractiveShell
from jupyter_client.manager import start_new_kernel

from ywmagics.client import OrchestratorClient

from _common import private_orchestrator, report, timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=300)
    args = parser.parse_args()
    with private_orchestrator() as connection:
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "ywmagics")
        shell.run_line_magic("backends", "install pyrun_backend#^0.1.0 as py --partition Bench")
        instance = next(
            i
            for i in OrchestratorClient(connection).listing()["instances"]
            if i["partition"] == "Bench"
        )

        def magic() -> None:
            shell.run_cell_magic("interpreter", "py --out x", "x = 1")
            assert shell.user_ns["x"] == 1

        manager, kernel = start_new_kernel(kernel_name="python3")
        try:

            def execute(code: str = "x = 1") -> None:
                reply = kernel.execute_interactive(code, timeout=30, output_hook=lambda m: None)
                assert reply["content"]["status"] == "ok", reply["content"]

            execute("%load_ext ywmagics")
            execute("%backends install pyrun_backend#^0.1.0 as py --partition Bench")

            def kernel_magic() -> None:
                execute("%%interpreter py --out x\nx = 1")

            with httpx.Client(transport=httpx.HTTPTransport(uds=instance["listen"])) as direct:
                body = {"cellId": "bench", "code": "x = 1", "capturedIn": {}, "capturedOut": ["x"]}

                def http_run() -> None:
                    assert (
                        direct.post("http://runner/run", json=body).json()["capturedOut"]["x"] == 1
                    )

                for warm in (magic, execute, http_run, kernel_magic):
                    timed(warm, 30)
                ours: list[float] = []
                kernel_times: list[float] = []
                http_times: list[float] = []
                in_kernel: list[float] = []
                for _ in range(10):  # interleaved, so machine noise hits all alike
                    ours += timed(magic, args.cells // 10)
                    kernel_times += timed(execute, args.cells // 10)
                    http_times += timed(http_run, args.cells // 10)
                    in_kernel += timed(kernel_magic, args.cells // 10)
        finally:
            kernel.stop_channels()
            manager.shutdown_kernel(now=True)
        report(
            "trivial %%interpreter cell vs a Jupyter kernel's execute round trip",
            ours,
            kernel_times,
            unit="ms",
            goal="<= 0.5",
        )
        report(
            "trivial %%interpreter cell vs POST /run straight to the runner",
            ours,
            http_times,
            unit="ms",
            goal="<= 3",
        )
        report(
            "%%interpreter py --out x cell vs a plain x = 1 cell, whole execute in one kernel",
            in_kernel,
            kernel_times,
            unit="ms",
            goal="<= 1.2",
        )


if __name__ == "__main__":
    main()
