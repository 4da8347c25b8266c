// node_echo: GET / -> {"name":"node_echo"}; POST /echo -> the JSON body plus {"partition": ...};
// GET /headers, POST /size and GET /big serve the proxy's tests; GET /page (a page whose script
// calls the URLs in ?targets=, as a hostile page would), GET /links (links to ?to=), POST /record
// and GET /hits serve the browser's.
"use strict";
const http = require("http");

let hits = 0;

const PAGE = `<!doctype html><title>node_echo page</title><pre id="out">running</pre><script>
(async () => {
  const targets = JSON.parse(new URLSearchParams(location.search).get("targets") || "[]");
  const results = {};
  for (const url of targets) {
    for (const [how, options] of [
      ["cors", { method: "POST", credentials: "include", body: "{}",
                 headers: { "content-type": "application/json" } }],
      ["no-cors", { method: "POST", mode: "no-cors", credentials: "include", body: "x" }],
      ["get", { credentials: "include" }],
    ]) {
      try {
        const answer = await fetch(url, options);
        results[how + " " + url] = answer.type === "opaque" ? "opaque" : answer.status;
      } catch (error) {
        results[how + " " + url] = "blocked";
      }
    }
  }
  document.getElementById("out").textContent = JSON.stringify(results);
})();
</script>`;

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
  if (req.method === "GET" && path === "/page") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    return res.end(PAGE);
  }
  if (req.method === "GET" && path === "/links") {
    // A page with a link and an image from another site, asking browsers to tell it everything.
    const to = new URL(req.url, "http://x").searchParams.get("to") || "";
    const quoted = to.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    res.writeHead(200, { "content-type": "text/html", "referrer-policy": "unsafe-url" });
    return res.end(`<!doctype html><img src="${quoted}/pixel"><a id="away" href="${quoted}/away">away</a>`);
  }
  if (path === "/record") return send(res, 200, { hits: ++hits });
  if (req.method === "GET" && path === "/answer") {
    // Whatever headers and status it is asked for: what a hostile backend could answer.
    const asked = new URL(req.url, "http://x").searchParams;
    const headers = [];
    for (const [name, value] of JSON.parse(asked.get("headers") || "[]")) headers.push(name, value);
    res.writeHead(Number(asked.get("status") || "200"), headers);
    return res.end("answered");
  }
  if (req.method === "GET" && path === "/events") {
    // Server-Sent Events, a few at a pace: each must reach the client as it is sent.
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    let n = 0;
    const tick = setInterval(() => {
      res.write(`data: ${n}\n\n`);
      if (++n === 3) {
        clearInterval(tick);
        res.end();
      }
    }, 300);
    return;
  }
  if (req.method === "GET" && path === "/call") {
    // Calls the orchestrator with its instance token, as a backend calling another does.
    const target = new URL(req.url, "http://x").searchParams.get("path");
    const call = http.get(
      process.env.YW_ORCHESTRATOR_URL + target,
      { headers: { authorization: `Bearer ${process.env.YW_INSTANCE_TOKEN}` } },
      (answer) => {
        const chunks = [];
        answer.on("data", (chunk) => chunks.push(chunk));
        answer.on("end", () => send(res, 200, { status: answer.statusCode, body: Buffer.concat(chunks).toString() }));
      },
    );
    call.on("error", (error) => send(res, 502, { detail: error.message }));
    return;
  }
  if (req.method === "GET" && path === "/hits") return send(res, 200, { hits });
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
