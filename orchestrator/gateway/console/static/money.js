// Money: spend per day over a chosen period and spend by tenant, tier and schedule (SVG
// bars drawn here), budget caps as spent / reserved / cap gauges with their warn line,
// and concurrency limits as running / waiting. Every figure is a ledger row the API
// reads by key (no scan of jobs).
import { get, h, s, usd, rowMicro, flash, errorText } from "./lib.js";

const COLORS = ["#2456c8", "#1e8e4f", "#c77c02", "#8e3bc2", "#c53030", "#0f8a9d", "#6b7385"];
const DAY_MS = 86400000;

export function moneyPage(view) {
  const today = new Date().toISOString().slice(0, 10);
  const since = h("input", { type: "date", name: "since",
    value: new Date(Date.now() - 13 * DAY_MS).toISOString().slice(0, 10) });
  const until = h("input", { type: "date", name: "until", value: today });
  const stack = h("select", { name: "stack" }, h("option", { value: "tag" }, "tenant"),
    h("option", { value: "budget" }, "budget tier"), h("option", { value: "schedule" }, "schedule"));
  const daily = h("div", { id: "chart-day" });
  const byTenant = h("div", { id: "chart-tenant" });
  const byTier = h("div", { id: "chart-tier" });
  const bySchedule = h("div", { id: "chart-schedule" });
  const total = h("strong", { id: "money-total" });
  const gauges = h("div", { id: "budgets" });
  const limits = h("tbody", { id: "limits" });

  async function load(ev) {
    if (ev) ev.preventDefault();
    try {
      const [days, tags, tiers, schedules, budgets, lims] = await Promise.all([
        get("/v1/costs/daily", { by: stack.value, since: since.value, until: until.value }),
        get("/v1/costs", { by: "tag" }), get("/v1/costs", { by: "budget" }),
        get("/v1/costs", { by: "schedule" }), get("/v1/budgets"), get("/v1/limits")]);
      total.textContent = usd(rowMicro(tiers.total));
      daily.replaceChildren(dayChart(days));
      const tenants = tags.rows.filter((r) => r.key.startsWith("tenant="))
        .map((r) => ({ ...r, key: r.key.slice("tenant=".length) }));
      byTenant.replaceChildren(barList(tenants, "no tenant-tagged spend"));
      byTier.replaceChildren(barList(tiers.rows, "no spend"));
      bySchedule.replaceChildren(barList(schedules.rows, "no scheduled spend"));
      gauges.replaceChildren(...(budgets.length ? budgets.map(gauge)
        : [h("p", { class: "muted" }, "No caps. (orchestrator budgets set …)")]));
      limits.replaceChildren(...(lims.length ? lims.map(limitRow)
        : [h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No limits."))]));
      view.dataset.loaded = String(Date.now());
    } catch (err) {
      flash(err.status === 403 ? "Money is not shown to a tenant-bound token." : errorText(err));
    }
  }

  stack.addEventListener("change", () => load());
  view.append(
    h("form", { class: "card filters", onsubmit: load },
      h("label", {}, "since", since), h("label", {}, "until", until), h("label", {}, "stack by", stack),
      h("button", { type: "submit" }, "Show"),
      h("span", {}, "all-time total ", total)),
    h("div", { class: "card" }, h("h3", {}, "Spend per day (UTC), stacked"), daily),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h3", {}, "By tenant (all time)"), byTenant),
      h("div", { class: "card" }, h("h3", {}, "By budget tier (all time)"), byTier),
      h("div", { class: "card" }, h("h3", {}, "By schedule (all time)"), bySchedule)),
    h("div", { class: "card" }, h("h3", {}, "Budgets"), gauges),
    h("div", { class: "card" }, h("h3", {}, "Concurrency limits"),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "key"), h("th", {}, "running / limit"),
        h("th", { class: "num" }, "running"), h("th", { class: "num" }, "waiting"))), limits)),
  );
  load();
  const timer = setInterval(load, 10000);
  return () => clearInterval(timer);
}

