// The status page: /api/state once, then live from the SSE stream at /api/events.
// The stream is read with fetch (not EventSource) so the API key travels as a bearer header.
"use strict";
const KEY = "llmstack-api-key";
const STATE_KINDS = new Set(["swap_started", "model_starting", "model_ready", "load_failed",
  "model_stopping", "model_stopped", "model_exited", "reconfigured", "preloaded",
  "routed", "named",  // a request arriving changes what is in flight or queued
  "session_saved", "session_restored", "session_discarded", "session_cache_off"]);
let state = null;
let refetch = null;

function headers() {
  const key = localStorage.getItem(KEY);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function call(path, options = {}) {
  for (;;) {
    const resp = await fetch(path, { ...options, headers: headers() });
    if (resp.status !== 401) return resp;
    const key = prompt("This stack needs an API key (sent as a bearer header, kept in this browser):");
    if (!key) throw new Error("no API key");
    localStorage.setItem(KEY, key.trim());
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

const clock = (ts) => new Date(ts * 1000).toLocaleTimeString();
const ms = (v) => (v === null || v === undefined ? "–" : v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(0) + " ms");
const mb = (v) => (v >= 1024 ? (v / 1024).toFixed(1) + " GB" : (v || 0).toFixed(0) + " MB");

function stateText(m) {
  if (m.state === "starting" && m.since) return `starting ${Math.max(0, Date.now() / 1000 - m.since).toFixed(0)} s`;
  if (m.state === "failed") return "failed: " + (m.failure || "");
  if (m.state === "stopped" && m.stop_reason) return "stopped (" + m.stop_reason + ")";
  return m.state;
}

function renderModels() {
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...state.models.map((m) => el("tr", { "data-model": m.model },
    el("td", {}, m.model, m.name && m.name !== m.model ? el("div", { class: "why" }, m.name) : ""),
    el("td", { class: "state s-" + m.state.split(" ")[0] }, stateText(m)),
    el("td", { class: "num in-flight" }, String(m.in_flight)),
    el("td", { class: "num queued" }, String(m.queued)),
    el("td", { class: "num" }, m.memory_mb ? mb(m.memory_mb) : "–"),
    el("td", {}, m.pid ? `${m.pid} / ${m.port ?? "–"}` : "–"),
    el("td", { class: "num" }, ms(m.last_load_ms)),
    el("td", {},
      el("button", { class: "load", "data-model": m.model, onclick: () => act("/api/models/load/", m.model) }, "load"), " ",
      el("button", { class: "unload", "data-model": m.model, onclick: () => act("/api/models/unload/", m.model) }, "unload")))));
  const mem = state.memory, bar = document.querySelector("#membar");
  const resident = state.models.filter((m) => ["starting", "ready", "stopping"].includes(m.state));
  const total = mem.budget_mb || resident.reduce((a, m) => a + m.memory_mb, 0) || 1;
  const colours = ["#4f7cff", "#12a37f", "#e8a33d", "#b05cd6", "#d94f4f"];
  bar.replaceChildren(...resident.map((m, i) => el("span", {
    title: `${m.model}: ${mb(m.memory_mb)}`,
    style: `width:${Math.min(100, 100 * m.memory_mb / total)}%;background:${colours[i % colours.length]}` })));
  document.querySelector("#memtext").textContent =
    `${mb(mem.resident_mb)} resident of ${mem.budget_mb ? mb(mem.budget_mb) : "no"} budget` +
    (mem.budget_source ? ` (${mem.budget_source})` : "") +
    (resident.length ? ": " + resident.map((m) => m.model).join(", ") : "");
}

const bytes = (v) => (v >= 1e9 ? (v / 1e9).toFixed(2) + " GB" : ((v || 0) / 1e6).toFixed(1) + " MB");

// The session cache: what is saved against the cap, and where it is off and why (a build whose
// restores restore nothing is named here).
function renderSessions() {
  const s = state.sessions;
  document.querySelector("#sessions").hidden = !s;
  if (!s) return;
  document.querySelector("#sessiontext").textContent =
    `${s.sessions} saved, ${bytes(s.bytes)} of ${bytes(s.max_bytes)} (${s.root})`;
  document.querySelector("#sessions-off").replaceChildren(...Object.entries(s.off).map(([model, why]) =>
    el("div", { class: "s-failed session-off", "data-model": model }, `off for ${model}: ${why}`)));
  const models = [...new Set([...Object.keys(s.models), ...Object.keys(s.held)])];
  document.querySelector("#session-models tbody").replaceChildren(...models.map((m) => el("tr", { "data-model": m },
    el("td", {}, m), el("td", { class: "num" }, String(s.models[m]?.sessions ?? 0)),
    el("td", { class: "num" }, bytes(s.models[m]?.bytes ?? 0)),
    el("td", { class: "num" }, String(s.held[m] ?? "–")))));
}

function renderDecisions() {
  const rows = state.decisions.slice(-50).reverse();
  document.querySelector("#decisions tbody").replaceChildren(...rows.map((d) => el("tr", { class: "decision" },
    el("td", {}, clock(d.ts)), el("td", { class: "tier" }, d.model), el("td", {}, d.asked ?? ""),
    el("td", { class: "why" }, d.reason ?? d.path), el("td", { class: "num" }, d.estimate ?? "–"),
    el("td", { class: "num" }, String(d.status)), el("td", { class: "num" }, ms(d.ttft_ms)),
    el("td", { class: "num" }, ms(d.ms)), el("td", { class: "num" }, d.tps ?? "–"))));
}

function renderSwaps() {
  const rows = state.swaps.slice().reverse();
  document.querySelector("#swaps tbody").replaceChildren(...rows.map((s) => el("tr", {},
    el("td", {}, clock(s.ts)), el("td", {}, s.model), el("td", {}, (s.evict || []).join(", ") || "nothing"),
    el("td", { class: "why" }, `${s.set ?? "–"}, cost ${s.cost ?? 0}`),
    el("td", {}, s.result ? `${s.result} in ${ms(s.ms)}` : "in progress"))));
}

function renderLogs() {
  document.querySelector("#logs").replaceChildren(...state.models.filter((m) => m.log.length).map((m) =>
    el("details", { open: "" }, el("summary", {}, m.model),
      el("pre", { class: "log", "data-model": m.model }, m.log.join("\n")))));
  for (const pre of document.querySelectorAll("pre.log")) pre.scrollTop = pre.scrollHeight;
}

// Tiers served through litellm (llmstack's /v1/models rows with backend "litellm"): no
// process here, so they are not in /api/state. Probing backends costs up to a second, so
// this list is refreshed every 10 s, not on every event.
let remote = [];
function renderRemote() {
  document.querySelector("#remote").hidden = !remote.length;
  document.querySelector("#remote-tiers tbody").replaceChildren(...remote.map((r) => el("tr", { "data-tier": r.id },
    el("td", {}, r.id), el("td", {}, r.hosted_model || "–"),
    el("td", { class: "backends" }, ...(r.backends || []).map((b) => el("div", {
      class: b.healthy ? "s-ready" : "s-failed" }, `${b.url} ${b.healthy ? "healthy" : "down"}`))))));
}

async function reloadRemote() {
  const resp = await call("/v1/models");
  if (!resp.ok) return;
  remote = (await resp.json()).data.filter((r) => r.backend === "litellm" && r.id === r.tier);
  renderRemote();
}

function render() { renderModels(); renderSessions(); renderDecisions(); renderSwaps(); renderLogs(); }

async function act(prefix, model) {
  const resp = await call(prefix + encodeURIComponent(model), { method: "POST" });
  if (!resp.ok) alert(`${prefix}${model}: HTTP ${resp.status}`);
}

async function reload() {
  const resp = await call("/api/state");
  if (resp.ok) { state = await resp.json(); render(); }
}

function scheduleReload() {
  if (!refetch) refetch = setTimeout(() => { refetch = null; reload(); }, 50);
}

function onEvent(e) {
  if (e.kind === "snapshot") { state = e; render(); return; }
  // the server ends a stream that fell too far behind; follow() reconnects for a new snapshot
  if (e.kind === "dropped") { document.querySelector("#conn").textContent = "reconnecting (" + e.reason + ")"; return; }
  // the last event before the server ends every stream and exits
  if (e.kind === "shutting_down") { document.querySelector("#conn").textContent = "the stack is stopping"; return; }
  if (!state) return;
  if (e.kind === "request_done" && e.via !== "upstream") {  // a pass-through is no decision
    state.decisions.push(e);
    if (state.decisions.length > 50) state.decisions.shift();
    renderDecisions();
  } else if (e.kind === "log") {
    const m = state.models.find((x) => x.model === e.model);
    if (m) { m.log.push(e.line); if (m.log.length > 20) m.log.shift(); renderLogs(); }
  }
  if (STATE_KINDS.has(e.kind) || e.kind === "request_done") scheduleReload();
}

async function follow() {
  const conn = document.querySelector("#conn");
  for (;;) {
    try {
      const resp = await call("/api/events");
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      conn.textContent = "live";
      const reader = resp.body.getReader(), decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end); buffer = buffer.slice(end + 2);
          for (const line of frame.split("\n")) if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
        }
      }
    } catch (err) {
      conn.textContent = "disconnected (" + err.message + "), retrying";
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

setInterval(() => { if (state) renderModels(); }, 1000);
setInterval(reloadRemote, 10000);
reloadRemote();
follow();
