"""The Grafana dashboard's queries as Grafana would send them to Prometheus.

Reads ``deploy/grafana/orchestrator.json``, and for a time range and a panel's width
computes what Grafana's Prometheus data source computes (Grafana 10,
``pkg/tsdb/prometheus``): the interval (range / max data points, rounded to a "nice"
interval, never under the data source's scrape interval), the step, ``$__interval``,
``$__rate_interval`` (the larger of interval + scrape interval and four scrape
intervals), ``$__range`` and the dashboard's template variables; then runs each target
as a range query and names each series by the target's legend format.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "orchestrator.json"

# Grafana's roundInterval: (below this many ms, use this many ms).
_NICE_MS = [
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1_500, 1_000),
    (3_500, 2_000), (7_500, 5_000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000),
    (45_000, 30_000), (90_000, 60_000), (210_000, 120_000), (450_000, 300_000),
    (750_000, 600_000), (1_050_000, 900_000), (1_500_000, 1_200_000),
    (2_700_000, 1_800_000), (5_400_000, 3_600_000), (9_000_000, 7_200_000),
    (16_200_000, 10_800_000), (32_400_000, 21_600_000), (86_400_000, 43_200_000),
]  # fmt: skip
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
MAX_POINTS = 11_000  # Prometheus refuses more points per series than this


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels inside collapsed rows included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def round_interval(ms: float) -> float:
    for below, nice in _NICE_MS:
        if ms < below:
            return nice
    return 86_400_000


def duration(seconds: float) -> str:
    """A Prometheus duration: ``500ms``, ``4s``, ``1m30s``, ``2h``."""
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    text, left = "", ms // 1000
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            text += f"{left // size}{unit}"
            left %= size
    return text or "0s"


@dataclass(frozen=True)
class Window:
    """What Grafana derives for one panel's queries."""

    start: float
    end: float
    step: float  # seconds; also $__interval
    rate_interval: float
    range_s: int

    def variables(self) -> dict[str, str]:
        return {
            "__interval": duration(self.step),
            "__interval_ms": str(round(self.step * 1000)),
            "__rate_interval": duration(self.rate_interval),
            "__rate_interval_ms": str(round(self.rate_interval * 1000)),
            "__range": f"{self.range_s}s",
            "__range_s": str(self.range_s),
            "__range_ms": str(self.range_s * 1000),
        }


def window(start: float, end: float, max_points: int, scrape_seconds: float) -> Window:
    """The step and intervals for a panel ``max_points`` wide (Grafana's default max data
    points is the panel's width in pixels); the range aligned to the step as Grafana does."""
    interval_ms = (end - start) * 1000 / max(max_points, 1)
    if interval_ms < scrape_seconds * 1000:
        step = scrape_seconds
    else:
        step = round_interval(interval_ms) / 1000
    step = max(step, math.ceil((end - start) / MAX_POINTS))
    rate = max(step + scrape_seconds, 4 * scrape_seconds)
    aligned_start = math.floor(start / step) * step
    aligned_end = math.floor(end / step) * step
    return Window(aligned_start, aligned_end, step, rate, round(end - start))


def substitute(expr: str, variables: dict[str, str]) -> str:
    """``$name`` and ``${name}`` replaced; KeyError naming a variable nobody defines."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"undefined dashboard variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def template_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each template variable's current value (a multi-value one as Prometheus's regex
    alternation, as Grafana formats it for a ``=~`` matcher)."""
    found: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        current = var.get("current", {}).get("value", "")
        if isinstance(current, list):
            current = "(" + "|".join(re.escape(str(v)) for v in current) + ")"
        found[var["name"]] = str(current)
    return found


def legend(fmt: str | None, labels: dict[str, str]) -> str:
    """The series name Grafana shows: the legend format with ``{{label}}`` filled in, or
    the metric and its labels when there is none."""
    if fmt and fmt != "__auto":
        return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt)
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]

    def last(self) -> float | None:
        """Grafana's ``lastNotNull`` reduction."""
        for _, value in reversed(self.points):
            if math.isfinite(value):
                return value
        return None


@dataclass
class PanelData:
    """One panel, its queries as sent, the series they returned, and any query errors."""

    panel: dict[str, Any]
    window: Window | None = None
    queries: list[str] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # queries that returned no series


def unanswered(found: list[PanelData]) -> dict[str, list[str]]:
    """Per panel title, each query that failed or returned no series."""
    bad: dict[str, list[str]] = {}
    for data in found:
        problems = data.errors + [f"no series: {q}" for q in data.empty]
        if problems:
            bad[data.panel["title"]] = problems
    return bad


QueryRange = Callable[[str, float, float, float], list[dict[str, Any]]]


def evaluate(
    dashboard: dict[str, Any],
    query_range: QueryRange,
    start: float,
    end: float,
    scrape_seconds: float,
    width_of: Callable[[dict[str, Any]], int],
) -> list[PanelData]:
    """Every panel's targets over [start, end]; ``width_of(panel)`` is its width in
    pixels (Grafana's max data points). Errors are collected, not raised."""
    variables = template_values(dashboard)
    found = []
    for panel in panels(dashboard["panels"]):
        data = PanelData(panel)
        found.append(data)
        if panel.get("type") == "row":
            continue
        data.window = window(start, end, width_of(panel), scrape_seconds)
        for target in panel.get("targets", []):
            if target.get("hide"):
                continue
            try:
                expr = substitute(target["expr"], {**variables, **data.window.variables()})
                data.queries.append(expr)
                w = data.window
                result = query_range(expr, w.start, w.end, w.step)
            except Exception as exc:  # the report names every failure
                data.errors.append(f"{target.get('refId', '?')}: {exc}")
                continue
            if not result:
                data.empty.append(expr)
            for row in result:
                points = [(float(t), float(v)) for t, v in row["values"]]
                name = legend(target.get("legendFormat"), row["metric"])
                data.series.append(Series(name, points))
    return found
