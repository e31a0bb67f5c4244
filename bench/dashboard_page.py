"""The Grafana dashboard drawn as one HTML page of plain SVG, from evaluated panels.

Panels are placed by their ``gridPos`` on Grafana's grid (24 columns, rows of 30 px
with 8 px gaps) and drawn the way Grafana's dark theme draws them by default: time
series with their stacking and fill opacity, an axis in the panel's unit and a legend;
stats as the last non-null value over a sparkline; bar gauges as one bar per series.
No script and no network: the page is self-contained, for a headless browser to shoot.
"""

from __future__ import annotations

import html
import math
import time
from typing import Any

from bench.grafana import PanelData, Series

WIDTH = 1600  # px, the page
PAD = 16
GAP = 8
CELL_H = 30
HEADER = 64
COL_W = (WIDTH - 2 * PAD - 23 * GAP) / 24
TITLE_H = 32
# Grafana's classic palette, in its order.
PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9",
           "#705DA0", "#37872D", "#FADE2A", "#447EBC", "#C15C17"]  # fmt: skip
TEXT, MUTED, GRID = "#ccccdc", "#8e8e9e", "#2c3235"
STYLE = """
body { margin: 0; background: #111217; color: #ccccdc; width: WIDTHpx;
       font: 13px Inter, "Helvetica Neue", Arial, sans-serif; }
header { height: 48px; display: flex; align-items: center; gap: 16px; padding: 0 16px;
         border-bottom: 1px solid #2c3235; }
header h1 { font-size: 18px; font-weight: 500; margin: 0; }
header .range { margin-left: auto; color: #8e8e9e; font-size: 13px;
                border: 1px solid #2c3235; border-radius: 2px; padding: 4px 10px; }
.panel { position: absolute; background: #181b1f; border: 1px solid #24292e;
         border-radius: 2px; box-sizing: border-box; overflow: hidden; }
.panel h2 { font-size: 14px; font-weight: 500; margin: 0; padding: 8px 10px 0; height: 24px;
            white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.row { position: absolute; font-size: 16px; font-weight: 500; }
.row::before { content: "\\25BE  "; color: #8e8e9e; }
.legend { display: flex; flex-wrap: wrap; gap: 2px 14px; padding: 0 10px; font-size: 12px; }
.legend i { display: inline-block; width: 14px; height: 4px; border-radius: 2px;
            margin-right: 6px; vertical-align: middle; }
.stat { position: absolute; left: 0; right: 0; text-align: center; font-weight: 500; }
.stat small { display: block; font-size: 12px; color: #8e8e9e; font-weight: 400; }
.error { color: #F2495C; padding: 8px 10px; }
.note { color: #8e8e9e; font-size: 12px; }
""".replace("WIDTH", str(WIDTH))


def fmt(value: float, unit: str | None) -> str:
    """A value in the panel's unit, about as Grafana writes it."""
    if unit == "currencyUSD":
        decimals = 2 if abs(value) >= 10 or value == 0 else 4
        return f"${value:,.{decimals}f}"
    if unit == "s":
        if value == 0:
            return "0 s"
        return f"{value * 1000:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:.3g} Mil"
    if abs(value) >= 10_000:
        return f"{value / 1000:.3g} K"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(count + 3) if first + i * step <= high + step * 0.999]


def _time_ticks(start: float, end: float, width: float) -> list[float]:
    wanted = max(int(width / 110), 2)
    step = next(
        (
            s
            for s in (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
            if (end - start) / s <= wanted
        ),
        7200,
    )
    return [t for t in range(math.ceil(start / step) * step, int(end) + 1, step)]


def _clock(t: float, with_seconds: bool) -> str:
    return time.strftime("%H:%M:%S" if with_seconds else "%H:%M", time.gmtime(t))


def box(panel: dict[str, Any]) -> tuple[float, float, float, float]:
    """The panel's left, top, width and height in px, from its gridPos."""
    g = panel["gridPos"]
    left = PAD + g["x"] * (COL_W + GAP)
    top = HEADER + g["y"] * (CELL_H + GAP)
    width = g["w"] * COL_W + (g["w"] - 1) * GAP
    height = g["h"] * CELL_H + (g["h"] - 1) * GAP
    return left, top, width, height


def max_points(panel: dict[str, Any]) -> int:
    """Grafana's default max data points: the panel's width in pixels."""
    return int(box(panel)[2])


def _colours(series: list[Series]) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(len(series))]


