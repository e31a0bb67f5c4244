"""The stream follower: relays many workers' update streams into Redis at once.

One asyncio loop per ``streams`` worker process follows up to ``capacity`` streams.
Jobs to follow sit in a Redis sorted set scored by lease expiry; the follower claims
due entries atomically, renews its leases by heartbeat, and a crashed follower's jobs
are claimed by another once their lease runs out. Relaying is exactly-once whatever
the leases do: update n is stored only if n equals the worker's stored count (Lua).

All streams share one :class:`UpdateWriter`, which gathers pending updates for a few
milliseconds and writes them in one pipelined round trip, so a thousand streams cost a
handful of Redis calls per tick, not one per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from orchestrator.errors import APIConnectionError, APIStatusError, StreamError
from orchestrator.ops.instruments import EVENTS_RELAYED
from orchestrator.store.batch import AsyncBatch
from orchestrator.store.keys import Keys
from orchestrator.store.scripts import jobs as scripts
from orchestrator.wire.aclient import AsyncWorkersClient

log = logging.getLogger(__name__)

FinishedHook = Callable[[str], Awaitable[None]]


class UpdateWriter:
    """Batches updates of many streams into pipelined APPEND_UPDATES calls."""

    def __init__(
        self, r: aioredis.Redis, keys: Keys, *, maxlen: int, max_delay: float = 0.003
    ) -> None:
        self.r = r
        self.keys = keys
        self.maxlen = maxlen
        self.max_delay = max_delay
        self._script = r.register_script(scripts.APPEND_UPDATES)
        self._pending: dict[str, tuple[int, list[str]]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        # Workers whose write failed, and why, until their follower has been told.
        self._failed: dict[str, str] = {}
        self._writing = False
        self.written = 0

    def add(self, worker_id: str, index: int, payload: str) -> None:
        """Queue update ``index`` of a worker (callers add each worker's in order).

        Raises :class:`StreamError` when an earlier write of the worker failed: the
        caller must resume from the stored count, or the updates after it are lost.
        """
        self.check(worker_id)
        entry = self._pending.get(worker_id)
        if entry is None:
            self._pending[worker_id] = (index, [payload])
        else:
            entry[1].append(payload)
        self._wakeup.set()

    async def barrier(self, worker_id: str | None = None) -> None:
        """Wait until everything added so far is written; raise StreamError if a write
        failed (with ``worker_id``: any write of that worker since it was last told).

        A batch already being written counts: the waiter is released after it.
        """
        if self._pending or self._writing:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            self._wakeup.set()
            try:
                await future
            except StreamError:
                if worker_id is None:
                    raise
        if worker_id is not None:
            self.check(worker_id)

    def check(self, worker_id: str) -> None:
        """Raise StreamError (once) if a write of the worker failed since the last check."""
        failed = self._failed.pop(worker_id, None)
        if failed is not None:
            self._pending.pop(worker_id, None)  # queued after the failure: a gap anyway
            raise StreamError(f"update write failed: {failed}", call="relay")

    def forget(self, worker_id: str) -> None:
        self._failed.pop(worker_id, None)

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.max_delay:
                await asyncio.sleep(self.max_delay)  # let more events gather
            batch, self._pending = self._pending, {}
            waiters, self._waiters = self._waiters, []
            error: BaseException | None = None
            if batch:
                self._writing = True
                try:
                    await self._write(batch)
                except Exception as exc:  # reported to every waiter; they reconnect
                    log.warning("update write failed: %s", exc)
                    error = exc
                finally:
                    self._writing = False
            for future in waiters:
                if not future.done():
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(StreamError(str(error), call="relay"))

    async def _write(self, batch: dict[str, tuple[int, list[str]]]) -> None:
        results: list[Any]
        try:
            # One round trip (redis-py's own script pipelines add a SCRIPT EXISTS each).
            writes = AsyncBatch(self.r)
            for worker_id, (first, payloads) in batch.items():
                keys = [self.keys.worker(worker_id), self.keys.updates(worker_id)]
                writes.script(self._script, keys, [first, self.maxlen, *payloads])
            results = await writes.execute(raise_on_error=False)
        except Exception as exc:  # the whole batch failed (Redis away)
            results = [exc] * len(batch)
        failed = {w: r for w, r in zip(batch, results, strict=True) if isinstance(r, Exception)}
        for worker_id, error in failed.items():
            self._failed[worker_id] = f"{type(error).__name__}: {error}"
        self.written += sum(len(p) for w, (_, p) in batch.items() if w not in failed)
        if failed:
            raise next(iter(failed.values()))


class Follower:
    """Claims followed jobs from Redis and relays their streams until each turn ends."""

    def __init__(
        self,
        r: aioredis.Redis,
        keys: Keys,
        client: AsyncWorkersClient,
        on_finished: FinishedHook,
        *,
        capacity: int = 2000,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.25,
        updates_maxlen: int = 100_000,
        owner: str | None = None,
    ) -> None:
        self.r = r
        self.keys = keys
        self.client = client
        self.on_finished = on_finished
        self.capacity = capacity
        self.lease_ms = int(lease_seconds * 1000)
        self.poll_seconds = poll_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.writer = UpdateWriter(r, keys, maxlen=updates_maxlen)
        self.active: dict[str, asyncio.Task[None]] = {}
        # Jobs claimed again while their follow task was still ending (its finalize saw
        # the turn still running and put the stream up again): followed once more by
        # that task, not left to wait out the new lease.
        self.again: set[str] = set()
        self._claim = r.register_script(scripts.CLAIM_FOLLOWS)
        self._renew = r.register_script(scripts.RENEW_FOLLOWS)
        self._transition = r.register_script(scripts.TRANSITION)
        self.events_relayed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Claim, follow and renew until ``stop`` is set; then let leases lapse."""
        writer = asyncio.create_task(self.writer.run())
        last_renew = 0.0
        try:
            while not stop.is_set():
                try:
                    now = time.monotonic()
                    if self.active and now - last_renew > self.lease_ms / 3000:
                        await self._renew_leases()
                        last_renew = now
                    await self._claim_more()
                except (aioredis.RedisError, OSError) as exc:
                    log.warning("follower cannot reach Redis: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_seconds)
        finally:
            held = list(self.active)
            for task in self.active.values():
                task.cancel()
            await asyncio.gather(*self.active.values(), return_exceptions=True)
            writer.cancel()
            await self._hand_back(held)

    async def _hand_back(self, job_ids: list[str]) -> None:
        """On a clean stop, make our streams claimable at once instead of at lease end."""
        if not job_ids:
            return
        try:
            await self._renew(
                keys=[self.keys.follows, self.keys.follow_owners], args=[0, self.owner, *job_ids]
            )
        except (aioredis.RedisError, OSError) as exc:
            log.warning(
                "could not hand back %d streams (their leases will lapse): %s", len(job_ids), exc
            )

    async def _claim_more(self) -> None:
        room = self.capacity - len(self.active)
        if room <= 0:
            return
        now = int(time.time() * 1000)
        claimed = await self._claim(
            keys=[self.keys.follows, self.keys.follow_owners],
            args=[now, now + self.lease_ms, min(room, 500), self.owner],
        )
        for job_id in claimed:
            held = self.active.get(job_id)
            if held is not None and not held.done():
                self.again.add(job_id)
            else:  # a task done but not yet forgotten is replaced, not relied on
                task = asyncio.create_task(self._follow(job_id))
                self.active[job_id] = task
                task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for job_id, held in list(self.active.items()):
            if held is task:
                del self.active[job_id]
                self.again.discard(job_id)

    async def _renew_leases(self) -> None:
        expiry = int(time.time() * 1000) + self.lease_ms
        lost = await self._renew(
            keys=[self.keys.follows, self.keys.follow_owners],
            args=[expiry, self.owner, *self.active],
        )
        for job_id in lost:  # someone else holds it now: stop, they relay the rest
            task = self.active.get(job_id)
            if task is not None:
                task.cancel()

    async def _job_fields(self, job_id: str) -> list[Any]:
        """The job's worker id and status; a Redis blip is waited out, not fatal (a
        follow task that died here would leave its stream until the lease expired)."""
        delay = 0.2
        while True:
            try:
                return list(await self.r.hmget(self.keys.job(job_id), ["worker_id", "status"]))
            except (aioredis.RedisError, OSError) as exc:
                log.warning("reading job %s failed: %s; retrying in %.1fs", job_id, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _follow(self, job_id: str) -> None:
        await self._follow_turn(job_id)
        while job_id in self.again:
            self.again.discard(job_id)
            await self._follow_turn(job_id)

    async def _follow_turn(self, job_id: str) -> None:
        fields = await self._job_fields(job_id)
        worker_id, status = str(fields[0] or ""), fields[1]
        if not worker_id or status in ("completed", "failed", "cancelled"):
            await self.on_finished(job_id)
            return
        delay = 0.2
        marked_running = status == "running"
        self.writer.forget(worker_id)  # a failure of an earlier follow is not ours
        while True:
            try:
                relayed = int(await self.r.hget(self.keys.worker(worker_id), "relayed") or 0)
                async for update in self.client.stream_updates(worker_id):
                    if update.index < relayed:
                        continue  # a reconnect replays from 0: stored already
                    self.writer.add(worker_id, update.index, json.dumps(update.data))
                    self.events_relayed += 1
                    EVENTS_RELAYED.inc()
                    if not marked_running:
                        marked_running = True
                        await self._mark(job_id, "running")
                await self.writer.barrier(worker_id)
                break
            except (StreamError, APIConnectionError) as exc:
                log.info("stream of %s broke (%s); reconnecting in %.1fs", job_id, exc, delay)
            except APIStatusError as exc:
                if exc.retryable:
                    log.info("stream of %s: %s; retrying in %.1fs", job_id, exc, delay)
                else:
                    await self._mark(job_id, "failed", str(exc))
                    break
            except (aioredis.RedisError, OSError) as exc:
                log.warning("relay of %s failed: %s; retrying", job_id, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        await self.on_finished(job_id)

    async def _mark(self, job_id: str, status: str, detail: str = "") -> None:
        keys = [self.keys.job(job_id), self.keys.job_history(job_id), self.keys.job_states]
        await self._transition(keys=keys, args=[status, int(time.time() * 1000), detail, 100])


#: Collect the young generation every 10,000 net allocations instead of 700: a
#: follower of 1,000 streams holds millions of objects, and every full collection the
#: default thresholds trigger stalled its event loop for 75-200 ms (python -m
#: bench.streams, 1,000 streams: loop stall max 170-200 ms -> 93-108 ms, live lag p99
#: 233-421 ms -> 104-225 ms, same RSS).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Set up the collector for a process that follows many streams: freeze what was
    allocated so far (modules, settings: never garbage) out of every later collection,
    and collect less often. Called once, when the follower starts."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def follower_redis(url: str) -> aioredis.Redis:
    """The follower's Redis client. A blocking pool: with thousands of streams, a burst
    of Redis calls waits for a connection instead of failing ("Too many connections")."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, max_connections=100, timeout=30
    )
    return aioredis.Redis(connection_pool=pool)


def describe_state(follower: Follower) -> dict[str, Any]:
    return {
        "owner": follower.owner,
        "active": len(follower.active),
        "events_relayed": follower.events_relayed,
        "written": follower.writer.written,
    }
