# ruff: noqa: F811  (the gateway fixtures are imported by name)
"""The web console in a real browser (Debian's headless Chromium driven by Playwright)
against a real gateway, a real Celery worker and the emulator: log in with a token,
submit from the form, watch the live text complete (across dropped connections), see
the job's cost on its page, in the jobs list and on the money page; a read token sees
no action buttons."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.facade import Orchestrator
from orchestrator.ledger import total_cost_micro
from orchestrator.money import format_usd
from orchestrator.store.jobs import RedisStore

from .conftest import Emulator
from .gateway_support import gateway, gateway_extra, start_gateway, worker  # noqa: F401
from .test_gateway_browser import CHROMIUM, FLAGS

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"
)
WAIT_MS = 90_000

#: The texts of the job page's fields, and the heads of its tables, that reach past
#: their card's padding.
SPILT = """() => [...document.querySelectorAll('#page-job .card')].flatMap(card => {
  const edge = card.getBoundingClientRect().right - parseFloat(getComputedStyle(card).paddingRight);
  return [...card.querySelectorAll('dd, table')].filter(el => {
    const text = document.createRange();
    text.selectNodeContents(el);
    const box = el.tagName === 'TABLE' ? el.getBoundingClientRect() : text.getBoundingClientRect();
    return box.right > edge + 0.5;
  }).map(el => el.tagName === 'TABLE' ? 'table: ' + el.tHead.textContent : el.textContent);
})"""


def _login(page: Any, url: str, token: str) -> None:
    page.goto(url + "/")
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#page-jobs", timeout=WAIT_MS)


def _assembled(orch: Orchestrator, job_id: str) -> str:
    """The text a reader should see: the turn's text deltas in order."""
    parts = [d.get("delta", "") for _, d in orch.updates(job_id, block=False)
             if isinstance(d, dict) and d.get("type") == "text-delta"]  # fmt: skip
    return "".join(parts)


@needs_chromium
def test_console_submit_watch_and_cost(
    env: dict[str, str], tmp_path: Path, store: RedisStore, emulator: Emulator, worker: Any,
    orch: Orchestrator,
) -> None:  # fmt: skip
    sync_api = pytest.importorskip("playwright.sync_api")
    emulator.configure(turn_seconds=2.0, events_per_turn=12)
    # The gateway ends each live connection after 4 events: the page must resume.
    gw = start_gateway(env, tmp_path, store, GATEWAY_SSE_MAX_EVENTS="4")
    urls: list[str] = []
    try:
        admin = gw.token("admin")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                page = browser.new_page()
                page.on("request", lambda r: urls.append(r.url))
                _login(page, gw.url, admin)
                assert page.inner_text("#who") == "admin"

                page.click("a[data-nav=submit]")
                page.fill("#submit-form textarea[name=input]", "summarise the console test")
                page.select_option("#submit-form select[name=budget]", "low")
                page.fill("#submit-form input[name=tags]", "tenant=acme team=ops")
                page.click("#submit-form button[type=submit]")
                page.wait_for_selector("#page-job", timeout=WAIT_MS)
                job_id = page.url.rsplit("/", 1)[1]
                page.wait_for_selector("#page-job[data-ended=completed]", timeout=WAIT_MS)
                live = page.eval_on_selector_all(
                    "#live-text span.text", "els => els.map(e => e.textContent).join('')"
                )
                opens = int(page.get_attribute("#page-job", "data-opens") or 0)
                page.wait_for_selector("#turn-cost", timeout=WAIT_MS)
                job_cost = page.inner_text("#turn-cost")
                history = page.eval_on_selector_all(
                    "#job-history [data-status]", "els => els.map(e => e.dataset.status)"
                )
                assert page.is_visible("#continue") and page.is_visible("#cancel")
                spilt = page.evaluate(SPILT)

                page.click("a[data-nav=jobs]")
                row = f"#jobs tr[data-job='{job_id}']"
                page.wait_for_selector(f"{row} td.cost:not(:text('—'))", timeout=WAIT_MS)
                listed_cost = page.inner_text(f"{row} td.cost")

                page.click("a[data-nav=money]")
                page.wait_for_selector("#page-money[data-loaded]", timeout=WAIT_MS)
                tenant_chart = page.inner_text("#chart-tenant")
                acme_days = page.eval_on_selector_all(
                    "#chart-day rect[data-key=acme]", "els => els.map(e => Number(e.dataset.micro))"
                )
                page.select_option("select[name=stack]", "budget")
                page.wait_for_selector("#chart-day rect[data-key=low]", timeout=WAIT_MS)
                low_days = page.eval_on_selector_all(
                    "#chart-day rect[data-key=low]", "els => els.map(e => Number(e.dataset.micro))"
                )
                stored_token = page.evaluate("sessionStorage.getItem('orchestrator.token')")
            finally:
                browser.close()

        job = store.get_job(job_id)
        assert job is not None and job.status == "completed"
        assert job.budget == "low" and job.tags == {"tenant": "acme", "team": "ops"}
        text = _assembled(orch, job_id)
        assert text and live == text  # the deltas, assembled, each once across the drops
        assert opens >= 3  # 12 updates, 4 a connection: it came back at least twice
        assert history[0] == "queued" and history[-1] == "completed"
        assert spilt == [], spilt  # the job id (and the history table) ran past its card's edge
        cost = store.turn_cost(job_id)
        assert cost is not None
        shown = format_usd(total_cost_micro(cost))
        assert job_cost == shown and listed_cost == shown
        assert "acme" in tenant_chart and shown in tenant_chart
        # Today's stack holds the job's money in its tenant's and its tier's layers.
        assert acme_days == [total_cost_micro(cost)] and low_days == [total_cost_micro(cost)]
        # The token stays in the tab's session storage, never in any URL asked for.
        assert stored_token == admin
        assert urls and not any(admin in u for u in urls)
    finally:
        gw.proc.stop()


