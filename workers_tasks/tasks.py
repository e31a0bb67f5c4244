"""The Celery tasks. Thin: they carry job ids only (never the API key or payloads),
call a step of :mod:`orchestrator.jobs.steps`, and map its errors to retry or fail.

A task whose job ended without completing raises :class:`JobEnded` last, after every
cleanup, so Flower shows it as FAILURE with the reason (``throws``: logged as one line,
not a traceback; acked, never redelivered).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_ready

from orchestrator.celery import app, retry_countdown
from orchestrator.errors import APIError, APIStatusError, InputError, JobEnded
from orchestrator.hooks import delivery
from orchestrator.jobs import files as fetching
from orchestrator.jobs import lifecycle, quick, sweeps
from orchestrator.jobs import steps as pipeline
from orchestrator.runtime import get_runtime
from orchestrator.store.jobs import RedisStore, now_ms
from workers_tasks import follower_service, heartbeat  # noqa: F401  (connect the worker signals)

log = logging.getLogger(__name__)

#: Libraries whose INFO lines a worker drops: httpx logs every request, three a job at
#: about 0.1 ms of worker CPU each (python -m bench.profile spy). Attempts are counted
#: in the metrics (orchestrator.ops.instruments); failures are logged here.
QUIET_LOGGERS = ("httpx", "httpcore")


@worker_ready.connect
def _quiet_libraries(**_: Any) -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _retry_or_fail(task: Task, job_id: str, exc: Exception, argsrepr: str) -> None:
    """Retry a transient failure with backoff; fail the job once retries run out.

    ``exc`` may be our own error too (a Redis blip, a bug in a step): the step is
    idempotent, so it is retried like an API error, and the job fails (giving back its
    hold and slots) if it keeps failing. Left to Celery, the task would be acked as
    failed and the job would stay where it was, holding them.
    """
    rt = get_runtime()
    if isinstance(exc, APIStatusError) and not exc.retryable:
        pipeline.fail(app, rt, job_id, str(exc))
        return
    retries = task.request.retries
    if retries >= rt.settings.task_max_retries:
        # Checked here, not left to retry(): given ``exc``, Celery re-raises that error
        # (not MaxRetriesExceededError) once retries run out, and the job would stay
        # queued with its hold and slot.
        pipeline.fail(app, rt, job_id, f"gave up after {retries} retries: {exc}")
        return
    countdown = retry_countdown(rt.settings, rt.client.retry.delay(retries + 1))
    # argsrepr is passed again: retry() would otherwise drop it (celery#6086).
    raise task.retry(
        countdown=countdown,
        max_retries=rt.settings.task_max_retries,
        argsrepr=argsrepr,
        exc=exc,
    )


def _job_repr(store: RedisStore, job_id: str) -> str:
    try:
        job = store.get_job(job_id)
    except Exception:  # Redis away: the retry still goes, named by its id
        return job_id
    return pipeline.describe(job) if job else job_id


def _raise_if_ended(job_id: str, status: str | None = None) -> None:
    """Raise JobEnded when the job ended without completing (see the module's doc).

    ``status``: what the step just saw; a job it left submitted or running (or completed,
    an end that stays) is not read again (a Redis round trip and a parse per job, for a
    cancel racing the step's last instant that only Flower would show)."""
    if status in ("submitted", "running", "completed"):
        return
    ended = pipeline.ended_unfinished(get_runtime(), job_id)
    if ended is not None:
        raise ended


@app.task(name="workers.create", bind=True, throws=(JobEnded,))
def create(self: Task, job_id: str) -> str:
    return _start(self, job_id)


@app.task(name="workers.continue", bind=True, throws=(JobEnded,))
def continue_(self: Task, job_id: str) -> str:
    return _start(self, job_id)


def _start(task: Task, job_id: str) -> str:
    rt = get_runtime()
    try:
        job, worker = pipeline.call_upstream(rt, app, job_id)
        # A create's turn is submitted and relayed by this task while turns lately have
        # ended in time (orchestrator.jobs.quick); else the followers take it at once.
        here = worker if worker is not None and quick.reads_here(rt, job) else None
        if worker is not None and here is None:
            job = pipeline.submit_turn(rt, app, job, worker)
        status = job.status
        if here is not None:  # a turn that ends at once is settled here
            outcome = quick.relay_here(rt, app, job, here)  # raises only NotSubmitted
            status = outcome if outcome in ("completed", "failed") else None
    except InputError as exc:
        log.error("dropping task for %s: %s", job_id, exc)
        return "unknown"
    except Exception as exc:  # an API error, one of our own after admission, Redis away
        if isinstance(exc, quick.NotSubmitted):  # the call is made again
            log.warning("create step of %s: %s; retrying", job_id, exc)
        elif not isinstance(exc, APIError):
            log.exception("create step of %s failed", job_id)
        _retry_or_fail(task, job_id, exc, _job_repr(rt.store, job_id))
        status = "failed"
    _raise_if_ended(job_id, status)
    return status


@app.task(name="workers.follow")
def follow(job_id: str) -> str:
    """Ask the followers to (re)follow a job's stream; cheap, returns at once."""
    get_runtime().store.request_follow(job_id)
    return "requested"


@app.task(name="workers.finalize", bind=True, throws=(JobEnded,))
def finalize(self: Task, job_id: str) -> str:
    rt = get_runtime()
    try:
        outcome = pipeline.finalize(rt, app, job_id)
    except InputError as exc:
        log.error("dropping finalize for %s: %s", job_id, exc)
        return "unknown"
    except Exception as exc:  # an API error, or one of our own
        if not isinstance(exc, APIError):
            log.exception("finalize of %s failed", job_id)
        _retry_or_fail(self, job_id, exc, job_id)
        outcome = "failed"
    _raise_if_ended(job_id)
    return outcome


@app.task(name=lifecycle.SETTLE_TASK, throws=(JobEnded,))
def settle_ended(job_id: str) -> str:
    """One look at a job ended here (cancelled, expired, timed_out): wind it down, and
    settle its upstream turn if that is over (else the end sweep looks again later).
    Then, like every task whose job ended without completing, it raises JobEnded, so
    Flower shows the end state and its reason."""
    rt = get_runtime()
    job = rt.store.get_job(job_id)
    if job is not None and rt.ends.unsettled(job_id):
        outcome = lifecycle.settle_ended(app, rt, job, now_ms())
        log.info("job %s (%s): %s", job_id, job.status, outcome)
    _raise_if_ended(job_id)
    return "unknown" if job is None else job.status


@app.task(name="workers.fetch_file", bind=True)
def fetch_file(self: Task, job_id: str, name: str) -> dict[str, Any]:
    rt = get_runtime()
    # On the last try every error is recorded in files(); before it, a transient one
    # is raised to be retried.
    last = self.request.retries >= rt.settings.task_max_retries
    try:
        return fetching.fetch_file(rt, job_id, name, last_attempt=last)
    except Exception as exc:  # transient API errors, and our own (a Redis blip)
        if last:
            # files() promises an entry for every fetch; best effort (Redis may be away).
            return fetching.fetch_gave_up(rt, job_id, name, exc)
        raise self.retry(
            countdown=retry_countdown(rt.settings, rt.client.retry.delay(self.request.retries + 1)),
            max_retries=rt.settings.task_max_retries,
            exc=exc,
        ) from None


@app.task(name=delivery.TASK)
def deliver_webhook(delivery_id: str) -> str:
    """One attempt at a webhook delivery (its only argument the delivery id: the
    payload and the signing secret stay in Redis). Retries are put up again in the
    store with their backoff and sent by the sweep, not by Celery's retry()."""
    rt = get_runtime()
    return delivery.deliver(rt.settings, rt.store, delivery_id)


@app.task(name="workers.sweep")
def sweep(older_than_seconds: float = 30.0) -> int:
    """Re-send jobs whose first task was never known sent, or was lost by the broker, and
    file fetches the broker lost (see ``orchestrator.jobs.sweeps``)."""
    rt = get_runtime()
    repairs = (sweeps.resend_unsent, sweeps.resend_lost, fetching.resend_lost_files)
    return sum(repair(app, rt, older_than_seconds) for repair in repairs)
