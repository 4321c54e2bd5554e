// The grid worker's cases on the phone page: "My cases" (GET /cases?mine=true) with the next
// step of each — accept, on site (the phone's position is posted), handled (a note and a photo,
// uploaded first) — and the "Report a case" form. Server errors are shown as the server wrote them.
import { api, areaNames, CASE_STATE, casePlace, fmtRelative, h, SEVERITY, upload } from "./app.js";

const REFRESH_MS = 15_000;
const MY_STEPS = ["dispatched", "accepted", "on_site"]; // states whose next step is the handler's

let names = new Map();
const list = document.getElementById("cases");
const status = document.getElementById("case-status");

function say(el, text, error = false) {
  el.textContent = text;
  el.classList.toggle("error", error);
}

const reason = (e) => e.reason ?? e.message;

/** The phone's position, or a rejection with a message a person can read. */
function position() {
  return new Promise((resolve, reject) => {
    if (!navigator.geolocation) {
      reject(new Error("此设备无法定位 this device has no geolocation"));
      return;
    }
    navigator.geolocation.getCurrentPosition(
      (p) => resolve({ lat: p.coords.latitude, lon: p.coords.longitude }),
      (e) => reject(new Error(`无法定位 cannot get the position (${e.message || e.code})`)),
      { enableHighAccuracy: true, timeout: 20_000, maximumAge: 60_000 },
    );
  });
}

async function act(c, card, run) {
  for (const b of card.querySelectorAll("button")) b.disabled = true;
  const note = card.querySelector(".card-status");
  say(note, "…");
  try {
    const answer = await run();
    say(status, `${c.id}: ${CASE_STATE[answer.case.state] ?? answer.case.state}`);
    await load(true);
  } catch (e) {
    const text = `${c.id}: 失败 failed — ${reason(e)}`;
    say(status, text, true);
    say(note, text, true);
    for (const b of card.querySelectorAll("button")) b.disabled = false;
  }
}

const post = (c, step, body) => api(`/cases/${encodeURIComponent(c.id)}/${step}`, { method: "POST", body });

function caseCard(c) {
  const flags = [];
  if (c.overdue) flags.push(h("span", { class: "flag flag-overdue" }, "超期 Overdue"));
  if (c.supervised) flags.push(h("span", { class: "flag flag-supervised" }, "督办 Supervised"));
  if (c.sent_back_count) flags.push(h("span", { class: "flag" }, `退回 ×${c.sent_back_count} sent back`));
  const el = h(
    "li",
    { class: "card", dataset: { case: c.id, state: c.state, overdue: String(!!c.overdue) } },
    h("div", { class: "row" }, h("span", { class: `sev sev-${c.severity}` }, SEVERITY[c.severity] ?? c.severity), h("b", { class: "state" }, CASE_STATE[c.state] ?? c.state), ...flags),
    h("div", {}, h("b", {}, c.title), " ", h("span", { class: "muted" }, c.id)),
    c.description ? h("div", {}, c.description) : null,
    h("div", { class: "muted" }, `地点 Place: ${casePlace(c.areas, names)}`),
    // The deadline of the worker's own next step; after handling, the step is someone else's.
    c.deadline_ms != null && MY_STEPS.includes(c.state)
      ? h("div", { class: c.overdue ? "deadline late" : "deadline" }, `时限 Deadline: ${fmtRelative(c.deadline_ms)}`)
      : null,
  );
  const actions = h("div", { class: "actions" });
  if (c.state === "dispatched") {
    actions.append(h("button", { type: "button", class: "accept primary", onclick: () => act(c, el, () => post(c, "accept", {})) }, "接单 Accept"));
  } else if (c.state === "accepted") {
    const arrive = async () => post(c, "arrive", await position());
    actions.append(h("button", { type: "button", class: "arrive primary", onclick: () => act(c, el, arrive) }, "到达现场 On site"));
  } else if (c.state === "on_site") {
    const text = h("textarea", { name: "handle-note", maxlength: 1000, placeholder: "处置情况 What was done (required)", "aria-label": "处置情况 What was done" });
    const file = h("input", { type: "file", name: "photo", accept: "image/*", capture: "environment" });
    el.append(text, h("label", { class: "file" }, "现场照片 Photo ", file));
    const handle = async () => {
      const note = text.value.trim();
      if (!note) throw new Error("请填写处置情况 please say what was done");
      const photos = [];
      if (file.files.length) photos.push((await upload(`/cases/${encodeURIComponent(c.id)}/photos`, file.files[0])).photo);
      return post(c, "handle", photos.length ? { note, photos } : { note });
    };
    actions.append(h("button", { type: "button", class: "handle primary", onclick: () => act(c, el, handle) }, "处置完成 Handled"));
  } else {
    el.append(h("div", { class: "muted" }, c.state === "handled" ? "等待核查 Waiting for verification" : c.state === "closed" ? "已结案 Closed" : "等待派遣 Waiting"));
  }
  el.append(actions, h("div", { class: "card-status muted", role: "status" }));
  return el;
}

/** Whether the worker is in the middle of something a redraw would lose. */
function busy() {
  const typing = document.activeElement && list.contains(document.activeElement);
  const chosen = [...list.querySelectorAll("input[type=file]")].some((f) => f.files.length);
  const written = [...list.querySelectorAll("textarea")].some((t) => t.value.trim());
  return typing || chosen || written;
}

async function load(force = false) {
  if (!force && busy()) return;
  let cases;
  try {
    cases = (await api("/cases?mine=true&limit=200")).cases;
  } catch (e) {
    say(status, `无法读取案件 Cannot load cases: ${reason(e)}`, true);
    return;
  }
  const open = cases.filter((c) => c.state !== "closed");
  list.replaceChildren(...open.map(caseCard));
  if (!open.length) list.append(h("li", { class: "muted" }, "没有派给我的案件 No cases for me"));
  document.body.dataset.casesLoaded = String(Date.now());
}

function wireReport(devices) {
  const form = document.getElementById("report-form");
  const note = document.getElementById("report-status");
  const grids = new Map();
  for (const d of devices) grids.set(d.device.grid, names.get(d.device.grid) ?? d.device.grid);
  form.elements.grid.replaceChildren(...[...grids].sort().map(([id, name]) => h("option", { value: id }, name === id ? id : `${name} (${id})`)));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const body = {
      title: form.elements.title.value.trim(),
      description: form.elements.description.value.trim(),
      grid: form.elements.grid.value,
    };
    if (form.elements.severity.value) body.severity = form.elements.severity.value;
    try {
      if (form.elements.position.checked) {
        try {
          Object.assign(body, await position());
        } catch (e) {
          say(note, `${e.message} — 不附位置上报 reporting without it`);
        }
      }
      const answer = await api("/cases", { method: "POST", body });
      const id = answer.case.id;
      let text = `已上报 Reported ${id}`;
      const photo = form.elements.photo.files[0];
      if (photo) {
        try {
          await upload(`/cases/${encodeURIComponent(id)}/photos`, photo);
          text += " · 照片已上传 photo uploaded";
        } catch (e) {
          text += ` · 照片上传失败 photo not uploaded — ${reason(e)}`;
        }
      }
      form.reset();
      say(note, text, text.includes("失败"));
      form.dataset.reported = id;
      await load(true);
    } catch (e) {
      say(note, `上报失败 Not reported — ${reason(e)}`, true);
    } finally {
      button.disabled = false;
    }
  });
}

/** Start the cases part of the worker page with the caller's devices (GET /devices). */
export async function startCases(devices) {
  names = areaNames(devices);
  wireReport(devices);
  await load(true);
  setInterval(load, REFRESH_MS);
}
