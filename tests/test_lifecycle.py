"""Cancel and the three per-job limits against a real Redis (no Celery worker: what the
scripts and the sweep do, step by step). End to end: ``tests/test_lifecycle_e2e.py``."""

from __future__ import annotations

import math
from typing import Any

import pytest
import redis

from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.jobs import lifecycle
from orchestrator.jobs.model import NEVER, TERMINAL, Job
from orchestrator.jobs.settle import settle_turn
from orchestrator.store.jobs import now_ms
from orchestrator.wire.models import Worker


def _live(orch: Orchestrator) -> dict[str, float]:
    return dict(orch.store.r.zrange(orch.store.keys.jobs_live, 0, -1, withscores=True))


def _ended(orch: Orchestrator) -> dict[str, float]:
    return dict(orch.store.r.zrange(orch.store.keys.jobs_ended, 0, -1, withscores=True))


def _worker(worker_id: str, *, running: bool, cost: float = 0.012345) -> Worker:
    return Worker.model_validate({
        "id": worker_id, "status": "running" if running else "completed", "running": running,
        "costs": {"internalCostUsd": 0, "modelCostUsd": cost, "sandboxCostUsd": 0,
                  "toolCostUsd": 0},
        "usage": {"cacheReadTokens": 0, "cacheWriteTokens": 0, "costUsd": cost,
                  "inputTokens": 1, "outputTokens": 1, "reasoningTokens": 0, "steps": 1,
                  "totalTokens": 2},
    })  # fmt: skip


def test_every_job_is_in_the_live_index_until_it_ends(orch: Orchestrator) -> None:
    limited = orch.submit("limited", queue_ttl=30, deadline=60)
    unlimited = orch.submit("no limits", queue_ttl=None)  # settings' defaults apply
    live = _live(orch)
    assert live[limited.id] == limited.created_at + 30_000  # the queue TTL comes first
    assert unlimited.queue_ttl == orch.settings.job_queue_ttl
    assert unlimited.deadline == orch.settings.job_deadline
    orch.store.transition(limited.id, "failed", "x")
    assert limited.id not in _live(orch) and limited.id not in _ended(orch)


def test_limits_are_checked_and_default_from_settings(orch: Orchestrator) -> None:
    for field in ("queue_ttl", "idle_timeout", "deadline"):
        for bad in (0, -1, True, "10", math.nan, math.inf, 10**9):
            with pytest.raises(InputError) as info:
                orch.submit("x", **{field: bad})
            assert info.value.field == field, (field, bad)
    assert orch.store.recent_jobs() == []  # nothing written for a rejected call
    job = orch.submit("x", queue_ttl=1.5, idle_timeout=2, deadline=3)
    assert (job.queue_ttl, job.idle_timeout, job.deadline) == (1.5, 2.0, 3.0)
    assert orch.get(job.id).queue_ttl == 1.5


def test_settings_of_zero_turn_a_limit_off(
    orch: Orchestrator, env: dict[str, str]
) -> None:
    settings = orch.settings.model_copy(
        update={"job_queue_ttl": 0, "job_idle_timeout": None, "job_deadline": 0}
    )
    with Orchestrator(settings, app=orch.app) as plain:
        job = plain.submit("no limits at all")
        assert (job.queue_ttl, job.idle_timeout, job.deadline) == (None, None, None)
        assert _live(plain)[job.id] == NEVER


