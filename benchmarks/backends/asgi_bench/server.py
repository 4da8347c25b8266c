"""GET anything: a short text answer. ``--uds PATH`` or ``--port N``."""

import argparse

import uvicorn

BODY = b"hello from asgi_bench\n"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--uds")
    parser.add_argument("--port", type=int)
    where = parser.parse_args()
    uvicorn.run(
        app,
        uds=where.uds,
        port=where.port or 8000,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
