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
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.status = status;
  }
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
  if (!answer.ok) {
    let message = answer.statusText;
    try {
      message = (await answer.json()).error.message;
    } catch {
      /* not the error shape */
    }
    if (answer.status === 401) showSignIn(message);
    throw new ApiFailure(answer.status, message);
  }
  return answer.json();
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
