// A ywmagics backend: HTTP on the Unix socket it is given. Its manifest is the "ywbackend" field
// of package.json (the keys of ywbackend.toml; name and version are the package's).
const http = require("http");
const { version } = require("./package.json");

http
  .createServer((request, response) => {
    response.setHeader("Content-Type", "application/json");
    response.end(
      JSON.stringify({ backend: "my_backend", version, partition: process.env.YW_PARTITION })
    );
  })
  .listen(process.argv[2]);
