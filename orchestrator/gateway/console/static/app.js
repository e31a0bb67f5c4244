// The console's shell: login, navigation (hash routes), the jobs list and the submit form.
import { session, api, get, h, usd, rowMicro, when, statusBadge, flash, errorText, ApiError,
  tagText } from "./lib.js";
import { jobPage } from "./job.js";
import { moneyPage } from "./money.js";
import { schedulesPage } from "./schedules.js";

export const STATUSES = ["queued", "submitted", "running", "completed", "failed", "cancelled",
  "expired", "timed_out"];
const REFRESH_MS = 3000;
const main = document.getElementById("main");
const loginForm = document.getElementById("login");
let cleanup = null;

async function login(token) {
  session.token = token;
  try {
    session.me = await api("GET", "/v1/me");
  } catch (err) {
    session.token = null;
    throw err;
  }
}

loginForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const field = document.getElementById("token");
  const out = document.getElementById("login-error");
  out.textContent = "";
  try {
    await login(field.value.trim());
    field.value = "";
    location.hash = "#/jobs";
    route();
  } catch (err) {
    out.textContent = err instanceof ApiError && err.status === 401
      ? "Unknown or revoked token." : errorText(err);
  }
});

document.getElementById("logout").addEventListener("click", () => {
  session.token = null; session.me = null; location.hash = "#/login"; route();
});

function showShell() {
  const top = document.getElementById("top");
  top.hidden = false;
  const me = session.me;
  document.getElementById("who").textContent =
    `${me.role}${me.tenant ? ` · tenant ${me.tenant}` : ""}`;
  document.body.dataset.role = me.role;
  for (const a of top.querySelectorAll("[data-needs]")) a.hidden = !session.may(a.dataset.needs);
  // Money and schedules are not per tenant: a tenant-bound token is refused them.
  for (const a of top.querySelectorAll("[data-global]")) a.hidden = !!me.tenant;
  const page = (location.hash.split("/")[1] || "jobs");
  for (const a of top.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === page || (page === "job" && a.dataset.nav === "jobs"));
  }
}

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  flash("");
  if (!session.token) {
    document.getElementById("top").hidden = true;
    main.replaceChildren(loginForm);
    return;
  }
  if (!session.me) {
    try { session.me = await api("GET", "/v1/me"); } catch { session.token = null; return route(); }
  }
  showShell();
  const [, page, ...rest] = location.hash.split("/");
  const arg = rest.map(decodeURIComponent).join("/");
  const view = h("div", { id: `page-${page || "jobs"}` });
  main.replaceChildren(view);
  const pages = { jobs: jobsPage, job: jobPage, submit: submitPage, money: moneyPage,
    schedules: schedulesPage };
  // Opened by address: say so rather than ask the API for what it refuses this token.
  const global = { money: "Money is", schedules: "Schedules are" };
  if (session.me.tenant && global[page]) {
    view.append(h("p", { class: "card" }, `${global[page]} not shown to a tenant-bound token.`));
    return;
  }
  cleanup = (pages[page] || jobsPage)(view, arg) || null;
}

// --- jobs -------------------------------------------------------------------------------

