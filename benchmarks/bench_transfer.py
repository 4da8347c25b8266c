"""Big values in and out of a python runner, against a memory copy, pickle 5 and ipyparallel.

Each figure against baselines measured in the same run, on the same array:

- ``--in`` / ``--out`` of an 800 MB float64 array (``run_interpreter_cell``, the code of
  ``%%interpreter``, through a real orchestrator and runner) against ``numpy.copy`` of it, pickle
  protocol 5 with out-of-band buffers over a Unix socket to a helper process, and ipyparallel
  ``push`` / ``pull`` to one engine (installed here if missing). Goal: each at most 2x the copy;
- the peak memory each side takes above what it held before (``VmHWM``, reset per step), and
  what it still holds once the value is dropped. Goal: at most 1.2x the array, given back;
- a DataFrame of 10 float columns x 10 M rows, ``--in`` / ``--out``, against ``DataFrame.copy()``.
  Goal: at most 3x;
- 1000 small values in one cell, against the same cell with ``YWMAGICS_BULK=inline`` (everything
  in the JSON, as before bulk buffers existed). Goal: not slower;
- the same array as binary frames through the proxy (``YWMAGICS_BULK=frames``, as between two
  machines), in MB/s. Goal: at least 400 MB/s.

    python benchmarks/bench_transfer.py [--mb 800] [--repeat 3] [--no-ipyparallel]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import pickle
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import ywmagics
from ywmagics.client import BackendClient, OrchestratorClient
from ywmagics.kernel.interpreter import run_interpreter_cell
from ywmagics.kernel.output import Output

from _common import private_orchestrator, report

QUIET = Output(lambda text: None, lambda text: None, lambda bundle: None)
MB = 1e6


class Memory:
    """Peak and current resident memory of a process, the peak reset at each ``start``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _status(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def start(self) -> None:
        with open(f"/proc/{self.pid}/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := VmRSS
        self.before = self._status("VmRSS")

    def peak_extra(self) -> int:
        return self._status("VmHWM") - self.before

    def resident(self) -> int:
        return self._status("VmRSS")


def cell(client: BackendClient, code: str, namespace: dict[str, Any], ins: list[str],
         outs: list[str]) -> dict[str, Any]:  # fmt: skip
    return run_interpreter_cell(
        client, "bench", code, namespace=namespace, inputs=ins, outputs=outs, timeout=None,
        cell_id="bench", output=QUIET,
    )  # fmt: skip


def fresh_copy(array: Any) -> Any:
    """A copy into memory never touched before, as a receiving process must make it (a plain
    ``numpy.copy`` in a loop may land in pages that the last one freed, already mapped)."""
    import mmap

    memory = mmap.mmap(-1, max(array.nbytes, 1), flags=mmap.MAP_PRIVATE)
    copy = np.frombuffer(memory, dtype=array.dtype, count=array.size).reshape(array.shape)
    np.copyto(copy, array)
    return copy


def seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


@contextlib.contextmanager
def bulk_mode(mode: str) -> Iterator[None]:
    os.environ["YWMAGICS_BULK"] = mode
    try:
        yield
    finally:
        os.environ.pop("YWMAGICS_BULK", None)


# --- pickle 5 over a Unix socket ----------------------------------------------------------------

PICKLE_PEER = textwrap.dedent("""
    import pickle, socket, struct, sys
    peer = socket.socket(fileno=int(sys.argv[1]))
    def receive():
        head = peer.recv(16, socket.MSG_WAITALL)
        size, count = struct.unpack("QQ", head)
        meta = peer.recv(size, socket.MSG_WAITALL)
        sizes = struct.unpack(f"{count}Q", peer.recv(8 * count, socket.MSG_WAITALL))
        buffers = []
        for n in sizes:
            buffer = bytearray(n)
            view, done = memoryview(buffer), 0
            while done < n:
                done += peer.recv_into(view[done:])
            buffers.append(buffer)
        return pickle.loads(meta, buffers=buffers)
    def send(value):
        buffers = []
        meta = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        raws = [b.raw() for b in buffers]
        peer.sendall(struct.pack("QQ", len(meta), len(raws)) + meta)
        peer.sendall(struct.pack(f"{len(raws)}Q", *[r.nbytes for r in raws]))
        for raw in raws:
            peer.sendall(raw)
    kept = None
    while True:
        order = peer.recv(1)
        if order == b"i":
            kept = receive(); peer.sendall(b"k")
        elif order == b"o":
            send(kept)
        else:
            break
""")


class PicklePeer:
    def __init__(self) -> None:
        self.mine, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-c", PICKLE_PEER, str(theirs.fileno())], pass_fds=[theirs.fileno()]
        )
        theirs.close()
        sys.path.insert(0, "")

    def push(self, value: Any) -> None:
        import struct

        buffers: list[pickle.PickleBuffer] = []
        meta = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        raws = [b.raw() for b in buffers]
        self.mine.sendall(b"i" + struct.pack("QQ", len(meta), len(raws)) + meta)
        self.mine.sendall(struct.pack(f"{len(raws)}Q", *[r.nbytes for r in raws]))
        for raw in raws:
            self.mine.sendall(raw)
        assert self.mine.recv(1) == b"k"

    def pull(self) -> Any:
        import struct

        self.mine.sendall(b"o")
        size, count = struct.unpack("QQ", self.mine.recv(16, socket.MSG_WAITALL))
        meta = self.mine.recv(size, socket.MSG_WAITALL)
        sizes = struct.unpack(f"{count}Q", self.mine.recv(8 * count, socket.MSG_WAITALL))
        buffers = []
        for n in sizes:
            buffer = bytearray(n)
            view, done = memoryview(buffer), 0
            while done < n:
                done += self.mine.recv_into(view[done:])
            buffers.append(buffer)
        return pickle.loads(meta, buffers=buffers)

    def close(self) -> None:
        self.mine.sendall(b"q")
        self.process.wait(30)


# --- ipyparallel ------------------------------------------------------------------------------


@contextlib.contextmanager
def ipyparallel_view() -> Iterator[Any]:
    if importlib.util.find_spec("ipyparallel") is None:
        print("installing ipyparallel for its baseline ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "ipyparallel"], check=True)
    import ipyparallel

    cluster = ipyparallel.Cluster(n=1, log_level=40)
    client = cluster.start_and_connect_sync()
    client.wait_for_engines(1, timeout=60)
    try:
        yield client[:]
    finally:
        client.close()
        cluster.stop_cluster_sync()


# --- the figures ------------------------------------------------------------------------------


def array_figures(client: BackendClient, runner: Memory, args: argparse.Namespace) -> None:
    count = int(args.mb * MB / 8)
    array = np.random.default_rng(0).random(count)
    kernel = Memory(os.getpid())
    ours_in: list[float] = []
    ours_out: list[float] = []
    copies: list[float] = []
    fresh: list[float] = []
    pickle_in: list[float] = []
    pickle_out: list[float] = []
    sides = ("--in, kernel", "--in, runner", "--out, kernel", "--out, runner")
    memory: dict[str, list[float]] = {k: [] for k in (*sides, "dropped, kernel", "dropped, runner")}
    left: list[int] = []
    peer = PicklePeer()
    try:
        for _ in range(args.repeat):
            copies.append(seconds(lambda: np.copy(array)))
            fresh.append(seconds(lambda: fresh_copy(array)))
            held = kernel.resident(), runner.resident()
            kernel.start()
            runner.start()
            ours_in.append(seconds(lambda: cell(client, "pass", {"a": array}, ["a"], [])))
            cell(client, "total = float(a.sum())", {}, [], [])  # its pages read, as a cell does
            memory["--in, kernel"].append(kernel.peak_extra() / array.nbytes)
            memory["--in, runner"].append(runner.peak_extra() / array.nbytes)
            kernel.start()
            runner.start()
            got: dict[str, Any] = {}
            ours_out.append(seconds(lambda got=got: got.update(cell(client, "", {}, [], ["a"]))))
            assert np.array_equal(got["a"], array)  # read, as a user reading it does
            memory["--out, kernel"].append(kernel.peak_extra() / array.nbytes)
            memory["--out, runner"].append(runner.peak_extra() / array.nbytes)
            left.append(len([n for n in os.listdir("/dev/shm") if n.startswith("ywbulk-")]))
            del got
            cell(client, "del a", {}, [], [])
            memory["dropped, kernel"].append((kernel.resident() - held[0]) / array.nbytes)
            memory["dropped, runner"].append((runner.resident() - held[1]) / array.nbytes)
            pickle_in.append(seconds(lambda: peer.push(array)))
            pickle_out.append(seconds(peer.pull))
    finally:
        peer.close()
    size = f"{array.nbytes / MB:.0f} MB float64 array"
    report(f"--in of an {size} vs numpy.copy", ours_in, copies, goal="<= 2")
    report(f"--out of an {size} vs numpy.copy", ours_out, copies, goal="<= 2")
    report(f"--in of an {size} vs a copy into fresh memory", ours_in, fresh, goal="<= 2")
    report(f"--out of an {size} vs a copy into fresh memory", ours_out, fresh, goal="<= 2")
    report(f"--in of an {size} vs pickle 5 over a Unix socket", ours_in, pickle_in)
    report(f"--out of an {size} vs pickle 5 over a Unix socket", ours_out, pickle_out)
    if args.ipyparallel:
        with ipyparallel_view() as view:
            pushes = [
                seconds(lambda: view.push({"a": array}, block=True)) for _ in range(args.repeat)
            ]
            pulls = [seconds(lambda: view.pull("a", block=True)) for _ in range(args.repeat)]
        report(f"--in of an {size} vs ipyparallel push", ours_in, pushes)
        report(f"--out of an {size} vs ipyparallel pull", ours_out, pulls)
    print(f"peak memory above what each side held, in arrays (an {size}); goal <= 1.2, and ~0 "
          "once the value is dropped on both sides (median):")  # fmt: skip
    for name, ratios in memory.items():
        print(f"  {name:16} {statistics.median(ratios):6.2f}")
    print(f"  segments left in /dev/shm after a transfer: {max(left)}")
    with bulk_mode("frames"):
        frames_in = [seconds(lambda: cell(client, "pass", {"a": array}, ["a"], []))
                     for _ in range(args.repeat)]  # fmt: skip
        frames_out = [seconds(lambda: cell(client, "", {}, [], ["a"])) for _ in range(args.repeat)]
        cell(client, "del a", {}, [], [])
    for direction, times in (("--in", frames_in), ("--out", frames_out)):
        rate = array.nbytes / MB / statistics.median(times)
        print(f"binary frames through the proxy, {direction} of an {size}: {rate:.0f} MB/s "
              "(goal >= 400 MB/s)")  # fmt: skip


def frame_figures(client: BackendClient, args: argparse.Namespace) -> None:
    import pandas as pd

    rows = args.rows
    frame = pd.DataFrame({f"c{i}": np.random.default_rng(i).random(rows) for i in range(10)})
    ours_in, ours_out, copies, fresh = [], [], [], []
    for _ in range(args.repeat):
        copies.append(seconds(frame.copy))
        fresh.append(seconds(lambda: [fresh_copy(frame[c].to_numpy()) for c in frame]))
        ours_in.append(seconds(lambda: cell(client, "pass", {"df": frame}, ["df"], [])))
        ours_out.append(seconds(lambda: cell(client, "", {}, [], ["df"])))
    cell(client, "del df", {}, [], [])
    what = f"a DataFrame of 10 float columns x {rows:,} rows"
    report(f"--in of {what} vs DataFrame.copy()", ours_in, copies, goal="<= 3")
    report(f"--out of {what} vs DataFrame.copy()", ours_out, copies, goal="<= 3")
    report(f"--in of {what} vs its columns copied into fresh memory", ours_in, fresh, goal="<= 3")
    report(f"--out of {what} vs its columns copied into fresh memory", ours_out, fresh,
           goal="<= 3")  # fmt: skip


def small_values_figure(client: BackendClient, args: argparse.Namespace) -> None:
    values = {f"v{i}": [i, f"text {i}", {"k": i / 7}] for i in range(1000)}
    names = list(values)
    ours, inline = [], []
    for _ in range(args.repeat * 5):
        ours.append(seconds(lambda: cell(client, "pass", values, names, names)))
        with bulk_mode("inline"):
            inline.append(seconds(lambda: cell(client, "pass", values, names, names)))
    report("1000 small values in and out of one cell vs everything inside the JSON", ours, inline,
           unit="ms", goal="<= 1")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=800)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-ipyparallel", dest="ipyparallel", action="store_false")
    args = parser.parse_args()
    with private_orchestrator() as connection:
        client = ywmagics.install(
            {
                "modules": ["pyrun_backend#^0.1.0 as bench"],
                "configurations": {"pyrun_backend": {"build": {"modules": "numpy pandas"}}},
            },
            partition="Bench",
            connection=connection,
        )["bench"]
        cell(client, "import numpy, pandas", {}, [], [])
        [instance] = [
            i for i in OrchestratorClient(connection).listing()["instances"]
            if i["partition"] == "Bench"
        ]  # fmt: skip
        runner = Memory(int(instance["pid"]))
        array_figures(client, runner, args)
        frame_figures(client, args)
        small_values_figure(client, args)


if __name__ == "__main__":
    main()
