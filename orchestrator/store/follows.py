"""The stream follower's store (asyncio): follow leases, batched update writes, and the
few reads and status moves a follower makes (see :mod:`orchestrator.jobs.follower`).

Jobs to follow sit in a sorted set scored by lease expiry with a hash naming each
lease's owner; claims, renewals and update writes are the Lua scripts of
:mod:`orchestrator.store.scripts.jobs`, the same ones :class:`RedisStore` runs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from orchestrator.jobs.model import LOCAL_ENDS, TERMINAL, JobStatus
from orchestrator.store.batch import AsyncBatch
from orchestrator.store.cells import Cells
from orchestrator.store.connection import connect_async, pubsub_async
from orchestrator.store.keys import Keys
from orchestrator.store.retention import (
    RECORD_FIELDS,
    RetentionPolicy,
    fields_of,
    transition_call,
)
from orchestrator.store.scripts import jobs as scripts
from orchestrator.store.scripts import records
from orchestrator.store.spend import AsyncRateStore
from orchestrator.store.workers import append_call

log = logging.getLogger(__name__)

#: Pending updates of many workers: worker id -> (the job whose turn they are, index of
#: the first, payloads as JSON).
Pending = dict[str, tuple[str, int, list[str]]]


class FollowStore:
    """Async access for stream followers; one per follower process (it owns the client)."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, *, retention: RetentionPolicy | None = None,
        cells: int = 1,
    ) -> None:  # fmt: skip
        # Any, as in RedisStore: the stubs cannot see decode_responses=True.
        self.r: Any = client
        self.cells = Cells(client, prefix, cells)
        self.keys = self.cells.control
        self._turn = 0  # the cell a claim starts from (each in turn goes first)
        self.retention = retention or RetentionPolicy()
        self._claim = client.register_script(scripts.CLAIM_FOLLOWS)
        self._renew = client.register_script(scripts.RENEW_FOLLOWS)
        self._transition = client.register_script(records.TRANSITION)
        self._append = client.register_script(scripts.APPEND_UPDATES)
        self._wake: Any = None  # the wake channel's subscription, once subscribed

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        *,
        retention: RetentionPolicy | None = None,
        password: str | None = None,
        sentinel_password: str | None = None,
        cells: int = 1,
    ) -> FollowStore:
        """A follower's store on its own blocking pool (see :func:`connect_async`)."""
        client = connect_async(url, password=password, sentinel_password=sentinel_password)
        return cls(client, prefix, retention=retention, cells=cells)

    def rate_store(self) -> AsyncRateStore:
        """The fleet rate limit on this store's pool (one pool per follower process)."""
        return AsyncRateStore(self.r, self.keys.prefix)

    async def close(self) -> None:
        await self.stop_waking()
        await self.r.aclose()

    # --- leases ------------------------------------------------------------------

    async def claim(self, owner: str, lease_ms: int, limit: int) -> list[str]:
        """Take up to ``limit`` jobs whose lease is free or expired, for ``lease_ms``
        (with several cells, from each in turn, a different one first each time)."""
        now = int(time.time() * 1000)
        cells = self.cells.keys
        self._turn = (self._turn + 1) % len(cells)
        taken: list[str] = []
        for k in cells[self._turn :] + cells[: self._turn]:
            args: list[str | int] = [now, now + lease_ms, limit - len(taken), owner]
            taken += await self._claim(keys=[k.follows, k.follow_owners], args=args)
            if len(taken) >= limit:
                break
        return taken

    async def renew(self, owner: str, expiry_ms: int, job_ids: list[str]) -> list[str]:
        """Move the leases ``owner`` holds on ``job_ids`` to ``expiry_ms`` (0: claimable
        at once); returns the jobs whose lease it no longer holds."""
        groups: dict[Keys, list[str]] = {}
        for job_id in job_ids:
            groups.setdefault(self.cells.of_job(job_id), []).append(job_id)
        lost: list[str] = []
        for k, group in groups.items():
            keys = [k.follows, k.follow_owners]
            lost += await self._renew(keys=keys, args=[expiry_ms, owner, *group])
        return lost

    async def wait_wake(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a job to be put up for following (a
        message on the wake channel; the first call subscribes). True if one came.

        The subscription holds one connection of its own; a message missed while it
        was away is caught by the follower's poll."""
        if self._wake is None:
            wake = await pubsub_async(self.r, self.keys.follows)
            await wake.subscribe(self.keys.follow_wake)
            self._wake = wake
        try:
            message = await self._wake.get_message(timeout=timeout)
        except BaseException:
            await self.stop_waking()  # resubscribed on the next call
            raise
        if message is None:
            return False
        # Drain what else came meanwhile: one claim serves every job put up so far.
        while await self._wake.get_message(timeout=0) is not None:
            pass
        return True

    async def stop_waking(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            with contextlib.suppress(Exception):
                await wake.aclose()

    # --- jobs and workers ----------------------------------------------------------

    async def job_worker_and_status(self, job_id: str) -> tuple[str, str | None, int]:
        """The job's worker id ('' before it has one), status (None: no such job) and
        ``update_from`` (where its turn's updates start in the worker's stream)."""
        worker_id, status, start = await self.r.hmget(
            self.cells.of_job(job_id).job(job_id), ["worker_id", "status", "update_from"]
        )
        return str(worker_id or ""), status, int(start or 0)

    async def relayed(self, worker_id: str, job_id: str) -> int:
        """How many updates of the worker (of the job ``job_id``) are stored."""
        key = self.cells.of_job(job_id).worker(worker_id)
        return int(await self.r.hget(key, "relayed") or 0)

    async def transition(self, job_id: str, status: JobStatus, detail: str = "") -> bool:
        """Move a job forward (as :meth:`RedisStore.transition`)."""
        k = self.cells.of_job(job_id)
        for _ in range(5):
            fields = None
            if status in TERMINAL and status not in LOCAL_ENDS:
                fields = fields_of(await self.r.hmget(k.job(job_id), RECORD_FIELDS))
            now = int(time.time() * 1000)
            keys, args = transition_call(k, self.retention, job_id, status, now, detail, fields)
            result = int(await self._transition(keys=keys, args=args))
            if result != -2:  # -2: its worker was linked meanwhile; read it again
                return result == 1
        return False

    async def append_updates(
        self, pending: Pending, maxlen: int, running: Sequence[str] = ()
    ) -> list[Any]:
        """Store the pending updates of many workers in one round trip (redis-py's own
        script pipelines add a SCRIPT EXISTS each), and move the ``running`` jobs to
        'running' first. One reply per worker, in order: the stored count, or the
        exception its write raised (a gap, say)."""
        writes = AsyncBatch(self.r)
        now = int(time.time() * 1000)
        for job_id in running:  # not an end: no record fields needed
            k = self.cells.of_job(job_id)
            keys, args = transition_call(k, self.retention, job_id, "running", now, "", None)
            writes.script(self._transition, keys, args)
        for worker_id, (job_id, first, payloads) in pending.items():
            k = self.cells.of_job(job_id)
            keys, args = append_call(k, self.retention, maxlen, worker_id, first, payloads, job_id)
            writes.script(self._append, keys, args)
        replies = await writes.execute(raise_on_error=False)
        for job_id, reply in zip(running, replies, strict=False):
            if isinstance(reply, Exception):
                log.warning("could not mark job %s running: %s", job_id, reply)
        return replies[len(running) :]
