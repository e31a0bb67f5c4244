"""The gateway's async job writes: a checked submission stored as a queued job by the
``CREATE_JOB`` call of ``RedisStore.create_job`` (:func:`orchestrator.store.creation.creation`),
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
from orchestrator.store.cells import Cells
from orchestrator.store.creation import creation
from orchestrator.store.scripts.jobs import CREATE_JOB
from orchestrator.store.wakes import push_after


class AsyncJobWriter:
    """:meth:`create_job` on an asyncio client (one per gateway process)."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, wake_cap: int, cells: Cells | None = None
    ) -> None:
        """``wake_cap`` > 0: each new job's id goes on the relay's wake list, kept to
        that many entries (0: the caller sends the first task itself). ``cells``: the
        store's (docs/scaling.md; one by default)."""
        self.r: Any = client
        self.cells = cells or Cells(client, prefix)
        self.keys = self.cells.control
        self._create = client.register_script(CREATE_JOB)
        self._wake_cap = wake_cap

    async def create_job(self, sub: Submission) -> tuple[Job, bool]:
        """(the new queued job, True), or (the job its idempotency key names, False)."""
        job, keys, args = creation(self.cells, await self._place(sub), sub, self._wake_cap)
        written, found_id = await self._create(keys=keys, args=args)
        if int(written) == 1:
            if push_after(self.cells, self._wake_cap):
                wake = self.keys.outbox_wake
                async with self.r.pipeline(transaction=False) as pipe:
                    pipe.lpush(wake, job.id)
                    pipe.ltrim(wake, 0, self._wake_cap - 1)
                    await pipe.execute()
            return job, True
        found = await self.r.hgetall(self.cells.of_job(str(found_id)).job(str(found_id)))
        if not found:
            raise InputError("idempotency_key", "names a job that is gone")
        return Job.from_hash(found), False

    async def _place(self, sub: Submission) -> int:
        """:meth:`RedisStore.place` on this client."""
        cells = self.cells
        worker_id, tenant = cells.wanted(sub)
        worker = None if worker_id is None else cells.known_worker(worker_id)
        if worker_id is not None and worker is None:
            async with self.r.pipeline(transaction=False) as pipe:
                for k in cells:
                    pipe.exists(k.worker(worker_id))
                worker = cells.found_worker(worker_id, [bool(n) for n in await pipe.execute()])
        placed = None if tenant is None else await cells.place_tenant(tenant)
        return cells.place(sub, worker, placed)
