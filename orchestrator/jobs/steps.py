"""The job pipeline's steps, called by the thin Celery tasks in ``workers_tasks``.

Each step loads what it needs from the store, calls the API, and hands the result
back to the store. Each is safe to run twice (a redelivered task): ``start_turn``
creates at most one upstream worker per job, ``finalize`` posts a turn's cost once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery

from orchestrator.controls.budgets import BudgetExceeded, next_period_ms
from orchestrator.errors import (
    APIError,
    APIStatusError,
    JobEnded,
    ResponseTooLargeError,
    StreamError,
)
from orchestrator.hooks import events as hooks
from orchestrator.jobs.files import send_fetches
from orchestrator.jobs.model import FAILED_ENDS, LOCAL_ENDS, Job, overdue
from orchestrator.jobs.settle import settle_and_complete, settle_turn
from orchestrator.ledger import FigureError
from orchestrator.ops.instruments import JOBS_ENDED_HERE
from orchestrator.runtime import Runtime
from orchestrator.store.jobs import now_ms
from orchestrator.wire.models import Worker

log = logging.getLogger(__name__)


#: Longest tags text in a task's argsrepr (16 tags of 190 characters would be too much).
TAGS_SHOWN_MAX = 120


def describe(job: Job) -> str:
    """What Flower shows for a job's tasks: the job, its budget, tags (the tenant, say)
    and schedule, and a short input. Only our own validated values; no secrets."""
    parts = [job.id, f"budget={job.budget}"]
    if job.tags:
        tags = ",".join(f"{k}={v}" for k, v in sorted(job.tags.items()))
        parts.append(f"tags={tags if len(tags) <= TAGS_SHOWN_MAX else tags[:117] + '...'}")
    if job.schedule_id:
        parts.append(f"schedule={job.schedule_id}")
    parts.append(f"input={job.short_input()!r}")
    return " ".join(parts)


def ended_unfinished(rt: Runtime, job_id: str) -> JobEnded | None:
    """The :class:`JobEnded` a task raises when the job ended without completing
    (``FAILED_ENDS``: failed, refused, cancelled, ...), else None."""
    job = rt.store.get_job(job_id)
    if job is None or job.status not in FAILED_ENDS:
        return None
    return JobEnded(job.id, job.status, job.error or "")


# Redis transport priorities: lower runs first (see the Celery app's priority_steps).
PRIORITY = {"interactive": 0, "batch": 9}


#: Task names of a job's first step.
FIRST_TASKS = ("workers.create", "workers.continue")


def dispatch(app: Celery, rt: Runtime, job: Job) -> None:
    """Mark the job dispatched, send its first task, then take it out of the outbox.

    The mark comes before the send: a worker may begin the task (clearing the mark)
    before ``send_task`` returns, and a mark written after that would stay behind. The
    outbox entry goes after it: a producer that dies before the send leaves the job in
    the outbox, which :func:`resend_unsent` sends again on any broker.
    """
    name = FIRST_TASKS[0] if job.kind == "create" else FIRST_TASKS[1]
    rt.store.mark_sending(job.id)
    app.send_task(name, args=[job.id], argsrepr=describe(job), priority=PRIORITY[job.priority])
    rt.store.mark_sent(job.id)


def admit(app: Celery, rt: Runtime, job: Job) -> bool:
    """Take the job's concurrency slots and budget hold before it goes upstream.

    False when it must wait (for a slot: it is sent again when one frees; for the next
    budget period, when the cap says so) or was refused (its status says why); nothing
    was sent upstream then.
    """
    waiting_on = rt.limits.acquire(job)
    if waiting_on is not None:
        log.info("job %s waits for a slot of %s", job.id, waiting_on)
        return False
    try:
        rt.budgets.reserve(job)
    except BudgetExceeded as exc:
        if exc.cap.on_exceed == "wait":
            until = next_period_ms(exc.cap.period, now_ms())
            rt.budgets.wait_until(job.id, until)
            log.info("job %s waits for the next period: %s", job.id, exc)
            release_slots(app, rt, job)
        else:
            fail(app, rt, job.id, str(exc))
        return False
    return True


def release_slots(app: Celery, rt: Runtime, job: Job) -> None:
    """Free the job's concurrency slots and send the jobs that were waiting for them."""
    dispatch_promoted(app, rt, rt.limits.release(job))


def dispatch_promoted(app: Celery, rt: Runtime, promoted_ids: list[str]) -> None:
    """Send the jobs that a release of slots promoted (clearing any that moved on; one
    that ended meanwhile passes its new slot on at once)."""
    for promoted_id in promoted_ids:
        promoted = rt.store.get_job(promoted_id)
        if promoted is not None and promoted.status == "queued":
            dispatch(app, rt, promoted)
        else:
            rt.store.drop_unsent(promoted_id)
            if promoted is not None and promoted.done:
                release_slots(app, rt, promoted)


def turn_ended(app: Celery, rt: Runtime, job: Job) -> None:
    """A turn is over (completed or failed): release its hold and slots. Idempotent."""
    rt.budgets.release(job.id)
    release_slots(app, rt, job)


