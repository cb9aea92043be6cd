// Umbra ground console: fills the server's page shells by polling the JSON API.
"use strict";

const SEV = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
const LEVEL = ["ok", "warn", "crit"];
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
  "#ff9da7", "#9c755f", "#bab0ac"];

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// State-changing requests carry the session's CSRF token (the page's <meta name="csrf-token">).
const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || "";

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = CSRF;
  const resp = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (resp.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const body = await resp.json();
  if (!resp.ok) throw Object.assign(new Error(body.error || resp.statusText), { status: resp.status });
  return body;
}

function utc(t) {
  if (t == null) return "—";
  return new Date(t * 1000).toISOString().slice(11, 19);
}

function age(s) {
  if (s == null) return "never";
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function limitOf(limits, channel) {
  const base = channel.split("[")[0];
  return limits.find(l => l.channel === base);
}

function levelOf(limits, channel, value) {
  const l = limitOf(limits, channel);
  if (!l || value == null) return 0;
  if (l.high) return value >= l.red ? 2 : value >= l.yellow ? 1 : 0;
  return value <= l.red ? 2 : value <= l.yellow ? 1 : 0;
}

function every(ms, fn) {
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try { await fn(); } catch (e) { console.warn(e); } finally { busy = false; }
  };
  tick();
  return setInterval(tick, ms);
}

// -- charts: a small canvas line chart ------------------------------------------------------

// A chart remembers what it drew (for the cursor and the legend) on its canvas element.
function drawChart(canvas, t, series, opts = {}) {
  canvas._chart = { t, series, opts };
  paintChart(canvas);
  legend(canvas);
}

function paintChart(canvas) {
  const { t, series, opts } = canvas._chart;
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 48, R = 8, T = 8, B = 22;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px sans-serif";
  const values = series.flatMap(s => s.values).filter(v => v != null);
  for (const y of [opts.yellow, opts.red]) if (y != null) values.push(y);
  canvas.dataset.points = String(t.length);
  canvas.dataset.lastT = t.length ? String(t[t.length - 1]) : "";
  if (!t.length || !values.length) {
    ctx.fillStyle = "#888"; ctx.fillText("no data in this window", L + 10, H / 2); return;
  }
  let lo = Math.min(...values), hi = Math.max(...values);
  if (opts.min != null) lo = Math.min(lo, opts.min);
  if (opts.max != null) hi = Math.max(hi, opts.max);
  if (hi - lo < 1e-9) { hi += 1; lo -= 1; }
  const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
  if (opts.min != null && lo < opts.min) lo = opts.min;  // no axis below a physical floor
  const t0 = opts.t0 ?? t[0], t1 = Math.max(opts.t1 ?? t[t.length - 1], t0 + 1);
  const x = v => L + (v - t0) / (t1 - t0) * (W - L - R);
  const y = v => T + (hi - v) / (hi - lo) * (H - T - B);
  ctx.strokeStyle = "#ddd"; ctx.fillStyle = "#555"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4, yy = y(v);
    ctx.beginPath(); ctx.moveTo(L, yy); ctx.lineTo(W - R, yy); ctx.stroke();
    ctx.fillText(v.toFixed(Math.abs(hi - lo) < 5 ? 2 : 0), 2, yy + 4);
  }
  for (let i = 0; i <= 4; i++) {
    const v = t0 + (t1 - t0) * i / 4;
    ctx.fillText(utc(v), Math.min(x(v) - 20, W - 50), H - 6);
  }
  for (const [lim, color] of [[opts.yellow, "#d4a000"], [opts.red, "#d62728"]]) {
    if (lim == null) continue;
    ctx.strokeStyle = color; ctx.setLineDash([6, 4]);
    ctx.beginPath(); ctx.moveTo(L, y(lim)); ctx.lineTo(W - R, y(lim)); ctx.stroke();
  }
  for (const s of series) {
    ctx.strokeStyle = s.color; ctx.setLineDash(s.dash ? [4, 3] : []); ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    s.values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      if (pen) ctx.lineTo(x(t[i]), y(v)); else ctx.moveTo(x(t[i]), y(v));
      pen = true;
    });
    ctx.stroke();
  }
  ctx.setLineDash([]);
  canvas._chart.x = x;
  canvas._chart.t0 = t0;
  canvas._chart.t1 = t1;
  if (canvas._chart.cursor != null) {  // the hovered time: a vertical line
    const cx = x(t[canvas._chart.cursor]);
    ctx.strokeStyle = "#333"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(cx, T); ctx.lineTo(cx, H - B); ctx.stroke();
  }
}

