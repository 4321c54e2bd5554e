// Overview: device counts, a plain SVG map of the devices with the rivers and roads drawn
// through them (GET /ways), unresolved alerts per county, the live alert list from the SSE
// stream, and the cases per department (refreshed every 30 s).
import { api, fmtDuration, fmtTime, followAlerts, h, placeOf, SEVERITY, SEVERITY_ORDER, signIn, STATE } from "./app.js";

const SVG = "http://www.w3.org/2000/svg";
const COLOUR = { ok: "#2f9e44", warning: "#d4a106", major: "#e8590c", critical: "#b3261e", info: "#5c7cfa", offline: "#868e96" };
const KIND = { river: "河 river", gate: "门 gate", road: "路 road" };
const LIVE_MAX = 50;
// A way without an unresolved alert: rivers blue, roads grey; else the markers' severity colour.
const WAY_BASE = { river: "#4dabf7", road: "#adb5bd" };
const WAY_STATE = { none: "正常 OK", info: "提示 info", warning: "警告 warning", major: "严重 major", critical: "紧急 critical" };

let devices = []; // DeviceSummary[]
const byId = new Map();
const active = new Map(); // alert id → alert, not resolved
let ways = { rivers: [], roads: [] }; // GET /ways: devices in order along each, worst state

function deviceState(id) {
  const mine = [...active.values()].filter((a) => a.device_id === id);
  if (mine.some((a) => a.rule_id === "device_silent")) return "offline";
  for (const s of SEVERITY_ORDER) if (mine.some((a) => a.severity === s)) return s;
  return "ok";
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  el.append(...children);
  return el;
}

function renderCounts() {
  const offline = devices.filter((d) => deviceState(d.device.id) === "offline").length;
  document.getElementById("count-total").textContent = devices.length;
  document.getElementById("count-online").textContent = devices.length - offline;
  document.getElementById("count-offline").textContent = offline;
}

function renderMap() {
  const box = document.getElementById("map-svg");
  if (!devices.length) {
    box.replaceChildren(h("p", { class: "muted" }, "没有设备 No devices"));
    return;
  }
  const lats = devices.map((d) => d.device.lat);
  const lons = devices.map((d) => d.device.lon);
  const [s, n, w, e] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
  const midLat = ((s + n) / 2) * (Math.PI / 180);
  const spanX = Math.max((e - w) * Math.cos(midLat), 1e-3);
  const spanY = Math.max(n - s, 1e-3);
  const W = 640;
  const pad = 24;
  const scale = (W - 2 * pad) / Math.max(spanX, spanY * 0.8);
  const H = Math.round(spanY * scale + 2 * pad);
  const x = (lon) => pad + (lon - w) * Math.cos(midLat) * scale;
  const y = (lat) => pad + (n - lat) * scale;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "设备地图 device map" });
  // Faint graticule every 0.05°, so distances read at a glance.
  for (let v = Math.ceil(w / 0.05) * 0.05; v <= e; v += 0.05)
    root.append(svg("line", { x1: x(v), x2: x(v), y1: 0, y2: H, stroke: "#d5e0ea" }));
  for (let v = Math.ceil(s / 0.05) * 0.05; v <= n; v += 0.05)
    root.append(svg("line", { x1: 0, x2: W, y1: y(v), y2: y(v), stroke: "#d5e0ea" }));
  // Rivers and roads under the markers, the worst on top.
  const rank = ["none", "info", "warning", "major", "critical"];
  const lines = [...ways.roads, ...ways.rivers].filter((way) => way.devices.length);
  lines.sort((a, b) => rank.indexOf(a.state) - rank.indexOf(b.state));
  for (const way of lines) root.append(wayLine(way, x, y));
  const order = { ok: 0, info: 1, warning: 2, major: 3, offline: 4, critical: 5 };
  const sorted = [...devices].sort((a, b) => order[deviceState(a.device.id)] - order[deviceState(b.device.id)]);
  for (const d of sorted) {
    const state = deviceState(d.device.id);
    const shape =
      d.device.kind === "river"
        ? svg("rect", { x: x(d.device.lon) - 6, y: y(d.device.lat) - 6, width: 12, height: 12, rx: 2 })
        : svg("circle", { cx: x(d.device.lon), cy: y(d.device.lat), r: d.device.kind === "road" ? 6 : 5 });
    shape.setAttribute("fill", COLOUR[state]);
    shape.setAttribute("stroke", "#fff");
    shape.setAttribute("stroke-width", "1.5");
    const title = svg("title");
    title.textContent = `${d.device.name} (${d.device.id}) · ${KIND[d.device.kind]} · ${state}`;
    const link = svg("a", { href: `device.html?id=${encodeURIComponent(d.device.id)}`, class: "marker", "data-device": d.device.id, "data-state": state }, shape, title);
    root.append(link);
  }
  box.replaceChildren(root);
}