def test_cancel_of_a_queued_job_releases_everything_and_is_idempotent(
    orch: Orchestrator,
) -> None:
    orch.limits.set("tag:tenant=acme", 1)
    first = orch.submit("first", tags={"tenant": "acme"})
    waiting = orch.submit("second", tags={"tenant": "acme"})
    assert orch.limits.acquire(orch.get(first.id)) is None
    assert orch.limits.acquire(orch.get(waiting.id)) == "tag:tenant=acme"
    assert orch.limits.status()[0]["waiting"] == 1

    cancelled = orch.cancel(waiting.id, reason="not needed")
    assert cancelled.status == "cancelled" and cancelled.error == "cancelled: not needed"
    assert orch.limits.status()[0] == {"key": "tag:tenant=acme", "limit": 1, "running": 1,
                                       "waiting": 0}  # fmt: skip
    assert orch.history(waiting.id)[-1]["detail"] == "cancelled: not needed"
    assert waiting.id not in _live(orch) and waiting.id not in _ended(orch)
    assert orch.store.r.zscore(orch.store.keys.outbox, waiting.id) is None
    assert orch.wait(waiting.id, timeout=1).status == "cancelled"
    # Twice: unchanged, no second history entry.
    again = orch.cancel(waiting.id, reason="again")
    assert again == cancelled and len(orch.history(waiting.id)) == 2

    # The slot holder's cancel frees its slot at once.
    orch.cancel(first.id)
    assert orch.limits.status()[0]["running"] == 0


def test_cancel_frees_the_slot_for_the_next_waiting_job(orch: Orchestrator) -> None:
    orch.limits.set("tag:tenant=acme", 1)
    holder, waiter = (orch.submit(f"j{i}", tags={"tenant": "acme"}) for i in range(2))
    assert orch.limits.acquire(orch.get(holder.id)) is None
    assert orch.limits.acquire(orch.get(waiter.id)) is not None
    orch.cancel(holder.id)
    running = orch.store.r.smembers(orch.store.keys.limit_running("tag:tenant=acme"))
    assert running == {waiter.id}  # promoted, and sent again
    assert orch.get(waiter.id).status == "queued"


def test_a_job_ended_here_that_took_a_slot_late_passes_it_on(orch: Orchestrator) -> None:
    orch.limits.set("tag:tenant=acme", 1)
    holder, late = (orch.submit(f"j{i}", tags={"tenant": "acme"}) for i in range(2))
    assert orch.limits.acquire(orch.get(holder.id)) is None
    assert orch.limits.acquire(orch.get(late.id)) is not None
    # Ended without its wind-down (as if the process died in between): still parked.
    assert orch.rt.ends.end_here(late.id, "cancelled", "cancelled")
    orch.cancel(holder.id)  # promotes the parked, ended job: it passes the slot on
    assert orch.limits.status()[0]["running"] == 0


def test_cancel_refuses_bad_input(orch: Orchestrator) -> None:
    for bad in ("nope", "job_../x", 42, "job_x\n"):
        with pytest.raises(InputError) as info:
            orch.cancel(bad)  # type: ignore[arg-type]
        assert info.value.field == "job_id"
    with pytest.raises(InputError) as info:
        orch.cancel("job_" + "0" * 32)
    assert info.value.field == "job_id"
    job = orch.submit("x")
    for bad_reason in ("\x00", "x" * 501, "   ", 7):
        with pytest.raises(InputError) as info:
            orch.cancel(job.id, reason=bad_reason)  # type: ignore[arg-type]
        assert info.value.field == "reason" and orch.get(job.id).status == "queued"


def test_cancel_many_filters(orch: Orchestrator) -> None:
    acme = [orch.submit(f"a{i}", tags={"tenant": "acme", "kind": "x"}) for i in range(3)]
    other = orch.submit("b", tags={"tenant": "globex"})
    schedule = orch.schedules.create(None, "s", {"type": "delayed", "delayInSeconds": 3600})
    sched = orch.submit("s", schedule_id=schedule.id)
    done = orch.submit("d", tags={"tenant": "acme"})
    orch.store.transition(done.id, "completed")
    for bad in ({}, {"tags": {}}, {"status": "completed"}, {"status": "nope"},
                {"tags": {"tenant": "acme\n"}}, {"schedule_id": "x"}):  # fmt: skip
        with pytest.raises(InputError):
            orch.cancel_many(**bad)
    assert sorted(orch.cancel_many(tags={"tenant": "acme"}, reason="tenant left")) == sorted(
        j.id for j in acme
    )
    assert orch.cancel_many(tags={"tenant": "acme"}) == []  # nothing live is left of it
    assert orch.cancel_many(schedule_id=schedule.id) == [sched.id]
    assert orch.get(other.id).status == "queued"
    assert orch.cancel_many(status="queued") == [other.id]
    assert orch.get(done.id).status == "completed"
    assert all(orch.get(j.id).error == "cancelled: tenant left" for j in acme)


