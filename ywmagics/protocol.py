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

PROTOCOL_VERSION = 1
"""What a client and an orchestrator must share to talk: the HTTP API, its headers and the wire
codec of values. Raised when any of them changes incompatibly; published in the discovery file
and ``/status``. An orchestrator that publishes none predates protocol versions: 0."""

ORCHESTRATOR_HEADER = "x-ywmagics-orchestrator"
"""On the orchestrator's own answers (not its backends'): ``VERSION; protocol=N``, what the
discovery file says, for a client that reached it by its URL alone."""

OWNER_HEADER = "x-backends-owner"
"""On an install into a kernel's own partition: the kernel's pid. The partition is stopped when
its owners have all ended, however they ended."""

CLIENT_VERSION_HEADER = "x-ywmagics-version"
"""On a client's install: the ywmagics version it runs, shown with the kernels attached
(``ywmagics status``, the dashboard): which versions meet on one orchestrator."""

CLIENT_HEADER = "x-backends-client"
"""On an install: who asks (``kernel 1234``), said when the instance it starts replaces one."""

DASHBOARD_SESSION_HEADER = "x-ywmagics-session"
"""The dashboard page's session, as it sends it through the Jupyter server's extension (which
makes it the orchestrator's ``Authorization: Bearer``): an ``Authorization`` header would be
taken by the Jupyter server, or JupyterHub, as a token of theirs to check."""

JUPYTER_BASE_URL_ENV = "YW_JUPYTER_BASE_URL"
"""Set by the Jupyter Server extension (:mod:`ywmagics.jupyter`) for the kernels its server
starts: the server's ``base_url``, under which the browser reaches backends' pages."""


def jupyter_link(base_url: str, partition: str, name: str, version: str, path: str) -> str:
    """The link, through a Jupyter server with the extension, to ``path`` of an instance: the
    server's login opens it (relative to the server: it works wherever the browser is)."""
    from urllib.parse import quote

    parts = "/".join(quote(part, safe="") for part in (partition, name, version))
    return f"{base_url.rstrip('/')}/ywmagics/open/{parts}/{path.lstrip('/')}"


def jupyter_dashboard_link(base_url: str, link: str) -> str:
    """The orchestrator's one-time dashboard ``link`` (``.../dashboard/#code=...``), through a
    Jupyter server with the extension."""
    return f"{base_url.rstrip('/')}/ywmagics/dashboard/#{link.partition('#')[2]}"