/** A river or road as a polyline through its devices in order; a river links to its profile. */
function wayLine(way, x, y) {
  const points = way.devices.map((d) => `${x(d.lon).toFixed(1)},${y(d.lat).toFixed(1)}`);
  if (points.length === 1) points.push(points[0]); // one device: a dot under its marker
  const river = way.kind === "river";
  const line = svg("polyline", {
    points: points.join(" "),
    class: `way way-${way.kind}`,
    fill: "none",
    stroke: way.state === "none" ? WAY_BASE[way.kind] : COLOUR[way.state],
    "stroke-width": river ? 5 : 3.5,
    "stroke-linecap": "round",
    "stroke-linejoin": "round",
    "data-way": way.id,
    "data-kind": way.kind,
    "data-state": way.state,
  });
  if (!river) line.setAttribute("stroke-dasharray", "9 5");
  const title = svg("title");
  title.textContent = `${way.name}${way.name_en ? ` ${way.name_en}` : ""} · ${river ? "河流 river" : "道路 road"} · ${WAY_STATE[way.state] ?? way.state}`;
  if (!river) return svg("g", { class: "way-road" }, line, title);
  return svg("a", { href: `river.html?id=${encodeURIComponent(way.id)}`, class: "way-link" }, line, title);
}

/** Fetch GET /ways again and redraw the map (at start, every 30 s, after alert changes). */
async function refreshWays() {
  try {
    ways = await api("/ways");
  } catch (e) {
    console.warn("ways:", e);
    return;
  }
  renderMap();
}

function renderCounties() {
  const counties = new Map(); // id → name
  for (const d of devices) for (const p of d.path) if (p.level === "county") counties.set(p.id, p.name);
  const rows = [...counties].map(([id, name]) => {
    const here = [...active.values()].filter((a) => a.areas.county === id);
    return h("tr", { dataset: { county: id } }, h("td", {}, name), ...SEVERITY_ORDER.map((s) => h("td", {}, here.filter((a) => a.severity === s).length)));
  });
  const head = h("tr", {}, h("th", {}, "区县 County"), ...SEVERITY_ORDER.map((s) => h("th", {}, h("span", { class: `sev sev-${s}` }, SEVERITY[s]))));
  document.getElementById("by-county").replaceChildren(head, ...rows);
}

function liveItem(alert, text, fresh) {
  const device = byId.get(alert.device_id);
  return h(
    "li",
    { class: fresh ? "new" : undefined, dataset: { alert: alert.id, state: alert.state } },
    h("span", { class: `sev sev-${alert.severity}` }, SEVERITY[alert.severity] ?? alert.severity),
    " ",
    h("b", {}, STATE[alert.state] ?? alert.state),
    " ",
    h("a", { href: `device.html?id=${encodeURIComponent(alert.device_id)}` }, device ? device.device.name : alert.device_id),
    h("div", {}, text),
    h("div", { class: "muted" }, `${alert.rule_id} · ${fmtTime(alert.updated_ms)} · ${placeOf(device)}`),
  );
}

