"""A create's turn that ends at once is relayed and settled by its create task
(``orchestrator.jobs.quick``); any other is handed to the followers, who find its
stream claimable at once and resume from the stored count."""

from __future__ import annotations

from orchestrator.facade import Orchestrator
from orchestrator.jobs import quick
from orchestrator.jobs import steps as pipeline
from orchestrator.store.jobs import now_ms

from .conftest import Emulator


def _begin(orch: Orchestrator, text: str) -> tuple[str, bool]:
    job = orch.submit(text, budget="low")
    begun, held = pipeline.begin_turn(orch.rt, orch.app, job.id, hold_ms=quick.HOLD_MS)
    return begun.id, held


def test_an_instant_turn_is_stored_once_and_settled_by_its_create_task(
    orch: Orchestrator, emulator: Emulator
) -> None:
    emulator.configure(turn_seconds=0.0, events_per_turn=7)
    store, keys = orch.store, orch.store.keys
    job_id, held = _begin(orch, "instant")
    assert held
    score = store.r.zscore(keys.follows, job_id)
    assert score is not None and score > now_ms() + quick.HOLD_MS / 2  # not due for followers
    assert store.r.hget(keys.follow_owners, job_id) is None

    assert quick.relay_here(orch.rt, orch.app, store.require_job(job_id)) == "completed"
    job = store.require_job(job_id)
    assert job.status == "completed"
    assert job.worker_id is not None
    assert store.relayed(job.worker_id) == 7
    assert [i for i, _ in store.read_updates(job.worker_id)] == list(range(7))
    assert store.turn_cost(job_id) is not None  # posted once
    assert store.r.zscore(keys.follows, job_id) is None  # the lease is gone with the end
    # Run again (a redelivered task): nothing is stored or posted twice.
    cost = store.turn_cost(job_id)
    assert quick.relay_here(orch.rt, orch.app, job) == "noop"
    assert store.relayed(job.worker_id) == 7
    assert store.turn_cost(job_id) == cost


def test_a_longer_turn_is_handed_to_the_followers_at_once(
    orch: Orchestrator, emulator: Emulator
) -> None:
    emulator.configure(turn_seconds=3.0, events_per_turn=5)
    store, keys = orch.store, orch.store.keys
    job_id, held = _begin(orch, "long")
    assert held
    assert quick.relay_here(orch.rt, orch.app, store.require_job(job_id)) is None
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
    job_id, held = _begin(orch, "cancelled at once")
    assert held
    orch.cancel(job_id, reason="changed my mind")
    job = store.require_job(job_id)
    assert quick.relay_here(orch.rt, orch.app, job) is None  # the store said STOPPED
    assert job.worker_id is not None
    assert store.relayed(job.worker_id) == 0
    assert store.require_job(job_id).status == "cancelled"
    assert store.turn_cost(job_id) is None  # left to the end sweep, which settles it


def test_a_continue_is_not_held_for_its_task(orch: Orchestrator, emulator: Emulator) -> None:
    emulator.configure(turn_seconds=0.0, events_per_turn=2)
    first_id, _ = _begin(orch, "first turn")
    assert quick.relay_here(orch.rt, orch.app, orch.store.require_job(first_id)) == "completed"
    worker_id = orch.store.require_job(first_id).worker_id
    assert worker_id is not None
    follow_up = orch.continue_(worker_id, "second turn", budget="low")
    begun, held = pipeline.begin_turn(orch.rt, orch.app, follow_up.id, hold_ms=quick.HOLD_MS)
    assert not held
    assert orch.store.r.zscore(orch.store.keys.follows, begun.id) == 0