def fail(app: Celery, rt: Runtime, job_id: str, message: str) -> None:
    """Mark the job failed and give back what it held: hold, slots, follow lease (a
    finalize that gave up leaves no lease to lapse first) and its begun entry (a create
    that failed upstream would leave it to the repair pass, RESEND_AFTER_SECONDS on)."""
    rt.store.transition(job_id, "failed", message)
    rt.store.release_follow(job_id)
    rt.store.forget_dispatched(job_id)
    hooks.job_ended(rt.store, job_id)
    job = rt.store.get_job(job_id)
    if job is not None:
        turn_ended(app, rt, job)


def upstream_key(job: Job) -> str:
    """The ``Idempotency-Key`` of the job's upstream call: the client's own key when it
    gave one, so that a submission Redis lost (a crash under ``appendfsync everysec``)
    made again with the same key finds the same upstream worker; else the job id."""
    return f"idem:{job.idempotency_key}" if job.idempotency_key else job.id


def start_turn(rt: Runtime, app: Celery, job_id: str) -> Job:
    """Create the worker (or continue it) upstream, exactly once per job; its stream is
    put up for the followers at once.

    ``upstream_key(job)`` is the ``Idempotency-Key``; an attempt is recorded before the call and
    the worker id after it, so a redelivered task that finds a worker id goes straight
    on to following, and one that does not repeats the call with the same key.
    """
    job, worker = call_upstream(rt, app, job_id)
    return job if worker is None else submit_turn(rt, app, job, worker)


def submit_turn(rt: Runtime, app: Celery, job: Job, worker: Worker) -> Job:
    """Link ``worker`` (:func:`call_upstream`'s answer) to ``job``, move it to
    ``submitted`` and put its stream up for the followers at once: the job as it is
    then (a create task relays its own instead: :mod:`orchestrator.jobs.quick`)."""
    if not rt.store.set_submitted(job, worker):
        return submit_refused(rt, app, job)
    log.debug("job %s submitted as worker %s", job.id, worker.id)
    return job.model_copy(update={"status": "submitted", "worker_id": worker.id})


def call_upstream(rt: Runtime, app: Celery, job_id: str) -> tuple[Job, Worker | None]:
    """:func:`start_turn` up to the upstream call: the job and the worker that call
    answered, not yet linked to the job (the caller submits it: ``set_submitted`` or
    ``submit_into``); no worker when nothing was called (the job is past queued, ended
    here, not admitted, or refused by the upstream)."""
    store = rt.store
    job, counted = store.begin_attempt(job_id)
    if job.status != "queued":
        if job.status in ("submitted", "running"):
            store.request_follow(job.id)
        return job, None
    late = overdue(job, now_ms())
    if late is not None:  # its queue time-to-live (or deadline) passed: nothing is sent
        if rt.ends.end_here(job.id, *late):
            JOBS_ENDED_HERE.labels(state=late[0]).inc()
            log.info("job %s %s: %s", job.id, *late)
            rt.ends.settled(job.id)  # no call was made: nothing to settle later
            hooks.job_ended(store, job.id)
        turn_ended(app, rt, job)  # e.g. a slot it was promoted to
        return store.require_job(job.id), None
    if not counted:
        if not admit(app, rt, job):
            return store.require_job(job.id), None
        if not store.count_attempt(job.id):
            # Redis lost the job meanwhile (a host crash): nothing is sent upstream, and
            # what admit took is given back.
            turn_ended(app, rt, job)
            return store.require_job(job.id), None  # raises InputError: no such job
    try:
        if job.kind == "create":
            worker = rt.client.create(
                job.input, budget=job.budget, idempotency_key=upstream_key(job)
            )
        else:
            assert job.worker_id is not None
            worker = rt.client.continue_(
                job.worker_id, job.input, budget=job.budget, idempotency_key=upstream_key(job)
            )
    except APIStatusError as exc:
        if not exc.retryable:
            fail(app, rt, job.id, str(exc))
        raise
    except (StreamError, ResponseTooLargeError) as exc:
        # A malformed answer (e.g. an unsafe worker id, or one over ANSWER_MAX_BYTES):
        # the same idempotency key gets the same answer, so it is not retried; the job
        # fails and gives back its hold and slots now.
        fail(app, rt, job.id, str(exc))
        return store.require_job(job.id), None
    return job, worker


def submit_refused(rt: Runtime, app: Celery, job: Job) -> Job:
    """The job as it is after the store refused to submit it. Ended here meanwhile
    (cancelled, say): its turn runs upstream all the same, so it is put up again for
    settling when that turn ends. Or Redis lost the job (a host crash): nothing was
    written, what admit took is given back, and this raises InputError (no such job)."""
    if rt.store.get_job(job.id) is None:
        turn_ended(app, rt, job)
    now = rt.store.require_job(job.id)
    if now.status in LOCAL_ENDS:
        rt.ends.mark_ended(job.id)
    return now


