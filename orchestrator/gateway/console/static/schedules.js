// Schedules: each live (or, on request, finished) schedule with its next fire and tags,
// and for the one chosen its next fires, cost and run history; pause / resume / trigger
// for admins.
import { api, get, h, usd, statusBadge, flash, errorText, allowed, tagText } from "./lib.js";

export function schedulesPage(view, chosen) {
  const body = h("tbody", { id: "schedules" });
  const finished = h("input", { type: "checkbox" });
  const detail = h("div", { id: "schedule-detail" });

  async function act(id, verb) {
    try {
      await api("POST", `/v1/schedules/${encodeURIComponent(id)}/${verb}`);
      flash("");
      load();
      if (chosen === id) show(id);
    } catch (err) { flash(errorText(err)); }
  }
  const button = (id, verb) => allowed("admin",
    h("button", { type: "button", class: "secondary", onclick: () => act(id, verb) }, verb));

  async function load() {
    try {
      const rows = await get("/v1/schedules", { include_finished: finished.checked ? "true" : "" });
      body.replaceChildren(...(rows.length ? rows.map((r) => h("tr", { dataset: { schedule: r.id } },
        h("td", {}, h("a", { href: `#/schedules/${encodeURIComponent(r.id)}` }, r.id)),
        h("td", {}, r.when), h("td", {}, statusBadge(r.status)), h("td", {}, r.next_run_at || "—"),
        h("td", { class: "tags" }, tagText(r.tags)), h("td", { class: "num" }, r.runs),
        h("td", { class: "num" }, r.missed + r.skipped),
        h("td", { class: "actions" }, button(r.id, r.status === "paused" ? "resume" : "pause"),
          button(r.id, "trigger"))))
        : [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No schedules."))]));
    } catch (err) {
      flash(err.status === 403 ? "Schedules are not shown to a tenant-bound token." : errorText(err));
    }
  }

  async function show(id) {
    try {
      const base = `/v1/schedules/${encodeURIComponent(id)}`;
      const [d, runs] = await Promise.all([get(`${base}/describe`), get(`${base}/history`)]);
      detail.replaceChildren(h("div", { class: "card" },
        h("h3", {}, `Schedule ${d.id}`),
        h("dl", { class: "kv" },
          ...[["when", d.when], ["status", d.status], ["input", d.input], ["budget", d.budget],
            ["worker", d.worker_id || "—"], ["tags", tagText(d.tags)],
            ["cost so far", usd(d.cost.total_cost_micro)],
            ["next fires", d.next_runs.join(", ") || "—"]]
            .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
        h("h4", {}, "Runs"),
        h("table", {}, h("thead", {}, h("tr", {}, ["slot", "fired", "run", "job", "job status", "cost", "error"]
          .map((t) => h("th", {}, t)))),
        h("tbody", { id: "schedule-runs" }, runs.map((r) => h("tr", {},
          h("td", {}, r.slot), h("td", {}, r.fired_at), h("td", {}, r.status),
          h("td", {}, r.job_id ? h("a", { href: `#/job/${encodeURIComponent(r.job_id)}` }, r.job_id) : "—"),
          h("td", {}, r.job_status || "—"), h("td", { class: "num" }, usd(r.cost_micro)),
          h("td", {}, r.error || "")))))));
    } catch (err) { flash(errorText(err)); }
  }

  finished.addEventListener("change", load);
  view.append(
    h("div", { class: "card" },
      h("p", { class: "actions" }, h("label", {}, finished, " include finished")),
      h("table", {}, h("thead", {}, h("tr", {}, ["schedule", "when", "status", "next fire", "tags",
        "runs", "missed / skipped", ""].map((t) => h("th", {}, t)))), body)),
    detail);
  load();
  if (chosen) show(chosen);
  const timer = setInterval(() => { load(); if (chosen) show(chosen); }, 3000);
  return () => clearInterval(timer);
}
