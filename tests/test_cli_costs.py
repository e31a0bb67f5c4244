"""``orchestrator costs`` against a real Redis ledger: by day, budget, tag and job, as a
table and as JSON in integer micro-dollars, filtered by day."""

from __future__ import annotations

import json

import pytest

from orchestrator.ledger import MONEY_FIELDS, REPORT_FIELDS

from .cli_support import Env, day_ms, queued_job, run, worker
from .cli_support import env as env  # the fixture: a database and prefix of its own

# --- costs -----------------------------------------------------------------------


def test_costs_json_of_an_empty_ledger_is_all_zero(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "costs", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["by"] == "day" and report["rows"] == []
    assert set(report["total"]) == set(REPORT_FIELDS)
    assert all(report["total"][f] == 0 and type(report["total"][f]) is int for f in REPORT_FIELDS)
    code, out, _ = run(capsys, "costs")
    assert out.splitlines()[-1].split() == ["total", "0", "$0.000000", "0"]


@pytest.fixture
def ledger(env: Env) -> Env:
    """Three posted turns over two days, two tiers and two tags."""
    a = queued_job(env, budget="low", tags={"tenant": "acme"})
    b = queued_job(env, budget="high", tags={"tenant": "acme", "team": "ml"})
    c = queued_job(env, budget="low")
    posts = [
        (a, worker("wrk_a", ("0.0001", "0.0012", "0.00003", "0.000004"), 1500), "2026-01-10"),
        (b, worker("wrk_b", ("0.5", "1.25", "0", "0.000001"), 20000), "2026-01-11"),
        (c, worker("wrk_c", ("0", "0.000002", "0", "0"), 10), "2026-01-11"),
    ]
    for job, snapshot, day in posts:
        assert env.store.post_turn(job, snapshot, day_ms(day)) is not None
    return env


def table(out: str) -> dict[str, list[str]]:
    """A printed table as key -> the row's other cells (``total`` from its footer)."""
    rows = {}
    for line in out.splitlines()[1:]:
        if line.startswith("total"):
            label, cells = line.rsplit(None, 3)[0], line.rsplit(None, 3)[1:]
            rows[label] = cells
        elif not line.startswith("-"):
            key, *cells = line.split()
            rows[key] = cells
    return rows


def test_costs_by_day_budget_and_tag(ledger: Env, capsys: pytest.CaptureFixture[str]) -> None:
    total = ["3", "$1.751337", "21510"]
    code, out, _ = run(capsys, "costs", "--by", "day")
    assert code == 0 and out.split()[:4] == ["day", "turns", "usd", "tokens"]
    assert table(out) == {
        "2026-01-10": ["1", "$0.001334", "1500"],
        "2026-01-11": ["2", "$1.750003", "20010"],
        "total": total,
    }
    code, out, _ = run(capsys, "costs", "--by", "budget")
    assert table(out) == {
        "high": ["1", "$1.750001", "20000"],
        "low": ["2", "$0.001336", "1510"],
        "total": total,
    }
    code, out, _ = run(capsys, "costs", "--by", "tag")
    assert table(out) == {
        "tenant=acme": ["2", "$1.751335", "21500"],
        "team=ml": ["1", "$1.750001", "20000"],
        "total": total,
    }


def test_costs_json_is_the_ledger_in_integer_micro_dollars(
    ledger: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "costs", "--by", "tag", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["by"] == "tag"
    assert [row["key"] for row in report["rows"]] == ["team=ml", "tenant=acme"]
    total = report["total"]
    assert {f: total[f] for f in MONEY_FIELDS} == {
        "internal_cost_micro": 500_100,
        "model_cost_micro": 1_251_202,
        "sandbox_cost_micro": 30,
        "tool_cost_micro": 5,
        "usage_cost_micro": 1_751_337,
    }
    assert total["turns"] == 3 and total["total_tokens"] == 21510


def test_costs_since_until_filters_days(ledger: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "costs", "--since", "2026-01-11", "--until", "2026-01-31")
    assert code == 0
    assert table(out) == {
        "2026-01-11": ["2", "$1.750003", "20010"],
        "total (all time)": ["3", "$1.751337", "21510"],
    }
    code, out, _ = run(capsys, "costs", "--until", "2026-01-10", "--since", "2026-01-01", "--json")
    assert [row["key"] for row in json.loads(out)["rows"]] == ["2026-01-10"]
