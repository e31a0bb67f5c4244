"""``python -m bench.dashboard_shot [--out docs/img/dashboard.png]``: the Grafana
dashboard's panels, rendered from a live Prometheus.

Starts a stack of its own (embedded Redis, emulator, worker, beat, metrics exporter;
see :func:`bench.console_shots.running_stack`) and Debian's Prometheus scraping the
exporter every second, runs a few minutes of load (:mod:`bench.dashboard_load`), waits
until every query of ``deploy/grafana/orchestrator.json`` returns data, evaluates each
as Grafana would (:mod:`bench.grafana`), draws the panels (:mod:`bench.dashboard_page`)
and screenshots the page with headless Chromium. Every process it started is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import dashboard_page, grafana
from bench.console_shots import CHROMIUM, FLAGS, running_stack
from bench.dashboard_load import Load
from bench.prometheus import Prometheus
from orchestrator.ops.processes import wait_for


def _shoot(page_html: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": dashboard_page.WIDTH, "height": 900})
            page.set_content(page_html, wait_until="load")
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_shot")
    parser.add_argument("--out", type=Path, default=Path("docs/img/dashboard.png"),
                        help="the PNG to write")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=10, help="rounds of jobs")
    parser.add_argument("--pause", type=float, default=12.0, help="seconds between rounds")
    parser.add_argument("--scrape", type=float, default=1.0, help="scrape interval, seconds")
    parser.add_argument("--html", type=Path, help="also keep the rendered page here")
    args = parser.parse_args(argv)
    # Turns long enough that jobs are seen running, waiting and followed between scrapes.
    os.environ.setdefault("EMULATOR_TURN_SECONDS", "6")
    dashboard = grafana.load()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dashboard-shot-")))
        parts, orch = stack.enter_context(
            running_stack(tmp / "stack", with_flower=False, with_gateway=False)
        )
        # The exporter and each process's own metrics, as a Prometheus of a deployment would.
        targets = list(parts.scrape_targets.values())
        prom = stack.enter_context(Prometheus(targets, tmp / "prometheus", args.scrape))
        prom.wait_scraped(3)
        started = time.time() - 3 * args.scrape
        load = Load(orch)
        load.run(args.rounds, args.pause)
        ends = load.wait_all(timeout=600)
        print("jobs ended:", ", ".join(f"{n} {state}" for state, n in sorted(ends.items())))

        def evaluate() -> list[grafana.PanelData]:
            return grafana.evaluate(dashboard, prom.query_range, started, time.time(),
                                    args.scrape, dashboard_page.max_points)  # fmt: skip

        wait_for(lambda: not grafana.unanswered(evaluate()), 60, "every panel to have data", 1)
        time.sleep(10 * args.scrape)  # pacing: a tail after the last job, the queues drained
        panels = evaluate()
        end = time.time()
        span = f"{time.strftime('%H:%M:%S', time.gmtime(started))} to " + time.strftime(
            "%H:%M:%S UTC", time.gmtime(end)
        )
        note = (f"rendered from a live Prometheus (scrape every {args.scrape:g} s) "
                "by python -m bench.dashboard_shot")  # fmt: skip
        page_html = dashboard_page.page(dashboard, panels, span, note)
    if args.html:
        args.html.write_text(page_html)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _shoot(page_html, args.out)
    print(f"dashboard in {args.out} ({sum(len(p.series) for p in panels)} series)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
