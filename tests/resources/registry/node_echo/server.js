// node_echo: GET / -> {"name":"node_echo"}; POST /echo -> the JSON body plus {"partition": ...};
// GET /headers, POST /size and GET /big serve the proxy's tests.
"use strict";
const http = require("http");

function send(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (req.method === "GET" && path === "/") return send(res, 200, { name: "node_echo" });
  if (req.method === "POST" && path === "/echo") {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
      } catch (error) {
        return send(res, 400, { detail: `body is not JSON: ${error.message}` });
      }
      if (body === null || typeof body !== "object" || Array.isArray(body)) body = { body };
      send(res, 200, { ...body, partition: process.env.YW_PARTITION ?? null });
    });
    return;
  }
  if (req.method === "GET" && path === "/headers") return send(res, 200, req.headers);
  if (req.method === "POST" && path === "/size") {
    // Counts the body as it streams in, and answers its length.
    let size = 0;
    req.on("data", (chunk) => (size += chunk.length));
    req.on("end", () => send(res, 200, { size }));
    return;
  }
  if (req.method === "GET" && path === "/big") {
    // A large answer written in pieces, without a content-length: it must stream through.
    const piece = "x".repeat(64 * 1024);
    const count = Number(new URL(req.url, "http://x").searchParams.get("pieces") || "64");
    res.writeHead(200, { "content-type": "text/plain" });
    for (let i = 0; i < count; i++) res.write(piece);
    return res.end();
  }
  send(res, 404, { detail: `no route ${req.method} ${path}` });
});

server.listen(Number(process.env.PORT), "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
