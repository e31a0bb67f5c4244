"""Every job ends, end to end: cancel (one, a queued one, bulk by tag), queue TTL expiry,
idle timeout and deadline, with a real Redis, a real Celery worker and the emulator.

Each test limits a tenant to one running turn (two for the bulk cancel) so that the job
waiting behind shows the slot freed at once: it goes upstream while the ended job's turn
still runs there. Then, once that turn ends upstream, its money is settled: the ledger
equals what the emulator billed, every hold is gone and ``reconcile`` reports clean.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.ledger import FIELDS
from orchestrator.ops.reconcile import Reconciler

from .conftest import Emulator
from .processes import Proc, celery_worker, wait_for

pytestmark = pytest.mark.slow

ACME = {"tenant": "acme"}


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Proc]:
    proc = celery_worker(env, tmp_path / "w.log", concurrency=4).start()
    yield proc
    proc.stop()


def _ended(orch: Orchestrator) -> set[str]:
    return set(orch.store.r.zrange(orch.store.keys.jobs_ended, 0, -1))


def _holds(orch: Orchestrator) -> set[str]:
    return set(orch.store.r.hkeys(orch.store.keys.budget_holds))


def _upstream_turn_running(emulator: Emulator) -> bool:
    ledger = emulator.ledger()
    return bool(ledger["turns_completed"] < ledger["turns_started"])


def _setup(orch: Orchestrator, limit: int = 1) -> None:
    orch.limits.set("tag:tenant=acme", limit)
    # A cap, so that every turn holds money until it is settled.
    orch.budgets.set_cap(scope="global", limit_usd=Decimal("1000"))


def _started_while(orch: Orchestrator, emulator: Emulator, job_id: str, ended: str) -> None:
    """``job_id`` (waiting behind ``ended``) goes upstream while ``ended``'s turn still
    runs there: its slot was freed at once, not when the turn ended."""
    wait_for(lambda: orch.get(job_id).worker_id, 30, f"{job_id} to go upstream")
    assert orch.get(ended).worker_id is None or _upstream_turn_running(emulator)
    assert emulator.ledger()["turns_completed"] == 0, "the ended job's turn ended first"


def _settled(orch: Orchestrator, emulator: Emulator, jobs: list[str]) -> None:
    """Everything ends, upstream too; then the money is exact and nothing is held."""
    for job_id in jobs:
        orch.wait(job_id, timeout=60)
    wait_for(lambda: not _upstream_turn_running(emulator), 60, "upstream turns to end")
    wait_for(lambda: not _ended(orch), 30, "ended jobs to be settled")
    total, truth = orch.costs()["total"], emulator.ledger()
    for field in FIELDS:
        assert total[field] == truth[field], (field, total[field], truth[field])
    assert total["turns"] == truth["turns_completed"]
    assert not _holds(orch) and orch.budgets.status()[0]["reserved_micro"] == 0
    assert orch.limits.status()[0]["running"] == 0
    assert orch.limits.status()[0]["waiting"] == 0
    assert orch.store.r.zcard(orch.store.keys.follows) == 0
    report = Reconciler(orch.store, orch.rt.client).run(1, grace_seconds=0)
    assert report.clean, report.to_json()


def test_cancel_of_a_running_job(
    orch: Orchestrator, emulator: Emulator, worker: Proc
) -> None:
    _setup(orch)
    emulator.configure(turn_seconds=6.0, events_per_turn=30)
    long = orch.submit("a long turn", tags=ACME)
    wait_for(lambda: orch.get(long.id).status == "running", 30, "the turn to run")
    emulator.configure(turn_seconds=0.3, events_per_turn=3)
    behind = orch.submit("waits for the slot", tags=ACME)
    assert orch.get(behind.id).status == "queued"

    cancelled = orch.cancel(long.id, reason="changed my mind")
    assert cancelled.status == "cancelled" and cancelled.error == "cancelled: changed my mind"
    assert long.id in _holds(orch)  # kept: it reserves the money the turn still spends
    with pytest.raises(InputError, match="still run"):
        orch.continue_(long.id, "more")
    _started_while(orch, emulator, behind.id, long.id)
    # Relaying stopped at the cancel (the store refuses the turn's updates from then on;
    # a batch in flight may still land), long before the turn's 30 updates were sent.
    wid = orch.get(long.id).worker_id
    assert wid is not None
    at_cancel = orch.store.relayed(wid)
    wait_for(lambda: not _upstream_turn_running(emulator), 30, "the turn to end upstream")
    assert orch.store.relayed(wid) <= min(at_cancel + 1, 20), (at_cancel, orch.store.relayed(wid))
    _settled(orch, emulator, [long.id, behind.id])
    # Flower's view: the end's own task, failing with the end state and its reason.
    assert "workers.settle_ended[" in worker.text()
    assert f"JobEnded('{long.id}', 'cancelled', 'cancelled: changed my mind')" in worker.text()
    assert orch.get(long.id).status == "cancelled"
    assert orch.get(behind.id).status == "completed"
    # Once settled, the worker takes another turn again.
    again = orch.continue_(long.id, "one more")
    assert orch.wait(again.id, timeout=60).status == "completed"


def test_cancel_of_a_queued_job_sends_nothing(
    orch: Orchestrator, emulator: Emulator, worker: Proc
) -> None:
    _setup(orch)
    emulator.configure(turn_seconds=2.0, events_per_turn=4)
    first = orch.submit("holds the slot", tags=ACME)
    wait_for(lambda: orch.get(first.id).worker_id, 30, "the first turn to start")
    queued = orch.submit("never sent", tags=ACME)
    wait_for(lambda: orch.limits.status()[0]["waiting"] == 1, 30, "it to wait for the slot")
    orch.cancel(queued.id)
    assert orch.limits.status()[0]["waiting"] == 0
    assert queued.id not in _holds(orch) and queued.id not in _ended(orch)
    last = orch.submit("takes the slot next", tags=ACME)
    _settled(orch, emulator, [first.id, queued.id, last.id])
    assert orch.get(last.id).status == "completed"
    gone = orch.get(queued.id)
    assert gone.status == "cancelled" and gone.attempts == 0 and gone.worker_id is None
    assert emulator.ledger()["workers_created"] == 2  # the cancelled one never went upstream


def test_bulk_cancel_by_tag(orch: Orchestrator, emulator: Emulator, worker: Proc) -> None:
    _setup(orch, limit=2)
    emulator.configure(turn_seconds=6.0, events_per_turn=12)
    old = [orch.submit(f"old {i}", tags={**ACME, "batch": "old"}) for i in range(2)]
    wait_for(lambda: all(orch.get(j.id).worker_id for j in old), 30, "both to start")
    emulator.configure(turn_seconds=0.3, events_per_turn=3)
    new = [orch.submit(f"new {i}", tags={**ACME, "batch": "new"}) for i in range(2)]
    cancelled = orch.cancel_many(tags={"batch": "old"}, reason="superseded")
    assert sorted(cancelled) == sorted(j.id for j in old)
    for job in new:
        _started_while(orch, emulator, job.id, old[0].id)
    _settled(orch, emulator, [j.id for j in old + new])
    assert [orch.get(j.id).status for j in new] == ["completed", "completed"]


def test_queue_ttl_expires_a_job_waiting_for_a_slot(
    orch: Orchestrator, emulator: Emulator, worker: Proc
) -> None:
    _setup(orch)
    emulator.configure(turn_seconds=6.0, events_per_turn=12)
    first = orch.submit("holds the slot", tags=ACME)
    wait_for(lambda: orch.get(first.id).worker_id, 30, "the first turn to start")
    emulator.configure(turn_seconds=0.3, events_per_turn=3)
    stale = orch.submit("not worth it later", tags=ACME, queue_ttl=1)
    after = orch.submit("waits longer", tags=ACME)
    expired = orch.wait(stale.id, timeout=15)
    assert expired.status == "expired" and "within 1s" in (expired.error or "")
    assert _upstream_turn_running(emulator)  # ended on time, not when a slot came
    # Its wind-down follows the status change in the same sweep step: only the other
    # job waits now.
    wait_for(lambda: orch.limits.status()[0]["waiting"] == 1, 5, "it to leave the queue")
    _settled(orch, emulator, [first.id, stale.id, after.id])
    assert orch.get(stale.id).attempts == 0 and orch.get(stale.id).worker_id is None
    assert emulator.ledger()["workers_created"] == 2  # nothing sent for the expired job
    assert [h["status"] for h in orch.history(stale.id)] == ["queued", "expired"]


def test_idle_timeout(orch: Orchestrator, emulator: Emulator, worker: Proc) -> None:
    _setup(orch)
    emulator.configure(turn_seconds=10.0, events_per_turn=3)  # updates 5 s apart
    quiet = orch.submit("goes quiet", tags=ACME, idle_timeout=1.5)
    wait_for(lambda: orch.get(quiet.id).status == "running", 30, "the turn to run")
    emulator.configure(turn_seconds=0.3, events_per_turn=3)
    behind = orch.submit("waits for the slot", tags=ACME)
    started = time.monotonic()
    timed_out = orch.wait(quiet.id, timeout=15)
    assert timed_out.status == "timed_out" and "idle timeout" in (timed_out.error or "")
    assert time.monotonic() - started < 4.5  # before the next update (5 s apart)
    _started_while(orch, emulator, behind.id, quiet.id)
    _settled(orch, emulator, [quiet.id, behind.id])


def test_total_deadline(orch: Orchestrator, emulator: Emulator, worker: Proc) -> None:
    _setup(orch)
    emulator.configure(turn_seconds=8.0, events_per_turn=40)  # busy, never idle
    late = orch.submit("takes too long", tags=ACME, deadline=2, idle_timeout=5)
    wait_for(lambda: orch.get(late.id).status == "running", 30, "the turn to run")
    emulator.configure(turn_seconds=0.3, events_per_turn=3)
    behind = orch.submit("waits for the slot", tags=ACME)
    timed_out = orch.wait(late.id, timeout=15)
    assert timed_out.status == "timed_out" and "deadline of 2s" in (timed_out.error or "")
    assert timed_out.timestamps["timed_out"] - timed_out.created_at < 4_000
    _started_while(orch, emulator, behind.id, late.id)
    _settled(orch, emulator, [late.id, behind.id])
    assert orch.history(late.id)[-1]["status"] == "timed_out"
