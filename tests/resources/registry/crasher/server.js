// crasher: GET / -> {"name":"crasher","pid":...}; POST /crash answers, then the process exits (7).
"use strict";
const http = require("http");

function send(res, status, value, then) {
  const body = JSON.stringify(value);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body, then);
}

const server = http.createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (req.method === "GET" && path === "/") return send(res, 200, { name: "crasher", pid: process.pid });
  if (req.method === "POST" && path === "/crash") {
    req.resume();
    return send(res, 200, { crashing: true, pid: process.pid }, () => process.exit(7));
  }
  send(res, 404, { detail: `no route ${req.method} ${path}` });
});

server.listen(Number(process.env.PORT), "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
