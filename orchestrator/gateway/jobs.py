"""``/v1/jobs``: submit, continue, cancel, get, list, history, files, email and read links.

Routes are plain functions (FastAPI runs them in its thread pool) over the synchronous
facade, but submit, the hot path: it checks the body with the facade's rules, stores the
job on the event loop's Redis client (waking the outbox relay in the same call) and
answers; the relay, in a streams worker, sends its task (``jobs.relay``; with
``GATEWAY_SEND=direct``, this process does, on the executor: ``Gateway.send``). Each
checks what the caller may see before it reads or writes anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, Response

from orchestrator import rules
from orchestrator.gateway.auth import Principal, Reader, Submitter
from orchestrator.gateway.errors import COMMON, ApiError, not_found, responses
from orchestrator.gateway.links import sign
from orchestrator.gateway.schemas import (
    BulkCancelBody,
    BulkCancelOut,
    CancelBody,
    CancelOut,
    ContinueBody,
    EmailOut,
    FileEntry,
    HistoryEntry,
    JobOut,
    JobPage,
    LinkBody,
    LinkOut,
    SubmitBody,
)
from orchestrator.gateway.state import Gateway, gateway
from orchestrator.jobs.lifecycle import UPSTREAM_NOTE
from orchestrator.jobs.model import LIMITS, STATUSES, Job, JobStatus, limit_ms, parse_tag
from orchestrator.jobs.submit import with_default_limits
from orchestrator.settings import Settings
from orchestrator.store.listing import Position

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=responses(*COMMON))
GW = Annotated[Gateway, Depends(gateway)]
IdemKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="same key, same job (per tenant)"),
]


def _job(gw: Gateway, who: Principal, job_id: str) -> Job:
    """The job named in a path, if the caller may see it (404 otherwise)."""
    if not rules.JOB_ID.ok(job_id):
        raise not_found(f"job {rules.shown(job_id)}", "job_id")
    return who.visible(gw.orch.store.get_job(job_id), job_id)


def _idem(who: Principal, key: str | None) -> str | None:
    """A tenant's idempotency keys live in its own namespace: one tenant's key never
    finds another tenant's job."""
    if key is None or who.tenant is None:
        return key
    return rules.IDEMPOTENCY_KEY.check(f"t:{who.tenant}:{key}", "idempotency_key")


def _same(job: Job, who: Principal, body: SubmitBody, kind: str, settings: Settings) -> None:
    """409 when an idempotency key names a job made from a different submission."""
    if not who.sees(job):
        raise ApiError(409, "the idempotency key is taken", field="idempotency_key")
    # A limit left out is the setting's, as the job stored it.
    asked = with_default_limits(settings, body).values()
    stored = _limits_ms(getattr(job, n) for n in LIMITS)
    # A continue's tier and tags not given are the earlier job's: only those given count.
    budget = job.budget if body.budget is None else body.budget
    tags = who.tags_for(body.tags or {})
    same_tags = job.tags == tags if kind == "create" else tags.items() <= job.tags.items()
    if not same_tags or (job.kind, job.input, job.budget, stored) != (
        kind, body.input, budget, _limits_ms(asked)
    ):  # fmt: skip
        raise ApiError(
            409, "the idempotency key names a different submission", field="idempotency_key"
        )


def _limits_ms(limits: Iterable[float | None]) -> tuple[int, ...]:
    """Limits as the store keeps them (whole ms, 0 for off), to compare submissions."""
    return tuple(limit_ms(value) for value in limits)


def _accepted(job: Job) -> Response:
    """202 with the job: pydantic writes the JSON at once (the hot path of submitting;
    FastAPI would validate the model again and encode it twice)."""
    return Response(JobOut.of(job).model_dump_json(), 202, media_type="application/json")


@router.post("", status_code=202, response_model=JobOut, responses=responses(409))
async def submit(
    body: SubmitBody, who: Submitter, request: Request, idempotency_key: IdemKey = None
) -> Response:
    """Submit a job: a new worker runs ``input``. Answered once the job is stored (one
    Redis round trip on the event loop, no thread); its task is sent right after, by
    the streams workers' outbox relay (``GATEWAY_SEND=relay``) or this process."""
    gw: Gateway = request.app.state.gateway  # not a dependency: one less to solve
    sub = gw.orch.checked(
        "create", None, input=body.input, budget=body.budget, tags=who.tags_for(body.tags),
        idempotency_key=_idem(who, idempotency_key), fetch_files=body.fetch_files,
        priority=body.priority, queue_ttl=body.queue_ttl, idle_timeout=body.idle_timeout,
        deadline=body.deadline,
    )  # fmt: skip
    job, created = await gw.writer.create_job(sub)
    if created and gw.settings.gateway_send == "direct":
        await gw.send(job)  # else the relay, woken by create_job, sends it
    if idempotency_key is not None:
        _same(job, who, body, "create", gw.settings)
    return _accepted(job)


