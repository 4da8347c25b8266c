// node_unix: GET / -> {"name": "node_unix", "partition": ...}, on the socket given as argv[2].
"use strict";
const http = require("http");

const server = http.createServer((req, res) => {
  const body = JSON.stringify({ name: "node_unix", partition: process.env.YW_PARTITION ?? null });
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
});
server.listen(process.argv[2]);
process.on("SIGTERM", () => process.exit(0));
