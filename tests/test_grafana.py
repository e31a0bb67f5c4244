"""The Grafana dashboard (``deploy/grafana/orchestrator.json``) asks only for metrics the
exporter serves: every PromQL expression is parsed for the metric names it selects, and
each must be one that ``orchestrator metrics`` exports, collected from its registry."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.ops.collector import store_registry
from orchestrator.store.jobs import RedisStore

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "orchestrator.json"

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "bool", "offset"}
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


def exported(store: RedisStore) -> set[str]:
    """Every series name the exporter can serve, from its own registry."""
    names: set[str] = set()
    for family in store_registry(store).collect():
        suffixes = SUFFIXES.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
        names |= {sample.name for sample in family.samples}
    return names


def selected(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (labels, functions, durations,
    strings, numbers and grouping clauses left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables ($__range, ...)
    text = re.sub(r"\b\d+(\.\d+)?[a-z]*\b", "", text)  # numbers and durations (5m)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group() in KEYWORDS:
            continue  # a function or an operator
        names.add(match.group())
    return names


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_the_selector_parser_finds_metric_names() -> None:
    assert selected('max by (queue) (rate(a_total{x="b c"}[5m])) * 60 + b') == {"a_total", "b"}
    assert selected("topk(10, max by (tag) (increase(c[$__range])))") == {"c"}
    assert selected('sum(x{state!~"a|b"}) and on (job) y offset 5m') == {"x", "y"}


def test_every_query_names_only_metrics_we_export(
    dashboard: dict[str, Any], store: RedisStore
) -> None:
    ours = exported(store)
    assert {"orchestrator_jobs", "orchestrator_cost_usd_total"} <= ours
    exprs = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    assert len(exprs) >= 15
    foreign = {expr: sorted(selected(expr) - ours) for expr in exprs if selected(expr) - ours}
    assert foreign == {}
    assert all(selected(expr) for expr in exprs)  # each query reads at least one series
    # Jobs, queues, streams and money are each on it.
    used = set().union(*(selected(e) for e in exprs))
    assert {
        "orchestrator_jobs", "orchestrator_queue_depth", "orchestrator_queue_unacked",
        "orchestrator_streams_followed", "orchestrator_cost_usd_total",
        "orchestrator_budget_spent_usd",
    } <= used  # fmt: skip


def test_a_foreign_metric_would_be_caught(store: RedisStore) -> None:
    assert selected("rate(http_requests_total[5m])") - exported(store) == {"http_requests_total"}


def test_the_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    every = list(panels(dashboard["panels"]))
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)) and all(p.get("title") for p in every)
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 30
    for panel in every:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]


def test_grafana_intervals_are_worked_out_as_grafana_does() -> None:
    from bench import grafana

    # 10 minutes over 960 px with a 1 s scrape: the interval is the scrape interval.
    w = grafana.window(1000.0, 1600.0, 960, 1.0)
    assert (w.step, w.rate_interval, w.range_s) == (1.0, 4.0, 600)
    # 6 hours over 1000 px with a 15 s scrape: 21.6 s rounds to 20 s; rate = 4 scrapes.
    w = grafana.window(0.0, 21_600.0, 1000, 15.0)
    assert (w.step, w.rate_interval) == (20.0, 60.0)
    expr = "rate(x[$__rate_interval]) + increase(y[${__range}]) * $__interval_ms"
    assert grafana.substitute(expr, w.variables()) == "rate(x[1m]) + increase(y[21600s]) * 20000"
    with pytest.raises(KeyError, match="tenant"):
        grafana.substitute("x{tag=~\"$tenant\"}", w.variables())
    assert grafana.legend("{{budget}} spent", {"budget": "low"}) == "low spent"
    assert grafana.legend("", {"__name__": "up", "job": "o"}) == 'up{job="o"}'
