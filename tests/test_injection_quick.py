"""Failures around a create task's first write (``orchestrator.jobs.quick``): the write
that submits the job, stores its updates and, for an instant turn, posts and completes
it in one script. Whether the write never ran or ran with its reply lost, the job ends
once, its cost is posted once, and nothing is left held or kept for good."""

from __future__ import annotations

from typing import Any

from .held import assert_nothing_held
from .hostile_api import HostileAPI
from .injection import api as api  # the fixtures: the hostile upstream, a runtime
from .injection import follow, started
from .injection import make_rt as make_rt


def test_a_first_write_that_never_ran_submits_the_job_and_hands_it_over(
    make_rt: Any,
) -> None:
    rt = make_rt(quick_relay=0.5)
    rt.store.arm("chain_into", 1)
    job = started(rt, "ok#quick-first-write")
    assert job.status == "submitted" and job.worker_id is not None
    assert rt.store.r.zscore(rt.store.keys.begun, job.id) is None
    assert rt.store.r.zscore(rt.store.keys.follows, job.id) == 0  # claimable at once
    assert follow(rt, job.id) == ["completed"]
    assert rt.store.turn_cost(job.id) is not None
    assert_nothing_held(rt.store, [job.id])


def test_an_instant_turns_write_whose_reply_was_lost_is_not_written_again(
    make_rt: Any, api: HostileAPI, monkeypatch: Any
) -> None:
    monkeypatch.setattr(api, "event_gap", 0.0)  # the whole turn at once: one final write
    rt = make_rt(quick_relay=0.5)
    rt.store.arm("chain reply", 1)
    job = started(rt, "ok#quick-lost-reply")
    # The write ran whole: the job completed, its turn posted, its follow entry gone.
    assert job.status == "completed" and job.worker_id is not None
    cost = rt.store.turn_cost(job.id)
    assert cost is not None
    keys = rt.store.keys
    assert rt.store.r.zscore(keys.follows, job.id) is None
    # No second SUBMIT: the worker's hash (its updates folded in) keeps the expiry the
    # completion gave it.
    assert rt.store.r.pttl(keys.worker(job.worker_id)) > 0
    assert rt.store.turn_cost(job.id) == cost
    assert_nothing_held(rt.store, [job.id])


def test_a_first_write_whose_reply_was_lost_hands_the_running_job_over(
    make_rt: Any,
) -> None:
    rt = make_rt(quick_relay=0.5)  # events 20 ms apart: the first is written alone
    rt.store.arm("chain reply", 1)
    job = started(rt, "ok#quick-lost-first")
    assert job.status == "running" and job.worker_id is not None
    assert [h["status"] for h in rt.store.history(job.id)].count("submitted") == 1
    assert rt.store.r.zscore(rt.store.keys.follows, job.id) == 0  # handed over at once
    assert follow(rt, job.id) == ["completed"]
    assert rt.store.turn_cost(job.id) is not None
    assert_nothing_held(rt.store, [job.id])


def test_a_first_write_with_redis_away_retries_the_create_task(
    make_rt: Any, api: HostileAPI
) -> None:
    rt = make_rt(quick_relay=0.5)
    rt.store.arm("chain_into", 1)  # the first write fails ...
    rt.store.arm("get_job", 1)  # ... and so does the read before a plain submission
    job = started(rt, "ok#quick-redis-away")
    # The task retried: its call was made again (this upstream ignores the idempotency
    # key, so it made a second worker; the emulator answers the first again), and the
    # turn that the job links was relayed, posted and completed here.
    assert api.calls["post ok#quick-redis-away"] == 2
    assert job.status in ("submitted", "running", "completed") and job.worker_id is not None
    if job.status != "completed":
        assert follow(rt, job.id) == ["completed"]
    assert rt.store.turn_cost(job.id) is not None
    assert_nothing_held(rt.store, [job.id])
