// Road traffic: each road segment's congestion index (交通运行指数, 0–10) as a bar coloured by
// its level, and the road accidents of today and this month against a year earlier (同比).
// Everything from GET /traffic with the signed-in token; refreshed every 30 s.
import { api, h, signIn } from "./app.js";

const REFRESH_MS = 30000;
const SVG = "http://www.w3.org/2000/svg";
const status = document.getElementById("status");
const tz = new URLSearchParams(location.search).get("tz") || "Asia/Shanghai";

function say(text, error = false) {
  status.textContent = text;
  status.classList.toggle("error", error);
}

function fmt(value, digits = 1) {
  return value == null ? "—" : value.toFixed(digits);
}

function pct(value) {
  if (value == null) return "—";
  return `${value > 0 ? "+" : ""}${value.toFixed(1)}%`;
}

/** A bar 0–10 drawn as an SVG rect: widths are attributes, not inline styles (the CSP). */
function bar(index, level) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 100 10");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  const rect = document.createElementNS(SVG, "rect");
  rect.setAttribute("x", "0");
  rect.setAttribute("y", "0");
  rect.setAttribute("height", "10");
  rect.setAttribute("width", String(index == null ? 0 : Math.max(1, index * 10)));
  rect.setAttribute("class", `lvl-${level ?? "none"}`);
  svg.append(rect);
  return h("div", { class: "bar" }, svg, h("b", { class: "index" }, fmt(index, 2)));
}

function segmentRow(s) {
  const level = s.level ?? "none";
  return h(
    "tr",
    { dataset: { segment: s.segment, level, index: s.index == null ? "" : String(s.index) } },
    h("td", {}, s.road_name, s.road_name_en ? h("div", { class: "muted" }, s.road_name_en) : null),
    h("td", {}, s.name, s.name_en ? h("div", { class: "muted" }, s.name_en) : null),
    h("td", {}, `${s.from_km}–${s.to_km}`),
    h("td", {}, bar(s.index, s.level)),
    h("td", {}, h("span", { class: `level lvl-${level}` }, s.level ? `${s.level_zh} ${s.level_en}` : "无数据 No data")),
    h("td", { class: "num" }, fmt(s.speed_kmh)),
    h("td", { class: "num" }, fmt(s.free_flow_kmh, 0)),
    h("td", { class: "num" }, s.cameras == null ? "—" : String(s.cameras)),
  );
}

function showPeriod(prefix, period) {
  document.getElementById(`acc-${prefix}`).textContent = String(period.count);
  document.getElementById(`acc-${prefix}-back`).textContent = `去年同期 A year earlier: ${period.year_earlier}`;
  const change = document.getElementById(`acc-${prefix}-pct`);
  change.textContent = pct(period.change_pct);
  change.classList.toggle("up", (period.change_pct ?? 0) > 0);
  change.classList.toggle("down", (period.change_pct ?? 0) < 0);
}

async function load() {
  try {
    const answer = await api(`/traffic?tz=${encodeURIComponent(tz)}`);
    // Worst first, segments without data last; the registry's order among equals.
    const rows = answer.segments.map((s, i) => [s, i]);
    rows.sort(([a, i], [b, j]) => (b.index ?? -1) - (a.index ?? -1) || i - j);
    document.querySelector("#segments tbody").replaceChildren(...rows.map(([s]) => segmentRow(s)));
    const acc = answer.accidents;
    document.getElementById("accidents-tz").textContent = acc.tz;
    showPeriod("today", acc.today);
    showPeriod("month", acc.month_to_date);
    document.getElementById("refreshed").textContent = `更新于 Updated ${new Date().toLocaleTimeString("zh-CN", { hour12: false })}`;
    document.body.dataset.loaded = "true";
    say("");
  } catch (e) {
    say(`无法读取 Cannot load — ${e.reason ?? e.message}`, true);
  }
}

signIn(() => {
  load();
  setInterval(load, REFRESH_MS);
});
