# ruff: noqa: F811  (the schedule fixtures are imported by name)
"""A schedule's tags: stored with it, given to each run's job (so costs by tag, caps and
limits see scheduled runs), carried over from a worker's earlier job like a continue."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.cli import main
from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import Job
from orchestrator.schedules.run import run_slot
from orchestrator.store.jobs import now_ms
from orchestrator.wire.models import Worker

from .test_schedule_api import FakeApp, app, cli_environment, orch, our_keys  # noqa: F401

EVERY = {"type": "interval", "intervalSeconds": 60}
ACME = {"tenant": "acme", "team": "x"}


def fired_job(orch: Orchestrator, app: FakeApp, schedule_id: str, slot: int) -> Job:
    assert run_slot(orch.rt, app, schedule_id, slot) == "fired"  # type: ignore[arg-type]
    job_id = next(r["job_id"] for r in orch.schedules.history(schedule_id) if r["slot_ms"] == slot)
    return orch.get(job_id)


def tenants_worker(orch: Orchestrator, worker_id: str) -> Job:
    first = orch.submit("first", budget="high", tags=ACME)
    done = {"id": worker_id, "status": "completed", "running": False}
    assert orch.store.set_submitted(first, Worker.model_validate(done))
    return first


def test_each_run_gets_the_schedules_tags(orch: Orchestrator, app: FakeApp) -> None:
    s = orch.schedules.create(None, "digest", EVERY, tags=ACME)
    assert orch.schedules.get(s.id).tags == ACME
    assert orch.schedules.describe(s.id)["tags"] == ACME
    assert [r["tags"] for r in orch.schedules.list_all() if r["id"] == s.id] == [ACME]
    slot = now_ms()
    job = fired_job(orch, app, s.id, slot)
    assert (job.tags, job.budget, job.schedule_id) == (ACME, "standard", s.id)
    # Caps and concurrency limits match the run's job on its tags.
    assert "tag:tenant=acme" in orch.limits.candidate_keys(job)
    # The run's idempotency is as before: the same slot again is the same job.
    assert run_slot(orch.rt, app, s.id, slot) == "duplicate"  # type: ignore[arg-type]
    assert [r["job_id"] for r in orch.schedules.history(s.id)] == [job.id]


def test_a_schedule_on_a_tenants_worker_carries_its_tier_and_tags(
    orch: Orchestrator, app: FakeApp
) -> None:
    first = tenants_worker(orch, "wrk_sched_acme")
    by_job = orch.schedules.create(first.id, "more", EVERY)
    assert by_job.budget == "high" and orch.schedules.get(by_job.id).tags == ACME
    job = fired_job(orch, app, by_job.id, now_ms())
    assert (job.kind, job.worker_id) == ("continue", "wrk_sched_acme")
    assert (job.budget, job.tags) == ("high", ACME)
    # Named by the worker: its latest job of ours; a tag or tier given wins.
    by_worker = orch.schedules.create("wrk_sched_acme", "more", EVERY, budget="low",
                                      tags={"team": "y"})  # fmt: skip
    stored = orch.schedules.get(by_worker.id)
    assert (stored.budget, stored.tags) == ("low", {"tenant": "acme", "team": "y"})


def test_a_schedule_stored_without_tags_reads_and_runs_untagged(
    orch: Orchestrator, app: FakeApp
) -> None:
    s = orch.schedules.create(None, "old", EVERY, tags=ACME)
    orch.store.r.hdel(orch.store.keys.schedule(s.id), "tags")  # as stored before tags
    assert orch.schedules.get(s.id).tags == {}
    assert fired_job(orch, app, s.id, now_ms()).tags == {}


def make(worker: str | None, **kw: Any) -> Any:
    return lambda o: o.schedules.create(worker, "x", EVERY, **kw)


@pytest.mark.parametrize(
    "call",
    [
        make(None, tags={"Tenant": "acme"}),
        make(None, tags={"tenant": "acme\n"}),
        make(None, tags=["tenant=acme"]),
        make(None, tags={f"k{i}": "v" for i in range(17)}),
        make("wrk_sched_bad", tags="tenant=globex"),
        make("wrk_sched_bad", tags={"tenant": "zürich"}),
    ],
)
def test_bad_tags_are_refused_by_name_and_nothing_is_stored(
    orch: Orchestrator, app: FakeApp, call: Any
) -> None:
    tenants_worker(orch, "wrk_sched_bad")
    before, sent = our_keys(orch), list(app.sent)
    with pytest.raises(InputError) as err:
        call(orch)
    assert err.value.field == "tags", err.value
    assert our_keys(orch) == before and app.sent == sent


def test_cli_tags_a_schedule_and_shows_them(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_environment(orch, monkeypatch)

    def run(*argv: str) -> Any:
        assert main(list(argv)) == 0, argv
        out = capsys.readouterr().out
        return json.loads(out) if "--json" in argv else out

    made = run("schedules", "create", "--input", "x", "--every", "60",
               "--tag", "tenant=acme", "--tag", "team=x", "--json")  # fmt: skip
    assert made["tags"] == ACME and orch.schedules.get(made["id"]).tags == ACME
    assert "tags        team=x tenant=acme\n" in run("schedules", "show", made["id"])
    assert run("schedules", "show", made["id"], "--json")["tags"] == ACME
    listed = run("schedules", "list", "--json")
    assert [r["tags"] for r in listed if r["id"] == made["id"]] == [ACME]
    # On a tenant's worker: its tier and tags, a --tag given wins its key.
    first = tenants_worker(orch, "wrk_sched_cli")
    carried = run("schedules", "create", first.id, "--input", "x", "--every", "60",
                  "--tag", "team=y", "--json")  # fmt: skip
    assert (carried["budget"], carried["tags"]) == ("high", {"tenant": "acme", "team": "y"})
