"""``orchestrator reconcile``: after an end-to-end run, ledger data is destroyed on purpose;
reconcile reports every difference, ``--fix`` repairs them, and the totals equal the
emulator's ground truth field by field again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli
from orchestrator.celery import app as celery_app
from orchestrator.controls.budgets import turn_members
from orchestrator.facade import Orchestrator
from orchestrator.jobs import steps
from orchestrator.ledger import FIELDS, MONEY_FIELDS, cumulative, utc_day
from orchestrator.ops.reconcile import Difference, Reconciler
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings

from .conftest import Emulator
from .processes import celery_worker
from .test_ledger_bounds import Upstream, begun, worker_json
from .test_ledger_bounds import rt as rt  # the fixtures: a runtime on a hostile upstream
from .test_ledger_bounds import upstream as upstream

pytestmark = pytest.mark.slow


@pytest.fixture
def orch(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Orchestrator]:
    for name in ("REDIS_URL", "KEY_PREFIX", "WORKERS_API_URL", "WORKERS_API_KEY"):
        monkeypatch.setenv(name, env[name])
    with Orchestrator(load_settings()) as o:
        yield o


@pytest.fixture
def run_cli() -> Any:
    """``orchestrator.cli.main``, as the ``orchestrator`` command runs it."""

    def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
        capsys.readouterr()
        code = cli.main(["reconcile", "--grace", "0", "--json", *argv])
        out = capsys.readouterr()
        assert "Traceback" not in out.err
        return code, json.loads(out.out)

    return run


def kinds(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["subject"]): d for d in report["differences"]}


def assert_ledger_exact(orch: Orchestrator, emulator: Emulator) -> None:
    total, truth = orch.costs()["total"], emulator.ledger()
    for field in FIELDS:
        assert total[field] == truth[field], (field, total[field], truth[field])
    assert total["turns"] == truth["turns_completed"]


def unpost(orch: Orchestrator, job_id: str) -> dict[str, int]:
    """Take a posted turn's money back out of every hash it went into, as if lost."""
    r, keys, job = orch.store.r, orch.store.keys, orch.get(job_id)
    deltas, worker_id, at = (
        orch.store.turn_cost(job_id),
        str(job.worker_id),
        job.timestamps["completed"],
    )
    assert deltas
    members = [("day", utc_day(at)), ("budget", job.budget), ("worker", worker_id)]
    members += [("tag", f"{k}={v}") for k, v in job.tags.items()] + turn_members(job.tags, at)
    for key in [keys.ledger_total] + [keys.ledger(dim, value) for dim, value in members]:
        for field, delta in deltas.items():
            r.hincrby(key, field, -delta)
    for field, delta in deltas.items():
        r.hincrby(keys.worker(worker_id), f"counted:{field}", -delta)
    return {f: v for f, v in deltas.items() if v}


