// mqflux dashboard: plain JavaScript, no libraries. Each page reads /api/v1/; the overview
// follows /api/v1/events (Server-Sent Events) and draws its chart on a <canvas>.
"use strict";

const API = "/api/v1/";
const CHART_SECONDS = 300;
const state = { page: "overview", history: [], clientsPage: 1, selected: null };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

async function getJSON(path) {
  const r = await fetch(API + path, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

// Admin actions: fetch the CSRF token (which needs an admin login), then send it back.
async function act(method, path) {
  refreshUser();
  const t = await fetch(API + "csrf", { credentials: "same-origin", cache: "no-store" });
  if (!t.ok) throw new Error(`not allowed (HTTP ${t.status}): log in as a dashboard admin`);
  const { token } = await t.json();
  const r = await fetch(API + path, {
    method, credentials: "same-origin", headers: { "X-CSRF-Token": token },
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

// After an action the browser has credentials: show who is logged in.
function refreshUser() {
  setTimeout(() => getJSON("whoami").then((w) => {
    $("whoami").textContent = w.user ? `${w.user}${w.admin ? " (admin)" : ""}` : "";
    $("login").hidden = !!w.user;
  }).catch(() => {}), 1000);
}

function fmtNum(n) {
  if (n === null || n === undefined) return "–";
  return typeof n === "number" ? n.toLocaleString("en-US") : String(n);
}
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}
function fmtTime(ms) { return ms ? new Date(ms).toLocaleString() : "–"; }
function fmtUptime(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? `${d}d ` : "") + `${h}h ${m}m ${s % 60}s`;
}

function card(label, value, id, bad) {
  return el("div", { class: "card" + (bad ? " bad" : "") },
    el("div", { class: "label" }, label), el("div", { class: "value", id: id || "" }, value));
}

// ---- overview -------------------------------------------------------------------------

function renderOverview(o) {
  $("overview-cards").replaceChildren(
    card("uptime", fmtUptime(o.uptime_secs)),
    card("version", o.version),
    card("connections", fmtNum(o.connections), "ov-connections"),
    card("sessions online", fmtNum(o.sessions_online)),
    card("sessions offline", fmtNum(o.sessions_offline)),
    card("subscriptions", fmtNum(o.subscriptions)),
    card("retained", `${fmtNum(o.retained)} (${fmtBytes(o.retained_bytes)})`),
    card("in /s", fmtNum(o.in_per_sec), "rate-in"),
    card("out /s", fmtNum(o.out_per_sec), "rate-out"),
    card("dropped /s", fmtNum(o.dropped_per_sec), "rate-dropped"),
  );
  const k = o.sink || {};
  $("sink-cards").replaceChildren(...(k.enabled ? [
    card("points written /s", fmtNum(o.sink_written_per_sec), "sink-rate"),
    card("points written", fmtNum(k.written)),
    card("queued in memory", fmtNum(k.queued_in_memory)),
    card("spool", `${fmtNum(k.spool_points)} points, ${fmtBytes(k.spool_bytes)}`),
    card("dropped", fmtNum(k.dropped)),
    card("last InfluxDB error", k.last_error || "none", "sink-error", !!k.last_error),
  ] : [card("sink", "disabled")]));
  $("bridges").textContent = (o.bridges && o.bridges.length) ? o.bridges.join(", ") : "none configured";
}

function drawChart() {
  const c = $("rate-chart");
  const ctx = c.getContext("2d");
  const w = c.width, h = c.height, pad = 36;
  ctx.clearRect(0, 0, w, h);
  const pts = state.history.slice(-CHART_SECONDS);
  // The x axis spans the last minute until there is more history, up to 5 minutes.
  const span = Math.min(CHART_SECONDS, Math.max(60, pts.length));
  const series = [["in_per_sec", "#2563eb"], ["out_per_sec", "#16a34a"],
    ["dropped_per_sec", "#c0392b"], ["sink_written_per_sec", "#a855f7"]];
  let max = 1;
  for (const p of pts) for (const [k] of series) max = Math.max(max, p[k] || 0);
  ctx.strokeStyle = "#dde1e8"; ctx.fillStyle = "#667"; ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + (h - pad) * i / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w - 4, y); ctx.stroke();
    ctx.fillText(String(Math.round(max * (4 - i) / 4)), 2, y + 4);
  }
  for (const [k, color] of series) {
    ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
    pts.forEach((p, i) => {
      const x = pad + (w - pad - 4) * (span - pts.length + i) / (span - 1);
      const y = pad / 2 + (h - pad) * (1 - (p[k] || 0) / max);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  const last = pts[pts.length - 1];
  c.setAttribute("data-points", String(pts.length));
  c.setAttribute("data-last-in", String(last ? last.in_per_sec : 0));
}

async function loadOverview() {
  const [o, h] = await Promise.all([getJSON("overview"), getJSON("history")]);
  state.history = h;
  renderOverview(o);
  drawChart();
}

function startEvents() {
  const es = new EventSource(API + "events");
  es.addEventListener("open", () => { $("live-status").textContent = "live"; $("live-status").className = "status ok"; });
  es.addEventListener("error", () => { $("live-status").textContent = "reconnecting…"; $("live-status").className = "status"; });
  es.addEventListener("sample", async (ev) => {
    const s = JSON.parse(ev.data);
    const last = state.history[state.history.length - 1];
    if (!last || last.seq !== s.seq) state.history.push(s);
    if (state.history.length > 600) state.history.shift();
    if (state.page === "overview") {
      drawChart();
      try { renderOverview(await getJSON("overview")); } catch (e) { say(e.message, true); }
    }
  });
}

// ---- clients --------------------------------------------------------------------------

async function loadClients() {
  const q = encodeURIComponent($("client-q").value);
  const status = $("client-status").value;
  const d = await getJSON(`clients?q=${q}&status=${status}&page=${state.clientsPage}&per_page=50`);
  const pages = Math.max(1, Math.ceil(d.total / d.per_page));
  $("client-paging").textContent = `${d.total} session(s), page ${d.page} of ${pages}`;
  $("client-prev").disabled = d.page <= 1;
  $("client-next").disabled = d.page >= pages;
  const rows = d.clients.map((c) => {
    const kick = el("button", { class: "danger", type: "button", onclick: (e) => { e.stopPropagation(); kickClient(c.client_id); } }, "Kick");
    const discard = el("button", { type: "button", onclick: (e) => { e.stopPropagation(); discardSession(c.client_id); } }, "Discard");
    return el("tr", { "data-client-id": c.client_id, class: c.connected ? "" : "offline", onclick: () => showClient(c.client_id) },
      el("td", {}, c.client_id), el("td", {}, c.username || ""), el("td", {}, c.address || "offline"),
      el("td", {}, c.protocol || ""), el("td", { class: "num" }, c.keep_alive === null ? "" : `${c.keep_alive}s`),
      el("td", {}, c.persistent ? `persistent (${c.session_expiry}s)` : "clean"),
      el("td", {}, c.connected ? fmtTime(c.connected_since_ms) : `offline ${c.offline_secs ?? 0}s`),
      el("td", { class: "num" }, fmtNum(c.inflight)), el("td", { class: "num" }, fmtNum(c.queued)),
      el("td", { class: "num" }, fmtNum(c.dropped)),
      el("td", {}, c.connected ? kick : "", " ", discard));
  });
  $("clients-table").tBodies[0].replaceChildren(...rows);
  // The selected client may be gone (kicked, discarded): close its detail, do not ask for it.
  if (state.selected && d.clients.some((c) => c.client_id === state.selected)) showClient(state.selected, true);
  else if (state.selected) { state.selected = null; $("client-detail").hidden = true; }
}

async function showClient(id, quiet) {
  state.selected = id;
  const box = $("client-detail");
  let c;
  try { c = await getJSON("clients/" + encodeURIComponent(id)); } catch (e) {
    if (!quiet) say(e.message, true);
    box.hidden = true; state.selected = null; return;
  }
  const subs = el("table", {}, el("thead", {}, el("tr", {}, ...["filter", "QoS", "no local", "retain as published", "retain handling", "identifier"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...c.subscriptions.map((s) => el("tr", {}, el("td", {}, s.filter), el("td", {}, String(s.qos)),
      el("td", {}, String(s.no_local)), el("td", {}, String(s.retain_as_published)), el("td", {}, String(s.retain_handling)),
      el("td", {}, s.identifier === null ? "" : String(s.identifier))))));
  const will = c.will ? `${c.will.topic} (QoS ${c.will.qos}${c.will.retain ? ", retained" : ""}, delay ${c.will.delay_secs}s, ${c.will.payload_bytes} bytes): ${c.will.payload_preview}` : "none";
  box.replaceChildren(el("h2", {}, `Client ${c.client_id}`),
    el("p", {}, `${c.connected ? "connected from " + c.address : "offline"}; ${c.subscription_count} subscription(s)`),
    subs, el("h2", {}, "Will"), el("p", { id: "client-will" }, will));
  box.hidden = false;
}

async function kickClient(id) {
  if (!confirm(`Disconnect client ${id}?`)) return;
  try { await act("POST", `clients/${encodeURIComponent(id)}/kick`); say(`client ${id} disconnected`); }
  catch (e) { say(e.message, true); }
  setTimeout(() => loadClients().catch((e) => say(e.message, true)), 300);
}

async function discardSession(id) {
  if (!confirm(`Discard the session of ${id} (subscriptions and queued messages)?`)) return;
  try { await act("DELETE", `sessions/${encodeURIComponent(id)}`); say(`session ${id} discarded`); }
  catch (e) { say(e.message, true); }
  setTimeout(() => loadClients().catch((e) => say(e.message, true)), 300);
}

// ---- topics ---------------------------------------------------------------------------

function treeList(nodes) {
  return el("ul", {}, ...nodes.map((n) => el("li", { class: n.retained ? "retained" : "", "data-topic": n.topic },
    el("span", {}, n.name || "(empty)"), n.children.length ? treeList(n.children) : "")));
}

async function loadTopics() {
  const d = await getJSON("topics");
  $("busiest-table").tBodies[0].replaceChildren(...d.busiest.map((b) =>
    el("tr", {}, el("td", {}, b.topic), el("td", { class: "num" }, fmtNum(b.per_sec)))));
  $("busiest-note").textContent = d.busiest_note;
  $("retained-tree").replaceChildren(d.retained_tree.length ? treeList(d.retained_tree) : el("p", {}, "no retained messages"),
    d.tree_truncated ? el("p", { class: "note" }, `showing the first topics of ${d.retained_total}`) : "");
}

// ---- retained -------------------------------------------------------------------------

function payloadAs(m, format) {
  if (format === "hex") return m.hex.replace(/(..)/g, "$1 ").trim();
  if (format === "json") return m.json !== null ? JSON.stringify(m.json, null, 2) : "(not JSON)";
  return m.text !== null ? m.text : "(not UTF-8: see hex)";
}

async function loadRetained() {
  const prefix = encodeURIComponent($("retained-prefix").value);
  const format = $("retained-format").value;
  const d = await getJSON(`retained?prefix=${prefix}&limit=200`);
  $("retained-count").textContent = `${d.messages.length} of ${d.total}`;
  $("retained-table").tBodies[0].replaceChildren(...d.messages.map((m) => el("tr", { "data-topic": m.topic },
    el("td", {}, m.topic), el("td", {}, String(m.qos)), el("td", { class: "num" }, fmtNum(m.bytes)),
    el("td", {}, fmtTime(m.received_at_ms)),
    el("td", { class: "payload" }, payloadAs(m, format) + (m.truncated ? " …" : "")),
    el("td", {}, el("button", { class: "danger", type: "button", onclick: () => deleteRetained(m.topic) }, "Delete")))));
}

async function deleteRetained(topic) {
  if (!confirm(`Delete the retained message on ${topic}?`)) return;
  try { await act("DELETE", `retained?topic=${encodeURIComponent(topic)}`); say(`retained message on ${topic} deleted`); }
  catch (e) { say(e.message, true); }
  loadRetained().catch((e) => say(e.message, true));
}

// ---- sink -----------------------------------------------------------------------------

async function loadSink() {
  const d = await getJSON("sink");
  const k = d.stats;
  $("sink-page-cards").replaceChildren(...(d.enabled ? [
    card("database", d.database), card("points written", fmtNum(k.written)),
    card("queued in memory", fmtNum(k.queued_in_memory)), card("dropped", fmtNum(k.dropped)),
    card("write requests", fmtNum(k.write_requests)),
    card("last InfluxDB error", k.last_error || "none", "", !!k.last_error),
  ] : [card("sink", "disabled")]));
  $("rules-table").tBodies[0].replaceChildren(...(d.rules.length ? d.rules.map((r) => el("tr", {},
    el("td", {}, r.topic), el("td", {}, String(r.store)), el("td", {}, r.measurement || "(default)"),
    el("td", {}, Object.entries(r.tags).map(([a, b]) => `${a}=${b}`).join(", ")),
    el("td", {}, r.value_field), el("td", {}, String(r.line_protocol)))) :
    [el("tr", {}, el("td", { colSpan: 6 }, "no rules: every topic goes to the default mapping"))]));
  $("points-table").tBodies[0].replaceChildren(...d.last_points.map((p) => el("tr", { "data-measurement": p.measurement },
    el("td", {}, p.measurement), el("td", {}, fmtTime(p.written_at_ms)), el("td", { class: "payload" }, p.line))));
  $("spool-state").textContent = d.enabled ?
    `${fmtNum(k.spool_points)} points, ${fmtBytes(k.spool_bytes)} in ${d.spool.dir} (at most ${fmtBytes(d.spool.max_bytes)})` : "sink disabled";
}

// ---- navigation -----------------------------------------------------------------------

const loaders = { overview: loadOverview, clients: loadClients, topics: loadTopics, retained: loadRetained, sink: loadSink };

function show(page) {
  if (!loaders[page]) page = "overview";
  state.page = page;
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  say("");
  loaders[page]().then(() => document.body.setAttribute("data-loaded", page)).catch((e) => say(e.message, true));
}

window.addEventListener("hashchange", () => show(location.hash.slice(1)));
window.addEventListener("DOMContentLoaded", () => {
  $("client-search").addEventListener("submit", (e) => { e.preventDefault(); state.clientsPage = 1; loadClients().catch((x) => say(x.message, true)); });
  $("client-prev").addEventListener("click", () => { state.clientsPage--; loadClients().catch((x) => say(x.message, true)); });
  $("client-next").addEventListener("click", () => { state.clientsPage++; loadClients().catch((x) => say(x.message, true)); });
  $("retained-search").addEventListener("submit", (e) => { e.preventDefault(); loadRetained().catch((x) => say(x.message, true)); });
  $("retained-format").addEventListener("change", () => loadRetained().catch((x) => say(x.message, true)));
  const showUser = (w) => {
    $("whoami").textContent = w.user ? `${w.user}${w.admin ? " (admin)" : ""}` : "";
    $("login").hidden = !!w.user;
  };
  getJSON("whoami").then(showUser).catch(() => {});
  $("login").addEventListener("click", (e) => {
    e.preventDefault();
    getJSON("login").then(showUser).catch((x) => say(x.message, true));
  });
  startEvents();
  show(location.hash.slice(1) || "overview");
});