function dayChart(data) {
  const { days } = data;
  const layers = [...data.series.map((x, i) => ({ key: x.key, micro: x.micro, color: COLORS[i % COLORS.length] })),
    { key: "other", micro: data.other_micro, color: "#c9ced8" }];
  const W = 900, H = 220, pad = 70, top = 10;
  const max = Math.max(1, ...data.total_micro);
  const bw = (W - pad) / Math.max(1, days.length);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H + 30}`, width: "100%", role: "img",
    "aria-label": `spend per day by ${data.by}` });
  svg.append(s("text", { x: 0, y: top + 4 }, usd(max)), s("text", { x: 0, y: H }, "$0"));
  svg.append(s("line", { x1: pad, x2: W, y1: H, y2: H, stroke: "#dde1e8" }));
  days.forEach((d, i) => {
    const x = pad + i * bw;
    let y = H;
    for (const layer of layers) {
      const v = layer.micro[i];
      if (!v) continue;
      const bh = (v / max) * (H - top);
      y -= bh;
      svg.append(s("rect", { x: x + 1, y, width: Math.max(1, bw - 2), height: bh, fill: layer.color,
        "data-day": d, "data-key": layer.key, "data-micro": v },
        s("title", {}, `${d} · ${layer.key}: ${usd(v)}`)));
    }
    if (days.length <= 31 || i % Math.ceil(days.length / 15) === 0) {
      svg.append(s("text", { x: x + bw / 2, y: H + 14, "text-anchor": "middle" }, d.slice(5)));
    }
  });
  const legend = h("div", { class: "legend" }, layers.map((l) =>
    h("span", { dataset: { key: l.key } },
      s("svg", { width: 10, height: 10 }, s("rect", { width: 10, height: 10, fill: l.color })),
      ` ${l.key}`)));
  return h("div", {}, svg, legend);
}

function barList(rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  const items = rows.map((r) => ({ key: r.key, micro: rowMicro(r), tokens: r.total_tokens }))
    .sort((a, b) => b.micro - a.micro).slice(0, 12);
  const max = Math.max(1, ...items.map((i) => i.micro));
  const W = 420, row = 22;
  const svg = s("svg", { viewBox: `0 0 ${W} ${items.length * row}`, width: "100%", role: "img" });
  items.forEach((it, i) => {
    const y = i * row;
    svg.append(
      s("text", { x: 0, y: y + 15 }, it.key.length > 18 ? `${it.key.slice(0, 18)}…` : it.key),
      s("rect", { x: 130, y: y + 4, height: row - 8, width: Math.max(1, (it.micro / max) * 190),
        fill: COLORS[i % COLORS.length] }, s("title", {}, `${it.key}: ${usd(it.micro)}`)),
      s("text", { x: W, y: y + 15, "text-anchor": "end" }, usd(it.micro)));
  });
  return svg;
}

function gauge(b) {
  const W = 600, H = 26;
  const cap = Math.max(1, b.cap_micro);
  const spent = Math.min(W, (b.spent_micro / cap) * W);
  const reserved = Math.min(W - spent, (b.reserved_micro / cap) * W);
  const warnX = Math.min(W, b.warn_at * W);
  const over = b.spent_micro + b.reserved_micro >= b.warn_at * cap;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H + 4}`, width: "100%", role: "img",
    "aria-label": `budget ${b.cap}` },
    s("rect", { x: 0, y: 2, width: W, height: H, fill: "#eef0f4", rx: 3 }),
    s("rect", { x: 0, y: 2, width: spent, height: H, fill: over ? "#c53030" : "#2456c8", rx: 3 }),
    s("rect", { x: spent, y: 2, width: reserved, height: H, fill: "#9db5ea" }),
    s("line", { x1: warnX, x2: warnX, y1: 0, y2: H + 4, stroke: "#c77c02", "stroke-width": 2,
      "stroke-dasharray": "4 2" }, s("title", {}, `warn at ${Math.round(b.warn_at * 100)}%`)));
  return h("div", { class: "gauge", dataset: { cap: b.cap } },
    h("p", {}, h("strong", {}, b.scope), ` · ${b.period} · spent ${usd(b.spent_micro)} · reserved `,
      usd(b.reserved_micro), ` · cap ${usd(b.cap_micro)} · left ${usd(b.left_micro)} · `,
      `on exceed: ${b.on_exceed}`, b.overshoots ? ` · ${b.overshoots} overshoots` : ""),
    svg);
}

function limitRow(l) {
  const W = 200, H = 14;
  const frac = l.limit > 0 ? Math.min(1, l.running / l.limit) : 0;
  return h("tr", {}, h("td", {}, l.key),
    h("td", {}, s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H },
      s("rect", { x: 0, y: 0, width: W, height: H, fill: "#eef0f4", rx: 3 }),
      s("rect", { x: 0, y: 0, width: frac * W, height: H, fill: frac >= 1 ? "#c77c02" : "#1e8e4f", rx: 3 })),
      ` ${l.running} / ${l.limit}`),
    h("td", { class: "num" }, l.running), h("td", { class: "num" }, l.waiting));
}
