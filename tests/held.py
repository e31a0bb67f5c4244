"""The one check that a set of jobs ended and left nothing held (invariant 9).

Reads through the store's public API only (:class:`orchestrator.store.holdings.Holdings`,
the job records, the budget and limit status), never raw keys. End states are whatever
:data:`orchestrator.jobs.model.TERMINAL` says, so new ones count without a change here.
"""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.controls.budgets import Budgets
from orchestrator.controls.limits import Limits
from orchestrator.jobs.model import TERMINAL
from orchestrator.store.holdings import Holdings
from orchestrator.store.jobs import RedisStore


def not_ended(store: RedisStore, job_ids: Iterable[str]) -> dict[str, str | None]:
    """Job id -> its status, for the jobs not in an end state (None: no such job)."""
    out: dict[str, str | None] = {}
    for job_id in job_ids:
        job = store.get_job(job_id)
        if job is None or job.status not in TERMINAL:
            out[job_id] = None if job is None else job.status
    return out


def assert_nothing_held(
    store: RedisStore, job_ids: Iterable[str], *, all_idle: bool = True
) -> None:
    """Every job is in an end state and holds no budget hold, concurrency slot or place
    in a queue, follow lease, outbox/dispatched entry or unbegun file fetch.

    With ``all_idle`` (the default: no other job of the prefix is live) also every
    limit key has nothing running or waiting, and every cap nothing reserved.
    """
    ids = list(job_ids)
    assert ids, "no jobs to check"
    live = not_ended(store, ids)
    held = Holdings(store).held(ids)
    problems = {job_id: {"status": status} for job_id, status in live.items()}
    for job_id, what in held.items():
        problems.setdefault(job_id, {})["held"] = what  # type: ignore[assignment]
    if problems:
        shown = {
            job_id: {**p, "history": store.history(job_id)[-3:]}
            for job_id, p in list(problems.items())[:10]
        }
        raise AssertionError(f"{len(problems)} of {len(ids)} jobs not clear: {shown}")
    if all_idle:
        busy = [row for row in Limits(store).status() if row["running"] or row["waiting"]]
        assert not busy, f"limit keys still busy: {busy}"
        reserved = [row for row in Budgets(store).status() if row["reserved_micro"]]
        assert not reserved, f"caps with money still reserved: {reserved}"