// The legend under a chart: a swatch and a name per series, with its value at the hovered time
// (the newest value when the cursor is elsewhere).
function legend(canvas) {
  const c = canvas._chart;
  let box = canvas.parentElement.querySelector(".legend");
  if (!box) { box = el("div", { class: "legend" }); canvas.after(box); }
  const i = c.cursor != null ? c.cursor : c.t.length - 1;
  const at = i >= 0 ? c.t[i] : null;
  const fmt = v => v == null ? "—" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1);
  box.replaceChildren(
    el("span", { class: "legend-time" }, at == null ? "" : `${c.cursor != null ? "at" : "latest"} ${utc(at)}`),
    ...c.series.filter(s => s.label).map(s => {
      const swatch = el("i", { class: s.dash ? "swatch dash" : "swatch" });
      swatch.style.borderColor = s.color;  // CSSOM, not a style attribute: the CSP allows it
      return el("span", { class: "legend-item", "data-label": s.label, "data-color": s.color }, swatch,
        `${s.label} ${i >= 0 ? fmt(s.values[i]) : "—"}`);
    }));
}

function hoverCharts() {
  for (const canvas of document.querySelectorAll(".charts canvas")) {
    canvas.addEventListener("mousemove", ev => {
      const c = canvas._chart;
      if (!c || !c.x || !c.t.length) return;
      const r = canvas.getBoundingClientRect();
      const px = (ev.clientX - r.left) * canvas.width / r.width;
      let best = 0;
      c.t.forEach((tt, i) => { if (Math.abs(c.x(tt) - px) < Math.abs(c.x(c.t[best]) - px)) best = i; });
      c.cursor = best;
      canvas.dataset.cursorT = String(c.t[best]);
      paintChart(canvas);
      legend(canvas);
    });
    canvas.addEventListener("mouseleave", () => {
      if (!canvas._chart) return;
      canvas._chart.cursor = null;
      delete canvas.dataset.cursorT;
      paintChart(canvas);
      legend(canvas);
    });
  }
}

function column(rows, i) { return rows.map(r => (r && i < r.length ? r[i] : null)); }

// -- fleet ------------------------------------------------------------------------------------

function fleetPage() {
  every(2000, async () => {
    const data = await api("/api/fleet");
    const tbody = document.querySelector("#fleet tbody");
    tbody.replaceChildren();
    if (!data.nodes.length) {
      tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no node has been heard yet")));
    }
    for (const n of data.nodes) {
      const state = n.online === null ? "unknown" : n.online ? (n.stale ? "online (silent)" : "online") : "offline";
      const cls = n.online ? (n.stale ? "warn" : "ok") : "crit";
      tbody.append(el("tr", { "data-node": n.node },
        el("td", {}, el("a", { href: `/node/${encodeURIComponent(n.node)}` }, n.node)),
        el("td", {}, el("span", { class: `badge ${cls} node-state` }, state)),
        el("td", {}, n.mode || "—"),
        el("td", {}, el("span", { class: `badge ${LEVEL[n.worst_alarm]}` }, ["none", "yellow", "red"][n.worst_alarm])),
        el("td", {}, age(n.age_s)),
        el("td", {}, `${n.packets} (${n.duplicates} dup)`),
        el("td", {}, n.missing ? `${n.missing} missing` : "none"),
        el("td", {}, n.dict_mismatch
          ? el("span", { class: "badge crit", title: `node ${n.dict_hash} ≠ ground ${data.ground_hash}` }, `MISMATCH ${n.dict_hash}`)
          : (n.dict_hash || "—")),
      ));
    }
    alarmBadge(data.unacked_alarms);
  });
}

