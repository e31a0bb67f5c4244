# ruff: noqa: F811  (the schedule fixtures are imported by name)
"""A schedule's tags: stored with it, given to each run's job (so costs by tag, caps and
limits see scheduled runs), carried over from a worker's earlier job like a continue."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
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


@pytest.mark.parametrize("empty", [{}, MappingProxyType({})])
def test_an_update_with_no_tags_clears_them_and_runs_go_untagged(
    orch: Orchestrator, app: FakeApp, empty: Mapping[str, str]
) -> None:
    first = tenants_worker(orch, "wrk_sched_clear")
    s = orch.schedules.create(first.id, "digest", EVERY)
    assert orch.schedules.get(s.id).tags == ACME  # carried over from the worker's job
    # Tags not given (None) stay; an empty mapping clears them, not the worker's again.
    assert orch.schedules.update(s.id, input="kept", tags=None).tags == ACME
    assert orch.schedules.update(s.id, tags=empty).tags == {}
    key = orch.store.keys.schedule(s.id)
    assert orch.store.r.hget(key, "tags") == "{}"
    assert fired_job(orch, app, s.id, now_ms()).tags == {}


def test_cli_clear_tags_and_its_refusal_with_tag(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_environment(orch, monkeypatch)
    sid = orch.schedules.create(None, "digest", EVERY, tags=ACME).id
    key = orch.store.keys.schedule(sid)
    before = orch.store.r.hgetall(key)
    both = ["schedules", "update", sid, "--clear-tags", "--tag", "team=y"]
    assert main([*both, "--json"]) == 2
    error = json.loads(capsys.readouterr().err)["error"]
    assert (error["type"], error["field"]) == ("invalid_request", "tags"), error
    assert main(both) == 2
    text = capsys.readouterr().err
    assert text.count("\n") == 1 and "Traceback" not in text and "tags" in text, text
    assert orch.store.r.hgetall(key) == before
    assert main(["schedules", "update", sid, "--clear-tags", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == {}
    assert orch.schedules.get(sid).tags == {}
    assert main(["schedules", "show", sid]) == 0
    assert "tags        -\n" in capsys.readouterr().out
    # --tag alone still replaces them; neither leaves them.
    assert main(["schedules", "update", sid, "--tag", "team=z"]) == 0
    assert main(["schedules", "update", sid, "--input", "y"]) == 0
    capsys.readouterr()
    assert orch.schedules.get(sid).tags == {"team": "z"}

