"""The ``CREATE_JOB`` call that stores a checked submission as a new queued job, shared
by :meth:`RedisStore.create_job <orchestrator.store.jobs.RedisStore.create_job>` and the
gateway's async writer (:mod:`orchestrator.store.intake`).
"""

from __future__ import annotations

import json

from orchestrator.jobs.model import LIMITS, Job, Submission, limit_ms, next_due
from orchestrator.store.cells import Cells
from orchestrator.store.files import now_ms
from orchestrator.store.status import history_line
from orchestrator.store.wakes import push_after


def creation(
    cells: Cells, cell: int, sub: Submission, wake_cap: int = 0
) -> tuple[Job, list[str], list[str | int]]:
    """The ``CREATE_JOB`` call that stores ``sub`` as a new queued job: (the job it
    writes, the script's KEYS, its ARGV). Shared by :meth:`RedisStore.create_job` and the
    gateway's async writer (:mod:`orchestrator.store.intake`). ``wake_cap`` > 0: the job
    id goes onto the relay's wake list too (kept to that many entries)."""
    keys = cells.keys[cell]
    job_id = cells.new_job_id(cell)
    if push_after(cells, wake_cap):
        wake_cap = 0  # the writer pushes the wake itself
    created = now_ms()
    record = {
        "id": job_id,
        "kind": sub.kind,
        "input": sub.input,
        "budget": sub.budget,
        "tags": json.dumps(sub.tags, sort_keys=True),
        "idempotency_key": sub.idempotency_key or "",
        "fetch_files": "1" if sub.fetch_files else "0",
        "schedule_id": sub.schedule_id or "",
        "priority": sub.priority,
        "worker_id": sub.worker_id or "",
        "status": "queued",
        "attempts": "0",
        "created_at": str(created),
        "at_queued": str(created),
        **{f"{name}_ms": str(limit_ms(getattr(sub, name))) for name in LIMITS},
        # The history's first entry (see scripts.records.HISTORY_FN for its form).
        "history": history_line("queued", created),
        "history_n": "1",
    }
    names = [keys.job(job_id), keys.jobs, keys.outbox, keys.job_states, keys.jobs_live,
             keys.job_indexes, keys.outbox_wake]  # fmt: skip
    indexes = [keys.jobs_by_tag(k, v) for k, v in sorted(sub.tags.items())]
    if sub.schedule_id:
        indexes.append(keys.jobs_by_schedule(sub.schedule_id))
    names += indexes
    if sub.idempotency_key:
        names.append(keys.idempotency(sub.idempotency_key))
    flat = [part for item in record.items() for part in item]
    job = Job.from_hash(record)
    return job, names, [job_id, created, next_due(job, created), len(indexes), wake_cap, *flat]
