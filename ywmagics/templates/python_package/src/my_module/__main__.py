"""The backend's server: HTTP on the Unix socket it is given (the standard library only, so that
it installs from any index; use FastAPI or anything else by adding it to the dependencies)."""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import sys
from pathlib import Path

VERSION = next(
    line.split("=", 1)[1].strip().strip('"')
    for line in (Path(__file__).parent / "ywbackend.toml").read_text().splitlines()
    if line.startswith("version")
)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {
                "backend": "my_backend",
                "version": VERSION,
                "partition": os.environ.get("YW_PARTITION"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass  # one line per request would fill the backend's log


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if __name__ == "__main__":
    Server(sys.argv[1], Handler).serve_forever()
