"""The benchmark harness runs end to end: one fast scenario at smoke size writes its
results to a given directory. Benchmark figures themselves never pass or fail here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGV`` from the checkout, its output captured."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _quick(tmp_path: Path, *scenarios: str, timeout: float) -> list[dict[str, Any]]:
    """Run ``scenarios`` at smoke size into ``tmp_path``; the scenarios' results."""
    done = _bench(*scenarios, "--quick", "--reps", "1", "--out", str(tmp_path), timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads((tmp_path / "RESULTS.json").read_text())
    assert data["quick"] is True
    result: list[dict[str, Any]] = data["scenarios"]
    return result


def _figures(scenarios: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for s in scenarios for m in s["metrics"]}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_relay_scenario_writes_results(tmp_path: Path) -> None:
    [relay] = _quick(tmp_path, "relay", timeout=90)
    assert json.loads((tmp_path / "RESULTS.json").read_text())["machine"]["cpus"] >= 1
    assert relay["scenario"] == "relay"
    rate = _figures([relay])["relay rate"]
    assert rate["ours"]["median"] > 0 and rate["baseline"]["median"] > 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "# Benchmark results" in text and "relay rate" in text


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_soak_runs_jobs_with_a_short_retention_and_keeps_the_ledger_exact(
    tmp_path: Path,
) -> None:
    """``bench soak`` end to end at smoke size: every job completed, the ledger equal to
    the emulator's, finished jobs expiring meanwhile (flatness needs the long run)."""
    out = tmp_path / "soak.json"
    done = _bench(
        "soak", "--jobs", "150", "--minutes", "1", "--retention", "2s", "--no-compare",
        "--out", str(out), timeout=170,
    )  # fmt: skip
    assert out.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    soak = json.loads(out.read_text())["soak"]
    assert soak["completed"] == soak["submitted"] == 150, soak
    assert soak["ledger_mismatches"] == {} and soak["ledger_turns"] == 150
    assert soak["samples"] and soak["retained_at_end"] < 150


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_gateway_scenario_writes_results(tmp_path: Path) -> None:
    figures = _figures(_quick(tmp_path, "gateway", timeout=150))
    assert figures["submit p50"]["ours"]["median"] > 0
    assert figures["submit p50"]["baseline"]["median"] > 0
    assert any(name.startswith("lag p99, 200 jobs") for name in figures)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_first_update_and_overhead_scenarios_write_results(tmp_path: Path) -> None:
    """The wake-up scenario (ours against the poll alone) and the hand-written baseline
    task run end to end; every probe's first update and every job arrive."""
    figures = _figures(_quick(tmp_path, "first_update", "overhead", timeout=170))
    assert figures["first updates missing, idle stack"]["ours"]["median"] == 0
    assert figures["first-update lag p99, idle stack"]["baseline"]["median"] > 0
    assert figures["jobs/s, instant turns"]["ours"]["median"] > 0
    assert figures["jobs/s, instant turns"]["baseline"]["median"] > 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_gateway_first_scenario_writes_results(tmp_path: Path) -> None:
    """Submit to first update through a relaying gateway and a sending one: every probe's
    job reaches ``running`` (the scenario raises otherwise)."""
    figures = _figures(_quick(tmp_path, "gateway_first", timeout=170))
    assert figures["submit to first update p50"]["ours"]["median"] > 0
    assert figures["submit to first update p50"]["baseline"]["median"] > 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_spread_scenario_measures_every_primary_and_judges_the_goal(
    tmp_path: Path,
) -> None:
    """500 jobs of 100 tenants on a 3-primary cluster: each measure's shares over the
    primaries add up to the whole, the keys and commands goals are judged (met or
    missed, whichever the layout gives), and every job completed."""
    [spread] = _quick(tmp_path, "spread", timeout=170)
    figures = _figures([spread])
    for measure in ("keys", "commands", "used_memory growth", "CPU"):
        shares = [figures[f"{measure}: primary {i} share"]["ours"]["median"] for i in (1, 2, 3)]
        assert sum(shares) == pytest.approx(100, abs=0.01), (measure, shares)
        ratio = figures[f"{measure}: largest/smallest share"]
        assert 1 <= ratio["ours"]["median"] < float("inf"), ratio
    for measure in ("keys", "commands"):
        judged = figures[f"{measure}: largest/smallest share"]
        assert judged["goal"] == "≤ 1.5"
        assert judged["met"] is (judged["ours"]["median"] <= 1.5)
    assert figures["store commands per job (all primaries)"]["ours"]["median"] > 10
    assert not [n for n in spread["notes"] if "did not complete" in n], spread["notes"]
