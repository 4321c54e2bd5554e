// Device page: registry data, last values, a time-series chart (uPlot, vendored) with the
// device's thresholds drawn, range and aggregation pickers, and the device's alert history.
/* global uPlot */
import { api, fmtTime, fmtValue, h, SEVERITY, signIn, STATE } from "./app.js";

const FIELDS = {
  river: ["water_level_m", "flow_m3s", "rainfall_mm", "water_temp_c", "ph", "do_mgl", "nh3n_mgl", "codmn_mgl", "tp_mgl", "turbidity_ntu", "battery_v"],
  road: ["avg_speed_kmh", "vehicle_count", "occupancy_pct", "queue_length_m"],
  gate: ["people_in", "people_out", "vehicles_in", "vehicles_out", "battery_v"],
};
const REGISTRY_LABELS = {
  id: "编号 Id", kind: "类型 Kind", name: "名称 Name", name_en: "英文名 English name", lat: "纬度 Latitude", lon: "经度 Longitude",
  grid: "网格 Grid", report_interval_s: "上报间隔 Report interval (s)", river: "河流 River", normal_level_m: "正常水位 Normal level (m)",
  warning_level_m: "警戒水位 Warning level (m)", guarantee_level_m: "保证水位 Guarantee level (m)", road: "道路 Road",
  speed_limit_kmh: "限速 Speed limit (km/h)", lanes: "车道 Lanes", community: "小区 Community", gate_type: "门类型 Gate type",
};

const id = new URLSearchParams(location.search).get("id") || "";
let detail = null;
let plot = null;

/** The horizontal lines to draw for a field of this device. */
function thresholds(device, field) {
  if (device.kind === "river" && field === "water_level_m")
    return [
      { key: "warning", label: "警戒 warning", value: device.warning_level_m, colour: "#e67e22" },
      { key: "guarantee", label: "保证 guarantee", value: device.guarantee_level_m, colour: "#c0392b" },
    ];
  if (device.kind === "road" && field === "avg_speed_kmh")
    return [{ key: "limit", label: "限速 speed limit", value: device.speed_limit_kmh, colour: "#8e44ad" }];
  return [];
}

function renderRegistry() {
  const d = detail.device;
  const rows = Object.entries(d).map(([k, v]) => h("tr", {}, h("th", {}, REGISTRY_LABELS[k] ?? k), h("td", {}, fmtValue(v))));
  rows.push(h("tr", {}, h("th", {}, "位置 Place"), h("td", {}, [...detail.path].reverse().map((p) => p.name).join(" › "))));
  document.getElementById("registry").replaceChildren(...rows);
  document.getElementById("title").textContent = `${d.name} · ${d.name_en ?? d.id}`;
}

function renderLast() {
  const rows = [h("tr", {}, h("th", {}, "最后上报 Last seen"), h("td", {}, fmtTime(detail.last_seen_ms)))];
  for (const [channel, reading] of Object.entries(detail.last)) {
    rows.push(h("tr", {}, h("th", { colspan: 2 }, `${channel} · ${fmtTime(reading.time_ms)}`)));
    for (const [k, v] of Object.entries(reading.values)) {
      if (["device", "grid", "village", "township", "county", "kind"].includes(k)) continue;
      rows.push(h("tr", { dataset: { field: k } }, h("td", {}, k), h("td", {}, `${fmtValue(v)} ${reading.units[k] ?? ""}`)));
    }
  }
  document.getElementById("last").replaceChildren(...rows);
}

