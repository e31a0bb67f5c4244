"""``python -m bench.console_shots [--out docs/img]``: screenshots of the web console.

Starts a stack of its own (embedded Redis, emulator, worker, beat, gateway; no Flower),
fills it with a few jobs of three tenants and three tiers, a schedule, budget caps and a
limit, and saves the jobs, a job, the money and the schedules pages as PNGs taken by
Debian's headless Chromium. Every process it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.dashboard_load import ROUND as JOBS
from orchestrator.facade import Orchestrator
from orchestrator.ops.stack import Stack
from orchestrator.settings import load_settings
from orchestrator.store.tokens import TokenStore

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]


def _fill(orch: Orchestrator) -> tuple[str, str]:
    """Jobs, a schedule (triggered once), a cap and a limit; returns a finished job's id
    and the schedule's."""
    orch.budgets.set_cap(scope="global", period="day", limit_usd="50.00", warn_at=0.8)
    orch.budgets.set_cap(scope="tag:tenant=acme", period="day", limit_usd="20.00", warn_at=0.5)
    orch.limits.set("tag:tenant=globex", 4)
    jobs = [orch.submit(text, budget=budget, tags=tags) for text, budget, tags in JOBS]
    sched = orch.schedules.create(
        None, "Morning digest of new issues", {"type": "interval", "intervalSeconds": 3600}
    )
    orch.schedules.trigger(sched.id)
    for job in jobs:
        orch.wait(job.id, timeout=120)
    return jobs[1].id, sched.id


@contextlib.contextmanager
def running_stack(workdir: Path, **options: Any) -> Iterator[tuple[Stack, Orchestrator]]:
    """A stack of its own under ``workdir`` (``options`` go to :class:`Stack`) and the
    facade pointed at it; every process it started is stopped on the way out."""
    stack = Stack(load_settings(), workdir, **options)
    try:
        stack.start()
        env = stack.env
        settings = load_settings(
            redis_url=env["REDIS_URL"], workers_api_url=env["WORKERS_API_URL"],
            workers_api_key=env["WORKERS_API_KEY"],
        )  # fmt: skip
        with Orchestrator(settings) as orch:
            yield stack, orch
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console_shots")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="where PNGs go")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="console-shots-") as tmp,
        running_stack(Path(tmp), with_flower=False, with_metrics=False) as (stack, orch),
    ):
        job_id, schedule_id = _fill(orch)
        token, _ = TokenStore(orch.store).create("admin", None, "screenshots")
        env = stack.env
        url = env["GATEWAY_URL"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url + "/")
            page.fill("#token", token)
            page.click("#login button[type=submit]")
            page.wait_for_selector("#jobs tr[data-job]")
            page.wait_for_function(
                "!document.querySelector('#jobs td.cost').textContent.includes('—')"
            )
            page.screenshot(path=str(args.out / "console-jobs.png"), full_page=True)
            page.goto(f"{url}/#/job/{job_id}")
            page.wait_for_selector("#page-job[data-ended] #turn-cost")
            time.sleep(0.5)  # the history and files cards fill in the same refresh
            page.screenshot(path=str(args.out / "console-job.png"), full_page=True)
            page.goto(f"{url}/#/money")
            page.wait_for_selector("#page-money[data-loaded] #chart-day rect")
            page.screenshot(path=str(args.out / "console-money.png"), full_page=True)
            page.goto(f"{url}/#/schedules/{schedule_id}")
            page.wait_for_selector("#schedule-runs tr")
            page.screenshot(path=str(args.out / "console-schedules.png"), full_page=True)
            browser.close()
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
