// Case board (operators): every case in a column by state, overdue first; a detail panel
// with the history, the photos and the operator's steps (dispatch, verify, send back, close);
// filing a case from an alert. Refreshed every 5 s.
import {
  api,
  areaNames,
  assigneeLabel,
  CASE_ACTION,
  CASE_STATE,
  CASE_STATES,
  casePlace,
  fmtRelative,
  fmtTime,
  h,
  imageUrl,
  SEVERITY,
  signIn,
  SOURCE,
} from "./app.js";

const REFRESH_MS = 5000;
const CLOSED_SHOWN = 5; // the closed column shows the newest few unless opened
// Which of the operator's steps the panel offers in which state (the server has the last word).
// (rules/cases.py: dispatch again while nobody has accepted; send back a handled case only.)
const STEPS = {
  dispatch: ["filed", "dispatched"],
  verify: ["handled"],
  "send-back": ["handled"],
  close: ["verified"],
};
// The registry's departments (GET /duties), id → the level of its units: the dispatch box offers
// each at the selected case's area of that level, besides the keys seen on cases. It is a
// datalist: any key may be typed; the server answers 422 unknown_assignee otherwise.
let DEPARTMENTS = {};

let names = new Map(); // area id → name
let cases = [];
let selected = null; // case id in the panel
let shownVersion = ""; // "id@updated_ms" drawn in the panel, so a refresh redraws only on change
let showAllClosed = false;
const photoCache = new Map(); // photo id → data: URL, the newest few (a photo may be 5 MB)
const PHOTOS_CACHED = 30;

const board = document.getElementById("board");
const status = document.getElementById("status");
const panel = document.getElementById("detail");
const detailStatus = document.getElementById("detail-status");

function say(el, text, error = false) {
  el.textContent = text;
  el.classList.toggle("error", error);
}

function byUrgency(a, b) {
  if (a.overdue !== b.overdue) return a.overdue ? -1 : 1;
  if (a.supervised !== b.supervised) return a.supervised ? -1 : 1;
  const da = a.deadline_ms ?? Infinity;
  const db = b.deadline_ms ?? Infinity;
  if (da !== db) return da - db;
  return b.updated_ms - a.updated_ms;
}

function caseCard(c) {
  const flags = [];
  if (c.overdue) flags.push(h("span", { class: "flag flag-overdue" }, "超期 Overdue"));
  if (c.supervised) flags.push(h("span", { class: "flag flag-supervised" }, `督办 Supervised${c.supervision_level ? ` · ${c.supervision_level}` : ""}`));
  if (c.sent_back_count) flags.push(h("span", { class: "flag" }, `退回 ×${c.sent_back_count} sent back`));
  return h(
    "li",
    {
      class: `case-card${c.id === selected ? " selected" : ""}`,
      tabindex: 0,
      role: "button",
      dataset: { case: c.id, state: c.state, overdue: String(!!c.overdue), supervised: String(!!c.supervised) },
      onclick: () => select(c.id),
      onkeydown: (e) => (e.key === "Enter" || e.key === " ") && (e.preventDefault(), select(c.id)),
    },
    h("div", { class: "row" }, h("span", { class: `sev sev-${c.severity}` }, SEVERITY[c.severity] ?? c.severity), ...flags),
    h("b", { class: "title" }, c.title),
    h("div", { class: "muted" }, casePlace(c.areas, names)),
    h("div", { class: "muted" }, `承办 Assignee: ${assigneeLabel(c.assignee)}`),
    c.deadline_ms != null && c.state !== "closed"
      ? h("div", { class: c.overdue ? "deadline late" : "deadline" }, `时限 Deadline: ${fmtRelative(c.deadline_ms)}`)
      : null,
  );
}

function renderBoard() {
  const columns = CASE_STATES.map((state) => {
    let here = cases.filter((c) => c.state === state);
    let more = null;
    if (state === "closed") {
      here.sort((a, b) => (b.closed_ms ?? b.updated_ms) - (a.closed_ms ?? a.updated_ms));
      if (!showAllClosed && here.length > CLOSED_SHOWN) {
        more = h("button", { type: "button", class: "more", onclick: () => ((showAllClosed = true), renderBoard()) }, `全部 ${here.length} 件 Show all ${here.length}`);
        here = here.slice(0, CLOSED_SHOWN);
      }
    } else here.sort(byUrgency);
    const count = cases.filter((c) => c.state === state).length;
    return h(
      "section",
      { class: "column", dataset: { state } },
      h("h2", {}, CASE_STATE[state], " ", h("span", { class: "muted count-badge" }, String(count))),
      h("ul", { class: "case-list" }, here.map(caseCard)),
      more,
    );
  });
  board.replaceChildren(...columns);
}