function jobsPage(view) {
  const f = {
    status: h("select", { name: "status" }, h("option", { value: "" }, "any"),
      STATUSES.map((st) => h("option", { value: st }, st))),
    tag: h("input", { name: "tag", placeholder: "key=value" }),
    schedule_id: h("input", { name: "schedule_id", placeholder: "schedule id" }),
    created_after: h("input", { name: "created_after", type: "datetime-local" }),
    created_before: h("input", { name: "created_before", type: "datetime-local" }),
  };
  const body = h("tbody");
  const info = h("span", { id: "jobs-info", class: "muted" });
  const back = h("button", { type: "button", class: "secondary" }, "← Newer");
  const next = h("button", { type: "button", class: "secondary" }, "Older →");
  const cursors = [null];  // cursors[i]: where page i starts
  let timer = null;

  const params = () => {
    const p = { limit: 50, cursor: cursors[cursors.length - 1] };
    for (const [k, el] of Object.entries(f)) {
      if (!el.value) continue;
      p[k] = el.type === "datetime-local" ? new Date(`${el.value}Z`).toISOString() : el.value;
    }
    return p;
  };
  let nextCursor = null;
  async function load() {
    try {
      const page = await get("/v1/jobs", params());
      nextCursor = page.next_cursor;
      body.replaceChildren(...page.jobs.map(jobRow));
      if (!page.jobs.length) {
        body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" },
          nextCursor ? "No match in this stretch of the index: go on with Older." : "No jobs.")));
      }
      info.textContent = `page ${cursors.length} · refreshed ${when(Date.now())}`;
      back.disabled = cursors.length === 1;
      next.disabled = !nextCursor;
    } catch (err) { flash(errorText(err)); }
  }
  back.addEventListener("click", () => { cursors.pop(); load(); });
  next.addEventListener("click", () => { if (nextCursor) { cursors.push(nextCursor); load(); } });
  const apply = (ev) => { ev.preventDefault(); cursors.length = 1; load(); };

  view.append(
    h("form", { class: "card filters", onsubmit: apply },
      Object.entries(f).map(([k, el]) => h("label", {},
        `${k.replace("_", " ")}${el.type === "datetime-local" ? " (UTC)" : ""}`, el)),
      h("button", { type: "submit" }, "Filter")),
    h("div", { class: "card" },
      h("table", { id: "jobs" },
        h("thead", {}, h("tr", {}, ["job", "status", "input", "tags", "created", "cost"]
          .map((t) => h("th", { class: t === "cost" ? "num" : "" }, t)))),
        body),
      h("div", { class: "pager" }, back, next, info)),
  );
  load();
  // Only the first page refreshes by itself: older pages do not change under the reader.
  timer = setInterval(() => { if (cursors.length === 1) load(); }, REFRESH_MS);
  return () => clearInterval(timer);
}

function jobRow(job) {
  const input = job.input.length > 80 ? `${job.input.slice(0, 80)}…` : job.input;
  return h("tr", { dataset: { job: job.id } },
    h("td", {}, h("a", { href: `#/job/${encodeURIComponent(job.id)}` }, job.id)),
    h("td", {}, statusBadge(job.status)),
    h("td", {}, input),
    h("td", {}, tagText(job.tags)),
    h("td", { class: "when" }, when(job.created_at)),
    h("td", { class: "num cost" }, job.cost ? usd(rowMicro(job.cost)) : "—"));
}

// --- submit -----------------------------------------------------------------------------

function submitPage(view) {
  const input = h("textarea", { name: "input", required: true, placeholder: "What should the worker do?" });
  const budget = h("select", { name: "budget" },
    ["low", "standard", "high", "unlimited"].map((b) => h("option", { value: b, selected: b === "standard" }, b)));
  const tags = h("input", { name: "tags", placeholder: "key=value key2=value2" });
  const files = h("input", { name: "fetch_files", type: "checkbox" });
  const out = h("p", { class: "error", role: "alert" });
  const send = h("button", { type: "submit" }, "Submit");
  if (!session.may("submit")) send.disabled = true;
  async function submit(ev) {
    ev.preventDefault();
    out.textContent = "";
    const tagMap = {};
    for (const pair of tags.value.split(/\s+/).filter(Boolean)) {
      const at = pair.indexOf("=");
      if (at < 1) { out.textContent = `tags: "${pair}" is not key=value`; return; }
      tagMap[pair.slice(0, at)] = pair.slice(at + 1);
    }
    send.disabled = true;
    try {
      const job = await api("POST", "/v1/jobs", { input: input.value, budget: budget.value,
        tags: tagMap, fetch_files: files.checked });
      location.hash = `#/job/${encodeURIComponent(job.id)}`;
    } catch (err) { out.textContent = errorText(err); send.disabled = false; }
  }
  view.append(h("form", { class: "card", id: "submit-form", onsubmit: submit },
    h("h2", {}, "Submit a job"),
    h("label", {}, "Input", input),
    h("div", { class: "filters" },
      h("label", {}, "budget tier", budget), h("label", {}, "tags", tags),
      h("label", {}, "fetch files", files)),
    h("p", {}, send), out));
}

window.addEventListener("hashchange", route);
route();
