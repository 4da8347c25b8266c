"""The wire codec on a big array: encode + JSON + decode, against base64 + JSON of its bytes.

Baseline: the same bytes through base64 and JSON with no codec at all, in the same run. The
codec must not loop in Python per element (that would be a ratio of 100 and more).

    python benchmarks/bench_wire.py [--repeat 5] [--elements 10000000]
"""

from __future__ import annotations

import argparse
import base64
import json

import numpy as np

from ywmagics.wire import decode, encode

from _common import report, timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--elements", type=int, default=10_000_000)
    args = parser.parse_args()
    array = np.random.default_rng(0).random(args.elements, dtype=np.float32)

    def ours() -> None:
        decode(json.loads(json.dumps(encode(array, "big"))), "big")

    def baseline() -> None:
        text = json.dumps({"b64": base64.b64encode(array.tobytes()).decode()})
        np.frombuffer(base64.b64decode(json.loads(text)["b64"]), np.float32).copy()

    report(
        f"float32 array of {array.nbytes / 1e6:.0f} MB: codec round trip vs base64+JSON",
        timed(ours, args.repeat),
        timed(baseline, args.repeat),
        goal="ours <= 3x",
    )


if __name__ == "__main__":
    main()