function renderAssignees() {
  const keys = new Set();
  const here = cases.find((c) => c.id === selected);
  if (here) for (const [dept, level] of Object.entries(DEPARTMENTS)) if (here.areas?.[level]) keys.add(`department/${dept}/${here.areas[level]}`);
  for (const c of cases) if (c.assignee) keys.add(c.assignee);
  document.getElementById("assignees").replaceChildren(...[...keys].sort().map((k) => h("option", { value: k })));
}

async function showPhotos(c, history) {
  const ids = [...new Set([...(c.photos ?? []), ...history.flatMap((e) => e.photos ?? [])])];
  const box = document.getElementById("photos");
  box.replaceChildren(...ids.map((id) => h("figure", { dataset: { photo: id } }, h("figcaption", { class: "muted" }, id))));
  for (const id of ids) {
    try {
      let url = photoCache.get(id);
      if (!url) {
        url = await imageUrl(`/cases/${encodeURIComponent(c.id)}/photos/${encodeURIComponent(id)}`);
        photoCache.set(id, url);
        if (photoCache.size > PHOTOS_CACHED) photoCache.delete(photoCache.keys().next().value);
      }
      const fig = box.querySelector(`figure[data-photo="${CSS.escape(id)}"]`);
      fig?.prepend(h("img", { src: url, alt: `照片 Photo ${id}` }));
    } catch (e) {
      box.querySelector(`figure[data-photo="${CSS.escape(id)}"]`)?.append(h("div", { class: "error" }, e.reason ?? e.message));
    }
  }
}

function renderDetail(c, history) {
  document.getElementById("detail-title").textContent = `${c.title}`;
  panel.dataset.case = c.id;
  panel.dataset.state = c.state;
  const rows = [
    ["编号 Id", c.id],
    ["状态 State", CASE_STATE[c.state] ?? c.state],
    ["级别 Severity", h("span", { class: `sev sev-${c.severity}` }, SEVERITY[c.severity] ?? c.severity)],
    ["来源 Source", `${SOURCE[c.source] ?? c.source}${c.alert_id ? ` · ${c.alert_id}` : ""}${c.rule_id ? ` · ${c.rule_id}` : ""}`],
    ["描述 Description", c.description || "—"],
    ["地点 Place", casePlace(c.areas, names)],
    ["设备 Device", c.device_id ? h("a", { href: `device.html?id=${encodeURIComponent(c.device_id)}` }, c.device_id) : "—"],
    ["上报人 Reporter", c.reporter],
    ["承办 Assignee", c.assignee ?? "—"],
    ["处置人 Handler", c.handler ?? "—"],
    ["时限 Deadline", c.deadline_ms == null ? "—" : `${fmtTime(c.deadline_ms)} (${fmtRelative(c.deadline_ms)})${c.overdue ? " · 超期 overdue" : ""}`],
    ["督办 Supervised", c.supervised ? `是 yes${c.supervision_level ? ` · ${c.supervision_level}` : ""}` : "否 no"],
    ["退回次数 Sent back", String(c.sent_back_count ?? 0)],
    ["到场位置 Position", c.position ? `${c.position.lat.toFixed(5)}, ${c.position.lon.toFixed(5)}` : "—"],
    ["立案 Filed", fmtTime(c.created_ms)],
    ["结案 Closed", fmtTime(c.closed_ms)],
  ];
  document.getElementById("detail-body").replaceChildren(
    h("div", { class: "table-wrap" }, h("table", { class: "facts" }, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))))),
  );
  const head = h("tr", {}, ...["时间 Time", "动作 Action", "人 Actor", "说明 Detail", "位置 Position"].map((t) => h("th", {}, t)));
  const lines = history.map((e) =>
    h(
      "tr",
      { dataset: { action: e.action } },
      h("td", {}, fmtTime(e.at_ms)),
      h("td", {}, CASE_ACTION[e.action] ?? e.action),
      h("td", {}, e.actor),
      h("td", {}, e.detail ?? "", e.photos?.length ? ` · 照片 photos ${e.photos.length}` : ""),
      h("td", {}, e.lat != null && e.lon != null ? `${e.lat.toFixed(5)}, ${e.lon.toFixed(5)}` : "—"),
    ),
  );
  document.getElementById("detail-history").replaceChildren(head, ...lines);
  showDeliveries(c.id).catch(() => {}); // who was reached how and when (GET /deliveries)
  for (const [step, states] of Object.entries(STEPS)) document.getElementById(`step-${step}`).hidden = !states.includes(c.state);
  showPhotos(c, history);
}

