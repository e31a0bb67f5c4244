"""The gateway's async job writes: a checked submission stored as a queued job by the
``CREATE_JOB`` call of ``RedisStore.create_job`` (:func:`orchestrator.store.jobs.creation`),
on the event loop's client (one round trip, no thread).

The job lands in the outbox with its record, so it is sent whatever happens to the
process afterwards: by the outbox relay its id wakes (``GATEWAY_SEND=relay``: the id goes
on the wake list in the same call) or by its writer at once (``direct``), else by the
sweep that re-sends what a producer left unsent (``jobs.sweeps.resend_unsent``).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from orchestrator.errors import InputError
from orchestrator.jobs.model import Job, Submission
from orchestrator.store.jobs import creation
from orchestrator.store.keys import Keys
from orchestrator.store.scripts.jobs import CREATE_JOB


class AsyncJobWriter:
    """:meth:`create_job` on an asyncio client (one per gateway process)."""

    def __init__(self, client: aioredis.Redis, prefix: str, wake_cap: int) -> None:
        """``wake_cap`` > 0: each new job's id goes on the relay's wake list, kept to
        that many entries (0: the caller sends the first task itself)."""
        self.r: Any = client
        self.keys = Keys.for_client(client, prefix)
        self._create = client.register_script(CREATE_JOB)
        self._wake_cap = wake_cap

    async def create_job(self, sub: Submission) -> tuple[Job, bool]:
        """(the new queued job, True), or (the job its idempotency key names, False)."""
        job, keys, args = creation(self.keys, sub, self._wake_cap)
        written, found_id = await self._create(keys=keys, args=args)
        if int(written) == 1:
            return job, True
        found = await self.r.hgetall(self.keys.job(str(found_id)))
        if not found:
            raise InputError("idempotency_key", "names a job that is gone")
        return Job.from_hash(found), False