def _stack(series: list[Series], stacked: bool) -> tuple[list[float], list[list[float | None]]]:
    """Aligned timestamps, and each series' (cumulative when stacked) value at each."""
    times = sorted({t for s in series for t, _ in s.points})
    index = {t: i for i, t in enumerate(times)}
    rows: list[list[float | None]] = []
    below = [0.0] * len(times)
    for s in series:
        row: list[float | None] = [None] * len(times)
        for t, v in s.points:
            row[index[t]] = v if math.isfinite(v) else None
        if stacked:
            row = [below[i] + (v or 0.0) for i, v in enumerate(row)]
            below = [float(v or 0.0) for v in row]
        rows.append(row)
    return times, rows


def timeseries(data: PanelData, width: float, height: float) -> str:
    panel, series = data.panel, data.series
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit, custom = defaults.get("unit"), defaults.get("custom", {})
    stacked = custom.get("stacking", {}).get("mode", "none") != "none"
    fill = float(custom.get("fillOpacity", 0)) / 100
    plot_h = height - TITLE_H - 18 * _legend_rows(series, width - 20) - 34
    times, rows = _stack(series, stacked)
    assert data.window is not None
    start, end = data.window.start, data.window.end
    values = [v for row in rows for v in row if v is not None]
    ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]) or 1.0, 4)
    low, high = ticks[0], ticks[-1]
    labels = [fmt(t, unit) for t in ticks]
    left = max(len(label) for label in labels) * 7 + 16
    plot_w = width - left - 14

    def x(t: float) -> float:
        return left + (t - start) / max(end - start, 1) * plot_w

    def y(v: float) -> float:
        return 6 + plot_h - (v - low) / (high - low) * plot_h

    parts = [f'<svg width="{width:.0f}" height="{plot_h + 28:.0f}">']
    for tick, label in zip(ticks, labels, strict=True):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}" stroke="{GRID}"/>')  # fmt: skip
        parts.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" fill="{MUTED}" '
                     f'font-size="11" text-anchor="end">{html.escape(label)}</text>')  # fmt: skip
    marks = _time_ticks(start, end, plot_w)
    seconds = any(t % 60 for t in marks)
    for t in marks:
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="6" y2="{6 + plot_h:.1f}" '
                     f'stroke="{GRID}"/><text x="{x(t):.1f}" y="{plot_h + 22:.1f}" '
                     f'fill="{MUTED}" font-size="11" text-anchor="middle">'
                     f"{_clock(t, seconds)}</text>")  # fmt: skip
    colours = _colours(series)
    previous: list[float | None] = [low] * len(times)
    for row, colour in zip(rows, colours, strict=True):
        for run in _runs(times, row):
            line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
            if fill > 0:
                floor = [(t, previous[times.index(t)] or low) for t, _ in run] if stacked else []
                base = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in reversed(floor)) or (
                    f"{x(run[-1][0]):.1f},{y(low):.1f} {x(run[0][0]):.1f},{y(low):.1f}"
                )
                parts.append(f'<polygon points="{line} {base}" fill="{colour}" '
                             f'fill-opacity="{fill}"/>')  # fmt: skip
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" '
                         f'stroke-width="1.5"/>')  # fmt: skip
        previous = row
    parts.append("</svg>")
    return "".join(parts) + _legend(series, colours)