def _submitted(orch: Orchestrator, text: str, worker_id: str, **limits: Any) -> Job:
    job = orch.submit(text, **limits)
    assert orch.store.set_submitted(job, _worker(worker_id, running=True))
    return orch.get(job.id)


def test_a_continue_carries_the_earlier_jobs_tier_and_tags(orch: Orchestrator) -> None:
    first = orch.submit("first", budget="high", tags={"tenant": "acme", "team": "x"})
    assert orch.store.set_submitted(first, _worker("wkr_carry", running=False))
    by_job = orch.continue_(first.id, "more")
    assert (by_job.budget, by_job.tags) == ("high", {"tenant": "acme", "team": "x"})
    # Named by its worker: the worker's latest job of ours; a tag given wins its key only.
    assert orch.store.set_submitted(by_job, _worker("wkr_carry", running=False))
    by_worker = orch.continue_("wkr_carry", "more", budget="low", tags={"team": "y"})
    assert (by_worker.budget, by_worker.tags) == ("low", {"tenant": "acme", "team": "y"})
    assert orch.get(by_worker.id).tags == {"tenant": "acme", "team": "y"}
    # Tags of the wrong type are still refused by name, nothing written.
    before = len(orch.store.recent_jobs())
    with pytest.raises(InputError) as info:
        orch.continue_(first.id, "more", tags="tenant=globex")  # type: ignore[arg-type]
    assert info.value.field == "tags" and len(orch.store.recent_jobs()) == before


def test_cancel_of_a_running_job_settles_its_turn_later_and_once(orch: Orchestrator) -> None:
    job = _submitted(orch, "running", "wkr_cancel1")
    assert orch.budgets.reserve(job) == 0  # no cap: no hold to keep
    orch.store.append_updates("wkr_cancel1", 0, ['{"n": 0}'])
    orch.cancel(job.id)
    assert job.id in _ended(orch) and orch.store.r.zscore(orch.store.keys.follows, job.id) is None
    # Its turn's updates are refused from now on (the follower lets the stream go).
    with pytest.raises(redis.ResponseError, match="STOPPED"):
        orch.store.append_updates("wkr_cancel1", 1, ['{"n": 1}'])
    assert orch.store.relayed("wkr_cancel1") == 1
    # Continues naming the job, or its worker, are refused while its turn may still run.
    for name in (job.id, "wkr_cancel1"):
        with pytest.raises(InputError) as info:
            orch.continue_(name, "more")
        assert info.value.field == "worker_id" and "still run" in info.value.message
    # The turn ends upstream: settled once, however often it is settled.
    finished = _worker("wkr_cancel1", running=False)
    settle_turn(orch.rt, orch.get(job.id), finished)
    settle_turn(orch.rt, orch.get(job.id), finished)
    assert orch.costs(by="worker")["total"]["model_cost_micro"] == 12_345
    assert orch.costs(by="worker")["total"]["turns"] == 1
    # A new turn of the worker (a continue, once settled) is relayed again.
    orch.rt.ends.settled(job.id)
    again = orch.continue_(job.id, "more")
    assert orch.store.set_submitted(again, _worker("wkr_cancel1", running=True))
    assert orch.store.append_updates("wkr_cancel1", 1, ['{"n": 1}']) == 2
    # Racing finalize: a completion after the cancel is refused; the job stays cancelled.
    end = orch.store.batch()
    orch.store.complete_into(end, orch.get(job.id), 3)
    end.execute()
    assert orch.get(job.id).status == "cancelled"


