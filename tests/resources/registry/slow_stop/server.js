// slow_stop: GET / -> {"pid": ...}; on SIGTERM it goes on serving for a second, then exits.
"use strict";
const http = require("http");

const server = http.createServer((req, res) => {
  const body = JSON.stringify({ pid: process.pid });
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
});
server.listen(Number(process.env.PORT), "127.0.0.1");
process.on("SIGTERM", () => setTimeout(() => process.exit(0), 1000));