@needs_chromium
def test_console_read_token_sees_no_action_buttons(
    gateway: Any, worker: Any, orch: Orchestrator
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    job = orch.submit("read me", tags={"tenant": "acme"})
    orch.wait(job.id, timeout=60)
    reader = gateway.token("read")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            # The browser's console stays clean (a /favicon.ico 404 was logged on every
            # load; the browser's own request is not one of the page's responses).
            failed: list[str] = []
            page.on("console", lambda m: m.type == "error" and failed.append(str(m.location)))
            _login(page, gateway.url, reader)
            page.wait_for_selector(f"#jobs tr[data-job='{job.id}']", timeout=WAIT_MS)
            assert page.inner_text("#who") == "read"
            assert not page.is_visible("a[data-nav=submit]")
            page.click(f"#jobs tr[data-job='{job.id}'] a")
            page.wait_for_selector("#page-job[data-ended=completed]", timeout=WAIT_MS)
            assert page.query_selector("#job-actions") is None
            assert page.query_selector("#continue") is None
            assert page.query_selector("#cancel") is None
            page.click("a[data-nav=schedules]")
            page.wait_for_selector("#page-schedules", timeout=WAIT_MS)
            assert page.query_selector("#schedules button:visible") is None
            assert failed == []
            # A tenant-bound token is not offered money nor schedules (refused it anyway).
            page.click("#logout")
            _login(page, gateway.url, gateway.token("read", tenant="acme"))
            page.wait_for_selector(f"#jobs tr[data-job='{job.id}']", timeout=WAIT_MS)
            assert page.inner_text("#who") == "read · tenant acme"
            assert not page.is_visible("a[data-nav=money]")
            assert not page.is_visible("a[data-nav=schedules]")
            # Opened by address, those pages say so and ask the API for nothing refused.
            refused: list[str] = []
            page.on("response", lambda r: refused.append(r.url) if r.status == 403 else None)
            for route, what in [("money", "Money is"), ("schedules", "Schedules are")]:
                page.goto(f"{gateway.url}/#/{route}")
                page.wait_for_selector(f"#page-{route} .card", timeout=WAIT_MS)
                page.wait_for_load_state("networkidle")
                shown = page.inner_text(f"#page-{route}")
                assert shown == f"{what} not shown to a tenant-bound token.", shown
            assert refused == []
        finally:
            browser.close()


@needs_chromium
def test_console_pages_log_no_errors(gateway: Any, worker: Any, orch: Orchestrator) -> None:
    """Every page of the console loads with nothing in the browser's console: no script
    error, no refused policy, no request answered 4xx/5xx (a missing icon included)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    job = orch.submit("a job to look at", budget="low", tags={"tenant": "acme"})
    orch.wait(job.id, timeout=60)
    sched = orch.schedules.create(None, "a digest", {"type": "interval", "intervalSeconds": 3600})
    logged: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.on("console", lambda m: logged.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)  # fmt: skip
            page.on("pageerror", lambda e: logged.append(f"pageerror: {e}"))
            _login(page, gateway.url, gateway.token("admin"))
            page.wait_for_selector(f"#jobs tr[data-job='{job.id}'] td.cost", timeout=WAIT_MS)
            refreshed = page.inner_text("#jobs-info")  # in UTC, as every time the page shows
            for route, ready in [
                (f"#/job/{job.id}", "#page-job[data-ended=completed] #turn-cost"),
                ("#/money", "#page-money[data-loaded]"),
                ("#/schedules", f"#schedules tr[data-schedule='{sched.id}']"),
                (f"#/schedules/{sched.id}", "#page-schedules"),
                ("#/submit", "#submit-form"),
                ("#/jobs", f"#jobs tr[data-job='{job.id}']"),
            ]:
                page.goto(f"{gateway.url}/{route}")
                page.wait_for_selector(ready, timeout=WAIT_MS)
                page.wait_for_load_state("networkidle")
        finally:
            browser.close()
    assert logged == []
    assert re.fullmatch(r"page 1 · refreshed \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", refreshed)


@needs_chromium
def test_console_live_text_without_read_links(
    env: dict[str, str], tmp_path: Path, store: RedisStore, emulator: Emulator, worker: Any,
    orch: Orchestrator,
) -> None:  # fmt: skip
    """A gateway with no signing key makes no links: the page reads the token-protected
    stream itself, and resumes it after each drop."""
    sync_api = pytest.importorskip("playwright.sync_api")
    emulator.configure(turn_seconds=2.0, events_per_turn=12)
    gw = start_gateway(env, tmp_path, store, GATEWAY_SIGNING_KEY="", GATEWAY_SSE_MAX_EVENTS="4")
    try:
        api = gw.client("read")
        assert api.post("/v1/jobs/job_0123456789abcdef0123456789abcdef/links").status_code == 404
        job = orch.submit("no links here")
        assert api.post(f"/v1/jobs/{job.id}/links").status_code == 503
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                page = browser.new_page()
                _login(page, gw.url, gw.token("read"))
                page.goto(f"{gw.url}/#/job/{job.id}")
                page.wait_for_selector("#page-job[data-ended=completed]", timeout=WAIT_MS)
                live = page.eval_on_selector_all(
                    "#live-text span.text", "els => els.map(e => e.textContent).join('')"
                )
                opens = int(page.get_attribute("#page-job", "data-opens") or 0)
            finally:
                browser.close()
        text = _assembled(orch, job.id)
        assert text and live == text
        assert opens >= 3
    finally:
        gw.proc.stop()


@needs_chromium
def test_console_schedules_trigger_pause_resume(
    gateway: Any, worker: Any, orch: Orchestrator
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    sched = orch.schedules.create(
        None, "hourly digest", {"type": "interval", "intervalSeconds": 3600},
        tags={"tenant": "acme", "team": "ops"},
    )  # fmt: skip
    row = f"#schedules tr[data-schedule='{sched.id}']"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            _login(page, gateway.url, gateway.token("admin"))
            page.click("a[data-nav=schedules]")
            page.wait_for_selector(row, timeout=WAIT_MS)
            next_fire = page.inner_text(f"{row} td:nth-child(4)")
            tags = page.inner_text(f"{row} td.tags")
            page.click(f"{row} button:text('trigger')")
            page.click(f"{row} a")
            # The run appears with its job, and its cost once the turn is posted.
            page.wait_for_selector("#schedule-runs tr td.num:not(:text('—'))", timeout=WAIT_MS)
            run_cost = page.inner_text("#schedule-runs tr td.num")
            page.click(f"{row} button:text('pause')")
            page.wait_for_selector(f"{row} [data-status=paused]", timeout=WAIT_MS)
            page.click(f"{row} button:text('resume')")
            page.wait_for_selector(f"{row} [data-status=active]", timeout=WAIT_MS)
        finally:
            browser.close()
    runs = orch.schedules.history(sched.id)
    assert len(runs) == 1 and runs[0]["job_id"] and runs[0]["cost_micro"]
    assert run_cost == format_usd(runs[0]["cost_micro"])
    assert next_fire == orch.schedules.list_all()[0]["next_run_at"]
    assert tags == "team=ops tenant=acme"


def test_console_page_and_me(gateway: Any) -> None:
    page = httpx.get(gateway.url + "/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace(gateway.url, "").split("<body>")[0].lower()  # no CDN
    script = httpx.get(gateway.url + "/console/app.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(gateway.url + "/v1/me", timeout=10).status_code == 401
    me = gateway.client("read", tenant="acme").get("/v1/me")
    assert me.status_code == 200
    body = json.loads(me.text)
    assert body["role"] == "read" and body["tenant"] == "acme" and body["token_id"]


def test_costs_daily_stacks_by_tenant_tier_and_schedule(
    gateway: Any, worker: Any, orch: Orchestrator
) -> None:
    jobs = [
        orch.submit("one", budget="low", tags={"tenant": "acme"}),
        orch.submit("two", budget="high", tags={"tenant": "globex"}),
        orch.submit("three", budget="low"),
    ]
    for job in jobs:
        assert orch.wait(job.id, timeout=60).status == "completed"
    money = {j.id: total_cost_micro(orch.cost(j.id) or {}) for j in jobs}
    # The turns' UTC days (a run across midnight spans two): sums over the period.
    day_rows = orch.costs("day")["rows"]
    span = {"since": day_rows[0]["key"], "until": day_rows[-1]["key"]}
    today = span["until"]
    api = gateway.client("read")
    got = api.get("/v1/costs/daily", params=span).json()
    assert got["days"][0] == span["since"] and got["days"][-1] == today
    series = {s["key"]: sum(s["micro"]) for s in got["series"]}
    assert series == {"acme": money[jobs[0].id], "globex": money[jobs[1].id]}
    assert sum(got["other_micro"]) == money[jobs[2].id]  # untagged spend
    assert sum(got["total_micro"]) == sum(money.values())
    tiers = api.get("/v1/costs/daily", params={"by": "budget", **span}).json()
    by_tier = {s["key"]: sum(s["micro"]) for s in tiers["series"]}
    assert by_tier == {"low": money[jobs[0].id] + money[jobs[2].id], "high": money[jobs[1].id]}
    top1 = api.get("/v1/costs/daily", params={"by": "budget", "top": 1, **span}).json()
    assert len(top1["series"]) == 1
    assert sum(top1["series"][0]["micro"]) + sum(top1["other_micro"]) == sum(money.values())

    def refused(params: dict[str, str], status: int, field: str) -> None:
        r = api.get("/v1/costs/daily", params={"since": today, "until": today, **params})
        assert r.status_code == status and field in r.text, r.text

    refused({"until": "2000-01-01"}, 400, "until")
    refused({"since": "2000-01-01"}, 400, "since")
    refused({"tag_key": "Bad Key"}, 400, "tag_key")
    refused({"by": "worker"}, 422, "by")
    refused({"top": "0"}, 422, "top")
    tenant = gateway.client("read", tenant="acme")
    assert tenant.get("/v1/costs/daily", params={"since": today, "until": today}).status_code == 403