@router.post("/continue", status_code=202, response_model=JobOut, responses=responses(409))
def continue_(
    body: ContinueBody, who: Submitter, gw: GW, idempotency_key: IdemKey = None
) -> Response:
    """Add a turn to a worker named by its id or by one of our jobs."""
    worker = body.worker
    if who.tenant is not None:
        # A tenant names the worker by one of its own jobs, so it reaches only its own.
        if not rules.JOB_ID.ok(worker):
            raise ApiError(403, "a tenant-bound token names the worker by a job id", field="worker")
        _job(gw, who, worker)
    elif (
        worker.startswith("job_") and rules.JOB_ID.ok(worker) and not gw.orch.store.get_job(worker)
    ):
        raise not_found(f"job {worker}", "worker")
    tags = None if body.tags is None and who.tenant is None else who.tags_for(body.tags or {})
    job = gw.orch.continue_(
        worker, body.input, budget=body.budget, tags=tags,
        idempotency_key=_idem(who, idempotency_key), fetch_files=body.fetch_files,
        priority=body.priority, queue_ttl=body.queue_ttl, idle_timeout=body.idle_timeout,
        deadline=body.deadline,
    )  # fmt: skip
    if idempotency_key is not None:
        _same(job, who, body, "continue", gw.settings)
    return _accepted(job)


@router.post("/cancel", response_model=BulkCancelOut)
def cancel_many(body: BulkCancelBody, who: Submitter, gw: GW) -> BulkCancelOut:
    """Cancel every live job matching all the filters given (at least one). A
    tenant-bound token cancels only its tenant's jobs (its tag is added to the filter)."""
    if body.tags is None and body.status is None and body.schedule_id is None:
        # Checked before a tenant's tag is added: that tag alone is not a filter.
        raise ApiError(400, "give at least one filter: tags, status or schedule_id", field="tags")
    tags = who.tags_for(body.tags or {}) or None
    cancelled = gw.orch.cancel_many(
        tags=tags, status=body.status, schedule_id=body.schedule_id, reason=body.reason
    )
    return BulkCancelOut(cancelled=cancelled, note=UPSTREAM_NOTE)


@router.post("/{job_id}/cancel", response_model=CancelOut)
def cancel(job_id: str, who: Submitter, gw: GW, body: CancelBody | None = None) -> CancelOut:
    """Cancel a job: it ends ``cancelled`` now (one already ended is returned as it
    is). A turn already started upstream goes on and is billed (see ``note``)."""
    job = _job(gw, who, job_id)
    ended = gw.orch.cancel(job.id, reason=body.reason if body else None)
    # As a read shows it: a job that had ended keeps its posted cost in the answer.
    return CancelOut(job=JobOut.of(ended, gw.orch.store.turn_cost(ended.id)), note=UPSTREAM_NOTE)


def _cursor(text: str | None) -> Position | None:
    if text is None:
        return None
    ms, _, job_id = rules.LIST_CURSOR.check(text, "cursor").partition(".")
    return Position(int(ms), job_id)


def _ms(value: datetime | None, field: str) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ApiError(400, "give a time zone (e.g. Z)", field=field)
    ms = int(value.timestamp() * 1000)
    if not 0 <= ms < 10**15:
        raise ApiError(400, "is out of range", field=field)
    return ms


