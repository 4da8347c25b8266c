"""ws_echo: /echo echoes each message (text or bytes) and tells the subprotocol and Host it saw;
/close closes with code 4000; GET / (plain HTTP) answers for the readiness probe."""

import asyncio
import http
import json
import sys

from websockets.asyncio.server import unix_serve


async def handle(connection):
    path = connection.request.path
    if path.startswith("/close"):
        await connection.close(code=4000, reason="asked to close")
        return
    hello = {"subprotocol": connection.subprotocol, "host": connection.request.headers["Host"]}
    await connection.send(json.dumps(hello))
    async for message in connection:
        await connection.send(message)


PAGE = """<!doctype html><title>ws_echo</title><pre id="out">running</pre><script>
const socket = new WebSocket(location.href.replace(/^http/, "ws").replace(/page.*$/, "echo"));
const seen = [];
socket.onmessage = (event) => {
  seen.push(event.data);
  if (seen.length === 1) socket.send("ping from the page");
  else { document.getElementById("out").textContent = JSON.stringify(seen); socket.close(); }
};
socket.onerror = () => { document.getElementById("out").textContent = "error"; };
</script>"""


def plain_http(connection, request):
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    if request.path.startswith("/page"):
        response = connection.respond(http.HTTPStatus.OK, PAGE)
        response.headers["Content-Type"] = "text/html; charset=utf-8"
        return response
    return connection.respond(http.HTTPStatus.OK, "ws_echo\n")


async def main(path):
    def choose(connection, offered):
        return next((p for p in offered if p in ("chat", "superchat")), None)

    async with unix_serve(
        handle,
        path,
        process_request=plain_http,
        subprotocols=["chat", "superchat"],
        select_subprotocol=choose,
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
