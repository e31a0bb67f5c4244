"""Spend and traffic control end to end: real Redis, real workers, the emulator."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest

from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import validate_submission

from .conftest import Emulator
from .processes import Proc, celery_worker, wait_for

pytestmark = pytest.mark.slow


def wait_all(orch: Orchestrator, ids: list[str], timeout: float = 120) -> dict[str, str]:
    return {i: orch.wait(i, timeout=timeout).status for i in ids}


def test_cap_is_never_passed_and_refused_jobs_send_nothing(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    emulator.configure(turn_seconds=1.0, events_per_turn=4)
    orch.budgets.set_cap(scope="global", limit_usd=Decimal("20"))
    jobs = [orch.submit(f"capped {i}") for i in range(200)]  # standard hold: $1 each
    seen_max = 0
    worker = celery_worker(env, tmp_path / "w.log", concurrency=16).start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            [row] = orch.budgets.status()
            # A finished turn's cost is posted before its hold is released (the safe
            # order), so spent + reserved may briefly count it twice; holds alone
            # never pass the cap, and every reserve checked spent + reserved + hold.
            assert row["reserved_micro"] <= row["cap_micro"], row
            seen_max = max(seen_max, row["reserved_micro"])
            if (
                all(orch.get(j.id).done for j in jobs[-5:])
                and emulator.ledger()["turns_completed"] == emulator.ledger()["turns_started"]
            ):
                break
            time.sleep(0.05)
        statuses = wait_all(orch, [j.id for j in jobs])
    finally:
        worker.stop()
    started = [j for j in jobs if orch.get(j.id).worker_id]
    refused = [orch.get(j.id) for j in jobs if statuses[j.id] == "failed"]
    assert refused and all(
        "budget cap global/day" in (r.error or "") and r.attempts == 0 for r in refused
    )
    ledger = emulator.ledger()
    assert ledger["workers_created"] == len(started) == 200 - len(refused)
    assert seen_max <= 20_000_000
    billed = sum(ledger[f] for f in ("internal_cost_micro", "model_cost_micro",
                                     "sandbox_cost_micro", "tool_cost_micro"))  # fmt: skip
    assert billed <= 20_000_000
    [row] = orch.budgets.status()
    assert row["reserved_micro"] == 0  # every hold settled
    assert orch.store.r.hlen(orch.store.keys.budget_holds) == 0


def test_tenant_limit_and_fair_share(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    emulator.configure(turn_seconds=0.6, events_per_turn=3)
    orch.limits.set("tag:tenant=acme", 3)
    busy = [orch.submit(f"acme {i}", budget="high", tags={"tenant": "acme"}) for i in range(100)]
    quiet = [orch.submit(f"globex {i}", budget="low", tags={"tenant": "globex"})
             for i in range(10)]  # fmt: skip
    worker = celery_worker(env, tmp_path / "w.log", concurrency=16).start()
    try:
        wait_all(orch, [j.id for j in quiet], timeout=60)
        acme_done_when_quiet_done = sum(orch.get(j.id).done for j in busy)
        statuses = wait_all(orch, [j.id for j in busy], timeout=180)
    finally:
        worker.stop()
    assert set(statuses.values()) == {"completed"}
    assert emulator.ledger()["max_concurrent_by_budget"]["high"] <= 3
    # The quiet tenant did not wait behind the busy one's hundred jobs.
    assert acme_done_when_quiet_done < 50, acme_done_when_quiet_done
    assert orch.limits.status()[0]["running"] == 0


def test_a_slot_held_by_a_deleted_job_is_freed_by_the_workers_repair(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    """A job record deleted by hand while it held the tenant's only slot: the streams
    worker's housekeeping frees that slot (once), the tenant's jobs run one at a time
    in it, and the running job's slot is never taken from it by the repair passes
    (every half second here) that run during its turn."""
    emulator.configure(turn_seconds=2.0, events_per_turn=4)
    key = "tag:tenant=acme"
    orch.limits.set(key, 1)
    gone, _ = orch.store.create_job(
        validate_submission(1000, input="lost", budget="high", tags={"tenant": "acme"})
    )
    assert orch.limits.acquire(gone) is None
    orch.store.r.delete(orch.store.keys.job(gone.id))
    jobs = [orch.submit(f"acme {i}", budget="high", tags={"tenant": "acme"}) for i in range(3)]
    log = tmp_path / "w.log"
    worker = celery_worker({**env, "RESEND_AFTER_SECONDS": "1"}, log, concurrency=8).start()
    try:
        statuses = wait_all(orch, [j.id for j in jobs], timeout=90)
    finally:
        worker.stop()
    assert set(statuses.values()) == {"completed"}
    assert emulator.ledger()["max_concurrent_by_budget"]["high"] == 1
    assert log.read_text().count("concurrency slot(s) held by jobs whose record is gone") == 1
    assert orch.limits.status() == [{"key": key, "limit": 1, "running": 0, "waiting": 0}]


def test_fleet_rate_limit_across_four_workers(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    emulator.configure(turn_seconds=0.0, events_per_turn=2)
    limited = {**env, "FLEET_RATE_PER_SECOND": "20"}
    workers: list[Proc] = []
    try:
        for n in range(4):
            workers.append(
                celery_worker(limited, tmp_path / f"w{n}.log", name=f"r{n}", concurrency=4).start()
            )
        jobs = [orch.submit(f"rate {i}") for i in range(50)]
        statuses = wait_all(orch, [j.id for j in jobs], timeout=120)
    finally:
        for w in workers:
            w.stop()
    assert set(statuses.values()) == {"completed"}
    ledger = emulator.ledger()
    assert ledger["requests"] >= 150  # create, stream and retrieve per job: 7.5 s at 20/s
    # 20/s: at most 100 starts in any 5 s (+1 at the window's edge). The emulator counts
    # arrivals, not starts: sixteen sending threads on a busy two-core machine put up to
    # ~150 ms between a request's start and its arrival, so a one-second window can hold
    # up to 3 more. The starts themselves are held to 20 in any second by
    # test_controls.py::test_fleet_rate_limit_holds_across_clients; without the limit
    # these 150 requests would arrive in about two seconds (70 or more in one).
    assert ledger["max_requests_per_5s"] <= 101, ledger["max_requests_per_5s"]
    assert ledger["max_requests_per_second"] <= 24, ledger["max_requests_per_second"]


def test_holds_survive_a_sigkill_between_reserve_and_settle(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    emulator.configure(turn_seconds=2.0, events_per_turn=6)
    orch.budgets.set_cap(scope="global", limit_usd=Decimal("100"))
    jobs = [orch.submit(f"kill {i}") for i in range(10)]
    first = celery_worker(env, tmp_path / "w1.log", name="k1").start()
    try:
        wait_for(lambda: orch.budgets.status()[0]["reserved_micro"] >= 5_000_000, 30, "holds")
    finally:
        first.kill()
    second = celery_worker(env, tmp_path / "w2.log", name="k2").start()
    try:
        statuses = wait_all(orch, [j.id for j in jobs], timeout=120)
    finally:
        second.stop()
    assert set(statuses.values()) == {"completed"}
    [row] = orch.budgets.status()
    assert row["reserved_micro"] == 0 and orch.store.r.hlen(orch.store.keys.budget_holds) == 0
    spent = row["spent_micro"]
    ledger = emulator.ledger()
    assert spent == sum(ledger[f] for f in ("internal_cost_micro", "model_cost_micro",
                                            "sandbox_cost_micro", "tool_cost_micro"))  # fmt: skip


def test_interactive_jobs_go_before_batch(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    emulator.configure(turn_seconds=0.0, events_per_turn=2)
    batch = [orch.submit(f"nightly {i}", priority="batch") for i in range(30)]
    interactive = [orch.submit(f"user {i}", priority="interactive") for i in range(3)]
    worker = celery_worker(env, tmp_path / "w.log", concurrency=1).start()
    try:
        wait_all(orch, [j.id for j in batch + interactive], timeout=120)
    finally:
        worker.stop()

    def submitted_at(job_id: str) -> int:
        return orch.get(job_id).timestamps["submitted"]

    last_interactive = max(submitted_at(j.id) for j in interactive)
    ahead = sum(submitted_at(j.id) < last_interactive for j in batch)
    assert ahead <= 3, ahead  # submitted last, yet sent upstream (almost) first