def test_cancel_racing_a_finalize_that_won(orch: Orchestrator) -> None:
    job = _submitted(orch, "finishing", "wkr_race2")
    end = orch.store.batch()
    orch.store.complete_into(end, job, 5)
    end.execute()
    assert orch.cancel(job.id).status == "completed"
    assert job.id not in _ended(orch)


def test_sweep_expires_times_out_and_reschedules(orch: Orchestrator) -> None:
    queued = orch.submit("waits", queue_ttl=5, deadline=100)
    idle = _submitted(orch, "quiet", "wkr_idle3", idle_timeout=10, deadline=100)
    late = _submitted(orch, "slow", "wkr_late4", idle_timeout=50, deadline=20)
    t0 = max(queued.created_at, idle.created_at, late.created_at)
    assert lifecycle.sweep(orch.app, orch.rt, now=t0 + 1_000) == {}
    counts = lifecycle.sweep(orch.app, orch.rt, now=t0 + 6_000)
    assert counts.get("expired") == 1 and orch.get(queued.id).status == "expired"
    assert "not started upstream within 5s" in (orch.get(queued.id).error or "")
    # An update relayed pushes the idle timeout back.
    orch.store.append_updates("wkr_idle3", 0, ['{"type": "start"}'])
    wkey = orch.store.keys.worker("wkr_idle3")
    assert int(orch.store.r.hget(wkey, "relayed_at")) >= idle.created_at
    relayed_at = idle.created_at + 8_000  # as if that update came 8 s in
    orch.store.r.hset(wkey, "relayed_at", relayed_at)
    lifecycle.sweep(orch.app, orch.rt, now=idle.created_at + 10_500)
    assert orch.get(idle.id).status == "submitted"
    assert _live(orch)[idle.id] == relayed_at + 10_000
    lifecycle.sweep(orch.app, orch.rt, now=relayed_at + 10_001)
    timed_out = orch.get(idle.id)
    assert timed_out.status == "timed_out" and "idle timeout" in (timed_out.error or "")
    lifecycle.sweep(orch.app, orch.rt, now=late.created_at + 20_001)
    assert orch.get(late.id).status == "timed_out"
    assert "deadline of 20s" in (orch.get(late.id).error or "")
    assert all(orch.get(j.id).status in TERMINAL for j in (queued, idle, late))
    assert not {queued.id, idle.id, late.id} & set(_live(orch))
    # The expired job had nothing upstream, nothing to settle; the other two were looked
    # at by the same sweeps (their made-up workers are unknown upstream: given up).
    assert not _ended(orch)


def test_the_sweep_claims_so_two_sweeps_share_the_work(orch: Orchestrator) -> None:
    jobs = [orch.submit(f"j{i}", queue_ttl=1) for i in range(5)]
    at = max(j.created_at for j in jobs) + 2_000
    first = orch.rt.ends.claim_live(at, 30_000, limit=3)
    second = orch.rt.ends.claim_live(at, 30_000, limit=10)
    assert len(first) == 3 and len(second) == 2 and not set(first) & set(second)
    assert orch.rt.ends.claim_live(at, 30_000) == []
    assert orch.rt.ends.next_wake() == at + 30_000
    assert now_ms() < at + 30_000


def test_a_schedule_runs_its_jobs_with_its_limits(orch: Orchestrator) -> None:
    from orchestrator.schedules.run import run_slot

    every = {"type": "interval", "intervalSeconds": 60}
    with pytest.raises(InputError) as info:
        orch.schedules.create(None, "x", every, deadline=-1)
    assert info.value.field == "deadline" and orch.schedules.list_all() == []
    s = orch.schedules.create(None, "nightly", every, queue_ttl=120, deadline=900)
    assert orch.schedules.describe(s.id)["limits"] == {"queue_ttl": 120.0, "deadline": 900.0}
    assert run_slot(orch.rt, orch.app, s.id, now_ms()) == "fired"
    job = orch.get(orch.schedules.history(s.id)[0]["job_id"])
    assert (job.queue_ttl, job.deadline) == (120.0, 900.0)
    assert job.idle_timeout == orch.settings.job_idle_timeout  # not given: the default
    # Bulk cancel by schedule ends the run's job.
    assert orch.cancel_many(schedule_id=s.id) == [job.id]


