"""The submit sequence, in one place: validate a submission, create its job in the
store, dispatch the job if it is new. ``Orchestrator.submit`` / ``continue_`` and each
run of a schedule go through here; creating a schedule validates its future runs with
the same :func:`check`.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from orchestrator import rules
from orchestrator.errors import APIError, InputError, NotFoundError, UnknownIdError
from orchestrator.jobs.model import LIMITS, Job, Submission, validate_submission
from orchestrator.jobs.steps import dispatch
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.store.jobs import RedisStore
from orchestrator.wire.models import Budget


def check(settings: Settings, **fields: Any) -> Submission:
    """The validated submission (``fields``: submit's keywords plus ``kind`` and
    ``worker_id``); InputError naming the field, before anything is written. A limit
    not given (None) takes the setting's default (``JOB_QUEUE_TTL`` ...; 0 is off)."""
    sub = validate_submission(settings.max_input_chars, **fields)
    return sub.model_copy(update=with_default_limits(settings, sub))


def with_default_limits(settings: Settings, asked: object) -> dict[str, float | None]:
    """``asked``'s limits (attributes named as :data:`LIMITS`), each not given (None) as
    its setting's (``JOB_QUEUE_TTL`` ...; a setting of 0 is off: None): what the job
    stores."""
    given = {name: getattr(asked, name) for name in LIMITS}
    return {
        name: (getattr(settings, f"job_{name}") or None) if value is None else value
        for name, value in given.items()
    }


def enqueue(app: Celery, rt: Runtime, sub: Submission) -> Job:
    """Store a checked submission as a queued job and dispatch it, unless its
    idempotency key names a job already (that job is returned, not sent again)."""
    job, created = rt.store.create_job(sub)
    if created:
        dispatch(app, rt, job)
    return job


def submit(app: Celery, rt: Runtime, **fields: Any) -> Job:
    """:func:`check`, then :func:`enqueue`."""
    return enqueue(app, rt, check(rt.settings, **fields))


def require_worker(rt: Runtime, worker_id: str, *, unsure_ok: bool = False) -> None:
    """InputError ``worker_id`` unless a job of ours ran the worker (we hold its
    snapshot) or the API knows it: a turn for a worker that does not exist is refused
    here, not enqueued to fail later. With ``unsure_ok`` an API that cannot answer now
    lets it through (the task's retries will ask again)."""
    if rt.store.snapshot(worker_id) is not None:
        return
    try:
        rt.client.retrieve(worker_id)
    except NotFoundError:
        raise UnknownIdError("worker_id", f"no worker {worker_id}") from None
    except APIError:
        if not unsure_ok:
            raise


def carried_over(
    rt: Runtime, named: str | None, worker_id: str, budget: Budget | None,
    tags: dict[str, str] | None,
) -> tuple[Budget, dict[str, str]]:  # fmt: skip
    """A continue's budget tier and tags: those given, over the earlier job's (the job
    ``named``, else the worker's latest job of ours; ``standard`` and none when its
    records are gone). A tenant's next turn is booked, capped and limited as the
    tenant's unless the caller says otherwise; a tag given replaces only its own key."""
    earlier_id = named or rt.ends.active_job(worker_id)
    earlier = rt.store.get_job(earlier_id) if earlier_id else None
    given: Any = tags  # a caller's wrong type is refused by check(), naming the field
    if earlier is not None and isinstance(given, dict):
        given = {**earlier.tags, **given}
    elif given is None:
        given = dict(earlier.tags) if earlier is not None else {}
    if budget is None:
        budget = earlier.budget if earlier is not None else "standard"
    return budget, given


def worker_id_of(store: RedisStore, worker_or_job: str) -> str:
    """The upstream worker id named directly or by one of our job ids."""
    # Checked by the id rules here, where every caller passes (the schedules' facade
    # too), before a key or a URL is built from it.
    if isinstance(worker_or_job, str) and worker_or_job.startswith("job_"):
        job = store.require_job(rules.JOB_ID.check(worker_or_job, "job_id"))
        if job.worker_id is None:
            raise InputError("worker_id", f"job {job.id} has no worker yet ({job.status})")
        return job.worker_id
    return rules.WORKER_ID.check(worker_or_job, "worker_id")
