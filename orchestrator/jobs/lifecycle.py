"""How a job ends here: cancel (one, or many by filter), its three limits (queue
time-to-live, idle timeout, deadline), and settling later what such a job's upstream
turn cost.

The Workers API has no cancel route. A job ended here (``cancelled``, ``expired``,
``timed_out``) stops at once on our side: it leaves every queue, frees its concurrency
slots (promoting the jobs waiting for them), the store refuses the rest of its turn's
updates (its follower then lets the stream go, and its lease is gone), and continues
naming it are refused while that turn may still run. An upstream turn that
had begun goes on and is billed: the job stays in the ended set, and the sweep retrieves
its worker until the turn is over, then posts the turn exactly as a finished one
(:func:`~orchestrator.jobs.settle.settle_turn`, once per job) and only then releases the
budget hold, which reserved the money being spent.

:func:`sweep` runs in every ``streams`` worker's housekeeping (several at once are safe:
each claims the due entries it works on, and every step is idempotent).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from orchestrator import rules
from orchestrator.errors import APIError, APIStatusError, InputError
from orchestrator.hooks import events as hooks
from orchestrator.jobs.model import (
    LOCAL_ENDS,
    STATUSES,
    TERMINAL,
    Job,
    JobStatus,
    next_due,
    overdue,
    upstream_since,
)
from orchestrator.jobs.settle import settle_turn
from orchestrator.jobs.steps import fail, release_slots
from orchestrator.ledger import FigureError
from orchestrator.ops.instruments import JOBS_ENDED_HERE
from orchestrator.runtime import Runtime
from orchestrator.store.jobs import now_ms
from orchestrator.store.lifecycle import LiveJob

log = logging.getLogger(__name__)

#: Said wherever a job is cancelled (docstrings, CLI output, docs).
UPSTREAM_NOTE = (
    "the Workers API has no cancel route: a turn already started upstream goes on and is"
    " billed; its cost is settled into the ledger when it ends"
)
#: The task that winds down and settles a job ended here: Flower shows it, named for the
#: end state (``job_… timed_out: …``), and its return value says how far it got.
SETTLE_TASK = "workers.settle_ended"
#: How long a sweep holds what it claimed before another sweep may take it over.
CLAIM_MS = 30_000
#: Bounds on how often an ended job's upstream turn is looked at (a quarter of the
#: time since it ended, within these): quick for short turns, cheap for long ones.
LOOK_MIN_MS, LOOK_MAX_MS = 1_000, 60_000


def end_job(app: Celery, rt: Runtime, job: Job, status: JobStatus, detail: str) -> bool:
    """End a live job here as ``status`` (a local end), then wind it down and settle
    what can be settled now; False if it had ended already (nothing changes then)."""
    assert status in LOCAL_ENDS
    if not rt.ends.end_here(job.id, status, detail):
        return False
    JOBS_ENDED_HERE.labels(state=status).inc()
    log.info("job %s %s: %s", job.id, status, detail)
    hooks.job_ended(rt.store, job.id)
    ended = rt.store.require_job(job.id)
    wind_down(app, rt, ended)
    if ended.worker_id is None and ended.attempts == 0:
        _nothing_to_settle(rt, ended)  # never sent upstream: nothing sent, nothing billed
    shown = detail if len(detail) <= 80 else detail[:77] + "..."
    app.send_task(SETTLE_TASK, args=[job.id], argsrepr=f"{job.id} {status}: {shown}")
    return True


def cancel(app: Celery, rt: Runtime, job_id: str, reason: str | None = None) -> Job:
    """Cancel a job; one already ended is returned unchanged. See the module's text:
    its upstream turn, if one began, goes on and is billed, and is settled later."""
    rules.JOB_ID.check(job_id, "job_id")
    detail = _reason(reason)
    job = rt.store.require_job(job_id)
    if not job.done:
        end_job(app, rt, job, "cancelled", detail)
    return rt.store.require_job(job_id)


def cancel_many(
    app: Celery,
    rt: Runtime,
    *,
    tags: dict[str, str] | None = None,
    status: str | None = None,
    schedule_id: str | None = None,
    reason: str | None = None,
) -> list[str]:
    """Cancel every live job matching all the filters given (at least one); returns the
    ids cancelled. Reads only the live index, never every job ever stored."""
    wanted = _filters(tags, status, schedule_id)
    detail = _reason(reason)
    cancelled = []
    for chunk in rt.ends.live_jobs():
        for live in chunk:
            if live.status in TERMINAL or not _matches(live, wanted):
                continue
            job = rt.store.get_job(live.id)
            if job is not None and not job.done and end_job(app, rt, job, "cancelled", detail):
                cancelled.append(job.id)
    return cancelled


def _reason(reason: str | None) -> str:
    if reason is None:
        return "cancelled"
    return f"cancelled: {rules.reason_text(reason)}"


def _filters(
    tags: dict[str, str] | None, status: str | None, schedule_id: str | None
) -> dict[str, Any]:
    """The bulk filters, each checked by the rules; InputError if none is given."""
    wanted: dict[str, Any] = {}
    if tags is not None:
        if not isinstance(tags, dict) or not tags:
            raise InputError("tags", "must be a non-empty mapping of tag key to value")
        wanted["tags"] = dict(rules.tag(k, v, "tags") for k, v in tags.items())
    if status is not None:
        if status not in STATUSES:
            raise InputError("status", f"{rules.shown(status)} is not a job status")
        if status in TERMINAL:
            raise InputError("status", f"{status} jobs have ended already")
        wanted["status"] = status
    if schedule_id is not None:
        wanted["schedule_id"] = rules.SCHEDULE_ID.check(schedule_id, "schedule_id")
    if not wanted:
        raise InputError("tags", "give at least one filter: tags, status or schedule_id")
    return wanted


def _matches(live: LiveJob, wanted: dict[str, Any]) -> bool:
    if "status" in wanted and live.status != wanted["status"]:
        return False
    if "schedule_id" in wanted and live.schedule_id != wanted["schedule_id"]:
        return False
    tags = wanted.get("tags", {})
    return all(live.tags.get(k) == v for k, v in tags.items())


def refuse_unsettled(rt: Runtime, job_id: str | None, worker_id: str) -> None:
    """InputError when a continue would start a turn while the worker's turn of a job
    ended here still runs upstream (it cannot take another turn until that ends)."""
    for named in {job_id, rt.ends.active_job(worker_id)} - {None}:
        assert named is not None
        if not rt.ends.unsettled(named):
            continue
        job = rt.store.get_job(named)
        if job is not None and job.status in LOCAL_ENDS and job.worker_id == worker_id:
            raise InputError(
                "worker_id",
                f"job {job.id} was {job.status} but its upstream turn may still run"
                f" ({UPSTREAM_NOTE}); continue the worker once that turn has ended",
            )


# --- the sweep ---------------------------------------------------------------------


def wind_down(app: Celery, rt: Runtime, job: Job) -> None:
    """Take an ended job out of every queue and free its slots (idempotent): a limit's
    queue, the budget period's, the outbox, the broker watch; stop relaying its turn's
    updates (the store refuses them from now) and drop the follow lease."""
    rt.limits.leave_waiting(job)
    release_slots(app, rt, job)
    rt.budgets.take_waiting(job.id)
    rt.store.drop_unsent(job.id)
    rt.store.forget_dispatched(job.id)
    if job.worker_id is not None:
        rt.ends.stop_relay(job.worker_id, job.id)
    rt.store.release_follow(job.id)


def _nothing_to_settle(rt: Runtime, job: Job) -> None:
    rt.budgets.release(job.id)
    rt.ends.settled(job.id)


def settle_ended(app: Celery, rt: Runtime, job: Job, now: int) -> str:
    """One look at a job ended here: wind it down again (a task that raced the end may
    have taken a slot since), then settle its upstream turn if it is over. Returns
    ``settled``, ``nothing`` (no upstream turn), ``later`` or ``failed``."""
    wind_down(app, rt, job)
    hooks.job_ended(rt.store, job.id)  # again, in case end_job stopped short: a no-op else
    ended_at = job.timestamps.get(job.status, now)
    if job.worker_id is None:
        # A create call may still be in flight (it records its worker when it returns);
        # past the longest a call can take, there is no turn to settle.
        grace = rt.settings.http_deadline + rt.settings.retry_max_delay
        if job.attempts == 0 or now - ended_at > grace * (rt.settings.max_retries + 1) * 1000:
            _nothing_to_settle(rt, job)
            return "nothing"
        return _later(rt, job, now, ended_at)
    try:
        worker = rt.client.retrieve(job.worker_id)
    except APIStatusError as exc:
        if exc.retryable:
            log.info("settling %s: %s; looking again later", job.id, exc)
            return _later(rt, job, now, ended_at)
        # A final answer (the worker is gone upstream, say): there is nothing to read
        # the cost from; the hold is given back, and reconcile shows the worker's figure.
        log.error("settling %s: %s; its turn cannot be settled", job.id, exc)
        _nothing_to_settle(rt, job)
        return "failed"
    except APIError as exc:
        log.info("settling %s: %s; looking again later", job.id, exc)
        return _later(rt, job, now, ended_at)
    if worker.running or worker.status == "running":
        rt.store.update_snapshot(worker, job.id)
        return _later(rt, job, now, ended_at)
    try:
        _relayed, raw_hold = settle_turn(rt, job, worker)
    except FigureError as exc:  # nothing posted; the hold and slots are given back
        log.error("job %s: %s", job.id, exc)
        fail(app, rt, job.id, f"cost not posted: {exc}")
        rt.ends.settled(job.id)
        return "failed"
    if raw_hold is not None:
        rt.budgets.release(job.id)
    rt.ends.settled(job.id)
    log.info("job %s (%s): its upstream turn ended and is settled", job.id, job.status)
    return "settled"


def _later(rt: Runtime, job: Job, now: int, ended_at: int) -> str:
    wait = min(max((now - ended_at) // 4, LOOK_MIN_MS), LOOK_MAX_MS)
    rt.ends.look_again(job.id, now + wait)
    return "later"


def sweep(app: Celery, rt: Runtime, now: int | None = None) -> dict[str, int]:
    """End the live jobs whose limit passed, and look at the ended jobs that are due.
    Returns counts by outcome (``expired``, ``timed_out``, ``settled``, ...)."""
    now = now_ms() if now is None else now
    counts: dict[str, int] = {}
    for job_id in rt.ends.claim_live(now, CLAIM_MS):
        job = rt.store.get_job(job_id)
        if job is None or job.done:
            rt.ends.forget_live(job_id)
            continue
        relayed = None
        if job.worker_id is not None and job.status != "queued":
            relayed = rt.ends.last_relayed(job.worker_id, job.id)
        late = overdue(job, now, relayed)
        if late is None:
            rt.ends.reschedule(job.id, next_due(job, now, upstream_since(job, relayed)))
        elif end_job(app, rt, job, *late):
            counts[late[0]] = counts.get(late[0], 0) + 1
    for job_id in rt.ends.claim_ended(now, CLAIM_MS):
        job = rt.store.get_job(job_id)
        if job is None or job.status not in LOCAL_ENDS:
            rt.ends.settled(job_id)
            continue
        outcome = settle_ended(app, rt, job, now)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def sweep_pause(rt: Runtime, *, least: float = 0.1, most: float = 1.0) -> float:
    """Seconds until the next entry of either set falls due, within bounds."""
    wake = rt.ends.next_wake()
    if wake is None:
        return most
    return min(max((wake - now_ms()) / 1000, least), most)
