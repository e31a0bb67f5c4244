"""How jobs end here: the live index their limits are swept from, the set of jobs ended
here (cancelled, expired, timed out) whose wind-down and settlement follow, and the reads
a bulk cancel filters by. The policy is :mod:`orchestrator.jobs.lifecycle`'s.

``<p>:jobs:live`` scores every job not yet ended by the next time one of its limits falls
due, so a sweep reads only what is due (never a scan of all keys); CREATE_JOB adds a job
and TRANSITION to an end state removes it. ``<p>:jobs:ended`` holds the jobs ended here
until their upstream turn is over and settled, scored by the next time to look; their
records' retention starts when they leave it (so a turn billed after the end is posted
while the job's records, and its worker's, are still there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from orchestrator.jobs.model import LOCAL_ENDS, JobStatus
from orchestrator.store.jobs import RedisStore
from orchestrator.store.keys import Keys
from orchestrator.store.scripts import jobs as scripts


class LiveJob(NamedTuple):
    """What a bulk cancel filters a live job by."""

    id: str
    status: str
    tags: dict[str, str]
    schedule_id: str | None


class LifecycleStore:
    """The live index and the ended set (see the module's text)."""

    def __init__(self, store: RedisStore) -> None:
        self.r = store.r
        self.cells = store.cells
        self.store = store
        self._claim = self.r.register_script(scripts.CLAIM_DUE)

    # --- ending a job here -----------------------------------------------------------

    def end_here(self, job_id: str, status: JobStatus, detail: str) -> bool:
        """Move a live job to an end state reached here (``LOCAL_ENDS``) and, in the
        same script, out of the live index and into the ended set, its records kept
        until :meth:`settled`; False if it had ended already."""
        assert status in LOCAL_ENDS
        return self.store.transition(job_id, status, detail)

    def stop_relay(self, worker_id: str, job_id: str) -> None:
        """Refuse the worker's updates while ``job_id`` (ended here) is its active job:
        its follower's next write fails with STOPPED and it lets the stream go."""
        self.store.set_worker_field(worker_id, "stopped_job", job_id, job_id)

    def mark_ended(self, job_id: str, at_ms: int = 0) -> None:
        """Put an ended job (back) up for its wind-down and settlement at ``at_ms``."""
        self.r.zadd(self.cells.of_job(job_id).jobs_ended, {job_id: at_ms})

    def unsettled(self, job_id: str) -> bool:
        """Whether the job ended here and its settlement is still to do."""
        return self.r.zscore(self.cells.of_job(job_id).jobs_ended, job_id) is not None

    def settled(self, job_id: str) -> None:
        """The ended job's settlement is done (or there is none to do): it leaves the
        ended set and its records' retention starts now (see
        :meth:`~orchestrator.store.status.StatusStore.settled`)."""
        self.store.settled(job_id)

    def look_again(self, job_id: str, at_ms: int) -> None:
        """Look at an ended job again at ``at_ms`` (unless it was forgotten meanwhile)."""
        self.r.zadd(self.cells.of_job(job_id).jobs_ended, {job_id: at_ms}, xx=True)

    # --- the sweep -------------------------------------------------------------------

    def claim_live(self, now: int, lease_ms: int, limit: int = 200) -> list[str]:
        """Live jobs whose next limit is due; each is passed by other sweeps for
        ``lease_ms`` (the claimer reschedules it with :meth:`reschedule`). With several
        cells, up to ``limit`` from each."""
        return self._claim_due(lambda k: k.jobs_live, now, lease_ms, limit)

    def claim_ended(self, now: int, lease_ms: int, limit: int = 200) -> list[str]:
        """Ended jobs due a look, claimed as :meth:`claim_live` claims."""
        return self._claim_due(lambda k: k.jobs_ended, now, lease_ms, limit)

    def _claim_due(
        self, index: Callable[[Keys], str], now: int, lease_ms: int, limit: int
    ) -> list[str]:
        args = [now, now + lease_ms, limit]
        return [str(j) for k in self.cells for j in self._claim(keys=[index(k)], args=args)]

    def reschedule(self, job_id: str, due_ms: int) -> None:
        """The job's next limit falls due at ``due_ms`` (only while it is live)."""
        self.r.zadd(self.cells.of_job(job_id).jobs_live, {job_id: due_ms}, xx=True)

    def forget_live(self, job_id: str) -> None:
        self.r.zrem(self.cells.of_job(job_id).jobs_live, job_id)

    def next_wake(self) -> int | None:
        """The earliest score of both sets (ms), or None when both are empty."""
        with self.r.pipeline(transaction=False) as pipe:
            for k in self.cells:
                pipe.zrange(k.jobs_live, 0, 0, withscores=True)
                pipe.zrange(k.jobs_ended, 0, 0, withscores=True)
            replies = pipe.execute()
        scores = [int(reply[0][1]) for reply in replies if reply]
        return min(scores, default=None)

    def last_relayed(self, worker_id: str, job_id: str = "") -> int | None:
        """When an update of the worker (of the job ``job_id``) was last stored (epoch
        ms), or None."""
        key = self.store.worker_keys(worker_id, job_id).worker(worker_id)
        raw = self.r.hget(key, "relayed_at")
        return int(raw) if raw else None

    def active_job(self, worker_id: str) -> str | None:
        """The job of the worker's latest turn."""
        key = self.store.worker_keys(worker_id).worker(worker_id)
        return self.r.hget(key, "active_job") or None

    # --- bulk cancel -----------------------------------------------------------------

    def live_jobs(self, chunk: int = 500) -> Iterator[list[LiveJob]]:
        """Every live job, in chunks (ZSCAN: a job live for the whole walk is seen)."""
        ids: list[str] = []
        for k in self.cells:
            for member, _score in self.r.zscan_iter(k.jobs_live, count=chunk):
                ids.append(member)
                if len(ids) >= chunk:
                    yield self._fields(ids)
                    ids = []
        if ids:
            yield self._fields(ids)

    def _fields(self, ids: Sequence[str]) -> list[LiveJob]:
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self.cells.of_job(job_id).job(job_id), ["status", "tags", "schedule_id"])
            rows = pipe.execute()
        return [
            LiveJob(job_id, status, json.loads(tags or "{}"), schedule or None)
            for job_id, (status, tags, schedule) in zip(ids, rows, strict=True)
            if status is not None
        ]
