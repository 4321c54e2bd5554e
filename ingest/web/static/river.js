// River profile: a river's stations upstream → downstream (x = km) with their newest water
// level and their warning and guarantee levels joined station by station (y = elevation, m),
// a river picker, and the stations' table. uPlot (vendored), as the device page's chart.
/* global uPlot */
import { api, fmtTime, fmtValue, h, SEVERITY, signIn } from "./app.js";

const STATE_COLOUR = { warning: "#d4a106", major: "#e8590c", critical: "#b3261e", info: "#5c7cfa" };
// Drawn in this order; the test reads the warning line's colour on the canvas.
const LINES = [
  { key: "level", field: "water_level_m", label: "最新水位 newest level", colour: "#1f6feb", width: 2.5, points: true },
  { key: "warning", field: "warning_level_m", label: "警戒水位 warning", colour: "#e67e22", width: 2 },
  { key: "guarantee", field: "guarantee_level_m", label: "保证水位 guarantee", colour: "#c0392b", width: 2 },
  { key: "normal", field: "normal_level_m", label: "正常水位 normal", colour: "#868e96", width: 1, dash: [6, 4] },
];
const REFRESH_MS = 30_000;

let riverId = new URLSearchParams(location.search).get("id") || "";
let plot = null;

function stateBadge(state) {
  if (!state || state === "none") return h("span", { class: "muted" }, "正常 OK");
  return h("span", { class: `sev sev-${state}` }, SEVERITY[state] ?? state);
}

function renderChart(profile) {
  const box = document.getElementById("chart");
  const stations = profile.stations;
  if (!stations.length) {
    plot?.destroy();
    plot = null;
    box.replaceChildren(h("p", { class: "muted" }, "没有站点 No stations"));
    return;
  }
  const xs = stations.map((s) => s.km);
  const data = [xs, ...LINES.map((l) => stations.map((s) => s[l.field] ?? null))];
  const drawn = {};
  const opts = {
    width: Math.max(box.clientWidth, 280),
    height: 380,
    series: [
      { label: "km" },
      ...LINES.map((l) => ({
        label: `${l.label} (m)`,
        stroke: l.colour,
        width: l.width,
        dash: l.dash,
        spanGaps: true,
        points: { show: Boolean(l.points), size: 8, fill: l.colour },
      })),
    ],
    scales: {
      x: {
        time: false,
        range: (_u, min, max) => {
          const pad = (max - min) * 0.06 || 1;
          return [min - pad, max + pad];
        },
      },
      y: {
        range: (_u, min, max) => {
          const values = [min, max].filter((v) => Number.isFinite(v));
          if (!values.length) return [0, 1];
          const lo = Math.min(...values);
          const hi = Math.max(...values);
          const pad = (hi - lo) * 0.12 || 1;
          return [lo - pad, hi + pad];
        },
      },
    },
    axes: [{ label: "km 上游 → 下游 upstream → downstream" }, { label: "高程 elevation (m)" }],
    hooks: {
      draw: [
        (u) => {
          // Station names along the top, in their alert's colour; a faint tick down to the axis.
          const ctx = u.ctx;
          const ratio = window.devicePixelRatio || 1;
          ctx.save();
          ctx.font = `${11 * ratio}px sans-serif`;
          ctx.textAlign = "center";
          ctx.textBaseline = "top";
          stations.forEach((s, i) => {
            const x = Math.round(u.valToPos(s.km, "x", true));
            ctx.strokeStyle = "#d5e0ea";
            ctx.lineWidth = ratio;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.fillStyle = STATE_COLOUR[s.state] ?? "#1d2733";
            ctx.fillText(s.name, x, u.bbox.top + (4 + (i % 2) * 14) * ratio);
          });
          ctx.restore();
          // Where each line was drawn, in canvas pixels, for the tests.
          for (const l of LINES) drawn[l.key] = stations.map((s) => (s[l.field] == null ? null : u.valToPos(s[l.field], "y", true)));
          box.dataset.lines = JSON.stringify(drawn);
          box.dataset.xs = JSON.stringify(stations.map((s) => u.valToPos(s.km, "x", true)));
          box.dataset.scale = JSON.stringify({ min: u.scales.y.min, max: u.scales.y.max, top: u.bbox.top, height: u.bbox.height });
          box.dataset.stations = String(stations.length);
          box.dataset.river = profile.id;
        },
      ],
    },
  };
  plot?.destroy();
  box.replaceChildren();
  plot = new uPlot(opts, data, box);
}

function renderTable(profile) {
  const head = h("tr", {}, ...["站点 Station", "km", "最新水位 Level (m)", "时间 Time", "警戒 Warning (m)", "保证 Guarantee (m)", "告警 Alert"].map((t) => h("th", {}, t)));
  const rows = profile.stations.map((s) =>
    h(
      "tr",
      { dataset: { station: s.id, state: s.state } },
      h("td", {}, h("a", { href: `device.html?id=${encodeURIComponent(s.id)}` }, s.name)),
      h("td", {}, fmtValue(s.km)),
      h("td", { class: s.water_level_m != null && s.water_level_m > s.warning_level_m ? "over" : undefined, dataset: { field: "water_level_m" } }, fmtValue(s.water_level_m)),
      h("td", {}, fmtTime(s.time_ms)),
      h("td", {}, fmtValue(s.warning_level_m)),
      h("td", {}, fmtValue(s.guarantee_level_m)),
      h("td", {}, stateBadge(s.state)),
    ),
  );
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "没有站点 No stations")));
  document.getElementById("stations").replaceChildren(head, ...rows);
}

async function load() {
  const error = document.getElementById("error");
  let profile;
  try {
    profile = await api(`/rivers/${encodeURIComponent(riverId)}/profile`);
  } catch (e) {
    error.textContent = `无法读取河流 Cannot load river ${riverId}: ${e.reason ?? e.message}`;
    return;
  }
  error.textContent = "";
  document.getElementById("title").textContent = `河流剖面 River profile · ${profile.name}${profile.name_en ? ` ${profile.name_en}` : ""}`;
  document.getElementById("river-state").replaceChildren(stateBadge(profile.state));
  renderChart(profile);
  renderTable(profile);
}

async function start() {
  const { rivers } = await api("/ways");
  const select = document.getElementById("river");
  select.replaceChildren(...rivers.map((r) => h("option", { value: r.id }, `${r.name}${r.name_en ? ` ${r.name_en}` : ""}`)));
  if (!riverId && rivers.length) riverId = rivers[0].id;
  select.value = riverId;
  select.addEventListener("change", () => {
    riverId = select.value;
    history.replaceState(null, "", `?id=${encodeURIComponent(riverId)}`);
    load();
  });
  await load();
  setInterval(load, REFRESH_MS);
}

signIn(() => start().catch((e) => console.error(e)));
