"""Writing ``RESULTS.md`` and its JSON twin ``RESULTS.json``.

A run of some scenarios only replaces those scenarios in an existing JSON of the same
kind (quick or full), so one scenario can be re-run without losing the others.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

SCENARIO_ORDER = (
    "dispatch", "throughput", "overhead", "long_turns", "turns_60s", "relay", "first_update",
    "streams", "beat", "costs", "memory",
)  # fmt: skip


def merge(out: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The run's scenarios over those of an earlier run of the same kind in ``out``."""
    path = out / "RESULTS.json"
    if not path.exists():
        return run
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return run
    if old.get("quick") != run["quick"]:
        return run
    scenarios = {s["scenario"]: s for s in old.get("scenarios", [])}
    scenarios.update({s["scenario"]: s for s in run["scenarios"]})
    ordered = sorted(scenarios.values(), key=lambda s: _rank(s["scenario"]))
    return {**run, "scenarios": ordered}


def _rank(name: str) -> int:
    return SCENARIO_ORDER.index(name) if name in SCENARIO_ORDER else len(SCENARIO_ORDER)


def write(out: Path, run: dict[str, Any]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    for s in run["scenarios"]:
        s.setdefault("measured_at", run["started_at"])
        s.setdefault("command", run["command"])
    data = merge(out, run)
    json_path, md_path = out / "RESULTS.json", out / "RESULTS.md"
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(markdown(data))
    return md_path, json_path


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "—"
    median, lo, hi = summary["median"], summary["min"], summary["max"]
    if len(summary.get("runs", [])) < 2:
        return fmt(median)
    return f"{fmt(median)} ({fmt(lo)}-{fmt(hi)})"


def _met(metric: dict[str, Any]) -> str:
    if metric["met"] is None:
        return ""
    return "met" if metric["met"] else "**missed**"


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(data["started_at"]))
    kind = "quick (smoke sizes)" if data["quick"] else "full"
    runs = {(s.get("command"), s.get("measured_at")) for s in data["scenarios"]}
    if len(runs) > 1:
        origin = (
            f"{kind.capitalize()} runs merged (each section says when and by which "
            f"command); the latest, `{data['command']}`, of {when}. "
        )
    else:
        origin = f"`{data['command']}` — {kind} run of {when}, {data['seconds'] / 60:.1f} min. "
    # Merged sections may differ in repetitions: each one's command names any --reps.
    reps = (f"{data['reps']} repetitions" if len(runs) == 1
            else "its run's repetitions (3 unless its command says `--reps`)")  # fmt: skip
    lines = [
        "# Benchmark results",
        "",
        origin
        + f"Each figure is the median of {reps}, with min-max in brackets; "
        "ratio = ours / baseline (medians), both measured in the same run. Reproduce with "
        "`python -m bench` (add `--quick` for a smoke run).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {m['cpus']} x {m['cpu_model']} |",
        f"| memory | {m['memory_gib']} GiB |",
        f"| OS | {m['os']} |",
        f"| Python | {m['python']} |",
        f"| Redis server | {m['redis_server']} (no persistence, noeviction) |",
        f"| celery / kombu | {m['celery']} / {m['kombu']} |",
        f"| redis-py / httpx / uvicorn | {m['redis_py']} / {m['httpx']} / {m['uvicorn']} |",
        f"| load average at start | {', '.join(map(str, m['load_avg_at_start']))} |",
        "",
        "## Goals",
        "",
        "| scenario | figure | ours | baseline | ratio | goal | |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in data["scenarios"]:
        for metric in s["metrics"]:
            if not metric["goal"]:
                continue
            lines.append(
                f"| {s['scenario']} | {metric['name']} ({metric['unit']}) "
                f"| {fmt(metric['ours']['median'])} "
                f"| {fmt(metric['baseline']['median']) if metric['baseline'] else '—'} "
                f"| {fmt(metric['ratio'])} | {metric['goal']} | {_met(metric)} |"
            )
    for s in data["scenarios"]:
        lines += ["", f"## {s['scenario']}: {s['title']}", ""]
        if s["baseline"]:
            lines.append(f"Baseline: {s['baseline']}.")
        params = ", ".join(f"{k}={v}" for k, v in s["params"].items())
        if params:
            lines.append(f"Parameters: {params}.")
        if "measured_at" in s:
            at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(s["measured_at"]))
            lines.append(f"Measured {at} by `{s['command']}` in {s['seconds']:.0f} s.")
        lines += [
            "",
            "| figure | unit | ours | baseline | ratio | goal | |",
            "|---|---|---|---|---|---|---|",
        ]
        for metric in s["metrics"]:
            lines.append(
                f"| {metric['name']} | {metric['unit']} | {_cell(metric['ours'])} "
                f"| {_cell(metric['baseline'])} | {fmt(metric['ratio'])} "
                f"| {metric['goal']} | {_met(metric)} |"
            )
        notes = [f"{m['name']}: {m['note']}" for m in s["metrics"] if m["note"]]
        notes += s["notes"]
        if notes:
            lines.append("")
            lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