/** The case's deliveries to people's channels: a small table under its history. */
async function showDeliveries(id) {
  let table = document.getElementById("detail-deliveries");
  if (!table) {
    table = h("table", { id: "detail-deliveries" });
    document.getElementById("detail-history").closest(".table-wrap").after(h("div", { class: "table-wrap" }, table));
  }
  table.replaceChildren();
  const found = await api(`/deliveries?case=${encodeURIComponent(id)}`);
  if (panel.dataset.case !== id) return; // another case was chosen meanwhile
  const head = h("tr", {}, ...["送达 Reached", "渠道 Channel", "状态 State", "尝试 Attempts"].map((t) => h("th", {}, t)));
  const rows = found.deliveries.map((d) =>
    h(
      "tr",
      { dataset: { state: d.state } },
      h("td", {}, d.recipient),
      h("td", {}, `${d.channel} · ${d.endpoint}`),
      h("td", {}, d.state),
      h("td", {}, d.attempts.map((t) => `${fmtTime(t.at_ms)} ${t.http_status ?? "—"} ${t.code}`).join(" · ") || "—"),
    ),
  );
  table.replaceChildren(head, ...rows);
}

async function loadDetail(force = false) {
  if (!selected) return;
  const summary = cases.find((c) => c.id === selected);
  if (!force && summary && `${summary.id}@${summary.updated_ms}` === shownVersion) return;
  try {
    const { case: c, history } = await api(`/cases/${encodeURIComponent(selected)}`);
    if (c.id !== selected) return; // another card was chosen meanwhile
    shownVersion = `${c.id}@${c.updated_ms}`;
    renderDetail(c, history);
  } catch (e) {
    say(detailStatus, `无法读取 Cannot load: ${e.reason ?? e.message}`, true);
  }
}

function select(id) {
  selected = id;
  shownVersion = "";
  panel.hidden = false;
  say(detailStatus, "");
  for (const form of panel.querySelectorAll("form.step")) form.reset();
  for (const card of board.querySelectorAll(".case-card")) card.classList.toggle("selected", card.dataset.case === id);
  renderAssignees();
  loadDetail(true);
}

async function load() {
  const area = document.getElementById("area").value.trim();
  const q = new URLSearchParams({ limit: "1000" });
  if (area) q.set("area", area);
  try {
    cases = (await api(`/cases?${q}`)).cases;
  } catch (e) {
    say(status, `无法读取案件 Cannot load cases: ${e.reason ?? e.message}`, true);
    return;
  }
  renderBoard();
  renderAssignees();
  document.getElementById("refreshed").textContent = `更新于 Updated ${new Date().toLocaleTimeString("zh-CN", { hour12: false })}`;
  document.body.dataset.loaded = String(Date.now());
  await loadDetail();
}

/** One of the operator's steps on the selected case; the server's message on failure. */
async function step(name, body) {
  const id = selected;
  const buttons = panel.querySelectorAll("form.step button");
  for (const b of buttons) b.disabled = true;
  try {
    const answer = await api(`/cases/${encodeURIComponent(id)}/${name}`, { method: "POST", body });
    say(detailStatus, `${id}: ${CASE_STATE[answer.case.state] ?? answer.case.state}`);
    for (const form of panel.querySelectorAll("form.step")) form.reset();
  } catch (e) {
    say(detailStatus, `${id}: 失败 failed — ${e.reason ?? e.message}`, true);
  } finally {
    for (const b of buttons) b.disabled = false;
  }
  await load();
  await loadDetail(true);
}

function wire() {
  const note = (form) => form.elements.note.value.trim();
  const withNote = (form) => (note(form) ? { note: note(form) } : {});
  for (const name of Object.keys(STEPS)) {
    const form = document.getElementById(`step-${name}`);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (name === "dispatch") step(name, { to: form.elements.to.value.trim(), ...withNote(form) });
      else if (name === "send-back") step(name, { note: note(form) });
      else step(name, withNote(form));
    });
  }
  document.getElementById("detail-close").addEventListener("click", () => {
    selected = null;
    panel.hidden = true;
    for (const card of board.querySelectorAll(".case-card.selected")) card.classList.remove("selected");
  });
  document.getElementById("from-alert").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("alert-id");
    try {
      const answer = await api("/cases", { method: "POST", body: { alert_id: input.value.trim() } });
      say(status, `已立案 Filed ${answer.case.id}: ${answer.case.title}`);
      input.value = "";
      await load();
      select(answer.case.id);
    } catch (e) {
      say(status, `立案失败 Not filed — ${e.reason ?? e.message}`, true);
    }
  });
  let typing = null;
  document.getElementById("area").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(load, 400);
  });
}

async function start() {
  wire();
  try {
    names = areaNames(await api("/devices"));
    const duties = await api("/duties");
    DEPARTMENTS = Object.fromEntries(duties.departments.map((d) => [d.id, d.level]));
  } catch (e) {
    console.warn("devices:", e);
  }
  await load();
  setInterval(load, REFRESH_MS);
}

signIn(() => start().catch((e) => console.error(e)));
