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

from .errors import APIStatusError, InputError
from .jobs import Job
from .runtime import Runtime
from .store import now_ms

log = logging.getLogger(__name__)


def describe(job: Job) -> str:
    """What Flower shows for a job's tasks: id, budget and a short input. No secrets."""
    return f"{job.id} budget={job.budget} input={job.short_input()!r}"


def dispatch(app: Celery, rt: Runtime, job: Job) -> None:
    """Send the job's first task, then clear it from the outbox."""
    name = "workers.create" if job.kind == "create" else "workers.continue"
    app.send_task(name, args=[job.id], argsrepr=describe(job))
    rt.store.mark_sent(job.id)


def resend_unsent(app: Celery, rt: Runtime, older_than_seconds: float = 30.0) -> int:
    """Send again the jobs written but never known sent (the producer died in between).

    Safe to run anywhere, any number of times: a job that already left ``queued`` is
    only cleared from the outbox, and ``start_turn`` is idempotent.
    """
    resent = 0
    for job_id in rt.store.unsent(int(older_than_seconds * 1000)):
        job = rt.store.get_job(job_id)
        if job is None or job.status != "queued":
            rt.store.mark_sent(job_id)
            continue
        log.warning("re-sending job %s: its first task was never known sent", job_id)
        dispatch(app, rt, job)
        resent += 1
    return resent


def start_turn(rt: Runtime, job_id: str) -> Job:
    """Create the worker (or continue it) upstream, exactly once per job.

    The job id is the ``Idempotency-Key``; an attempt is recorded before the call and
    the worker id after it, so a redelivered task that finds a worker id goes straight
    on to following, and one that does not repeats the call with the same key.
    """
    store = rt.store
    job = store.require_job(job_id)
    if job.status != "queued":
        if job.status in ("submitted", "running"):
            store.request_follow(job.id)
        return job
    store.count_attempt(job.id)
    try:
        if job.kind == "create":
            worker = rt.client.create(job.input, budget=job.budget, idempotency_key=job.id)
        else:
            assert job.worker_id is not None
            worker = rt.client.continue_(
                job.worker_id, job.input, budget=job.budget, idempotency_key=job.id
            )
    except APIStatusError as exc:
        if not exc.retryable:
            store.transition(job.id, "failed", str(exc))
        raise
    store.set_submitted(job, worker)
    log.info("job %s submitted as worker %s", job.id, worker.id)
    return store.require_job(job.id)


def finalize(rt: Runtime, app: Celery, job_id: str) -> str:
    """After the stream closed: snapshot, ledger delta, status; then fetch files.

    Returns what happened: ``completed``, ``refollow`` (the turn is still running: the
    stream closed early) or ``noop`` (already final).
    """
    store = rt.store
    job = store.require_job(job_id)
    if job.done or job.worker_id is None:
        store.release_follow(job.id)
        return "noop"
    worker = rt.client.retrieve(job.worker_id)
    store.save_snapshot(worker)
    if worker.running or worker.status == "running":
        store.request_follow(job.id, now=True)
        return "refollow"
    store.post_turn(job, worker, now_ms())
    store.r.hset(store.keys.job(job.id), "update_to", store.relayed(worker.id))
    if job.fetch_files:
        for file in worker.files:
            name = file.filename or file.url.rsplit("/", 1)[-1]
            app.send_task(
                "workers.fetch_file", args=[job.id, name], argsrepr=f"{job.id} file={name!r}"
            )
    store.transition(job.id, "completed")
    store.release_follow(job.id)
    return "completed"


def safe_path(root: Path, name: str) -> Path:
    """``root/name`` if it stays inside ``root``; InputError naming the file otherwise."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or "\\" in name:
        raise InputError("file_path", f"{name!r} is not a safe relative path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InputError("file_path", f"{name!r} is not a safe relative path")
    base = root.resolve()
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base):
        raise InputError("file_path", f"{name!r} escapes the files directory")
    return target


def fetch_file(rt: Runtime, job_id: str, name: str) -> dict[str, Any]:
    """Stream one published file to ``FILES_DIR/<job id>/<name>``; record size and hash."""
    job = rt.store.require_job(job_id)
    assert job.worker_id is not None
    root = Path(rt.settings.files_dir) / job.id
    try:
        dest = safe_path(root, name)
    except InputError as exc:
        info: dict[str, Any] = {"refused": exc.message}
        rt.store.record_file(job.id, name, info)
        log.warning("job %s: refused file %r: %s", job.id, name, exc.message)
        return info
    got = rt.client.download_file(job.worker_id, name, dest)
    info = {"path": str(got.path), "size": got.size, "sha256": got.sha256}
    rt.store.record_file(job.id, name, info)
    return info