async function renderChart() {
  const device = detail.device;
  const field = document.getElementById("field").value;
  const seconds = Number(document.getElementById("range").value);
  const every = document.getElementById("every").value;
  const fn = document.getElementById("fn").value;
  const end = new Date(Date.now() + 60_000);
  const start = new Date(end.getTime() - seconds * 1000);
  const q = new URLSearchParams({ kind: device.kind, field, device: device.id, start: start.toISOString(), end: end.toISOString() });
  if (every) {
    q.set("every", every);
    q.set("fn", fn);
  }
  const note = document.getElementById("chart-note");
  const box = document.getElementById("chart");
  let result;
  try {
    result = await api(`/series?${q}`);
  } catch (e) {
    note.textContent = `无法读取 Cannot load: ${e.message}`;
    return;
  }
  const points = result.series[0]?.points ?? [];
  const xs = points.map((p) => Date.parse(p.time) / 1000);
  const ys = points.map((p) => p.values[field] ?? null);
  const unit = result.fields.find((f) => f.name === field)?.unit ?? "";
  const lines = thresholds(device, field);
  note.textContent = `${points.length} 点 points${result.truncated ? " · 已截断 truncated" : ""}` + (lines.length ? ` · ${lines.map((l) => `${l.label} ${l.value} ${unit}`).join(" · ")}` : "");
  const drawn = {};
  const opts = {
    width: Math.max(box.clientWidth, 280),
    height: 300,
    series: [{}, { label: `${field} (${unit})`, stroke: "#1f6feb", width: 2, points: { show: points.length < 60 } }],
    scales: {
      x: { time: true, range: () => [start.getTime() / 1000, end.getTime() / 1000] },
      y: {
        range: (_u, min, max) => {
          const values = [min, max, ...lines.map((l) => l.value)].filter((v) => Number.isFinite(v));
          if (!values.length) return [0, 1];
          const lo = Math.min(...values);
          const hi = Math.max(...values);
          const pad = (hi - lo) * 0.08 || 1;
          return [lo - pad, hi + pad];
        },
      },
    },
    axes: [{}, { label: unit }],
    hooks: {
      draw: [
        (u) => {
          const ctx = u.ctx;
          const ratio = window.devicePixelRatio || 1;
          for (const line of lines) {
            const y = Math.round(u.valToPos(line.value, "y", true));
            ctx.save();
            ctx.strokeStyle = line.colour;
            ctx.lineWidth = 2 * ratio;
            ctx.beginPath();
            ctx.moveTo(u.bbox.left, y);
            ctx.lineTo(u.bbox.left + u.bbox.width, y);
            ctx.stroke();
            ctx.fillStyle = line.colour;
            ctx.textAlign = "left";
            ctx.textBaseline = "alphabetic";
            ctx.font = `${12 * ratio}px sans-serif`;
            ctx.fillText(`${line.label} ${line.value}`, u.bbox.left + 6 * ratio, y - 5 * ratio);
            ctx.restore();
            drawn[line.key] = y; // canvas pixels: the tests read the line's colour there
          }
          box.dataset.lines = JSON.stringify(drawn);
          box.dataset.points = String(points.length);
        },
      ],
    },
  };
  plot?.destroy();
  box.replaceChildren();
  plot = new uPlot(opts, [xs, ys], box);
}

async function renderHistory() {
  // The list has no device filter: ask for the device's grid, keep this device's alerts.
  const all = await api(`/alerts?area=${encodeURIComponent(detail.device.grid)}&limit=1000`);
  const mine = all.filter((a) => a.device_id === detail.device.id);
  const head = h("tr", {}, ...["开始 Opened", "规则 Rule", "级别 Severity", "状态 State", "值 Value", "确认 Acknowledged", "解决 Resolved", "发送对象 Sent to", "送达 Reached"].map((t) => h("th", {}, t)));
  const rows = mine.map((a) =>
    h(
      "tr",
      { dataset: { alert: a.id } },
      h("td", {}, fmtTime(a.opened_ms)),
      h("td", {}, a.rule_id),
      h("td", {}, h("span", { class: `sev sev-${a.severity}` }, SEVERITY[a.severity] ?? a.severity)),
      h("td", {}, STATE[a.state] ?? a.state),
      h("td", {}, fmtValue(a.value)),
      h("td", {}, a.acknowledged_by ? `${a.acknowledged_by} ${fmtTime(a.acknowledged_ms)}` : "—"),
      h("td", {}, a.resolved_by ? `${a.resolved_by} ${fmtTime(a.resolved_ms)}` : "—"),
      h("td", { class: "audiences" }, a.audiences ? audienceText(a.audiences) : "…"),
      h("td", {}, h("button", { type: "button", class: "deliveries", dataset: { alert: a.id } }, "查看 Show")),
    ),
  );
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "没有告警 No alerts")));
  document.getElementById("history").replaceChildren(head, ...rows);
  document.querySelectorAll("#history button.deliveries").forEach((b) =>
    b.addEventListener("click", () => renderDeliveries(b.dataset.alert).catch((e) => console.error(e))),
  );
  // The list may not carry the audiences; GET /alerts/{id} does: fill in the newest rows.
  mine
    .filter((x) => !x.audiences)
    .forEach((a, i) => {
      const cell = document.querySelector(`#history tr[data-alert="${CSS.escape(a.id)}"] td.audiences`);
      if (i >= AUDIENCE_LOOKUPS) cell.textContent = "—";
      else
        api(`/alerts/${encodeURIComponent(a.id)}`)
          .then((d) => (cell.textContent = audienceText(d.alert.audiences)))
          .catch(() => (cell.textContent = "—"));
    });
}

