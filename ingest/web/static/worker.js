// Grid worker view: the worker's own open and acknowledged alerts, newest first, with place,
// value and time; acknowledge or resolve with a note. Refreshed live from the alert stream.
// The worker's cases and the report form below them are worker-cases.js.
import { api, fmtTime, fmtValue, followAlerts, h, placeOf, SEVERITY, signIn, STATE } from "./app.js";
import { startCases } from "./worker-cases.js";

const byId = new Map(); // device id → DeviceSummary (the worker's own devices)
const status = document.getElementById("status");

async function act(alert, action, note, card) {
  for (const b of card.querySelectorAll("button")) b.disabled = true;
  try {
    const changed = await api(`/alerts/${encodeURIComponent(alert.id)}/${action}`, { method: "POST", body: note ? { note } : {} });
    status.textContent = `${alert.id}: ${STATE[changed.alert.state]}`;
  } catch (e) {
    status.textContent = `${alert.id}: 失败 failed — ${e.message}`;
  }
  await load();
}

function card(alert) {
  const device = byId.get(alert.device_id);
  const note = h("input", { type: "text", name: "note", maxlength: 500, placeholder: "备注 Note", "aria-label": "备注 Note" });
  const el = h(
    "li",
    { class: "card", dataset: { alert: alert.id, state: alert.state } },
    h(
      "div",
      { class: "row" },
      h("span", { class: `sev sev-${alert.severity}` }, SEVERITY[alert.severity] ?? alert.severity),
      h("b", { class: "state" }, STATE[alert.state] ?? alert.state),
      h("span", { class: "muted" }, alert.rule_id),
    ),
    h("div", {}, h("b", {}, device ? device.device.name : alert.device_id), " ", h("span", { class: "muted" }, alert.device_id)),
    h("div", { class: "muted" }, `地点 Place: ${placeOf(device)}`),
    h("div", {}, `值 Value: ${fmtValue(alert.value)}`, alert.repeat_count ? ` · 重复 repeats ${alert.repeat_count}` : ""),
    h("div", { class: "muted" }, `时间 Time: ${fmtTime(alert.opened_ms)}`, alert.acknowledged_by ? ` · 已确认 by ${alert.acknowledged_by}` : ""),
    note,
  );
  const ack = h("button", { type: "button", class: "ack", disabled: alert.state !== "open" }, "确认 Acknowledge");
  const resolve = h("button", { type: "button", class: "resolve primary" }, "解决 Resolve");
  ack.addEventListener("click", () => act(alert, "ack", note.value.trim(), el));
  resolve.addEventListener("click", () => act(alert, "resolve", note.value.trim(), el));
  el.append(h("div", { class: "actions" }, ack, resolve));
  return el;
}

async function load() {
  const alerts = await api("/alerts?state=open&state=acknowledged&limit=200");
  alerts.sort((a, b) => b.opened_ms - a.opened_ms);
  const list = document.getElementById("alerts");
  list.replaceChildren(...alerts.map(card));
  if (!alerts.length) list.append(h("li", { class: "muted" }, "没有待处理的告警 Nothing to do"));
  document.body.dataset.loaded = String(Date.now());
}

async function start() {
  for (const d of await api("/devices")) byId.set(d.device.id, d);
  startCases([...byId.values()]).catch((e) => console.error(e)); // the worker's cases, below the alerts
  await load();
  let pending = null;
  followAlerts(() => {
    // Do not redraw under a worker who is typing a note.
    if (pending === null)
      pending = setTimeout(function again() {
        if (document.activeElement?.name === "note") pending = setTimeout(again, 2000);
        else {
          pending = null;
          load();
        }
      }, 500);
  });
}

signIn(() => start().catch((e) => console.error(e)));
