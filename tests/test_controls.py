"""Budget holds, concurrency limits and the fleet rate limit, against a real Redis."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from orchestrator.controls.budgets import BudgetExceeded, Budgets, next_period_ms, period_key
from orchestrator.controls.limits import FleetRate, Limits
from orchestrator.errors import InputError
from orchestrator.jobs.model import Job, validate_submission
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.spend import RateStore
from orchestrator.wire.models import Worker


def make_job(store: RedisStore, i: int = 0, **fields: object) -> Job:
    sub = validate_submission(1000, input=f"job {i}", **fields)
    return store.create_job(sub)[0]


def test_concurrent_reservations_never_pass_the_cap(store: RedisStore) -> None:
    budgets = Budgets(store, {"standard": "1"})
    budgets.set_cap(scope="global", limit_usd=Decimal("20"))
    jobs = [make_job(store, i) for i in range(200)]

    def reserve(job: Job) -> bool:
        try:
            budgets.reserve(job)
            return True
        except BudgetExceeded as exc:
            assert exc.left_micro < 1_000_000 and "global/day" in str(exc)
            return False

    with ThreadPoolExecutor(16) as pool:
        held = list(pool.map(reserve, jobs))
    assert sum(held) == 20
    [row] = budgets.status()
    assert row["reserved_micro"] == 20_000_000 and row["left_micro"] == 0
    # A redelivered reserve of a holder is a no-op, not a second hold.
    first = jobs[held.index(True)]
    assert budgets.reserve(first) == 1_000_000
    assert budgets.status()[0]["reserved_micro"] == 20_000_000
    # Releasing is idempotent and frees room for exactly one more.
    assert budgets.release(first.id) == 1_000_000
    assert budgets.release(first.id) is None
    assert budgets.status()[0]["reserved_micro"] == 19_000_000


def test_spend_comes_from_the_ledger_and_tag_caps_apply_per_tag(store: RedisStore) -> None:
    budgets = Budgets(store, {"low": "0.25"})
    budgets.set_cap(scope="tag:tenant=acme", limit_usd=Decimal("0.5"))
    acme = [make_job(store, i, budget="low", tags={"tenant": "acme"}) for i in range(3)]
    other = make_job(store, 9, budget="low", tags={"tenant": "globex"})
    assert budgets.reserve(acme[0]) == 250_000
    # A completed turn that cost $0.30 counts as spent (read from the ledger).
    from orchestrator.controls.budgets import turn_members

    worker = Worker.model_validate({
        "id": "wrk_a", "status": "completed",
        "costs": {"internalCostUsd": 0, "modelCostUsd": 0.3, "sandboxCostUsd": 0,
                  "toolCostUsd": 0},
        "usage": {"cacheReadTokens": 0, "cacheWriteTokens": 0, "costUsd": 0.3,
                  "inputTokens": 1, "outputTokens": 1, "reasoningTokens": 0, "steps": 1,
                  "totalTokens": 2},
    })  # fmt: skip
    at = now_ms()
    store.post_turn(acme[0], worker, at, extra=turn_members(acme[0].tags, at))
    budgets.release(acme[0].id)
    [row] = budgets.status()
    assert row["spent_micro"] == 300_000 and row["reserved_micro"] == 0
    with pytest.raises(BudgetExceeded) as info:  # 0.30 + 0.25 > 0.50
        budgets.reserve(acme[1])
    assert info.value.left_micro == 200_000 and "tag:tenant=acme/day" in str(info.value)
    assert budgets.reserve(other) == 0  # no cap applies to globex: nothing held


def test_bad_caps_are_refused(store: RedisStore) -> None:
    budgets = Budgets(store)
    for fields, field in [
        ({"scope": "tenant=acme", "limit_usd": "1"}, "scope"),
        ({"scope": "global", "limit_usd": "-1"}, "limit_usd"),
        ({"scope": "global", "limit_usd": "1", "period": "week"}, "period"),
        ({"scope": "global", "limit_usd": "1", "warn_at": 2}, "warn_at"),
    ]:
        with pytest.raises(InputError) as info:
            budgets.set_cap(**fields)
        assert info.value.field == field
    assert budgets.caps() == []


def test_periods() -> None:
    at = 1_796_083_200_000 - 1  # 2026-11-30T23:59:59.999Z
    assert period_key("day", at) == "2026-11-30" and period_key("month", at) == "2026-11"
    assert next_period_ms("day", at) == at + 1
    assert next_period_ms("month", at) == at + 1  # 2026-12-01 is also a new month


def test_leaked_holds_are_reclaimed(store: RedisStore) -> None:
    budgets = Budgets(store)
    budgets.set_cap(scope="global", limit_usd=Decimal("5"))
    job = make_job(store)
    budgets.reserve(job)
    store.transition(job.id, "failed", "died between reserve and settle")
    assert budgets.reclaim(older_than_ms=60_000) == 0  # too young
    time.sleep(0.05)
    assert budgets.reclaim(older_than_ms=10) == 1
    assert budgets.status()[0]["reserved_micro"] == 0


def test_limits_wait_in_order_and_share_fairly(store: RedisStore) -> None:
    limits = Limits(store, fair_tag="tenant")
    limits.set("budget:standard", 2)
    a = [make_job(store, i, tags={"tenant": "a"}) for i in range(6)]
    b = [make_job(store, 10 + i, tags={"tenant": "b"}) for i in range(2)]
    assert limits.acquire(a[0]) is None and limits.acquire(a[1]) is None
    for job in a[2:] + b:
        assert limits.acquire(job) == "budget:standard"
    assert limits.acquire(a[2]) == "budget:standard"  # parked once, not twice
    assert limits.status() == [{"key": "budget:standard", "limit": 2, "running": 2, "waiting": 6}]
    order: list[str] = []
    running = [a[0], a[1]]
    while running:
        done = running.pop(0)
        for promoted in limits.release(done):
            order.append(promoted)
            running.append(next(j for j in a + b if j.id == promoted))
    # Round-robin across tenants: b's two jobs are not behind all of a's.
    assert order[:4] == [a[2].id, b[0].id, a[3].id, b[1].id]
    assert sorted(order) == sorted(j.id for j in a[2:] + b)
    assert limits.status()[0]["running"] == 0
    # Promoted jobs went to the outbox, so a crash before re-sending loses none.
    assert set(store.unsent(-10_000)) >= set(order)


def test_fleet_rate_limit_holds_across_clients(store: RedisStore) -> None:
    limiters = [FleetRate(RateStore(store), per_second=20) for _ in range(4)]
    stamps: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 2.5

    def run(limiter: FleetRate) -> None:
        while time.monotonic() < deadline:
            limiter.before("create")
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=run, args=(lim,)) for lim in limiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    stamps.sort()
    busiest = max(sum(1 for s in stamps if t0 <= s < t0 + 1.0) for t0 in stamps)
    assert 15 <= busiest <= 21, busiest  # 20/s, +1 for a window's two edges
    # A 429 seen by one client pauses them all for the time the API asked.
    limiters[0].rate_limited(0.6)
    started = time.monotonic()
    limiters[3].before("retrieve")
    assert 0.45 <= time.monotonic() - started <= 1.5


def test_budget_and_limit_gauges(store: RedisStore) -> None:
    from prometheus_client import generate_latest

    from orchestrator.ops.collector import store_registry

    budgets = Budgets(store, {"standard": "1"})
    budgets.set_cap(scope="global", limit_usd=Decimal("20"))
    limits = Limits(store)
    limits.set("tag:tenant=a", 1)
    jobs = [make_job(store, i, tags={"tenant": "a"}) for i in range(3)]
    budgets.reserve(jobs[0])
    for job in jobs:
        limits.acquire(job)
    text = generate_latest(store_registry(store)).decode()
    assert 'orchestrator_budget_reserved_usd{cap="global/day"} 1.0' in text
    assert 'orchestrator_budget_cap_usd{cap="global/day"} 20.0' in text
    assert 'orchestrator_limit_running{key="tag:tenant=a"} 1.0' in text
    assert 'orchestrator_limit_waiting{key="tag:tenant=a"} 2.0' in text


def _slot_holders(store: RedisStore, key: str) -> set[str]:
    return set(store.r.smembers(store.keys.limit_running(key)))


def test_a_slot_whose_job_record_is_gone_is_freed_once(store: RedisStore) -> None:
    limits = Limits(store, fair_tag="tenant")
    key = "tag:tenant=acme"
    limits.set(key, 1)
    gone = make_job(store, 0, tags={"tenant": "acme"})
    waiting = make_job(store, 1, tags={"tenant": "acme"})
    assert limits.acquire(gone) is None and limits.acquire(waiting) == key
    assert limits.reclaim_gone() == (0, [])  # its record is there: nothing to free
    store.r.delete(store.keys.job(gone.id))  # deleted by hand, holding the slot

    # Eight sweeps at once: the slot is freed by one, and passed on once.
    start = threading.Barrier(8)

    def sweep() -> tuple[int, list[str]]:
        start.wait(timeout=10)
        return limits.reclaim_gone()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: sweep(), range(8)))
    assert sum(freed for freed, _ in results) == 1
    assert [j for _, promoted in results for j in promoted] == [waiting.id]
    assert _slot_holders(store, key) == {waiting.id}
    assert limits.status() == [{"key": key, "limit": 1, "running": 1, "waiting": 0}]
    assert limits.reclaim_gone() == (0, [])


def test_a_live_jobs_slot_is_kept_by_the_repair(store: RedisStore) -> None:
    limits = Limits(store, fair_tag="tenant")
    key = "budget:high"
    limits.set(key, 1)
    live = make_job(store, 0, budget="high")
    waiting = make_job(store, 1, budget="high")
    assert limits.acquire(live) is None and limits.acquire(waiting) == key
    assert limits.reclaim_gone() == (0, [])
    # The script looks for the record itself: a sweep that read the job as gone just
    # before it was written (or read wrongly) frees nothing.
    assert limits.slots.release_gone(live.id, key, now_ms()) is None
    assert _slot_holders(store, key) == {live.id}
    assert limits.status() == [{"key": key, "limit": 1, "running": 1, "waiting": 1}]
    # A job that is gone but holds no slot frees nothing either.
    store.r.delete(store.keys.job(waiting.id))
    assert limits.slots.release_gone(waiting.id, key, now_ms()) is None
    assert _slot_holders(store, key) == {live.id}
