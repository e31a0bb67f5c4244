"""``orchestrator cancel`` and the limit options of submit, against a real Redis, without
workers (a submitted job stays queued)."""

from __future__ import annotations

import json

import pytest

from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.jobs.lifecycle import UPSTREAM_NOTE
from orchestrator.settings import load_settings

from .cli_support import Env, run
from .cli_support import env as env  # the fixture: a database and prefix of its own


def _orch() -> Orchestrator:
    return Orchestrator(load_settings())


def _submit(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, out, err = run(capsys, "submit", *argv, "--json")
    assert code == 0, err
    return dict(json.loads(out))


def test_submit_takes_the_three_limits(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    job = _submit(capsys, "x", "--queue-ttl", "60", "--idle-timeout", "30", "--deadline", "600")
    assert (job["queue_ttl"], job["idle_timeout"], job["deadline"]) == (60.0, 30.0, 600.0)
    code, out, _ = run(capsys, "status", str(job["id"]))
    assert "limits    queue_ttl=60s idle_timeout=30s deadline=600s" in out
    code, _, err = run(capsys, "submit", "x", "--deadline", "0")
    assert code == 2 and err.startswith("error: deadline:") and len(env.job_ids()) == 1


def test_cancel_named_jobs_says_the_turn_goes_on_upstream(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = (_submit(capsys, f"job {i}")["id"] for i in range(2))
    code, out, err = run(capsys, "cancel", str(a), str(b), "--reason", "wrong input")
    assert code == 0
    assert out.splitlines() == [f"{a}  cancelled", f"{b}  cancelled"]
    assert UPSTREAM_NOTE in err and "billed" in err
    code, out, err = run(capsys, "cancel", str(a))  # ended already: nothing to warn of
    assert out.strip() == f"{a}  cancelled  (had ended already)" and err == ""
    code, out, _ = run(capsys, "cancel", str(a), "--json")
    assert json.loads(out) == {
        "jobs": [{"id": a, "status": "cancelled", "cancelled_now": False}],
        "note": UPSTREAM_NOTE,
    }
    code, out, _ = run(capsys, "status", str(a), "--history")
    assert "cancelled: wrong input" in out
    # An unknown id among several: none is cancelled.
    c = _submit(capsys, "job c")["id"]
    code, _, err = run(capsys, "cancel", str(c), "job_unknown")
    assert code == 2 and err.startswith("error: job_id:")
    with _orch() as orch:
        assert orch.get(str(c)).status == "queued"


def test_bulk_cancel_by_tag_status_and_schedule(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    acme = [_submit(capsys, f"a{i}", "--tag", "tenant=acme")["id"] for i in range(3)]
    other = _submit(capsys, "b", "--tag", "tenant=globex")["id"]
    code, out, _ = run(capsys, "cancel", "--tag", "tenant=acme", "--status", "queued", "--json")
    assert code == 0
    assert sorted(j["id"] for j in json.loads(out)["jobs"]) == sorted(acme)
    with _orch() as orch:
        assert orch.get(str(other)).status == "queued"
    code, out, err = run(capsys, "cancel", "--schedule", "sch_none")
    assert code == 0 and "no live job matched" in out and err == ""


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["cancel"], "job_id"),
        (["cancel", "job_x", "--tag", "tenant=acme"], "job_id"),
        (["cancel", "nope"], "job_id"),
        (["cancel", "--tag", "tenant=acme\n"], "tags"),
        (["cancel", "--schedule", "x"], "schedule_id"),
    ],
)
def test_cancel_refuses_bad_input(
    env: Env, capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith(f"error: {field}:"), err


def test_cancel_status_choices_are_live_ones(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "cancel", "--status", "completed")
    assert code == 2 and "invalid choice" in err
    with pytest.raises(InputError), _orch() as orch:
        orch.cancel_many(status="timed_out")
