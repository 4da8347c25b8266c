// data_keeper: POST /add {"line": "..."} appends a line to the data folder's log and answers
// every line so far; GET / answers the data folder (argument and YW_DATA_DIR) and whether the
// path recorded at install still exists.
"use strict";
const fs = require("fs");
const http = require("http");
const path = require("path");
const [socket, data, recorded] = process.argv.slice(2);
const log = path.join(data, "log");

function send(res, status, value, then) {
  const body = JSON.stringify(value);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body, then);
}

function lines() {
  return fs.existsSync(log) ? fs.readFileSync(log, "utf8").split("\n").filter(Boolean) : [];
}

const server = http.createServer((req, res) => {
  const url = req.url.split("?")[0];
  if (req.method === "GET" && url === "/") {
    const env = fs.readFileSync(recorded, "utf8");
    return send(res, 200, {
      data, data_env: process.env.YW_DATA_DIR, recorded_env: env, recorded_exists: fs.existsSync(env),
      lines: lines(),
    });
  }
  if (req.method === "POST" && url === "/add") {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    return req.on("end", () => {
      fs.appendFileSync(log, JSON.parse(body).line + "\n");
      send(res, 200, { lines: lines() });
    });
  }
  send(res, 404, { detail: `no route ${req.method} ${url}` });
});

server.listen(socket);
process.on("SIGTERM", () => process.exit(0));
