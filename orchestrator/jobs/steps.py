"""The job pipeline's steps, called by the thin Celery tasks in ``workers_tasks``.

Each step loads what it needs from the store, calls the API, and hands the result
back to the store. Each is safe to run twice (a redelivered task): ``start_turn``
creates at most one upstream worker per job, ``finalize`` posts a turn's cost once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery

from orchestrator.celery import API_QUEUE
from orchestrator.controls.budgets import BudgetExceeded, next_period_ms
from orchestrator.errors import (
    APIError,
    APIStatusError,
    InputError,
    JobEnded,
    ResponseTooLargeError,
    StreamError,
)
from orchestrator.jobs.model import FAILED_ENDS, LOCAL_ENDS, Job, overdue
from orchestrator.jobs.settle import settle_turn
from orchestrator.ledger import FigureError
from orchestrator.ops.instruments import JOBS_ENDED_HERE
from orchestrator.runtime import Runtime
from orchestrator.store.jobs import now_ms

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


#: Task names of a job's first step, and of a file fetch.
FIRST_TASKS = ("workers.create", "workers.continue")
FETCH_TASK = "workers.fetch_file"


def dispatch(app: Celery, rt: Runtime, job: Job) -> None:
    """Send the job's first task, then clear it from the outbox."""
    name = FIRST_TASKS[0] if job.kind == "create" else FIRST_TASKS[1]
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
    """Mark the job failed and give back what it held."""
    rt.store.transition(job_id, "failed", message)
    job = rt.store.get_job(job_id)
    if job is not None:
        turn_ended(app, rt, job)


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
    :meth:`BrokerLayout.lost <orchestrator.store.broker.BrokerLayout.lost>`). A second
    copy of a task that was not lost after all is harmless: ``start_turn`` is idempotent.
    """
    store = rt.store
    due = store.untaken(int(older_than_seconds * 1000))
    lost = store.broker.lost(
        due, "resend-lost", older_than_seconds, _job_of, backlog_queue=API_QUEUE
    )
    resent = 0
    for job_id in lost:
        job = store.get_job(job_id)
        if job is None or job.status != "queued" or job.attempts:
            store.forget_dispatched(job_id)  # begun (it left the set then) or gone
        else:
            log.warning("re-sending job %s: the broker lost its first task", job_id)
            dispatch(app, rt, job)
            resent += 1
    return resent


def _job_of(task: str, args: list[Any]) -> list[str]:
    return [str(args[0])] if task in FIRST_TASKS and args else []


def upstream_key(job: Job) -> str:
    """The ``Idempotency-Key`` of the job's upstream call: the client's own key when it
    gave one, so that a submission Redis lost (a crash under ``appendfsync everysec``)
    made again with the same key finds the same upstream worker; else the job id."""
    return f"idem:{job.idempotency_key}" if job.idempotency_key else job.id


def start_turn(rt: Runtime, app: Celery, job_id: str) -> Job:
    """Create the worker (or continue it) upstream, exactly once per job.

    ``upstream_key(job)`` is the ``Idempotency-Key``; an attempt is recorded before the call and
    the worker id after it, so a redelivered task that finds a worker id goes straight
    on to following, and one that does not repeats the call with the same key.
    """
    store = rt.store
    job, counted = store.begin_attempt(job_id)
    if job.status != "queued":
        if job.status in ("submitted", "running"):
            store.request_follow(job.id)
        return job
    late = overdue(job, now_ms())
    if late is not None:  # its queue time-to-live (or deadline) passed: nothing is sent
        if rt.ends.end_here(job.id, *late):
            JOBS_ENDED_HERE.labels(state=late[0]).inc()
            log.info("job %s %s: %s", job.id, *late)
            rt.ends.settled(job.id)  # no call was made: nothing to settle later
        turn_ended(app, rt, job)  # e.g. a slot it was promoted to
        return store.require_job(job.id)
    if not counted:
        if not admit(app, rt, job):
            return store.require_job(job.id)
        store.count_attempt(job.id)
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
    except StreamError as exc:
        # A malformed answer (e.g. an unsafe worker id): the same idempotency key gets
        # the same answer, so it is not retried; the job fails and gives back its hold
        # and slots now.
        fail(app, rt, job.id, str(exc))
        return store.require_job(job.id)
    if not store.set_submitted(job, worker):
        # Ended here meanwhile (cancelled, say): its turn runs upstream all the same, so
        # it is put up again for settling when that turn ends.
        now = store.require_job(job.id)
        if now.status in LOCAL_ENDS:
            rt.ends.mark_ended(job.id)
        return now
    log.info("job %s submitted as worker %s", job.id, worker.id)
    return job.model_copy(update={"status": "submitted", "worker_id": worker.id})


def finalize(rt: Runtime, app: Celery, job_id: str) -> str:
    """After the stream closed: snapshot, ledger delta, status; then fetch files.

    Returns what happened: ``completed``, ``refollow`` (the turn is still running: the
    stream closed early), ``failed`` (an upstream cost or usage figure outside the
    ledger's bounds: nothing posted, the hold and slots given back) or ``noop``.
    """
    store = rt.store
    job = store.require_job(job_id)
    if job.done or job.worker_id is None:
        store.release_follow(job.id)
        if job.status in LOCAL_ENDS:  # ended here: its turn is settled by the sweep
            rt.ends.mark_ended(job.id)
            release_slots(app, rt, job)
        elif job.done:
            turn_ended(app, rt, job)  # e.g. failed by the follower: give back its hold
        return "noop"
    worker = rt.client.retrieve(job.worker_id)
    if worker.running or worker.status == "running":
        store.save_snapshot(worker)
        store.request_follow(job.id, now=True)
        return "refollow"
    try:
        relayed, raw_hold = settle_turn(rt, job, worker)
    except FigureError as exc:  # an absurd upstream figure: nothing was posted
        log.error("job %s: %s", job.id, exc)
        store.release_follow(job.id)
        fail(app, rt, job.id, f"cost not posted: {exc}")
        return "failed"
    fetches = []
    if job.fetch_files:
        for file in worker.files:
            name = file.filename or file.url.rsplit("/", 1)[-1]
            send_fetch(app, job.id, name)
            fetches.append(name)
    end = store.batch()
    # Watched until a worker begins each (see resend_lost_files).
    store.fetches_sent_into(end, job.id, fetches)
    store.complete_into(end, job, relayed)
    if raw_hold is not None:
        rt.budgets.release_into(end, job.id, raw_hold)
    promoted_at = rt.limits.release_into(end, job)
    promoted = end.execute()[promoted_at]
    dispatch_promoted(app, rt, [str(p) for p in promoted])
    return "completed"


def send_fetch(app: Celery, job_id: str, name: str) -> None:
    shown = name if len(name) <= 120 else f"{name[:117]}..."  # Flower shows it
    app.send_task(FETCH_TASK, args=[job_id, name], argsrepr=f"{job_id} file={shown!r}")


def _fetch_of(task: str, args: list[Any]) -> list[tuple[str, str]]:
    if task != FETCH_TASK or len(args) != 2:
        return []
    return [(str(args[0]), str(args[1]))]


def resend_lost_files(app: Celery, rt: Runtime, older_than_seconds: float = 30.0) -> int:
    """Send again the file fetches the broker lost (see :func:`resend_lost`); a fetch
    whose file is recorded already is only forgotten."""
    store = rt.store
    due = store.unbegun_fetches(int(older_than_seconds * 1000))
    lost = store.broker.lost(
        due, "resend-files", older_than_seconds, _fetch_of, backlog_queue=API_QUEUE
    )
    resent = 0
    for job_id, name in lost:
        if store.file_recorded(job_id, name):
            store.forget_fetch(job_id, name)
        else:
            log.warning("re-sending the fetch of %r for job %s: the broker lost it", name, job_id)
            send_fetch(app, job_id, name)
            store.fetch_resent(job_id, name)
            resent += 1
    return resent


#: Bounds on a published file's name, well inside what filesystems take (255 bytes a
#: part, 4,096 a path) once ``FILES_DIR/<job id>/`` is in front.
FILE_PART_MAX_BYTES = 255
FILE_NAME_MAX_BYTES = 1024
FILE_NAME_MAX_DEPTH = 32


def _shown(name: str) -> str:
    return repr(name if len(name) <= 80 else f"{name[:77]}...")


def safe_path(root: Path, name: str) -> Path:
    """``root/name`` if it stays inside ``root``; InputError naming the file otherwise."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or "\\" in name:
        raise InputError("file_path", f"{_shown(name)} is not a safe relative path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InputError("file_path", f"{_shown(name)} is not a safe relative path")
    encoded = name.encode("utf-8", "surrogatepass")
    if len(encoded) > FILE_NAME_MAX_BYTES or len(parts) > FILE_NAME_MAX_DEPTH:
        raise InputError(
            "file_path",
            f"{_shown(name)} is longer than {FILE_NAME_MAX_BYTES} bytes"
            f" or deeper than {FILE_NAME_MAX_DEPTH} levels",
        )
    if any(len(p.encode("utf-8", "surrogatepass")) > FILE_PART_MAX_BYTES for p in parts):
        raise InputError(
            "file_path", f"{_shown(name)} has a part longer than {FILE_PART_MAX_BYTES} bytes"
        )
    base = root.resolve()
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base):
        raise InputError("file_path", f"{_shown(name)} escapes the files directory")
    return target


def fetch_file(
    rt: Runtime, job_id: str, name: str, *, last_attempt: bool = False
) -> dict[str, Any]:
    """Stream one published file to ``FILES_DIR/<job id>/<name>``; record size and hash.

    Every way a fetch ends is recorded in the job's files: ``{path, size, sha256}``,
    ``{refused}`` (an unsafe name), or ``{error}`` (a file over ``FILE_MAX_BYTES``, an
    answer that is final, a name the disk will not take). A transient failure (no
    answer, timeout, 5xx) is raised for the task to retry, and recorded as an error
    too on its ``last_attempt``.
    """
    rt.store.forget_fetch(job_id, name)
    job = rt.store.require_job(job_id)
    assert job.worker_id is not None
    root = Path(rt.settings.files_dir) / job.id
    try:
        dest = safe_path(root, name)
    except InputError as exc:
        info: dict[str, Any] = {"refused": exc.message}
        rt.store.record_file(job.id, name, info)
        log.warning("job %s: refused file %s: %s", job.id, _shown(name), exc.message)
        return info
    try:
        got = rt.client.download_file(job.worker_id, name, dest)
    except (ResponseTooLargeError, OSError) as exc:
        return _fetch_failed(rt, job.id, name, exc)
    except APIError as exc:
        if last_attempt or (isinstance(exc, APIStatusError) and not exc.retryable):
            return _fetch_failed(rt, job.id, name, exc)
        raise
    info = {"path": str(got.path), "size": got.size, "sha256": got.sha256}
    rt.store.record_file(job.id, name, info)
    return info


def _fetch_failed(rt: Runtime, job_id: str, name: str, exc: Exception) -> dict[str, Any]:
    """Record a fetch that failed for good as ``{error}``."""
    if isinstance(exc, OSError):  # e.g. "a" is a file and "a/b" wants it as a directory
        message = f"cannot write the file: {exc.strerror or type(exc).__name__}"
    else:
        message = str(exc)
    info: dict[str, Any] = {"error": message}
    rt.store.record_file(job_id, name, info)
    log.warning("job %s: file %s not fetched: %s", job_id, _shown(name), message)
    return info