function alarmBadge(n) {
  const b = document.getElementById("alarm-count");
  if (b) { b.textContent = n ? String(n) : ""; b.className = n ? "badge crit" : "badge"; }
}

// -- node ---------------------------------------------------------------------------------------

let DICT = null;

function nodePage() {
  const node = document.body.dataset.node;
  const windowSel = document.getElementById("window");
  let lastData = null;
  // Time navigation: live follows the newest packet; back and forward move by half a window.
  let viewEnd = null;
  const range = document.getElementById("t-range"), live = document.getElementById("t-live");
  const refresh = async () => {
    const q = new URLSearchParams({ window: windowSel.value });
    if (viewEnd != null) q.set("end", String(viewEnd));
    const data = await api(`/api/node/${encodeURIComponent(node)}/hk?${q}`);
    lastData = data;
    renderNode(data);
    live.classList.toggle("on", viewEnd == null);
    range.textContent = `${viewEnd == null ? "live: " : ""}${utc(data.end - data.window)} – ${utc(data.end)} UTC`;
    range.dataset.end = String(data.end);
  };
  const step = sign => {
    const w = Number(windowSel.value);
    const end = (viewEnd ?? (lastData ? lastData.end : Date.now() / 1000)) + sign * w / 2;
    viewEnd = lastData && end >= lastData.now ? null : end;
    refresh();
  };
  document.getElementById("t-back").addEventListener("click", () => step(-1));
  document.getElementById("t-fwd").addEventListener("click", () => step(1));
  live.addEventListener("click", () => { viewEnd = null; refresh(); });
  every(1000, refresh);
  windowSel.addEventListener("change", refresh);
  hoverCharts();
  const evSev = document.getElementById("ev-severity"), evQ = document.getElementById("ev-search");
  const events = async () => {
    const q = new URLSearchParams({ severity: evSev.value, q: evQ.value });
    const data = await api(`/api/node/${encodeURIComponent(node)}/events?${q}`);
    const tbody = document.querySelector("#events tbody");
    tbody.replaceChildren(...data.events.map(e => el("tr", { class: `sev${e.severity}` },
      el("td", {}, utc(e.utc)), el("td", {}, e.seq), el("td", {}, SEV[e.severity] || e.severity),
      el("td", {}, e.kind), el("td", {}, e.text))));
    if (!data.events.length) tbody.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no events match")));
  };
  every(2000, events);
  evSev.addEventListener("change", events);
  evQ.addEventListener("input", events);
  every(1000, () => commandHistory(node));
  every(2000, () => catalogue(node));
  every(1000, () => files(node));
  document.getElementById("catalogue-refresh").addEventListener("click", async () => {
    try {
      await api(`/api/node/${encodeURIComponent(node)}/commands`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: "job_catalogue", args: {} }),
      });
    } catch (e) { document.getElementById("catalogue-when").textContent = `not sent: ${e.message}`; }
  });
  commandForm(node);
  every(5000, async () => alarmBadge((await api("/api/fleet")).unacked_alarms));
  return () => lastData;
}

