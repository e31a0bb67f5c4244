"""A create's turn that ends at once is submitted, relayed and settled by its create
task (``orchestrator.jobs.quick``); any other is handed to the followers, who find its
stream claimable at once and resume from the stored count."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from orchestrator.facade import Orchestrator
from orchestrator.jobs import quick
from orchestrator.jobs import steps as pipeline
from orchestrator.jobs.model import Job
from orchestrator.wire.models import Worker

from .conftest import Emulator


def _begin(orch: Orchestrator, text: str) -> tuple[Job, Worker]:
    job = orch.submit(text, budget="low")
    begun, worker = pipeline.call_upstream(orch.rt, orch.app, job.id)
    assert worker is not None and begun.status == "queued"
    return begun, worker


def test_an_instant_turn_is_stored_once_and_settled_by_its_create_task(
    orch: Orchestrator, emulator: Emulator
) -> None:
    emulator.configure(turn_seconds=0.0, events_per_turn=7)
    store, keys = orch.store, orch.store.keys
    begun, worker = _begin(orch, "instant")
    job_id = begun.id
    # Created upstream, not yet known to the followers: the task's first write submits it.
    assert store.r.zscore(keys.follows, job_id) is None
    assert store.require_job(job_id).worker_id is None

    assert quick.relay_here(orch.rt, orch.app, begun, worker) == "completed"
    job = store.require_job(job_id)
    assert job.status == "completed"
    assert job.worker_id == worker.id
    moves = [h["status"] for h in store.history(job_id)]
    assert moves[-3:] == ["submitted", "running", "completed"]
    assert store.relayed(worker.id) == 7
    assert [i for i, _ in store.read_updates(worker.id)] == list(range(7))
    assert store.turn_cost(job_id) is not None  # posted once
    assert store.r.zscore(keys.follows, job_id) is None  # the lease is gone with the end
    assert store.r.zscore(keys.begun, job_id) is None
    assert store.snapshot(worker.id) is not None
    # Run again (a redelivered task): no second call, nothing stored or posted twice.
    cost = store.turn_cost(job_id)
    again, none = pipeline.call_upstream(orch.rt, orch.app, job_id)
    assert none is None and again.status == "completed"
    assert store.relayed(worker.id) == 7
    assert store.turn_cost(job_id) == cost


def test_a_longer_turn_is_handed_to_the_followers_at_once(
    orch: Orchestrator, emulator: Emulator
) -> None:
    emulator.configure(turn_seconds=3.0, events_per_turn=5)
    store, keys = orch.store, orch.store.keys
    begun, worker = _begin(orch, "long")
    job_id = begun.id
    assert quick.relay_here(orch.rt, orch.app, begun, worker) is None
    assert store.r.zscore(keys.follows, job_id) == 0  # claimable now, not at the hold's end
    job = store.require_job(job_id)
    assert job.status in ("submitted", "running")
    assert job.worker_id is not None
    assert store.relayed(job.worker_id) < 5  # what came within QUICK_RELAY_SECONDS, if any
    assert store.turn_cost(job_id) is None


def test_a_job_ended_here_meanwhile_is_neither_relayed_nor_settled_by_the_task(
    orch: Orchestrator, emulator: Emulator
) -> None:
    emulator.configure(turn_seconds=0.0, events_per_turn=4)
    store = orch.store
    begun, worker = _begin(orch, "cancelled at once")
    job_id = begun.id
    orch.cancel(job_id, reason="changed my mind")
    assert quick.relay_here(orch.rt, orch.app, begun, worker) is None  # the move was refused
    job = store.require_job(job_id)
    assert job.worker_id == worker.id  # linked, so that the end sweep settles its turn
    assert store.relayed(worker.id) == 0
    assert job.status == "cancelled"
    assert store.turn_cost(job_id) is None  # left to the end sweep, which settles it
    assert store.r.zscore(store.keys.jobs_ended, job_id) is not None


def test_a_continue_is_not_held_for_its_task(orch: Orchestrator, emulator: Emulator) -> None:
    emulator.configure(turn_seconds=0.0, events_per_turn=2)
    first, worker = _begin(orch, "first turn")
    assert quick.relay_here(orch.rt, orch.app, first, worker) == "completed"
    worker_id = orch.store.require_job(first.id).worker_id
    assert worker_id is not None
    follow_up = orch.continue_(worker_id, "second turn", budget="low")
    begun = pipeline.start_turn(orch.rt, orch.app, follow_up.id)
    assert begun.status == "submitted"
    assert orch.store.r.zscore(orch.store.keys.follows, begun.id) == 0


def test_each_read_here_is_counted_in_the_odds(
    orch: Orchestrator, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn that runs on lowers the process's odds; one that ends in time raises them."""
    odds = quick.Odds()
    monkeypatch.setattr(quick, "ODDS", odds)
    before = {o: _reads(o) for o in ("ended", "ran_on")}
    emulator.configure(turn_seconds=3.0, events_per_turn=5)
    assert quick.relay_here(orch.rt, orch.app, *_begin(orch, "long")) is None
    assert odds.rate == 1 - quick.Odds.WEIGHT
    emulator.configure(turn_seconds=0.0, events_per_turn=3)
    assert quick.relay_here(orch.rt, orch.app, *_begin(orch, "instant")) == "completed"
    weight = quick.Odds.WEIGHT
    assert odds.rate == 1 - weight * (1 - weight)
    assert {o: _reads(o) - n for o, n in before.items()} == {"ended": 1, "ran_on": 1}


def _reads(outcome: str) -> float:
    """orchestrator_quick_reads_total{outcome} in this process so far."""
    value = REGISTRY.get_sample_value("orchestrator_quick_reads_total", {"outcome": outcome})
    return value or 0.0


def test_reads_stop_while_turns_run_on_and_come_back_when_they_end_at_once() -> None:
    odds = quick.Odds()
    misses = 0
    while odds.worth_reading():  # every turn runs past QUICK_RELAY_SECONDS
        odds.record(False)
        misses += 1
    assert misses == 22  # 1.0 x (15/16)^22 < 0.25
    # Then one job in PROBE_EVERY is still read here; the others are counted as skipped.
    skipped = _reads("skipped")
    probes = [odds.worth_reading() for _ in range(4 * quick.Odds.PROBE_EVERY)]
    assert sum(probes) == 4
    assert _reads("skipped") - skipped == 4 * (quick.Odds.PROBE_EVERY - 1)
    # Probes whose turns end in time bring the reads back within a few.
    hits = 0
    while odds.rate < quick.Odds.FLOOR:
        odds.record(True)
        hits += 1
    assert hits <= 2
    assert all(odds.worth_reading() for _ in range(100))


def test_a_few_turns_cut_under_load_do_not_stop_the_reads() -> None:
    odds = quick.Odds()
    for i in range(1000):  # one turn in five runs past the wait
        assert odds.worth_reading()
        odds.record(i % 5 != 0)
    assert odds.rate > 0.6


def test_a_failure_to_reach_redis_is_not_taken_for_a_refusal() -> None:
    """A cluster pipeline returns a connection error in its reply's place: the relay
    raises it as it came (the followers take over), not as the store's refusal (which
    would leave the job queued until the stalled sweep)."""
    relay: Any = SimpleNamespace(submitted=True)
    away = redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    assert quick._Relay.refusal(relay, away) is away
    gap = quick._Relay.refusal(relay, redis.ResponseError("GAP expected update 1 got 2"))
    assert isinstance(gap, quick.RelayRefused)
