"""The Jupyter Server extension: backends' pages through the Jupyter server the browser already
talks to (JupyterHub, a remote lab server, an SSH tunnel), under its own ``base_url``.

- ``GET {base_url}ywmagics/open/PARTITION/NAME/VERSION/PATH`` needs Jupyter's own login (its
  identity provider and its cross-site checks). It gives the browser a **capability** for that
  one instance, a secret in the path, and redirects to ``{base_url}ywmagics/b/CAPABILITY/PATH``.
- ``{base_url}ywmagics/b/CAPABILITY/...`` is forwarded to the orchestrator's proxy for that
  instance, with the orchestrator's token added here (it never reaches the browser). A backend
  page's own requests, relative to that path, carry the capability; they need no cookie.
- **Isolation.** Every answer from a backend comes with ``Content-Security-Policy: sandbox``
  (scripts and forms allowed, *not* the same origin): a backend's page runs with an opaque
  origin, so it cannot read the Jupyter server's cookies or pages, nor script another backend;
  and with ``Referrer-Policy: no-referrer``, so the capability does not leave in a Referer. Its
  cookies are kept to its own path.

- ``{base_url}ywmagics/dashboard`` (Jupyter's login) opens the orchestrator's dashboard here:
  its page, and the calls it makes, are forwarded under ``{base_url}ywmagics/`` with the
  page's own session (sent in :data:`~ywmagics.protocol.DASHBOARD_SESSION_HEADER`), never with
  the orchestrator's token.

Kernels that this server starts get ``YW_JUPYTER_BASE_URL``: their ``%backends docs`` links,
``browser_url`` and ``%backends dashboard`` then point here (see
:func:`ywmagics.protocol.jupyter_link`).

Enabled on install (``etc/jupyter/jupyter_server_config.d/ywmagics.json``).
"""

from __future__ import annotations

import os
from typing import Any

from ywmagics.protocol import JUPYTER_BASE_URL_ENV


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "ywmagics.jupyter"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from jupyter_server.utils import url_path_join

    from ywmagics.jupyter.handlers import (
        BackendHandler,
        Capabilities,
        DashboardHandler,
        DashboardOpenHandler,
        OpenHandler,
    )

    web_app = serverapp.web_app
    base_url = web_app.settings["base_url"]
    capabilities = Capabilities()
    prefix = url_path_join(base_url, "ywmagics")
    web_app.add_handlers(
        ".*$",
        [
            (
                url_path_join(prefix, r"open/([^/]+)/([^/]+)/([^/]+)(/.*)?"),
                OpenHandler,
                {"capabilities": capabilities, "prefix": prefix},
            ),
            (
                url_path_join(prefix, r"b/([A-Za-z0-9_-]{20,})(/.*)?"),
                BackendHandler,
                {"capabilities": capabilities, "prefix": prefix},
            ),
            (url_path_join(prefix, "dashboard"), DashboardOpenHandler, {"prefix": prefix}),
            (
                prefix + r"/(dashboard/.*|stop|restart|uninstall|gc)",
                DashboardHandler,
                {"prefix": prefix},
            ),
        ],
    )
    # Kernels inherit the server's environment: theirs say where the browser reaches this.
    os.environ[JUPYTER_BASE_URL_ENV] = base_url
    serverapp.log.info("ywmagics: backends' pages under %s", prefix)
