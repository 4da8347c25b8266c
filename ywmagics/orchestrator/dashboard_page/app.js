// The dashboard of the orchestrator. One live NDJSON stream (GET /dashboard/stream) of
// snapshots drives the whole page; actions are POSTs that carry the session. Everything the
// server sends is user data (backend names, configurations, logs): the DOM is built with
// createElement and textContent only, never from markup.
"use strict";

const SESSION_KEY = "ywmagics.dashboard.session";
const NEW_LINK = ["open a new link with ", ["ywmagics dashboard"], " or ", ["%backends dashboard"]];
const GONE = ["The orchestrator is gone or was restarted, or this session has ended: ",
  ...NEW_LINK, "."];
// Framed (a notebook's output area), the page keeps its session in memory only: a tab's
// sessionStorage is shared with frames of the same origin that other pages put up, and with
// tabs it opens, so a stored session would let another page on 127.0.0.1 frame a live one.
const FRAMED = window.top !== window.self;
const stored = {
  get: () => (FRAMED ? null : sessionStorage.getItem(SESSION_KEY)),
  set: (value) => { if (!FRAMED) sessionStorage.setItem(SESSION_KEY, value); },
  drop: () => sessionStorage.removeItem(SESSION_KEY),
};
const LOG_LIMIT = 512 * 1024; // characters kept in a log panel: a chatty backend stays bounded
const DONE_SHOWN_FOR = 30; // seconds a finished install stays listed (as one line)

// Where the orchestrator's routes are, as this page is served: "/" from the orchestrator,
// "{base_url}ywmagics/" through the Jupyter server's extension. The page is always ROOT/dashboard/.
const ROOT = location.pathname.replace(/dashboard\/$/, "");
const routeOf = (path) => ROOT + path.replace(/^\//, "");
// Through the Jupyter server, "Authorization" would be taken for a token of Jupyter's (or
// JupyterHub's): the extension passes this header on as the orchestrator's Authorization.
const sessionHeader = (value) => (ROOT === "/" ? { authorization: `Bearer ${value}` }
  : { "x-ywmagics-session": value });

let session = null;
let gone = false;
const panels = new Map(); // key → {row, controller}: open log panels, kept across snapshots
const dismissed = new Set(); // ids of failed installs the user closed

const $ = (id) => document.getElementById(id);

// ---- DOM helpers ----------------------------------------------------------------------------

// el("td", {class: "x", "data-label": "Name"}, "text", child): attributes are set as
// attributes and children as text nodes or elements, so nothing here ever parses markup.
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children);
  return node;
}

// A sentence whose [bracketed] parts are commands, shown as code.
function sentence(parts) {
  return parts.map((part) => (Array.isArray(part) ? el("code", {}, part[0]) : part));
}

// Assigning the same text again would still reset a selection the user is making.
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setData(node, data) {
  for (const [name, value] of Object.entries(data)) {
    if (node.dataset[name] !== String(value)) node.dataset[name] = String(value);
  }
}

function button(label, action, handler, kind = "") {
  const node = el("button", { type: "button", class: kind, "data-action": action }, label);
  node.addEventListener("click", handler);
  return node;
}

// Make the keyed children of `parent` match `items`, in order, after `start` (a thead, or
// null). An element lives as long as its key is listed, so what the user has open in it (a log
// panel and its scroll position, a selection) survives every snapshot.
function sync(parent, items, keyOf, create, update, start = null) {
  const old = new Map();
  for (const child of parent.children) if (child.dataset.key) old.set(child.dataset.key, child);
  let previous = start;
  for (const item of items) {
    const key = keyOf(item);
    let node = old.get(key);
    old.delete(key);
    if (!node) {
      node = create(item);
      node.dataset.key = key;
    }
    node.item = item; // what its buttons act on: always the latest snapshot
    update(node, item);
    const next = previous ? previous.nextElementSibling : parent.firstElementChild;
    if (next !== node) parent.insertBefore(node, next); // moved only when the order changed
    previous = node;
  }
  for (const node of old.values()) node.remove();
}

// ---- formatting -----------------------------------------------------------------------------

