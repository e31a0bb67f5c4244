"""The relay's wake list: ids of jobs the gateway stored without sending their first
task (``CREATE_JOB`` pushes them), popped by the relay of a streams worker.

A pop is exclusive, so of several relays one sends each job. The list is only a
wake-up: the outbox stays the record of what is unsent, and what the list loses (a
relay that dies between pop and send, entries past the cap) the re-send sweep sends
after ``RESEND_AFTER_SECONDS``.
"""

from __future__ import annotations

from typing import Any

from orchestrator.jobs.model import Job
from orchestrator.store.cells import Cells

#: Entries the wake list keeps (``CREATE_JOB`` trims the oldest past it): a bound for
#: a deployment whose relay is down; the jobs whose wakes go are sent by the sweep.
WAKE_CAP = 100_000


class WakeList:
    def __init__(self, client: Any, cells: Cells) -> None:
        self.r = client
        self.keys = cells.control  # one list, whatever the cells (see push_call)
        self.cells = cells

    def take(self, timeout: float, count: int) -> list[str]:
        """Up to ``count`` ids, oldest first, waiting up to ``timeout`` s for the first
        (BRPOP, then RPOP with a count: Redis 6.2)."""
        first = self.r.brpop([self.keys.outbox_wake], timeout=timeout)
        if first is None:
            return []
        rest = self.r.rpop(self.keys.outbox_wake, count - 1) if count > 1 else None
        return [str(first[1]), *(str(i) for i in rest or [])]

    def unsent(self, job_ids: list[str]) -> list[Job]:
        """Of ``job_ids``, the jobs still queued and in the outbox (one round trip):
        one the sweep has sent meanwhile, or that moved on, or expired, is left out."""
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                k = self.cells.of_job(job_id)
                pipe.hgetall(k.job(job_id))
                pipe.zscore(k.outbox, job_id)
            replies = pipe.execute()
        jobs = []
        for record, score in zip(replies[::2], replies[1::2], strict=True):
            if record and score is not None:
                job = Job.from_hash(record)
                if job.status == "queued":
                    jobs.append(job)
        return jobs

    def length(self) -> int:
        return int(self.r.llen(self.keys.outbox_wake))


def push_after(cells: Cells, cap: int) -> bool:
    """Whether a writer pushes a new job's wake itself, after CREATE_JOB: with several
    cells the wake list (control keys) is in another slot than the job, so the script
    cannot. A wake lost in between is the sweep's, as any lost wake is."""
    return cap > 0 and cells.count > 1
