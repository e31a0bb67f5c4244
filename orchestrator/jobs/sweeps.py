"""The housekeeping sweeps of the job pipeline: jobs whose first task was never sent or
that the broker lost, jobs waiting for a new budget period, and concurrency slots held
by jobs whose record is gone. Each is safe to run anywhere, any number of times: the
first task of a job is idempotent (``steps.start_turn``)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from orchestrator.celery import API_QUEUE
from orchestrator.jobs.steps import FIRST_TASKS, dispatch, dispatch_promoted
from orchestrator.runtime import Runtime
from orchestrator.store.jobs import now_ms

log = logging.getLogger(__name__)


def release_budget_waiters(app: Celery, rt: Runtime) -> int:
    """Send again the jobs that waited for a new budget period that has now begun."""
    due = rt.budgets.due_waiting(now_ms())
    for job_id in due:
        if rt.budgets.take_waiting(job_id):
            job = rt.store.get_job(job_id)
            if job is not None and job.status == "queued":
                dispatch(app, rt, job)
    return len(due)


def resend_unsent(app: Celery, rt: Runtime, older_than_seconds: float = 30.0) -> int:
    """Send again the jobs written but never known sent (the producer died in between).

    Safe to run anywhere, any number of times: a job that already left ``queued`` is
    only cleared from the outbox, and ``start_turn`` is idempotent.
    """
    resent = 0
    for job_id in rt.store.unsent(int(older_than_seconds * 1000)):
        job = rt.store.get_job(job_id)
        if job is None or job.status != "queued":
            rt.store.drop_unsent(job_id)
            continue
        log.warning("re-sending job %s: its first task was never known sent", job_id)
        dispatch(app, rt, job)
        resent += 1
    return resent


def resend_lost(app: Celery, rt: Runtime, older_than_seconds: float = 30.0) -> int:
    """Send again the jobs whose first task the broker lost after it was sent (see
    :meth:`BrokerLayout.lost <orchestrator.store.broker.BrokerLayout.lost>`), or lost
    while its upstream call was under way. A second copy of a task that was not lost
    after all is harmless: ``start_turn`` is idempotent.
    """
    store = rt.store
    due = store.untaken(int(older_than_seconds * 1000))
    # Begun but never submitted: the task died with its call, or its retry could not be
    # sent (the broker away); the call's idempotency key makes a second one find the
    # first one's worker.
    stalled = set(store.stalled(int(older_than_seconds * 1000)))
    lost = store.broker.lost(
        [*due, *(j for j in stalled if j not in due)], "resend-lost", older_than_seconds,
        _job_of, backlog_queue=API_QUEUE,
    )  # fmt: skip
    resent = 0
    for job_id in lost:
        job = store.get_job(job_id)
        if job is None or job.status != "queued" or (job.attempts and job_id not in stalled):
            store.forget_dispatched(job_id)  # moved on, gone, or begun since it was read
        else:
            log.warning("re-sending job %s: the broker lost its first task", job_id)
            dispatch(app, rt, job)
            resent += 1
    return resent


def _job_of(task: str, args: list[Any]) -> list[str]:
    return [str(args[0])] if task in FIRST_TASKS and args else []


def reclaim_gone_slots(app: Celery, rt: Runtime) -> int:
    """Free the concurrency slots of jobs whose record is gone and send the jobs that
    were waiting for them; the number of slots freed."""
    freed, promoted = rt.limits.reclaim_gone()
    if freed:
        log.warning("freed %d concurrency slot(s) held by jobs whose record is gone", freed)
    dispatch_promoted(app, rt, promoted)
    return freed
