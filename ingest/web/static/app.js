// Shared by the pages: the token, API calls, the live alert stream, small DOM helpers.
// Plain ES module, no build step. All data comes from the token-protected API.

export const TOKEN_KEY = "citysense.token";

export const SEVERITY = {
  info: "提示 Info",
  warning: "警告 Warning",
  major: "严重 Major",
  critical: "紧急 Critical",
};
export const SEVERITY_ORDER = ["critical", "major", "warning", "info"];
export const STATE = {
  open: "未处理 Open",
  acknowledged: "已确认 Acknowledged",
  resolved: "已解决 Resolved",
};

export function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

/** Build an element: h("li", {class: "x", dataset: {id: 1}}, "text", child). Text is never parsed as HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export class ApiFailure extends Error {
  constructor(status, message, code = "") {
    super(`${status}: ${message}`);
    this.status = status;
    this.code = code; // the API's error.code, e.g. "own_work"
    this.reason = message; // the API's error.message, as the server wrote it
  }
}

/** Turn a failed answer into an ApiFailure with the API's error code and message. */
async function failure(answer) {
  let message = answer.statusText;
  let code = "";
  try {
    const error = (await answer.json()).error;
    message = error.message;
    code = error.code;
  } catch {
    /* not the error shape */
  }
  if (answer.status === 401) showSignIn(message);
  return new ApiFailure(answer.status, message, code);
}

/** Call the API with the bearer token; JSON in and out; errors in the API's one shape. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!answer.ok) throw await failure(answer);
  return answer.json();
}

/** POST one file as multipart field "file" (the browser sets the boundary); JSON back. */
export async function upload(path, file) {
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  const answer = await fetch(path, { method: "POST", headers: { Authorization: `Bearer ${token()}` }, body: form });
  if (!answer.ok) throw await failure(answer);
  return answer.json();
}

/**
 * A token-protected image as a data: URL for an <img>. An <img src> cannot send the bearer
 * token, so the bytes are fetched here; a data: URL (not blob:) because the pages' CSP allows
 * img-src 'self' data: only.
 */
export async function imageUrl(path) {
  const answer = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  if (!answer.ok) throw await failure(answer);
  const blob = await answer.blob();
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/**
 * Follow GET /alerts/stream. EventSource cannot send an Authorization header, so this reads
 * the response body as a stream and parses the Server-Sent Events itself. Reconnects.
 * Sets document.body.dataset.live to "connected" / "reconnecting".
 */
export async function followAlerts(onChange) {
  for (;;) {
    try {
      const answer = await fetch("/alerts/stream", {
        headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" },
        cache: "no-store",
      });
      if (answer.status === 401) {
        showSignIn("token refused");
        document.body.dataset.live = "signed-out";
        return;
      }
      if (!answer.ok || !answer.body) throw new Error(`stream answered ${answer.status}`);
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let first = true;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (first) {
            first = false;
            document.body.dataset.live = "connected";
          }
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (data) onChange(JSON.parse(data));
        }
      }
    } catch (e) {
      console.warn("alert stream:", e);
    }
    document.body.dataset.live = "reconnecting";
    await new Promise((resolve) => setTimeout(resolve, 3000));
  }
}

export function showSignIn(message = "") {
  const form = document.getElementById("signin");
  if (!form) return;
  form.hidden = false;
  const note = form.querySelector(".signin-message");
  if (note) note.textContent = message;
}

/** Wire the sign-in form; call start() once a token is stored. */
export function signIn(start) {
  const form = document.getElementById("signin");
  const out = document.getElementById("signout");
  let started = false;
  const go = () => {
    form.hidden = true;
    if (out) out.hidden = false;
    if (!started) {
      started = true;
      start();
    } else {
      location.reload();
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = form.querySelector("input[name=token]").value.trim();
    if (!value) return;
    localStorage.setItem(TOKEN_KEY, value);
    go();
  });
  out?.addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  if (token()) go();
  else showSignIn();
}

export function fmtTime(ms) {
  return ms == null ? "—" : new Date(ms).toLocaleString("zh-CN", { hour12: false });
}

export function fmtValue(value) {
  if (value === null || value === undefined) return "—";
  return typeof value === "number" ? String(Math.round(value * 1000) / 1000) : String(value);
}

/** "village · township" names of a device path (grid first), for a compact place line. */
export function placeOf(summary) {
  if (!summary) return "";
  const names = summary.path.filter((p) => p.level !== "city").map((p) => p.name);
  return names.reverse().join(" › ");
}

// --- cases (案件): work orders handled through a closed loop -------------------------------

export const CASE_STATES = ["filed", "dispatched", "accepted", "on_site", "handled", "verified", "closed"];
export const CASE_STATE = {
  filed: "已立案 Filed",
  dispatched: "已派遣 Dispatched",
  accepted: "已接单 Accepted",
  on_site: "已到场 On site",
  handled: "已处置 Handled",
  verified: "已核查 Verified",
  closed: "已结案 Closed",
};
export const CASE_ACTION = {
  filed: "立案 filed",
  dispatched: "派遣 dispatched",
  accepted: "接单 accepted",
  arrived: "到达现场 arrived",
  handled: "处置 handled",
  verified: "核查 verified",
  sent_back: "退回 sent back",
  closed: "结案 closed",
  supervised: "督办 supervised",
};
export const SOURCE = { alert: "告警 Alert", operator: "值班员 Operator", report: "上报 Report" };

/** "person/li.na" → "li.na"; "department/flood_hq/430502" → "flood_hq · 430502". */
export function assigneeLabel(key) {
  if (!key) return "未指派 Unassigned";
  const [kind, ...rest] = String(key).split("/");
  if (kind === "person") return rest.join("/");
  if (kind === "department") return rest.join(" · ");
  return key;
}

/** Relative time in both languages: "2 小时后 in 2 h", "35 分钟前 35 min ago". */
export function fmtRelative(ms, now = Date.now()) {
  if (ms == null) return "—";
  const diff = ms - now;
  const s = Math.abs(diff) / 1000;
  let zh;
  let en;
  if (s < 60) [zh, en] = ["不到 1 分钟", "< 1 min"];
  else if (s < 3600) [zh, en] = [`${Math.round(s / 60)} 分钟`, `${Math.round(s / 60)} min`];
  else if (s < 86400 * 2) [zh, en] = [`${Math.round(s / 3600)} 小时`, `${Math.round(s / 3600)} h`];
  else [zh, en] = [`${Math.round(s / 86400)} 天`, `${Math.round(s / 86400)} d`];
  return diff >= 0 ? `${zh}后 in ${en}` : `${zh}前 ${en} ago`;
}

/** A duration in seconds as "1 h 5 min" / "40 min" / "25 s". */
export function fmtDuration(seconds) {
  if (seconds == null) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** Area id → name, from the device list's paths (there is no /areas endpoint). */
export function areaNames(devices) {
  const names = new Map();
  for (const d of devices) for (const p of d.path) names.set(p.id, p.name);
  return names;
}

/** "village › grid" of a case's areas, by name where the device list knows it. */
export function casePlace(areas, names) {
  if (!areas) return "—";
  return ["township", "village", "grid"]
    .map((level) => areas[level])
    .filter(Boolean)
    .map((id) => names.get(id) ?? id)
    .join(" › ");
}
