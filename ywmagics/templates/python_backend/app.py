"""A ywmagics backend: an HTTP app that answers its readiness path (``GET /``).

Run it by hand while you develop it:
``uvicorn app:app --reload`` and open http://127.0.0.1:8000/docs
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# The installed copy of this folder holds ywbackend.toml: the manifest is the one place that
# names this backend and its version.
MANIFEST = tomllib.loads((Path(__file__).parent / "ywbackend.toml").read_text())

app = FastAPI(
    title=MANIFEST["name"], version=MANIFEST["version"], description=MANIFEST["description"]
)


@app.get("/")
def root() -> dict[str, str]:
    """The readiness path: the orchestrator polls it until it answers."""
    return {"name": MANIFEST["name"], "version": MANIFEST["version"]}


class GreetBody(BaseModel):
    name: str


@app.post("/greet")
def greet(body: GreetBody) -> dict[str, str]:
    """An example route: ``{"name": "Ada"}`` -> ``{"message": "Hello, Ada!"}``."""
    greeting = os.environ.get("YW_BUILD_GREETING", "Hello")
    return {"message": f"{greeting}, {body.name}!"}