@router.get("", response_model=JobPage)
def list_jobs(
    who: Reader,
    gw: GW,
    status: Annotated[JobStatus | None, Query()] = None,
    tag: Annotated[list[str] | None, Query(description="key=value; repeat for several")] = None,
    schedule_id: str | None = None,
    created_after: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    created_before: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    """Jobs newest first, filtered; pages come from indexes. A page may hold fewer than
    ``limit`` jobs (a filter skipped some): go on while ``next_cursor`` is set."""
    tags = [parse_tag(t, "tag") for t in tag or []]
    if len(tags) > 8:
        raise ApiError(400, "at most 8 tag filters", field="tag")
    if schedule_id is not None:
        rules.SCHEDULE_ID.check(schedule_id, "schedule_id")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "unknown status", field="status")
    if who.tenant is not None:
        tags = [("tenant", who.tenant), *tags]
    since, until = _ms(created_after, "created_after"), _ms(created_before, "created_before")
    wanted = dict(tags) if len(dict(tags)) == len(set(tags)) else None
    if wanted is None:  # the same key twice with two values: nothing matches
        return JobPage(jobs=[], next_cursor=None)

    def keep(job: Job) -> bool:
        return (
            (status is None or job.status == status)
            and all(job.tags.get(k) == v for k, v in wanted.items())
            and (schedule_id is None or job.schedule_id == schedule_id)
            and who.sees(job)
        )

    index = gw.index.index_key(tag=tags[0] if tags else None, schedule_id=schedule_id)
    page = gw.index.page(
        index, limit=limit, scan=gw.settings.gateway_list_scan, after=_cursor(cursor),
        since_ms=since, until_ms=until, keep=keep,
    )  # fmt: skip
    after = page.after
    # Each listed job's turn cost, in one round trip (the console shows it per row).
    costs = gw.orch.store.turn_costs([j.id for j in page.jobs])
    return JobPage(
        jobs=[JobOut.of(j, c) for j, c in zip(page.jobs, costs, strict=True)],
        next_cursor=f"{after.created_ms}.{after.job_id}" if after else None,
    )


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, who: Reader, gw: GW) -> JobOut:
    """The job as stored now, with its turn's cost once posted."""
    job = _job(gw, who, job_id)
    return JobOut.of(job, gw.orch.store.turn_cost(job.id))


@router.get("/{job_id}/history", response_model=list[HistoryEntry])
def history(job_id: str, who: Reader, gw: GW) -> list[HistoryEntry]:
    """Status transitions, oldest first (times in epoch ms)."""
    job = _job(gw, who, job_id)
    return [HistoryEntry(**h) for h in gw.orch.history(job.id)]


@router.get("/{job_id}/files", response_model=list[FileEntry])
def files(job_id: str, who: Reader, gw: GW) -> list[FileEntry]:
    """The job's fetched files (or why one was refused or failed)."""
    job = _job(gw, who, job_id)
    got = gw.orch.files(job.id)
    return [FileEntry(name=name, **{k: v for k, v in info.items() if k != "path"})
            for name, info in got.items()]  # fmt: skip


@router.get(
    "/{job_id}/files/{name:path}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file"}},
)
def download(job_id: str, name: str, who: Reader, gw: GW) -> FileResponse:
    """One fetched file, streamed from the files directory."""
    job = _job(gw, who, job_id)
    info = gw.orch.files(job.id).get(name)
    if not info or "path" not in info:
        raise not_found(f"fetched file {rules.shown(name)}", "name")
    root = Path(gw.settings.files_dir).resolve()
    path = Path(info["path"]).resolve()
    # The recorded path was made safe when written; checked again before any read.
    if not path.is_relative_to(root) or not path.is_file():
        raise not_found(f"fetched file {rules.shown(name)}", "name")
    return FileResponse(path, media_type="application/octet-stream", filename=path.name)


@router.get("/{job_id}/email", response_model=EmailOut, responses=responses(502))
def email(job_id: str, who: Reader, gw: GW) -> EmailOut:
    """The job's worker's email address (asked of the upstream API)."""
    job = _job(gw, who, job_id)
    if job.worker_id is None:
        raise ApiError(409, "the job has no worker yet", field="job_id")
    return EmailOut(email=gw.orch.email(job.worker_id))


@router.post("/{job_id}/links", status_code=201, response_model=LinkOut)
def link(job_id: str, who: Reader, gw: GW, body: LinkBody | None = None) -> LinkOut:
    """A signed URL for this job's live updates, readable without a token until it
    expires (hand it to a browser's EventSource)."""
    job = _job(gw, who, job_id)
    key = gw.signing_key
    if key is None:
        raise ApiError(503, "read links need GATEWAY_SIGNING_KEY", field=None)
    seconds = (body.seconds if body else None) or gw.settings.gateway_link_seconds
    expires = int(time.time()) + seconds
    return LinkOut(url=f"/v1/links/{sign(key, job.id, expires)}/events", expires_at=expires)