// Critical alerts nobody was reached for (GET /deliveries/undelivered): shown until handled.
async function renderUndelivered() {
  const box = document.getElementById("undelivered");
  const list = document.getElementById("undelivered-list");
  let rows = [];
  try {
    rows = await api("/deliveries/undelivered");
  } catch (e) {
    rows = []; // not an operator, or no delivery store: nothing to flag here
  }
  list.replaceChildren(
    ...rows.map((r) => {
      const li = document.createElement("li");
      li.dataset.alert = r.alert;
      li.textContent = `${r.alert} — ${r.detail}`;
      return li;
    }),
  );
  box.hidden = rows.length === 0;
}

async function renderCaseStats() {
  const table = document.getElementById("case-stats");
  let groups;
  try {
    groups = (await api("/cases/stats?by=department")).groups;
  } catch (e) {
    table.replaceChildren(h("tr", {}, h("td", { class: "muted" }, `无法读取案件统计 Cannot load case statistics: ${e.reason ?? e.message}`)));
    return;
  }
  const head = h(
    "tr",
    {},
    h("th", {}, "部门 Department"),
    ...["未结 Open", "全部 Total", "按时率 On time", "处置中位时长 Median time to handle", "退回 Sent back"].map((t) => h("th", { class: "num" }, t)),
  );
  const rows = groups.map((g) => {
    const open = g.total - (g.by_state?.closed ?? 0);
    const rate = g.on_time_rate == null ? "—" : `${Math.round(g.on_time_rate * 1000) / 10}%`;
    return h(
      "tr",
      { dataset: { group: g.key } },
      h("td", {}, g.name || g.key, g.name && g.name !== g.key && g.key !== "-" ? h("span", { class: "muted" }, ` ${g.key}`) : null),
      h("td", { class: "num", dataset: { field: "open" } }, open),
      h("td", { class: "num", dataset: { field: "total" } }, g.total),
      h("td", { class: "num", dataset: { field: "on_time" } }, rate),
      h("td", { class: "num", dataset: { field: "median" } }, fmtDuration(g.median_handle_s)),
      h("td", { class: "num", dataset: { field: "sent_back" } }, g.sent_back),
    );
  });
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "还没有案件 No cases yet")));
  table.replaceChildren(head, ...rows);
}

function render() {
  renderCounts();
  renderMap();
  renderCounties();
}

async function start() {
  devices = await api("/devices");
  for (const d of devices) byId.set(d.device.id, d);
  const open = await api("/alerts?state=open&state=acknowledged&limit=1000");
  for (const a of open) active.set(a.id, a);
  render();
  refreshWays();
  renderCaseStats();
  renderUndelivered();
  setInterval(() => (renderCaseStats(), refreshWays(), renderUndelivered()), 30_000);
  const live = document.getElementById("live");
  live.replaceChildren(...open.slice(0, 20).map((a) => liveItem(a, a.detail || a.rule_id, false)));
  let pending = null;
  followAlerts((change) => {
    const alert = change.alert;
    if (alert.state === "resolved") active.delete(alert.id);
    else active.set(alert.id, alert);
    live.prepend(liveItem(alert, `${change.message_zh} / ${change.message_en}`, true));
    while (live.children.length > LIVE_MAX) live.lastElementChild.remove();
    // A burst of changes redraws once.
    if (pending === null) pending = setTimeout(() => ((pending = null), render(), refreshWays()), 300);
  });
}

const liveState = new MutationObserver(() => {
  const v = document.body.dataset.live;
  document.getElementById("live-state").textContent = v === "connected" ? "● 已连接 connected" : v === "reconnecting" ? "○ 重连中 reconnecting" : "";
});
liveState.observe(document.body, { attributes: true, attributeFilter: ["data-live"] });
signIn(() => start().catch((e) => console.error(e)));