def test_start_turn_sends_nothing_for_a_job_cancelled_or_expired(
    orch: Orchestrator, emulator: Any
) -> None:
    import time

    from orchestrator.jobs.steps import start_turn

    cancelled = orch.submit("cancelled before its task ran")
    orch.cancel(cancelled.id)
    assert start_turn(orch.rt, orch.app, cancelled.id).status == "cancelled"
    stale = orch.submit("its queue time-to-live passes", queue_ttl=0.001)
    time.sleep(0.01)
    ended = start_turn(orch.rt, orch.app, stale.id)
    assert ended.status == "expired" and ended.worker_id is None
    assert emulator.ledger()["workers_created"] == 0  # nothing sent for either
    assert lifecycle.sweep(orch.app, orch.rt) == {}  # nothing left to settle
    assert not _ended(orch) and not {cancelled.id, stale.id} & set(_live(orch))


def test_a_create_that_returns_after_the_cancel_is_settled_later(orch: Orchestrator) -> None:
    job = orch.submit("its create call is in flight when it is cancelled")
    orch.store.count_attempt(job.id)
    orch.cancel(job.id)
    assert job.id in _ended(orch)  # an attempt was counted: a turn may have begun
    # The call returns: the worker is recorded, but the job stays cancelled and out of
    # the live index, and it is kept for settling.
    assert not orch.store.set_submitted(orch.get(job.id), _worker("wkr_late5", running=True))
    ended = orch.get(job.id)
    assert ended.status == "cancelled" and ended.worker_id == "wkr_late5"
    assert job.id not in _live(orch) and job.id in _ended(orch)


def test_limit_settings_are_checked() -> None:
    from orchestrator.errors import ConfigError
    from orchestrator.settings import load_settings

    for name, bad in (("job_deadline", -1), ("job_queue_ttl", 10**9), ("job_idle_timeout", "x")):
        with pytest.raises(ConfigError) as info:
            load_settings(**{name: bad})
        assert name.upper() in str(info.value)
    assert load_settings(job_deadline=0).job_deadline == 0


def test_a_turn_that_cannot_be_read_upstream_gives_its_hold_back(orch: Orchestrator) -> None:
    from decimal import Decimal

    orch.budgets.set_cap(scope="global", limit_usd=Decimal("100"))
    job = _submitted(orch, "its worker is unknown upstream", "wkr_gone6")
    assert orch.budgets.reserve(job) == 1_000_000
    orch.cancel(job.id)
    assert orch.budgets.status()[0]["reserved_micro"] == 1_000_000  # kept for settling
    assert lifecycle.sweep(orch.app, orch.rt) == {"failed": 1}  # the emulator answers 404
    assert orch.budgets.status()[0]["reserved_micro"] == 0 and not _ended(orch)
    assert orch.get(job.id).status == "cancelled"


def test_the_settle_task_of_a_job_ended_here_raises_job_ended(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.errors import JobEnded
    from workers_tasks import tasks

    monkeypatch.setattr(tasks, "get_runtime", lambda: orch.rt)
    job = orch.submit("x", tags={"tenant": "acme"})
    orch.cancel(job.id, reason="not needed")
    with pytest.raises(JobEnded) as caught:
        tasks.settle_ended.run(job.id)
    assert (caught.value.status, caught.value.reason) == ("cancelled", "cancelled: not needed")
    assert JobEnded in tasks.settle_ended.throws  # Flower's FAILURE, one log line