function renderNode(d) {
  const info = d.info || {};
  const st = document.getElementById("node-state");
  const online = info.online === 1 || info.online === true;
  st.textContent = info.online == null ? "unknown" : online ? "online" : "offline";
  st.className = `badge ${online ? "ok" : "crit"}`;
  document.getElementById("node-mode").textContent = info.mode || "";
  const warn = document.getElementById("dict-warning");
  warn.replaceChildren();
  if (info.dict_hash && info.dict_hash !== d.ground_hash) {
    warn.append(el("p", { class: "refused" }, `Dictionary mismatch: node ${info.dict_hash}, ground ${d.ground_hash}. Commands or telemetry may be misread.`));
  }
  const s = d.series, L = d.limits, hk = d.latest;
  document.getElementById("last-update").textContent = hk ? `latest packet #${hk.seq} at ${utc(hk.utc)} UTC` : "";
  const now = document.getElementById("now");
  if (hk) {
    now.className = "now";
    const cell = (label, channel, value, fmt) => el("span", { class: `value ${LEVEL[levelOf(L, channel, value)]}`, "data-channel": channel },
      `${label} ${value == null ? "—" : fmt(value)}`);
    now.replaceChildren(
      ...hk.temp_c.map((t, i) => cell(`GPU${i}`, `temp_c[${i}]`, t, v => `${v.toFixed(1)} °C`)),
      ...hk.cap_w.map((c, i) => el("span", { class: "value" }, `cap${i} ${c.toFixed(0)} W / ${hk.power_w[i].toFixed(0)} W`)),
      cell("SoC", "battery_soc", hk.battery_soc, v => `${(v * 100).toFixed(0)} %`),
      el("span", { class: "value" }, `solar ${hk.solar_w.toFixed(0)} W`),
      cell("radiator", "radiator_c", hk.radiator_c, v => `${v.toFixed(1)} °C`),
      el("span", { class: "value" }, `link ${hk.link_up ? "up" : "DOWN"}`),
    );
  }
  const t = s.utc, n = s.temp_c.length ? s.temp_c[s.temp_c.length - 1].length : 0;
  const t1 = d.end;
  const span = { t0: t1 - d.window, t1 };
  const lt = limitOf(L, "temp_c"), ls = limitOf(L, "battery_soc"), lr = limitOf(L, "radiator_c");
  const gpus = [...Array(n).keys()];
  const keep = canvasId => {  // a hovered chart keeps its cursor across the refresh
    const c = document.getElementById(canvasId)._chart;
    return c && c.cursor != null && c.t.length === t.length ? c.cursor : null;
  };
  const draw = (id, series, opts) => {
    const canvas = document.getElementById(id);
    const cursor = keep(id);
    drawChart(canvas, t, series, opts);
    if (cursor != null) { canvas._chart.cursor = cursor; paintChart(canvas); legend(canvas); }
  };
  draw("chart-temp", gpus.map(i => ({ values: column(s.temp_c, i), color: PALETTE[i % PALETTE.length], label: `GPU${i}` })),
    { ...span, yellow: lt.yellow, red: lt.red });
  draw("chart-power", [
    ...gpus.map(i => ({ values: column(s.power_w, i), color: PALETTE[i % PALETTE.length], label: `GPU${i}` })),
    ...gpus.map(i => ({ values: column(s.cap_w, i), color: PALETTE[i % PALETTE.length], dash: true, label: `cap${i}` })),
  ], { ...span, min: 0 });
  draw("chart-soc", [{ values: s.battery_soc.map(v => v == null ? null : v * 100), color: PALETTE[4], label: "SoC %" }],
    { ...span, min: 0, max: 100, yellow: ls.yellow * 100, red: ls.red * 100 });
  draw("chart-solar", [{ values: s.solar_w, color: PALETTE[5], label: "solar W" }], { ...span, min: 0 });
  draw("chart-radiator", [{ values: s.radiator_c, color: PALETTE[1], label: "radiator °C" }],
    { ...span, yellow: lr.yellow, red: lr.red });
  const jobs = document.getElementById("jobs");
  if (hk && hk.progress.length) {
    const first = s.progress.length ? s.progress[0] : hk.progress;
    const dt = t.length > 1 ? t[t.length - 1] - t[0] : 0;
    jobs.className = "";
    jobs.replaceChildren(el("table", { class: "grid" },
      el("tr", {}, el("th", {}, "GPU"), el("th", {}, "progress"), el("th", {}, "rate / s (window)")),
      ...hk.progress.map((p, i) => el("tr", {}, el("td", {}, i), el("td", {}, p.toFixed(1)),
        el("td", {}, dt > 0 && first[i] != null ? ((p - first[i]) / dt).toFixed(2) : "—")))));
  }
}

