// What every page shares: the API client (bearer token from sessionStorage), element
// building without innerHTML (job inputs and upstream text are untrusted), formats.

const KEY = "orchestrator.token";

export const session = {
  get token() { return sessionStorage.getItem(KEY); },
  set token(value) {
    if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY);
  },
  me: null,
  may(role) {
    const order = ["read", "submit", "admin"];
    return !!this.me && order.indexOf(this.me.role) >= order.indexOf(role);
  },
};

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status; this.type = e.type; this.field = e.field;
  }
}

export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${session.token}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401) {
    session.token = null;
    location.hash = "#/login";
  }
  const data = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

export const get = (path, params) => api("GET", params ? `${path}?${query(params)}` : path);

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    for (const one of Array.isArray(v) ? v : [v]) q.append(k, one);
  }
  return q.toString();
}

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export const SVG = "http://www.w3.org/2000/svg";
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children.flat()) if (c !== undefined && c !== null) el.append(c);
  return el;
}

// Integer micro-dollars as exact dollars: $0.170925 (no float arithmetic).
export function usd(micro) {
  if (micro === undefined || micro === null) return "—";
  const n = BigInt(micro);
  const sign = n < 0n ? "-" : "";
  const a = n < 0n ? -n : n;
  return `${sign}$${a / 1000000n}.${String(a % 1000000n).padStart(6, "0")}`;
}

export function rowMicro(row) {
  return ["internal_cost_micro", "model_cost_micro", "sandbox_cost_micro", "tool_cost_micro"]
    .reduce((sum, k) => sum + Number(row?.[k] || 0), 0);
}

// A job's or schedule's tags as one line: "team=x tenant=acme" ("—" for none).
export function tagText(tags) {
  return Object.entries(tags || {}).map(([k, v]) => `${k}=${v}`).join(" ") || "—";
}

export function when(ms) {
  if (ms === undefined || ms === null) return "—";
  return new Date(ms).toISOString().replace(".000Z", "Z");
}

export function statusBadge(status) {
  return h("span", { class: `status ${status}`, dataset: { status } }, status);
}

export function flash(message) {
  const el = document.getElementById("flash");
  el.textContent = message;
  el.hidden = !message;
  if (message) setTimeout(() => { if (el.textContent === message) el.hidden = true; }, 6000);
}

export function errorText(err) {
  return err instanceof ApiError && err.field ? `${err.field}: ${err.message}` : err.message;
}

// Buttons that act are shown to tokens that may act; the API checks again.
export function allowed(role, el) {
  if (!session.may(role)) { el.hidden = true; el.disabled = true; }
  return el;
}