def _runs(times: list[float], row: list[float | None]) -> list[list[tuple[float, float]]]:
    """The row's unbroken stretches of points (a gap where a series had no sample)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for t, v in zip(times, row, strict=True):
        if v is None:
            runs.append([])
        else:
            runs[-1].append((t, v))
    return [r for r in runs if r]


def _legend_rows(series: list[Series], width: float) -> int:
    """How many lines the legend wraps to (about 6.5 px a character at 12 px)."""
    rows, used = 1, 0.0
    for s in series:
        item = len(s.name) * 6.5 + 34
        if used and used + item > width:
            rows, used = rows + 1, 0.0
        used += item
    return rows


def _legend(series: list[Series], colours: list[str]) -> str:
    items = "".join(f'<span><i style="background:{c}"></i>{html.escape(s.name)}</span>'
                    for s, c in zip(series, colours, strict=True))  # fmt: skip
    return f'<div class="legend">{items}</div>'


def stat(data: PanelData, width: float, height: float) -> str:
    unit = data.panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    series = data.series[0] if data.series else None
    value = series.last() if series else None
    shown = "No data" if value is None else fmt(value, unit)
    size = min(height * 0.32, width / max(len(shown), 1) * 1.5, 56)
    body_h = height - TITLE_H
    spark = ""
    if series and len(series.points) > 1:
        spark = _sparkline(series, width, body_h * 0.45, body_h)
    name = html.escape(series.name) if series else ""
    top = body_h / 2 - size * 0.7
    return (f'{spark}<div class="stat" style="top:{top + TITLE_H:.0f}px;font-size:{size:.0f}px;'
            f'color:{PALETTE[0]}">{html.escape(shown)}<small>{name}</small></div>')  # fmt: skip


def _sparkline(series: Series, width: float, height: float, bottom: float) -> str:
    values = [v for _, v in series.points]
    t0, t1 = series.points[0][0], series.points[-1][0]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    points = [(((t - t0) / max(t1 - t0, 1)) * width, bottom - (v - low) / span * height * 0.9 - 2)
              for t, v in series.points]  # fmt: skip
    line = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    return (f'<svg style="position:absolute;left:0;top:{TITLE_H}px" width="{width:.0f}" '
            f'height="{bottom:.0f}"><polygon points="{line} {width:.1f},{bottom:.1f} 0,'
            f'{bottom:.1f}" fill="{PALETTE[0]}" fill-opacity="0.15"/><polyline '
            f'points="{line}" fill="none" stroke="{PALETTE[0]}" stroke-width="1.5"/>'
            "</svg>")  # fmt: skip


def bargauge(data: PanelData, width: float, height: float) -> str:
    unit = data.panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    rows = sorted(((s.last() or 0.0, s.name) for s in data.series), reverse=True)
    if not rows:
        return '<div class="error">No data</div>'
    top = max(v for v, _ in rows) or 1.0
    bar_h = min((height - TITLE_H - 10) / len(rows) - 6, 28)
    name_w = max(len(n) for _, n in rows) * 7 + 16
    value_w = max(len(fmt(v, unit)) for v, _ in rows) * 8 + 12
    track = width - name_w - value_w - 20
    parts = [f'<svg width="{width:.0f}" height="{height - TITLE_H:.0f}">']
    for i, (value, name) in enumerate(rows):
        y = 6 + i * (bar_h + 6)
        length = max(value / top * track, 2)
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<text x="10" y="{y + bar_h / 2 + 4:.1f}" fill="{TEXT}" font-size="12">'
                     f'{html.escape(name)}</text><rect x="{name_w}" y="{y:.1f}" width="{track:.1f}"'
                     f' height="{bar_h:.1f}" fill="#ffffff" fill-opacity="0.04"/><rect '
                     f'x="{name_w}" y="{y:.1f}" width="{length:.1f}" height="{bar_h:.1f}" '
                     f'fill="{colour}" fill-opacity="0.85"/><text x="{width - 10:.0f}" '
                     f'y="{y + bar_h / 2 + 5:.1f}" fill="{colour}" font-size="14" '
                     f'text-anchor="end">{html.escape(fmt(value, unit))}</text>')  # fmt: skip
    return "".join(parts) + "</svg>"


DRAW = {"timeseries": timeseries, "stat": stat, "gauge": stat, "bargauge": bargauge}


def page(dashboard: dict[str, Any], panels: list[PanelData], range_text: str, note: str) -> str:
    """The whole dashboard as a self-contained HTML page."""
    body = []
    bottom = 0.0
    for data in panels:
        panel = data.panel
        left, top, width, height = box(panel)
        bottom = max(bottom, top + height)
        title = html.escape(panel.get("title", ""))
        if panel["type"] == "row":
            body.append(f'<div class="row" style="left:{left:.0f}px;top:{top + 4:.0f}px">'
                        f"{title}</div>")  # fmt: skip
            continue
        if data.errors:
            inner = "".join(f'<div class="error">{html.escape(e)}</div>' for e in data.errors)
        else:
            inner = DRAW.get(panel["type"], timeseries)(data, width, height)
        body.append(f'<div class="panel" style="left:{left:.0f}px;top:{top:.0f}px;'
                    f'width:{width:.0f}px;height:{height:.0f}px">'
                    f"<h2>{title}</h2>{inner}</div>")  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><style>{STYLE}</style></head>"
            f'<body style="height:{bottom + PAD:.0f}px"><header><h1>'
            f"{html.escape(dashboard.get('title', ''))}</h1><span class='note'>"
            f"{html.escape(note)}</span><span class='range'>{html.escape(range_text)}</span>"
            f"</header>{''.join(body)}</body></html>")  # fmt: skip
