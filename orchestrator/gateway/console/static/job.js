// One job: its live updates assembled into text (EventSource on a signed read link,
// resumed after any drop), status history, the turn's cost and tokens, files, continue
// and cancel.
import { session, api, get, h, usd, rowMicro, when, statusBadge, flash, errorText, allowed,
  tagText } from "./lib.js";

const TERMINAL = new Set(["completed", "failed", "cancelled", "expired", "timed_out"]);
const TOKENS = ["input_tokens", "output_tokens", "reasoning_tokens", "cache_read_tokens",
  "cache_write_tokens", "total_tokens", "steps"];

export function jobPage(view, jobId) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}`;
  const text = h("div", { class: "live", id: "live-text", "aria-live": "polite" });
  const liveState = h("span", { id: "live-state", class: "muted" }, "connecting");
  const details = h("dl", { class: "kv", id: "job-details" });
  const costBox = h("dl", { class: "kv", id: "job-cost" });
  const historyBody = h("tbody", { id: "job-history" });
  // The detail column only when some move has one: empty, it pushed the table past its card.
  const detailHead = h("th", { hidden: "" }, "detail");
  const filesBox = h("ul", { id: "job-files" });
  const continueText = h("textarea", { id: "continue-input", placeholder: "Continue the conversation…" });
  const continueBtn = allowed("submit", h("button", { type: "button", id: "continue" }, "Continue"));
  const cancelBtn = allowed("submit", h("button", { type: "button", id: "cancel", class: "secondary" }, "Cancel"));
  let stopped = false;
  let source = null;
  let aborter = null;
  let lastId = null;
  let timer = null;

  // Assembling: text deltas appended to their text part; a tool call shown as a line;
  // unknown update types (opaque JSON) are counted, never break the page.
  const parts = new Map();
  let other = 0;
  function add(update) {
    if (!update || typeof update !== "object") return;
    if (update.type === "text-delta") {
      let part = parts.get(update.id);
      if (!part) { part = h("span", { class: "text" }); parts.set(update.id, part); text.append(part); }
      part.append(String(update.delta ?? ""));
    } else if (update.type === "tool-input-available") {
      text.append(h("div", { class: "tool" }, `⚙ ${update.toolName || update.tool || "tool"}`));
    } else if (update.type === "start" && update.turn !== undefined) {
      text.append(h("div", { class: "muted" }, `— turn ${update.turn} —`));
    } else if (update.type !== "finish" && update.type !== "start") {
      other += 1;
    }
  }

  function opened() {
    liveState.textContent = "live";
    view.dataset.opens = String(Number(view.dataset.opens || 0) + 1);
  }
  function message(id, data) {
    lastId = id;
    try { add(JSON.parse(data)); } catch { other += 1; }
  }
  function ended(data) {
    const end = JSON.parse(data);
    liveState.textContent = `ended: ${end.status}${other ? ` (${other} other updates)` : ""}`;
    view.dataset.ended = end.status;
    refresh();
  }

  async function follow() {
    let url;
    try {
      url = (await api("POST", `${path}/links`, { seconds: 900 })).url;
    } catch (err) {
      // A gateway without GATEWAY_SIGNING_KEY makes no links: read the token's stream.
      if (err.status === 503) { followWithToken(); return; }
      liveState.textContent = `no live updates: ${errorText(err)}`;
      return;
    }
    if (stopped) return;
    // A new link (first time, or the old one lapsed) resumes after the last update shown.
    const resume = lastId === null ? "" : `?last_event_id=${encodeURIComponent(lastId)}`;
    source = new EventSource(url + resume);
    source.onopen = opened;
    source.onmessage = (ev) => message(ev.lastEventId, ev.data);
    source.addEventListener("end", (ev) => { source.close(); ended(ev.data); });
    source.onerror = () => {
      // The browser reconnects by itself (with Last-Event-ID); when it gives up (the
      // link expired or was refused) a fresh link picks up where it stopped.
      if (source.readyState === EventSource.CLOSED && !stopped && !view.dataset.ended) {
        liveState.textContent = "reconnecting";
        setTimeout(follow, 1000);
      } else if (!view.dataset.ended) {
        liveState.textContent = "reconnecting";
      }
    };
  }

  async function followWithToken() {
    // EventSource sends no headers, so this reads GET /events with fetch and parses the
    // stream itself, resuming with Last-Event-ID after a drop like a browser would.
    while (!stopped && !view.dataset.ended) {
      aborter = new AbortController();
      try {
        const headers = { Authorization: `Bearer ${session.token}`, Accept: "text/event-stream" };
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        const res = await fetch(`${path}/events`, { headers, signal: aborter.signal });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        opened();
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf = (buf + value).replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            dispatch(buf.slice(0, cut));
            buf = buf.slice(cut + 2);
          }
        }
      } catch {
        if (stopped) return;
      }
      if (!view.dataset.ended) {
        liveState.textContent = "reconnecting";
        await new Promise((done) => setTimeout(done, 1000));
      }
    }
  }

  function dispatch(block) {
    let id = null, event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const at = line.indexOf(":");
      const field = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
      if (field === "id") id = value;
      else if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return;
    if (event === "end") ended(data.join("\n"));
    else message(id ?? lastId, data.join("\n"));
  }

  async function refresh() {
    try {
      const [job, hist, files] = await Promise.all([
        get(path), get(`${path}/history`), get(`${path}/files`)]);
      showJob(job);
      const detailed = hist.some((e) => e.detail);
      detailHead.hidden = !detailed;
      historyBody.replaceChildren(...hist.map((e) => h("tr", {},
        h("td", {}, statusBadge(e.status)), h("td", { class: "when" }, when(e.at)),
        detailed ? h("td", {}, e.detail || "") : null)));
      filesBox.replaceChildren(...(files.length ? files.map(fileItem) : [h("li", { class: "muted" }, "none")]));
      if (TERMINAL.has(job.status) && job.cost) clearInterval(timer);
    } catch (err) { flash(errorText(err)); }
  }

  function showJob(job) {
    view.dataset.status = job.status;
    const rows = [["id", job.id], ["status", statusBadge(job.status)], ["input", job.input],
      ["budget", job.budget], ["priority", job.priority],
      ["tags", tagText(job.tags)],
      ["schedule", job.schedule_id || "—"], ["worker", job.worker_id || "—"],
      ["attempts", job.attempts], ["created", when(job.created_at)]];
    if (job.error) rows.push(["error", h("span", { class: "error" }, job.error)]);
    details.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    const c = job.cost;
    costBox.replaceChildren(...(c
      ? [["cost", h("strong", { id: "turn-cost" }, usd(rowMicro(c)))],
         ...TOKENS.map((t) => [t.replace(/_/g, " "), Number(c[t] || 0).toLocaleString()])]
      : [["cost", h("span", { class: "muted" }, TERMINAL.has(job.status) ? "not posted" : "pending")]])
      .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    cancelBtn.disabled = TERMINAL.has(job.status) || !session.may("submit");
    continueBtn.disabled = !job.worker_id || !session.may("submit");
  }

  function fileItem(f) {
    if (f.refused || f.error) return h("li", {}, `${f.name}: ${f.refused || f.error}`);
    const link = h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); download(f.name); } }, f.name);
    return h("li", {}, link, ` ${f.size ?? "?"} bytes`);
  }

  async function download(name) {
    // The file needs the bearer token, so it is fetched here and handed over as a blob.
    try {
      const res = await fetch(`${path}/files/${encodeURIComponent(name)}`,
        { headers: { Authorization: `Bearer ${session.token}` } });
      if (!res.ok) throw new Error(`download failed (${res.status})`);
      const url = URL.createObjectURL(await res.blob());
      h("a", { href: url, download: name }).click();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) { flash(err.message); }
  }

  continueBtn.addEventListener("click", async () => {
    if (!continueText.value.trim()) { flash("input: write what to continue with"); return; }
    continueBtn.disabled = true;
    try {
      const job = await api("POST", "/v1/jobs/continue", { worker: jobId, input: continueText.value });
      location.hash = `#/job/${encodeURIComponent(job.id)}`;
    } catch (err) { flash(errorText(err)); continueBtn.disabled = false; }
  });
  cancelBtn.addEventListener("click", async () => {
    cancelBtn.disabled = true;
    try {
      await api("POST", `${path}/cancel`);
      refresh();
    } catch (err) {
      flash(err.status === 404 || err.status === 405
        ? "This gateway cannot cancel jobs." : errorText(err));
      cancelBtn.disabled = false;
    }
  });

  view.append(
    h("div", { class: "card" }, h("h2", {}, "Live ", liveState), text),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h3", {}, "Job"), details),
      h("div", { class: "card" }, h("h3", {}, "This turn's cost and tokens"), costBox),
      h("div", { class: "card" }, h("h3", {}, "Status history"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "status"), h("th", {}, "at"),
          detailHead)), historyBody)),
      h("div", { class: "card" }, h("h3", {}, "Files"), filesBox)),
    session.may("submit")
      ? h("div", { class: "card", id: "job-actions" }, h("h3", {}, "Act"), continueText,
        h("p", { class: "actions" }, continueBtn, cancelBtn))
      : null,
  );
  refresh();
  follow();
  timer = setInterval(refresh, 3000);
  return () => {
    stopped = true; clearInterval(timer);
    if (source) source.close();
    if (aborter) aborter.abort();
  };
}