const DELIVERY_STATE = { pending: "待送 pending", delivered: "已送达 delivered", failed: "失败 failed", expired: "过期 expired" };

/** Who was reached how and when (GET /deliveries): a small table under the alert history. */
async function renderDeliveries(alertId) {
  const found = await api(`/deliveries?alert=${encodeURIComponent(alertId)}`);
  let box = document.getElementById("deliveries");
  if (!box) {
    box = h("div", { id: "deliveries", class: "table-wrap" });
    document.getElementById("history").closest("section").append(box);
  }
  const head = h("tr", {}, ...["接收人 Recipient", "渠道 Channel", "端点 Endpoint", "状态 State", "尝试 Attempts"].map((t) => h("th", {}, t)));
  const rows = found.deliveries.map((d) =>
    h(
      "tr",
      {},
      h("td", {}, d.recipient),
      h("td", {}, d.channel),
      h("td", {}, d.endpoint),
      h("td", {}, DELIVERY_STATE[d.state] ?? d.state),
      h("td", {}, d.attempts.map((t) => `${fmtTime(t.at_ms)} ${t.http_status ?? "—"} ${t.code} ${t.outcome}`).join(" · ") || "—"),
    ),
  );
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "没有渠道送达 No channel deliveries")));
  const title = h("h3", {}, `送达 Reached: ${alertId}`, found.undelivered ? h("span", { class: "sev sev-critical" }, " 未送达已上报 undelivered, escalated") : "");
  box.replaceChildren(title, h("table", {}, head, ...rows));
}

const AUDIENCE_LOOKUPS = 30;
const AUDIENCE_KIND = { grid: "网格 grid", village: "村 village", township: "乡镇 township", county: "区县 county", city: "市 city", river_chief: "河长 river chief", road_chief: "路长 road chief", department: "部门 department", person: "人 person" };

/** "grid/430502001001-01" → "网格 grid 430502001001-01", joined; "—" when none or unknown. */
function audienceText(keys) {
  if (!keys || !keys.length) return "—";
  return keys
    .map((k) => {
      const [kind, ...rest] = String(k).split("/");
      return `${AUDIENCE_KIND[kind] ?? kind} ${rest.join("/")}`;
    })
    .join(" · ");
}

async function start() {
  try {
    detail = await api(`/devices/${encodeURIComponent(id)}`);
  } catch (e) {
    document.getElementById("error").textContent = `找不到设备 Device not found: ${id} (${e.message})`;
    return;
  }
  renderRegistry();
  renderLast();
  const select = document.getElementById("field");
  select.replaceChildren(...FIELDS[detail.device.kind].map((f) => h("option", { value: f }, f)));
  for (const picker of ["field", "range", "every", "fn"]) document.getElementById(picker).addEventListener("change", renderChart);
  await Promise.all([renderChart(), renderHistory()]);
}

signIn(() => start().catch((e) => console.error(e)));
