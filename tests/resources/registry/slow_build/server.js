// slow_build: GET / -> {"name": "slow_build", "built": true} once its install step ran.
"use strict";
const fs = require("fs");
const http = require("http");
const path = require("path");

const server = http.createServer((req, res) => {
  const built = fs.existsSync(path.join(__dirname, "built"));
  const body = JSON.stringify({ name: "slow_build", built });
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
});
server.listen(process.argv[2]);
process.on("SIGTERM", () => process.exit(0));
