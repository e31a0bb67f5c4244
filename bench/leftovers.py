"""What the chaos scenarios' jobs leave held once every one of them has ended
(invariant 9: every error path frees what it took), and the controls they run under so
that there is something to hold and give back.

The controls: budget caps no run comes near, for the deployment and per tenant (every
turn takes a hold against them, and must give it back), and a few concurrency slots
per tenant and for the schedules' runs (jobs take and free slots, and some wait for
one). Reads go through the store's own reads: :class:`Holdings` and the caps' status.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from orchestrator.facade import Orchestrator
from orchestrator.store.holdings import Holdings

TENANTS = ("t0", "t1", "t2")
#: Per UTC day: far above what any run spends or holds at once (a low hold is $0.25).
CAP_USD = "1000000"
#: The tier of the schedules' runs (``ScheduleAPI.create``'s default).
SCHEDULE_TIER = "standard"
#: How long what ended jobs held may take to be given back after the last one ended.
#: A completed turn's hold and slots go in the finalize that completes it, a failed
#: job's in ``fail()``, the slot a promoted job gets from an ended one at once. A job
#: ended here keeps its hold and ended-set entry until the sweep sees its turn over
#: upstream (it looks 1-60 s apart), or, with a create call perhaps in flight, for
#: (HTTP_DEADLINE + RETRY_MAX_DELAY) x (MAX_RETRIES + 1): longer than this, but no
#: scenario ends a job here. A stuck entry waits this whole, then counts.
RELEASE_SECONDS = 30.0


def tenant_of(key: str) -> str:
    """The tenant a chaos submission is tagged with: spread evenly over :data:`TENANTS`."""
    return TENANTS[sum(map(ord, key)) % len(TENANTS)]


def apply_controls(orch: Orchestrator, slots: int) -> None:
    """Caps for the deployment and each tenant; ``slots`` running turns per tenant, and
    as many for the schedules' runs as for all tenants together (the beat scenario's
    runs come dozens a second: fewer slots would make it a test of the queue)."""
    orch.budgets.set_cap(scope="global", period="day", limit_usd=CAP_USD)
    for tenant in TENANTS:
        orch.budgets.set_cap(scope=f"tag:tenant={tenant}", period="day", limit_usd=CAP_USD)
        orch.limits.set(f"tag:tenant={tenant}", slots)
    orch.limits.set(f"budget:{SCHEDULE_TIER}", slots * len(TENANTS))


def held(orch: Orchestrator, ended: Sequence[str], live: Sequence[str]) -> Counter[str]:
    """What is held, by name (:data:`~orchestrator.store.holdings.HOLDINGS`, money still
    reserved against a cap as ``reserved <cap>``). With no job live: everything the
    prefix holds, whoever it belongs to; else what the ended jobs hold (the live ones
    hold their stage's share, and are counted lost)."""
    holdings = Holdings(orch.store)
    if live:
        return Counter(name for names in holdings.held(ended).values() for name in names)
    counts = Counter(holdings.anywhere())
    for row in orch.budgets.status():
        if row["reserved_micro"]:
            counts[f"reserved {row['cap']}"] += 1
    return counts


def settle(orch: Orchestrator, ended: Sequence[str], live: Sequence[str]) -> Counter[str]:
    """:func:`held`, once nothing is held or :data:`RELEASE_SECONDS` have passed."""
    deadline = time.monotonic() + RELEASE_SECONDS
    counts = held(orch, ended, live)
    while counts and time.monotonic() < deadline:
        time.sleep(0.2)
        counts = held(orch, ended, live)
    return counts


def unbounded(orch: Orchestrator) -> Counter[str]:
    """Keys that never expire of a job with no record (lost with Redis's last writes),
    or of a worker whose active job has none (RELIABILITY.md, 24), as ``no expiry
    <kind>``. A scan of the prefix: fine for a chaos run's few thousand keys."""
    r, keys = orch.store.r, orch.store.keys
    counts: Counter[str] = Counter()
    for name in r.scan_iter(match=f"{keys.prefix}:*", count=1000):
        kind, _, ident = name[len(keys.prefix) + 1 :].partition(":")
        if kind == "ledger" and ident.startswith("worker:"):
            kind, ident = "ledger:worker", ident.partition(":")[2]
        if kind in ("job", "ledger-turn"):
            job_id = ident.partition(":")[0]
        elif kind in ("worker", "updates", "ledger:worker") and ":" not in ident:
            job_id = r.hget(keys.worker(ident), "active_job") or ""
        else:
            continue
        if r.pttl(name) == -1 and not (job_id and r.hexists(keys.job(job_id), "id")):
            counts[f"no expiry {kind}"] += 1
    return counts


def describe(orch: Orchestrator, counts: Counter[str], ended: Sequence[str]) -> str:
    """What is held, and by which ended jobs (their status and the names they hold)."""
    if not counts:
        return ""
    what = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    holders = list(Holdings(orch.store).held(ended).items())
    shown = [f"{job_id} ({_status(orch, job_id)}): {'+'.join(names)}"
             for job_id, names in holders[:3]]  # fmt: skip
    return "; ".join([f"held: {what}", *shown])


def _status(orch: Orchestrator, job_id: str) -> str:
    job = orch.store.get_job(job_id)
    return "gone" if job is None else job.status
