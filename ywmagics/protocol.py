"""Names of the HTTP protocol between clients, the orchestrator and backends, in one place.

I/O-free and shared. The python runner, which must not import ywmagics, keeps its own copy of
``NDJSON`` (``pyrun_app.py``).
"""

from __future__ import annotations

NDJSON = "application/x-ndjson"
"""Streams of events, cell output and results: one JSON object per line."""

PARTITION_HEADER = "x-backends-partition"
"""Which partition a request is for; on requests to backends, which partition they serve."""

ERROR_HEADER = "x-ywmagics-error"
"""Set on answers that the orchestrator itself gives as errors, to tell them from a backend's."""

FINGERPRINT_HEADER = "x-backends-fingerprint"
"""On a client's requests: the configuration it installed (its environment's fingerprint). The
orchestrator refuses to send them to an instance of another configuration."""

OWNER_HEADER = "x-backends-owner"
"""On an install into a kernel's own partition: the kernel's pid. The partition is stopped when
its owners have all ended, however they ended."""

CLIENT_HEADER = "x-backends-client"
"""On an install: who asks (``kernel 1234``), said when the instance it starts replaces one."""