def test_reconcile_finds_and_repairs_destroyed_ledger_data(
    orch: Orchestrator,
    emulator: Emulator,
    env: dict[str, str],
    tmp_path: Path,
    run_cli: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    worker = celery_worker(env, tmp_path / "worker.log").start()
    try:
        jobs = [
            orch.submit(f"reconcile {i}", budget="low", tags={"tenant": f"t{i % 2}"})
            for i in range(8)
        ]
        for job in jobs:
            assert orch.wait(job.id, timeout=60).status == "completed"
        second = orch.continue_(jobs[0].id, "again", budget="low", tags={"tenant": "t0"})
        assert orch.wait(second.id, timeout=60).status == "completed"
        assert_ledger_exact(orch, emulator)
        by_tag = {r["key"]: r for r in orch.costs(by="tag")["rows"]}

        code, report = run_cli(capsys)
        assert code == 0 and report["differences"] == [] and report["workers"] == 8, report

        r, keys = orch.store.r, orch.store.keys
        done = [orch.get(j.id) for j in jobs]
        row_lost, counted_lost, post_lost, stuck, gone, stale = done[:6]
        assert all(j.worker_id for j in done)
        # (a) a worker row deleted, and part of the total with it
        r.delete(keys.ledger("worker", row_lost.worker_id))
        r.hincrby(keys.ledger_total, "model_cost_micro", -1000)
        r.hdel(keys.ledger_total, "output_tokens")
        # (a) a counted field lost
        r.hdel(keys.worker(counted_lost.worker_id), "counted:model_cost_micro")
        # (a) a turn's money lost everywhere (the worker row, total, rollups and counted)
        lost = unpost(orch, post_lost.id)
        # (c) a job whose finalize was lost: the store still says running
        r.hset(keys.job(stuck.id), "status", "running")
        # (d) a snapshot missing, another stale
        r.hdel(keys.worker(gone.worker_id), "snapshot")
        old = orch.store.snapshot(str(stale.worker_id))
        assert old is not None
        orch.store.save_snapshot(old.model_copy(update={"output_text": "x"}))

        code, report = run_cli(capsys)
        found = kinds(report)
        assert code == 1 and not report["clean"]
        row = found[("money", row_lost.worker_id)]["detail"]["fields"]
        assert all(d["row"] == 0 and d["counted"] == d["upstream"] for d in row.values())
        counted = found[("money", counted_lost.worker_id)]["detail"]["fields"]
        assert set(counted) == {"model_cost_micro"}
        assert counted["model_cost_micro"]["counted"] == 0
        gone_money = found[("money", post_lost.worker_id)]["detail"]["fields"]
        assert {f: d["upstream"] - d["row"] for f, d in gone_money.items()} == lost
        total = found[("total", "total")]["detail"]["fields"]
        assert {"model_cost_micro", "output_tokens"} <= set(total)
        assert found[("stuck", stuck.id)]["detail"]["upstream_status"] == "completed"
        assert found[("snapshot", gone.worker_id)]["detail"]["state"] == "missing"
        assert found[("snapshot", stale.worker_id)]["detail"]["state"] == "stale"
        assert orch.costs()["total"]["model_cost_micro"] != emulator.ledger()["model_cost_micro"]

        code, fixed = run_cli(capsys, "--fix")
        assert code == 0 and fixed["clean"], fixed
        assert {(d["kind"], d["subject"]) for d in fixed["differences"]} == set(found)
        correction = kinds(fixed)[("money", post_lost.worker_id)]["repair"]
        assert correction["id"] == f"reconcile:{post_lost.worker_id}:1"
        assert correction["posted"] == lost
        assert kinds(fixed)[("money", row_lost.worker_id)]["repair"]["posted"] == {}
        assert orch.wait(stuck.id, timeout=30).status == "completed"

        code, again = run_cli(capsys)
        assert code == 0 and again["differences"] == [], again
        assert_ledger_exact(orch, emulator)
        # The lost turn went back into the rollups of its job (tags and budget too).
        assert {r["key"]: r for r in orch.costs(by="tag")["rows"]} == by_tag
        for job in done:
            upstream = cumulative(orch.rt.client.retrieve(str(job.worker_id)))
            assert upstream is not None
            row = orch.store.r.hgetall(keys.ledger("worker", str(job.worker_id)))
            assert {f: int(row.get(f, 0)) for f in MONEY_FIELDS} == {
                f: upstream[f] for f in MONEY_FIELDS
            }
        assert orch.store.r.hget(keys.ledger_corrections, correction["id"])
    finally:
        worker.stop()


def test_reconcile_refuses_bad_hours(run_cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    for hours in ("0", "-1", "1e9"):
        capsys.readouterr()
        assert cli.main(["reconcile", "--hours", hours]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: hours:") and "Traceback" not in err


def test_reconcile_reports_a_fallen_figure_and_fix_follows_the_upstream(
    store: Any, rt: Runtime, upstream: Upstream
) -> None:
    """A turn whose upstream cumulative cost fell below what was counted is an anomaly:
    reconcile reports it (not clean); ``fix`` follows the upstream figure and clears it."""
    first = begun(rt, "wrk_r")
    upstream.bodies["wrk_r"] = worker_json("wrk_r", "3.0", "100")
    assert steps.finalize(rt, celery_app, first.id) == "completed"
    second = begun(rt, "wrk_r")
    upstream.bodies["wrk_r"] = worker_json("wrk_r", "2.0", "100")
    assert steps.finalize(rt, celery_app, second.id) == "completed"

    reconciler = Reconciler(store, rt.client)
    report = reconciler.run(1, grace_seconds=0)
    found = {(d.kind, d.subject): d for d in report.differences}
    assert found[("fell", "wrk_r")].detail["fields"]["model_cost_micro"] == 1_000_000
    assert found[("money", "wrk_r")].detail["fields"]["model_cost_micro"]["counted"] == 3_000_000
    assert not report.clean
    assert store.costs()["total"]["model_cost_micro"] == 3_000_000  # nothing moved

    fixed = reconciler.run(1, fix=True, grace_seconds=0)
    assert fixed.clean and {d.kind for d in fixed.differences} == {"fell", "money"}
    assert store.costs()["total"]["model_cost_micro"] == 2_000_000  # the upstream's
    again = reconciler.run(1, grace_seconds=0)
    assert again.clean and again.differences == [], again.differences


def test_reconcile_reports_an_absurd_upstream_figure_as_an_error(
    store: Any, rt: Runtime, upstream: Upstream
) -> None:
    job = begun(rt, "wrk_x")
    upstream.bodies["wrk_x"] = worker_json("wrk_x", "1e308", "1")
    assert steps.finalize(rt, celery_app, job.id) == "failed"
    report = Reconciler(store, rt.client).run(1, fix=True, grace_seconds=0)
    assert not report.clean
    assert any("wrk_x" in e and "costs.model_cost_usd" in e for e in report.errors)
    assert store.costs()["total"]["turns"] == 0


def test_each_kind_of_difference_reads_as_one_line() -> None:
    two = {"a_micro": 1, "b_micro": 2}
    lines = [
        Difference("money", "wrk_1", {"fields": {
            "b_micro": {"upstream": 3, "row": 2, "counted": 1},
            "a_micro": {"upstream": 6, "row": 5, "counted": 4},
        }}),
        Difference("total", "total", {"fields": {"a_micro": {"total": 7, "days": 8}}}),
        Difference("fell", "wrk_2", {"fields": two}, fixed=True),
        Difference("stuck", "job_1", {"status": "running", "worker_id": "wrk_3",
                                      "upstream_status": "completed"}),
        Difference("snapshot", "wrk_4", {"state": "missing"}),
    ]  # fmt: skip
    assert [d.line() for d in lines] == [
        "money    wrk_1  a_micro upstream 6 ledger row 5 counted 4; "
        "b_micro upstream 3 ledger row 2 counted 1",
        "total    total  a_micro total 7 sum of day rows 8",
        "fell     wrk_2  a_micro fell by 1 below what was counted (nothing posted for it); "
        "b_micro fell by 2 below what was counted (nothing posted for it)  [fixed]",
        "stuck    job_1  job is running, worker wrk_3 is completed upstream",
        "snapshot wrk_4  stored snapshot is missing",
    ]