def finalize(
    rt: Runtime,
    app: Celery,
    job_id: str,
    *,
    read: Job | None = None,
    updates: Sequence[str] | None = None,
) -> str:
    """After the stream closed: snapshot, ledger delta, status; then fetch files.

    Returns what happened: ``completed``, ``refollow`` (the turn is still running: the
    stream closed early), ``failed`` (an upstream cost or usage figure outside the
    ledger's bounds: nothing posted, the hold and slots given back) or ``noop``.
    ``read``: the job as just read from the store, after the stream closed (else read
    here); ``updates``: the turn's updates as stored, when the caller relayed them all
    (else they are read back to be folded).
    """
    store = rt.store
    job = read if read is not None else store.get_job(job_id)
    if job is None:
        # Lost with Redis's last writes, or expired: nothing to settle, and a follow
        # entry put up for it would be claimed again at every lease, for ever; what
        # late writes left of it and its worker is let expire.
        store.forget_lost(job_id)
        job = store.require_job(job_id)  # raises InputError, as for any unknown job
    if job.done or job.worker_id is None:
        store.release_follow(job.id)
        if job.status in LOCAL_ENDS:  # ended here: its turn is settled by the sweep
            rt.ends.mark_ended(job.id)
            release_slots(app, rt, job)
        elif job.done:
            try:
                if job.status == "failed" and job.worker_id is not None:
                    settle_failed_turn(rt, job)
            finally:
                # e.g. failed by the follower: give back its hold, once its turn is
                # posted (a hold on caps spanning tenants counts what was posted).
                turn_ended(app, rt, job)
            hooks.job_ended(store, job.id)  # recorded once, however often this runs
        return "noop"
    worker = rt.client.retrieve(job.worker_id)
    if worker.running or worker.status == "running":
        store.update_snapshot(worker, job.id)
        store.request_follow(job.id, now=True)
        return "refollow"
    fetches = bool(job.fetch_files and worker.files)
    # Relayed whole by the caller (and no files to fetch first): post and complete in
    # one round trip; a refused post completes nothing (see settle_and_complete).
    one_trip = updates is not None and not fetches
    try:
        if updates is not None and one_trip:
            raw_hold, promoted, subscribed = settle_and_complete(rt, job, worker, updates)
        else:
            relayed, raw_hold = settle_turn(rt, job, worker)
    except FigureError as exc:  # an absurd upstream figure: nothing was posted
        log.error("job %s: %s", job.id, exc)
        # Kept as the upstream said it (the job's reason names the figure), so that
        # reconcile reports the figure, not also a stale snapshot.
        store.update_snapshot(worker, job.id)
        store.release_follow(job.id)
        fail(app, rt, job.id, f"cost not posted: {exc}")
        return "failed"
    if one_trip:
        finish_turn(app, rt, job, raw_hold, promoted, subscribed)
        return "completed"
    end = store.batch()
    if raw_hold is not None:
        rt.budgets.release_into(end, job.id, raw_hold)
    if fetches:
        send_fetches(app, rt, job, worker)
    store.complete_into(end, job, relayed, updates)
    promoted_at = rt.limits.release_into(end, job)
    subscribed_at = hooks.subscribed_into(store, end)
    replies = end.execute()
    finish_turn(app, rt, job, None, [str(p) for p in replies[promoted_at]],
                int(replies[subscribed_at]))  # fmt: skip
    return "completed"


def finish_turn(
    app: Celery, rt: Runtime, job: Job, raw_hold: str | None, promoted: list[str], subscribed: int
) -> None:
    """After a turn's completion is written: give back its hold (``raw_hold``, as read
    with the post), note the end for webhooks, and send the jobs promoted to its slots."""
    if raw_hold is not None:
        end = rt.store.batch()
        rt.budgets.release_into(end, job.id, raw_hold)
        end.execute()
    hooks.job_ended(rt.store, job.id, subscribed)
    dispatch_promoted(app, rt, promoted)


def settle_failed_turn(rt: Runtime, job: Job) -> None:
    """Post the cost of a turn that ran upstream although its job failed here (the
    follower could not read its stream: a 404, events that are never JSON), once the
    upstream says the turn is over. The upstream bills it all the same, so the ledger
    must hold it. Best effort: a turn still running, an unreadable answer or an absurd
    figure is left to ``orchestrator reconcile``, which finds the difference."""
    assert job.worker_id is not None
    if rt.store.turn_cost(job.id) is not None:
        return  # posted already (a redelivered finalize)
    try:
        worker = rt.client.retrieve(job.worker_id)
        if worker.running or worker.status == "running":
            log.info("job %s failed while its turn still runs upstream; not settled", job.id)
            return
        try:
            settle_turn(rt, job, worker)  # its hold is given back after (turn_ended)
        except FigureError:
            rt.store.update_snapshot(worker, job.id)  # as finalize does: nothing posted
            raise
    except (APIError, FigureError) as exc:
        log.warning("job %s: the cost of its failed turn was not posted: %s", job.id, exc)
    else:
        log.info("job %s failed; its turn's cost upstream was posted", job.id)
