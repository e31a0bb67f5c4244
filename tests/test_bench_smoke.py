"""The benchmark harness runs end to end: one fast scenario at smoke size writes its
results to a given directory. Benchmark figures themselves never pass or fail here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_relay_scenario_writes_results(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench", "relay", "--quick", "--reps", "1", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads((tmp_path / "RESULTS.json").read_text())
    assert data["quick"] is True
    assert data["machine"]["cpus"] >= 1
    [relay] = data["scenarios"]
    assert relay["scenario"] == "relay"
    names = {m["name"] for m in relay["metrics"]}
    assert "relay rate" in names
    rate = next(m for m in relay["metrics"] if m["name"] == "relay rate")
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
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    out = tmp_path / "soak.json"
    args = ["soak", "--jobs", "150", "--minutes", "1", "--retention", "2s", "--no-compare",
            "--out", str(out)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert out.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    soak = json.loads(out.read_text())["soak"]
    assert soak["completed"] == soak["submitted"] == 150, soak
    assert soak["ledger_mismatches"] == {} and soak["ledger_turns"] == 150
    assert soak["samples"] and soak["retained_at_end"] < 150


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_gateway_scenario_writes_results(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = ["gateway", "--quick", "--reps", "1", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [gateway] = json.loads((tmp_path / "RESULTS.json").read_text())["scenarios"]
    figures = {m["name"]: m for m in gateway["metrics"]}
    assert figures["submit p50"]["ours"]["median"] > 0
    assert figures["submit p50"]["baseline"]["median"] > 0
    assert any(name.startswith("lag p99, 200 jobs") for name in figures)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_first_update_and_overhead_scenarios_write_results(tmp_path: Path) -> None:
    """The wake-up scenario (ours against the poll alone) and the hand-written baseline
    task run end to end; every probe's first update and every job arrive."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = ["first_update", "overhead", "--quick", "--reps", "1", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    scenarios = json.loads((tmp_path / "RESULTS.json").read_text())["scenarios"]
    figures = {m["name"]: m for s in scenarios for m in s["metrics"]}
    assert figures["first updates missing, idle stack"]["ours"]["median"] == 0
    assert figures["first-update lag p99, idle stack"]["baseline"]["median"] > 0
    assert figures["jobs/s, instant turns"]["ours"]["median"] > 0
    assert figures["jobs/s, instant turns"]["baseline"]["median"] > 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_gateway_first_scenario_writes_results(tmp_path: Path) -> None:
    """Submit to first update through a relaying gateway and a sending one: every probe's
    job reaches ``running`` (the scenario raises otherwise)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = ["gateway_first", "--quick", "--reps", "1", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [scenario] = json.loads((tmp_path / "RESULTS.json").read_text())["scenarios"]
    figures = {m["name"]: m for m in scenario["metrics"]}
    assert figures["submit to first update p50"]["ours"]["median"] > 0
    assert figures["submit to first update p50"]["baseline"]["median"] > 0