function size(bytes) {
  if (bytes === null || bytes === undefined) return "…";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function duration(seconds) {
  let s = Math.max(0, Math.floor(seconds || 0));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  s %= 60;
  if (m < 60) return `${m} min ${s} s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function ago(seconds) {
  const units = [["year", 365 * 86400], ["month", 30 * 86400], ["day", 86400],
    ["hour", 3600], ["minute", 60]];
  for (const [unit, length] of units) {
    const n = Math.floor(seconds / length);
    if (n >= 1) return `${n} ${unit}${n === 1 ? "" : "s"} ago`;
  }
  return "just now";
}

function configText(config) {
  const pairs = Object.entries(config || {});
  if (pairs.length === 0) return "defaults";
  return pairs.map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(", ");
}

const STATE_LABELS = { failed: "given up" };
const spec = (item) => `${item.name}#${item.version}`;

// ---- talking to the orchestrator -------------------------------------------------------------

class Gone extends Error {}

async function request(method, path, body, signal) {
  const headers = sessionHeader(session);
  if (body !== undefined) headers["content-type"] = "application/json";
  const init = { method, headers, signal, cache: "no-store" };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(routeOf(path), init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    showBanner(GONE, "gone"); // nothing answers on the orchestrator's port any more
    throw new Gone();
  }
  if (response.status === 401) {
    // Sessions live in the orchestrator's memory: a 401 means it restarted (or ours expired).
    stored.drop();
    showBanner(GONE, "gone");
    throw new Gone();
  }
  return response;
}

async function errorText(response) {
  try {
    const { error } = await response.json();
    return error.hint ? `${error.message} (${error.hint})` : error.message;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// A POST whose JSON answer is returned; a refusal is thrown with its message (run shows it).
async function act(path, body) {
  const response = await request("POST", path, body);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// Runs an action from a button: the button is disabled until the answer, failures are shown.
async function run(node, work) {
  if (gone) return;
  node.disabled = true;
  try {
    await work();
  } catch (error) {
    if (!(error instanceof Gone)) notice(String(error.message || error), true);
  } finally {
    node.disabled = false;
  }
}

// ---- banners and notices ---------------------------------------------------------------------

function showBanner(parts, reason) {
  const banner = $("gone");
  banner.replaceChildren(...sentence(parts));
  banner.dataset.reason = reason;
  banner.hidden = false;
  if (reason === "gone") {
    gone = true;
    document.body.classList.add("is-gone");
    setLive("gone", "disconnected");
    for (const key of [...panels.keys()]) closePanel(key, "the orchestrator is gone");
  }
}

let noticeTimer = null;
function notice(text, error = false) {
  const node = $("notice");
  node.replaceChildren(el("span", {}, text), button("×", "dismiss", () => (node.hidden = true), "plain"));
  node.classList.toggle("error", error);
  node.hidden = false;
  clearTimeout(noticeTimer);
  if (!error) noticeTimer = setTimeout(() => (node.hidden = true), 8000);
}

function setLive(state, text) {
  const live = $("live");
  live.dataset.state = state;
  setText(live, text);
}

// ---- the stream ------------------------------------------------------------------------------

async function follow() {
  const began = Date.now();
  try {
    const response = await request("GET", "/dashboard/stream");
    if (!response.ok) {
      const why = await errorText(response);
      return showBanner([`The orchestrator refused the dashboard (${why}): `, ...NEW_LINK, "."], "gone");
    }
    setLive("live", "live");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop(); // the unfinished end of a line waits for the next chunk
      for (const line of lines) if (line.trim()) receive(JSON.parse(line));
    }
  } catch (error) {
    if (error instanceof Gone) return;
  }
  if (gone) return;
  // The stream is endless: its end means the orchestrator stopped. A stream that ran a while
  // may have been cut by something else, so reconnect once; the new request tells which.
  if (Date.now() - began > 5000) return follow();
  showBanner(GONE, "gone");
}

function receive(item) {
  if (item.state) render(item.state);
  // Events need nothing of their own: a snapshot that shows their effect follows at once.
}

function render(state) {
  const orchestrator = state.orchestrator;
  const now = orchestrator.started + orchestrator.uptime; // the orchestrator's clock
  renderOrchestrator(orchestrator);
  renderInstalls(state.installs || [], now);
  renderPartitions(state.partitions || []);
  renderEnvironments(state.environments || [], state.disk || {}, now);
  // A panel whose instance or environment went away ends with it.
  for (const key of [...panels.keys()]) if (!document.contains(panels.get(key).row)) closePanel(key);
  $("main").hidden = false;
}

// ---- the orchestrator ------------------------------------------------------------------------

function renderOrchestrator(o) {
  const box = $("orchestrator");
  if (!box.querySelector("dl")) {
    const list = el("dl");
    for (const [field, label] of [["version", "Version"], ["uptime", "Uptime"], ["url", "URL"],
      ["kernels", "Kernels attached"], ["pid", "PID"], ["clients", "Kernels' ywmagics"]]) {
      list.append(el("div", {}, el("dt", {}, label), el("dd", { "data-field": field })));
    }
    box.prepend(list);
  }
  // The versions that meet here: its own (protocol, codec), and each attached kernel's.
  const clients = (o.attached || []).map((k) => `${k.pid}: ${k.version || "?"}`).join(", ");
  const values = { version: `${o.version} (protocol ${o.protocol}, codec ${o.codec})`,
    uptime: duration(o.uptime), url: o.url, kernels: String(o.kernels), pid: String(o.pid),
    clients: clients || "—" };
  for (const [field, text] of Object.entries(values)) {
    setText(box.querySelector(`[data-field="${field}"]`), text);
  }
}

// ---- installs --------------------------------------------------------------------------------

function renderInstalls(installs, now) {
  const shown = installs.filter((i) => i.state === "running"
    || (i.state === "failed" && !dismissed.has(i.id))
    || (i.state === "done" && now - (i.ended || now) < DONE_SHOWN_FOR));
  $("installs-section").hidden = shown.length === 0;
  sync($("installs"), shown, (i) => i.id, createInstall, updateInstall);
}

function createInstall(install) {
  const card = el("article", { class: "install", "data-testid": "install" });
  const close = button("Dismiss", "dismiss", () => {
    dismissed.add(card.item.id);
    card.remove();
  }, "plain");
  card.refs = {
    title: el("h3"), badge: el("span", { class: "state" }), when: el("span", { class: "muted" }),
    bar: el("progress", { max: "1" }), steps: el("ol", { class: "steps" }),
    error: el("p", { class: "error-text", "data-testid": "install-error" }),
    hint: el("p", { class: "hint" }), tail: el("pre", { class: "log", "data-testid": "log-tail" }),
    close,
  };
  const r = card.refs;
  card.append(el("div", { class: "install-head" }, r.title, r.badge, r.when, close),
    r.bar, r.steps, r.error, r.hint, r.tail);
  return card;
}

function updateInstall(card, install) {
  const r = card.refs;
  setData(card, { state: install.state, name: install.name, version: install.version,
    partition: install.partition });
  card.classList.toggle("failed", install.state === "failed");
  setText(r.title, `${spec(install)} in ${install.partition}`);
  setText(r.badge, install.state);
  r.badge.dataset.state = install.state;
  const took = install.ended - install.started;
  setText(r.when, install.ended ? `took ${took < 10 ? `${took.toFixed(1)} s` : duration(took)}` : "");
  r.close.hidden = install.state !== "failed";
  r.bar.hidden = install.state !== "running";
  // No progress known yet: an indeterminate bar (no value attribute) says "working".
  if (install.progress === null || install.progress === undefined) r.bar.removeAttribute("value");
  else r.bar.value = install.progress;
  if (r.steps.children.length !== install.steps.length) {
    r.steps.replaceChildren(...install.steps.map((step) => el("li", { "data-kind": step.kind },
      el("span", { class: "kind" }, step.kind), " ", step.text)));
  }
  setText(r.error, install.error || "");
  r.error.hidden = !install.error;
  setText(r.hint, install.hint || "");
  r.hint.hidden = !install.hint;
  setText(r.tail, install.log_tail || "");
  r.tail.hidden = !install.log_tail;
}

// ---- partitions and instances ----------------------------------------------------------------

const INSTANCE_COLUMNS = ["Name", "Version", "State", "PID", "Uptime", "Restarts", "CPU", "Memory",
  "Used by", "Configuration", ""];

// One table for all partitions, so that columns line up: each partition is a heading tbody
// followed by one tbody per instance.
function renderPartitions(partitions) {
  $("no-partitions").hidden = partitions.length > 0;
  $("instances-box").hidden = partitions.length === 0;
  const table = $("instances-table");
  const rows = partitions.flatMap((p) => [{ heading: p }, ...p.instances]);
  const keyOf = (item) => (item.heading ? JSON.stringify(["partition", item.heading.name]) : instanceKey(item));
  sync(table, rows, keyOf,
    (item) => (item.heading ? createPartition() : createInstance(item)),
    (node, item) => (item.heading ? updatePartition(node, item.heading) : updateInstance(node, item)),
    table.tHead);
}

function createPartition() {
  const body = el("tbody", { class: "partition", "data-testid": "partition" });
  const title = el("h3");
  const owners = el("span", { class: "muted" });
  const stop = button("Stop partition", "stop-partition", () => run(stop, () => stopPartition(body.item.heading)), "danger");
  body.refs = { title, owners };
  body.append(el("tr", {}, el("td", { colspan: INSTANCE_COLUMNS.length },
    el("div", { class: "partition-head" }, title, owners, stop))));
  return body;
}

function updatePartition(body, partition) {
  setData(body, { name: partition.name });
  setText(body.refs.title, partition.name);
  const owners = partition.owners || [];
  setText(body.refs.owners, owners.length ? `kernel${owners.length === 1 ? "" : "s"} ${owners.join(", ")}` : "no kernel attached");
}

const instanceKey = (i) => JSON.stringify(["instance", i.partition, i.name, i.version]);

// One tbody per instance: its row, and below it the log panel when open.
function createInstance(instance) {
  const body = el("tbody", { class: "instance" });
  const cells = {};
  const row = el("tr", { "data-testid": "instance" });
  for (const label of INSTANCE_COLUMNS.slice(0, -1)) {
    cells[label] = el("td", { "data-label": label });
    row.append(cells[label]);
  }
  cells.State.append(el("span", { class: "state" }));
  const key = instanceKey(instance);
  const log = button("Log", "log", () => togglePanel(key, body, (entry) => followLog(entry, body.item)));
  const restart = button("Restart", "restart", () => run(restart, () => restartInstance(body.item)));
  const stop = button("Stop", "stop", () => run(stop, () => stopInstance(body.item)), "danger");
  row.append(el("td", { class: "actions" }, log, restart, stop));
  body.refs = { row, cells, log };
  body.append(row);
  return body;
}

function updateInstance(body, i) {
  const { row, cells } = body.refs;
  setData(row, { partition: i.partition, name: i.name, version: i.version, state: i.state,
    pid: i.pid ?? "", fingerprint: i.fingerprint });
  setText(cells.Name, i.name);
  setText(cells.Version, i.version);
  const badge = cells.State.firstChild;
  setText(badge, STATE_LABELS[i.state] || i.state);
  badge.dataset.state = i.state;
  setText(cells.PID, i.pid === null ? "—" : String(i.pid));
  // On a cluster: its job and node (the pid is srun's, on this machine).
  const where = i.on && i.on !== "local" ? placementText(i) : "";
  cells.PID.title = where;
  if (where) cells.PID.append(el("div", { class: "muted", "data-testid": "where" }, where));
  setText(cells.Uptime, i.started ? duration(i.uptime) : "—");
  setText(cells.Restarts, String(i.restarts));
  setText(cells.CPU, i.cpu_percent === null || i.cpu_percent === undefined ? "—" : `${i.cpu_percent.toFixed(1)} %`);
  setText(cells.Memory, i.rss === null || i.rss === undefined ? "—" : size(i.rss));
  setText(cells["Used by"], i.installed_by || "—");
  setText(cells.Configuration, configText(i.config));
  cells.Configuration.title = i.python_version ? `Python ${i.python_version}` : "";
}

function placementText(i) {
  const job = i.job ? ` job ${i.job}` : "";
  const node = i.node ? ` on ${i.node}` : "";
  const state = i.job_state && i.job_state !== "RUNNING" ? ` (${i.job_state.toLowerCase()})` : "";
  return `${i.on}${job}${node}${state}`;
}

async function stopInstance(i) {
  if (!confirm(`Stop ${spec(i)} in partition ${i.partition}?\nIts process ends and its data folder is deleted.`)) return;
  await act("/stop", { partition: i.partition, name: i.name, version: i.version });
  notice(`Stopped ${spec(i)} in ${i.partition}.`);
}

async function restartInstance(i) {
  const process = i.pid === null ? "It is" : `Its process (pid ${i.pid}) is stopped and`;
  if (!confirm(`Restart ${spec(i)} in partition ${i.partition}?\n${process} started again.`)) return;
  const { restarted } = await act("/restart", { partition: i.partition, name: i.name, version: i.version });
  notice(`Restarted ${spec(i)} in ${i.partition} (pid ${restarted.pid}).`);
}

async function stopPartition(p) {
  const names = p.instances.map(spec).join(", ") || "no instance";
  if (!confirm(`Stop partition ${p.name} and all its instances (${names})?`)) return;
  await act("/stop", { partition: p.name });
  notice(`Stopped partition ${p.name}.`);
}

// ---- log panels (instance logs, install logs) ------------------------------------------------

function togglePanel(key, body, load) {
  if (panels.has(key)) return closePanel(key);
  const columns = body.refs.row.children.length;
  const status = el("span", { class: "muted" }, "loading…");
  const pre = el("pre", { class: "log", "data-testid": "log", tabindex: "0" });
  const row = el("tr", { class: "panel-row" }, el("td", { colspan: columns },
    el("div", { class: "log-head" }, status), pre));
  const entry = { key, row, pre, status, length: 0, controller: new AbortController(),
    button: body.refs.log };
  panels.set(key, entry);
  entry.button.setAttribute("aria-pressed", "true");
  body.append(row);
  load(entry);
}

function closePanel(key, why) {
  const entry = panels.get(key);
  if (!entry) return;
  panels.delete(key);
  entry.controller.abort();
  entry.button.setAttribute("aria-pressed", "false");
  if (why) setText(entry.status, why);
  else entry.row.remove();
}

function appendLog(entry, text) {
  const pre = entry.pre;
  // Follow the end only while the user is there: scrolled up to read, the panel stays put.
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
  pre.append(text);
  entry.length += text.length;
  if (entry.length > LOG_LIMIT) {
    pre.textContent = pre.textContent.slice(-LOG_LIMIT / 2);
    entry.length = pre.textContent.length;
  }
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

async function streamInto(entry, path, following) {
  try {
    const response = await request("GET", path, undefined, entry.controller.signal);
    if (!response.ok) return setText(entry.status, await errorText(response));
    setText(entry.status, following);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      appendLog(entry, decoder.decode(value, { stream: true }));
    }
    if (panels.get(entry.key) === entry) setText(entry.status, following === "following" ? "the log ended" : "");
  } catch (error) {
    if (error.name !== "AbortError" && !(error instanceof Gone)) setText(entry.status, String(error.message));
  }
}

// A browser opens at most 6 connections to a host, for every tab and frame of it: the stream
// holds one, and each followed log another. Past FOLLOWED_AT_ONCE, the oldest stops following
// (its text stays), so that buttons and other tabs still get through.
const FOLLOWED_AT_ONCE = 2;
const followed = [];

function followLog(entry, i) {
  const query = new URLSearchParams({ partition: i.partition, name: i.name, version: i.version });
  for (const old of followed.splice(0, Math.max(0, followed.length - FOLLOWED_AT_ONCE + 1))) {
    old.controller.abort();
    if (panels.get(old.key) === old) {
      setText(old.status, `paused: at most ${FOLLOWED_AT_ONCE} logs are followed at once`);
    }
  }
  followed.push(entry);
  entry.controller.signal.addEventListener("abort", () => {
    const at = followed.indexOf(entry);
    if (at >= 0) followed.splice(at, 1);
  });
  streamInto(entry, `/dashboard/log?${query}`, "following");
  entry.status.after(el("span", { class: "muted path" }, i.log || ""));
}

// ---- environments ----------------------------------------------------------------------------

const ENVIRONMENT_COLUMNS = ["Name", "Version", "Configuration", "Python", "Built by", "Size", "Last used",
  "In use by"];
const environmentKey = (e) => JSON.stringify(["environment", e.name, e.version, e.fingerprint]);

function renderEnvironments(environments, disk, now) {
  $("no-environments").hidden = environments.length > 0;
  const total = environments.length ? `${environments.length} environment${environments.length === 1 ? "" : "s"}, ${size(disk.environments ?? 0)} on disk` : "";
  setText($("disk"), total);
  const table = $("environments-table");
  sync(table, environments, environmentKey, createEnvironment,
    (body, e) => updateEnvironment(body, e, now), table.tHead);
}

function createEnvironment(environment) {
  const body = el("tbody", { class: "environment" });
  const row = el("tr", { "data-testid": "environment" });
  const cells = {};
  for (const label of ENVIRONMENT_COLUMNS) {
    cells[label] = el("td", { "data-label": label, class: label === "Size" ? "num" : null });
    row.append(cells[label]);
  }
  const key = environmentKey(environment);
  const log = button("Install log", "install-log", () => togglePanel(key, body, (entry) => {
    const e = body.item;
    const query = new URLSearchParams({ name: e.name, version: e.version, fingerprint: e.fingerprint });
    streamInto(entry, `/dashboard/install-log?${query}`, "install log");
  }));
  const remove = button("Uninstall", "uninstall", () => run(remove, () => uninstall(body.item)), "danger");
  row.append(el("td", { class: "actions" }, log, remove));
  body.refs = { row, cells, log };
  body.append(row);
  return body;
}

function updateEnvironment(body, e, now) {
  const { row, cells } = body.refs;
  setData(row, { name: e.name, version: e.version, fingerprint: e.fingerprint });
  setText(cells.Name, e.name);
  setText(cells.Version, e.version);
  setText(cells.Configuration, configText(e.config));
  cells.Configuration.title = e.path;
  setText(cells.Python, e.python_version || "—");
  // A runner speaks the codec of the ywmagics that built it: one another version built is not its.
  const codec = e.codec === null || e.codec === undefined ? "" : ` (codec ${e.codec})`;
  setText(cells["Built by"], e.built_by ? `${e.built_by}${codec}` : "—");
  setData(row, { codec: e.codec ?? "" });
  setText(cells.Size, size(e.size));
  setText(cells["Last used"], ago(now - e.last_used));
  cells["Last used"].title = new Date(e.last_used * 1000).toLocaleString();
  setText(cells["In use by"], (e.in_use || []).join(", ") || "—");
}

async function uninstall(e) {
  const using = (e.in_use || []).length ? `\nRunning in ${e.in_use.join(", ")}: those partitions are stopped.` : "";
  if (!confirm(`Uninstall ${spec(e)} (${configText(e.config)})?\nIts environment (${size(e.size)}) is deleted.${using}`)) return;
  const { removed } = await act("/uninstall", { spec: spec(e), fingerprint: e.fingerprint });
  notice(`Uninstalled ${removed.map(spec).join(", ") || spec(e)}.`);
}

async function collect(event) {
  event.preventDefault(); // the form is only a control: CSP forbids it to submit anyway
  const submit = event.submitter || $("gc-form").querySelector("button");
  await run(submit, async () => {
    const days = Number($("gc-days").value);
    if (!Number.isFinite(days) || days < 0) return notice("Give a number of days (0 or more).", true);
    const preview = await act("/gc", { older_than_days: days, dry_run: true });
    if (preview.removed.length === 0) return notice(`No environment has been unused for ${days} days.`);
    const list = preview.removed.map((e) => `  ${spec(e)} (${configText(e.config)}, ${size(e.size)})`);
    if (!confirm(`Remove ${list.length} environment${list.length === 1 ? "" : "s"} unused for ${days} days?\n${list.join("\n")}`)) return;
    // What was confirmed, not what a second look finds: something may have aged meanwhile.
    const only = preview.removed.map((e) => `${e.name}/${e.version}/${e.fingerprint}`);
    const { removed } = await act("/gc", { older_than_days: days, dry_run: false, only });
    notice(`Removed ${removed.length} environment${removed.length === 1 ? "" : "s"}: ${removed.map(spec).join(", ")}.`);
  });
}

// ---- start -----------------------------------------------------------------------------------

async function start() {
  $("gc-form").addEventListener("submit", collect);
  const code = new URLSearchParams(location.hash.slice(1)).get("code");
  if (code !== null) {
    // The code opens one session once: out of the address bar (and history) before anything.
    history.replaceState(null, "", location.pathname + location.search);
    let response;
    try {
      response = await fetch(routeOf("/dashboard/session"), { method: "POST", body: JSON.stringify({ code }),
        headers: { "content-type": "application/json" }, cache: "no-store" });
    } catch {
      return showBanner(GONE, "gone");
    }
    if (response.ok) {
      session = (await response.json()).session;
      stored.set(session);
    } else if (!stored.get()) {
      const why = response.status === 401 ? "This link was already used, or it expired: "
        : `This link did not open a session (${await errorText(response)}): `;
      return showBanner([why, ...NEW_LINK, "."], "spent");
    }
  }
  session = session || stored.get();
  if (!session) {
    return showBanner(["This page needs a link with a one-time code: ", ...NEW_LINK, "."], "no-link");
  }
  follow();
}

start();