function bytes(n) {
  return n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB`
    : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
}

// The checkpoint catalogue: the node's newest answer to job_catalogue (ICD §5.4.4).
async function catalogue(node) {
  const data = await api(`/api/node/${encodeURIComponent(node)}/catalogue`);
  const when = document.getElementById("catalogue-when");
  const tbody = document.querySelector("#catalogue tbody");
  if (data.utc == null) {
    when.textContent = "No catalogue received yet: ask the node (job_catalogue).";
    tbody.replaceChildren();
    return;
  }
  const canCommand = document.body.dataset.role !== "viewer";
  const rows = data.jobs.flatMap(j => j.checkpoints.length ? j.checkpoints.map(c => el("tr", {},
    el("td", {}, j.job), el("td", {}, c.seq), el("td", {}, bytes(c.size)), el("td", {}, c.progress.toFixed(1)),
    el("td", {}, age(c.age_s + (Date.now() / 1000 - data.utc))),
    el("td", { title: c.digest }, `${c.hash} ${c.digest.slice(0, 12)}…`),
    el("td", {}, canCommand ? el("button", {
      type: "button", class: "downlink", title: "file_downlink: send this checkpoint to ground",
      onclick: () => downlink(node, j.job, c.seq),
    }, "down") : "")))
    : [el("tr", {}, el("td", {}, j.job), el("td", { colspan: 6, class: "muted" }, "no checkpoints"))]);
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "the node keeps no checkpoints")));
  tbody.replaceChildren(...rows);
  when.textContent = `As the node reported it at ${utc(data.utc)} UTC${data.truncated ? " (truncated: the newest only)" : ""}.`;
}

async function downlink(node, job, seq) {
  const note = document.getElementById("files-note");
  try {
    await api(`/api/node/${encodeURIComponent(node)}/commands`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: "file_downlink", args: { job, seq } }),
    });
    note.textContent = `Asked the node for ${job} checkpoint ${seq}.`;
  } catch (e) { note.textContent = `not sent: ${e.message}`; }
}

// File transfers (ICD §5.9): progress of each, a link to what arrived.
async function files(node) {
  const data = await api(`/api/node/${encodeURIComponent(node)}/files`);
  const tbody = document.querySelector("#files tbody");
  const rows = data.transfers.map(t => el("tr", { "data-xfer": t.xfer, class: `xfer ${t.state}` },
    el("td", {}, utc(t.created)), el("td", {}, t.direction === "down" ? "↓ down" : "↑ up"),
    el("td", { title: `${t.xfer} ${t.hash} ${t.digest}` }, t.download ? el("a", { href: t.download }, t.name) : t.name),
    el("td", {}, bytes(t.size)),
    el("td", {}, el("progress", { max: 1, value: t.fraction }), ` ${(100 * t.fraction).toFixed(0)} %`),
    el("td", { title: t.text || "" }, t.state + (t.reason ? ` (${t.reason})` : "")
      + (t.bytes_resent ? `, ${bytes(t.bytes_resent)} sent again` : ""))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted" },
    data.service ? "no transfers yet" : "no transfers yet (the file service runs where the console has telecommand keys)")));
  tbody.replaceChildren(...rows);
}

async function commandHistory(node) {
  const data = await api(`/api/node/${encodeURIComponent(node)}/commands`);
  const tbody = document.querySelector("#commands tbody");
  tbody.replaceChildren(...data.commands.map(c => {
    const stages = c.stages.length ? c.stages.map(s => el("span", {
      class: `stage ${s.stage}`, title: s.text || "",
    }, s.stage + (s.stage === "failed" ? ` (${s.reason} at ${s.at})` : "") + (s.duplicate ? " dup" : ""))) : [el("span", { class: "stage" }, c.status)];
    const args = Object.entries(c.args).map(([k, v]) => `${k}=${v}`).join(" ");
    return el("tr", { "data-id": c.id }, el("td", {}, utc(c.sent)), el("td", {}, `${c.name} ${args}`),
      el("td", {}, c.operator), el("td", { class: "stages" }, ...stages));
  }));
}

async function commandForm(node) {
  const data = await api("/api/dictionary");
  DICT = data.dictionary;
  const sel = document.getElementById("cmd-name");
  for (const c of DICT.commands) {
    sel.append(el("option", { value: c.name }, c.name + (c.status === "unsupported" ? " (not implemented yet)" : "")));
  }
  const argsBox = document.getElementById("cmd-args");
  const render = () => {
    const c = DICT.commands.find(x => x.name === sel.value);
    document.getElementById("cmd-description").textContent = c.description;
    argsBox.replaceChildren(...c.args.map(a => {
      let input;
      if (a.type === "enum") input = el("select", {}, ...a.choices.map(ch => el("option", { value: ch }, ch)));
      else if (a.type === "bool") input = el("select", {}, el("option", { value: "true" }, "true"), el("option", { value: "false" }, "false"));
      else {
        input = el("input", { type: a.type === "str" ? "text" : "number" });
        if (a.type === "float") input.step = "any";
        if (a.lo != null) input.min = a.lo;
        if (a.hi != null) input.max = a.hi;
        if (a.type === "str") input.maxLength = 64;
      }
      input.name = a.name; input.id = `arg-${a.name}`;
      if (a.required) input.required = true;
      const range = a.type === "enum" || a.type === "bool" ? "" : a.lo != null ? ` [${a.lo} … ${a.hi}]` : "";
      return el("label", { class: "arg" }, `${a.name}${a.unit ? " (" + a.unit + ")" : ""}${a.required ? "" : " (optional)"}`, input,
        el("span", { class: "muted small" }, `${a.description}${range}`));
    }));
  };
  sel.addEventListener("change", render);
  render();
  const form = document.getElementById("command-form");
  const result = document.getElementById("cmd-result");
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    if (!form.reportValidity()) { result.textContent = "fix the highlighted fields"; result.className = "refused"; return; }
    const args = {};
    for (const input of argsBox.querySelectorAll("input, select")) args[input.name] = input.value;
    try {
      const r = await api(`/api/node/${encodeURIComponent(node)}/commands`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: sel.value, args }),
      });
      result.textContent = `sent ${r.name} (id ${r.id}, counter ${r.counter})`;
      result.className = "ok-text";
      commandHistory(node);
    } catch (e) {
      result.textContent = e.status === 403 ? `refused: ${e.message}` : `not sent: ${e.message}`;
      result.className = "refused";
    }
  });
}

// -- alarms -------------------------------------------------------------------------------------

function alarmsPage() {
  const canAck = document.body.dataset.role === "commander";
  const acked = document.getElementById("show-acked");
  const refresh = async () => {
    const data = await api(`/api/alarms?acked=${acked.checked ? 1 : 0}`);
    document.getElementById("limits").textContent = data.limits.map(l =>
      `${l.channel} yellow ${l.high ? "≥" : "≤"} ${l.yellow}, red ${l.high ? "≥" : "≤"} ${l.red}`).join("; ");
    const tbody = document.querySelector("#alarms tbody");
    tbody.replaceChildren(...data.alarms.map(a => el("tr", { "data-channel": a.channel },
      el("td", {}, a.node), el("td", {}, a.channel),
      el("td", {}, el("span", { class: `badge ${LEVEL[a.active ? a.level : 0]}` }, a.active ? ["green", "yellow", "red"][a.level] : "back to green")),
      el("td", {}, el("span", { class: `badge ${LEVEL[a.worst]}` }, ["green", "yellow", "red"][a.worst])),
      el("td", {}, a.value == null ? "—" : Number(a.value).toFixed(2)),
      el("td", {}, utc(a.first_utc)), el("td", {}, utc(a.last_utc)),
      el("td", {}, a.acked_by ? `${a.acked_by} at ${utc(a.acked_at)}` : canAck
        ? el("button", { class: "ack", onclick: async () => {
          await api("/api/alarms/ack", { method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ node: a.node, channel: a.channel }) });
          refresh();
        } }, "Acknowledge") : "needs a commander"))));
    if (!data.alarms.length) tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no alarms")));
    alarmBadge(data.alarms.filter(a => !a.acked_by).length);
  };
  every(2000, refresh);
  acked.addEventListener("change", refresh);
}

const PAGES = { fleet: fleetPage, node: nodePage, alarms: alarmsPage };
const page = PAGES[document.body.dataset.page];
if (page) page();
