// versions_demo 0.1.0: GET / -> {"name":"versions_demo","version":"0.1.0","app":<{app} from [env]>}.
"use strict";
const http = require("http");

const server = http.createServer((req, res) => {
  req.resume();
  const body = JSON.stringify({
    name: "versions_demo",
    version: "0.1.0",
    app: process.env.VERSIONS_DEMO_APP ?? null,
  });
  res.writeHead(200, { "content-type": "application/json" });
  res.end(body);
});

server.listen(Number(process.env.PORT), "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
