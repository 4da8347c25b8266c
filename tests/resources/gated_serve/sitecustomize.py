"""Holds ``python -m ywmagics serve`` at its very start, before it imports anything, until the
file named by ``YWTEST_SERVE_GATE`` exists: tests see what a kernel does while its orchestrator
cannot answer yet. On ``PYTHONPATH`` for those tests only; other processes are not held."""

import os
import sys
import time

_gate = os.environ.get("YWTEST_SERVE_GATE")
if _gate and sys.argv[-1:] == ["serve"]:  # sys.argv is ["-m", "serve"] this early
    _deadline = time.monotonic() + 60
    while not os.path.exists(_gate) and time.monotonic() < _deadline:
        time.sleep(0.005)
