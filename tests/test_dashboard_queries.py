# ruff: noqa: F811  (the worker fixture is imported by name)
"""Every query of the Grafana dashboard, proven against a real Prometheus: Debian's
``prometheus`` scrapes a real ``orchestrator metrics`` exporter every second while a
real Celery worker runs a short load against the emulator; each target is then sent as
Grafana would send it (``$__rate_interval`` and ``$__range`` substituted, a range query
at the panel's step) and must evaluate without error and return at least one series."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import grafana
from bench.dashboard_load import Load
from bench.prometheus import PROMETHEUS, Prometheus
from orchestrator.facade import Orchestrator
from orchestrator.ledger import total_cost_micro
from orchestrator.money import MICRO_PER_USD
from orchestrator.ops.processes import Proc, wait_for

from .conftest import Emulator
from .gateway_support import worker  # noqa: F401
from .processes import start_on_a_free_port

pytestmark = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(),
    reason=f"{PROMETHEUS} is not installed (apt-get install prometheus; .ci/run does)",
)
SCRAPE_SECONDS = 1.0


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    env: dict[str, str], tmp_path: Path, emulator: Emulator, worker: Any, orch: Orchestrator
) -> None:
    emulator.configure(turn_seconds=0.5, events_per_turn=5)
    exporter, port = start_on_a_free_port(
        lambda port: Proc(
            [sys.executable, "-m", "orchestrator", "metrics", "--port", str(port)],
            env, tmp_path / "metrics.log", "metrics on http",
        ),
        timeout=30,
    )  # fmt: skip
    try:
        with Prometheus([f"127.0.0.1:{port}"], tmp_path / "prometheus", SCRAPE_SECONDS) as prom:
            prom.wait_scraped(2)
            started = time.time()
            load = Load(orch, initech_cap_usd="0.25", burst_round=1)
            load.run(rounds=2, pause=1.0)
            ends = load.wait_all(timeout=60)
            assert ends.get("completed", 0) >= 5 and ends.get("failed", 0) >= 1, ends
            dashboard = grafana.load()
            targets = [t for p in grafana.panels(dashboard["panels"]) for t in p.get("targets", [])]

            def evaluate() -> list[grafana.PanelData]:
                return grafana.evaluate(
                    dashboard, prom.query_range, started, time.time(), SCRAPE_SECONDS,
                    lambda panel: panel["gridPos"]["w"] * 60,
                )  # fmt: skip

            # The series that appear with the first cost need a few scrapes after it
            # before a rate over them has two samples: wait for it, bounded.
            last: list[list[grafana.PanelData]] = [[]]

            def answered() -> bool:
                last[0] = evaluate()
                return not grafana.unanswered(last[0])

            with contextlib.suppress(TimeoutError):  # the assert below names what is missing
                wait_for(answered, 20, "every dashboard query to return data", 0.5)
            assert grafana.unanswered(last[0]) == {}
            sent = [q for data in last[0] for q in data.queries]
            assert len(sent) == len(targets) >= 15
            assert not any("$" in q for q in sent)  # every Grafana variable was replaced

            def spend_matches_ledger() -> bool:
                # The exporter reads the ledger at each scrape: once the last turn (the
                # cancelled job's) has settled, the panel shows the ledger's total in USD.
                ledger = total_cost_micro(orch.costs(by="budget")["total"]) / MICRO_PER_USD
                money = next(d for d in evaluate() if d.panel["title"] == "Spend, all time")
                return ledger > 0 and money.series[0].last() == pytest.approx(ledger, abs=1e-9)

            wait_for(spend_matches_ledger, 20, "the spend panel to show the ledger's total", 0.5)
    finally:
        exporter.stop()
