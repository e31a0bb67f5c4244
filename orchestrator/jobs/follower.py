"""The stream follower: relays many workers' update streams into Redis at once.

One asyncio loop per ``streams`` worker process follows up to ``capacity`` streams.
Jobs to follow sit in Redis scored by lease expiry (:class:`FollowStore` makes every
Redis call of this module); the follower claims due entries atomically, renews its
leases by heartbeat, and a crashed follower's jobs are claimed by another once their
lease runs out. Relaying is exactly-once whatever the leases do: update n is stored
only if n equals the worker's stored count (Lua).

All streams share one :class:`~orchestrator.jobs.update_writer.UpdateWriter`, which
writes their updates in one round trip per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from orchestrator.errors import (
    APIConnectionError,
    APIStatusError,
    MalformedEventError,
    StreamError,
)
from orchestrator.jobs.model import TERMINAL, JobStatus
from orchestrator.jobs.update_writer import RelayStopped, UpdateWriter
from orchestrator.ops.instruments import EVENTS_RELAYED
from orchestrator.store.connection import StoreError
from orchestrator.store.follows import FollowStore
from orchestrator.wire.aclient import AsyncWorkersClient
from orchestrator.wire.retry import Backoff, backoff_ceiling

log = logging.getLogger(__name__)

FinishedHook = Callable[[str], Awaitable[None]]

#: The pause before following a turn again after follows that relayed nothing new:
#: doubling from QUIET_INITIAL to QUIET_MAX seconds.
QUIET_INITIAL = 0.25
QUIET_MAX = 5.0


class Follower:
    """Claims followed jobs from Redis and relays their streams until each turn ends."""

    def __init__(
        self,
        store: FollowStore,
        client: AsyncWorkersClient,
        on_finished: FinishedHook,
        *,
        capacity: int = 2000,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.25,
        updates_maxlen: int = 100_000,
        max_parse_failures: int = 5,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.on_finished = on_finished
        self.capacity = capacity
        self.lease_ms = int(lease_seconds * 1000)
        self.poll_seconds = poll_seconds
        # A reconnect replays the same events: an event that is not JSON fails the job
        # after this many tries instead of being retried forever.
        self.max_parse_failures = max_parse_failures
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.writer = UpdateWriter(store, maxlen=updates_maxlen)
        self.active: dict[str, asyncio.Task[None]] = {}
        # Jobs claimed again while their follow task was still ending (its finalize saw
        # the turn still running and put the stream up again): followed once more by
        # that task, not left to wait out the new lease.
        self.again: set[str] = set()
        # Jobs whose last follows relayed nothing new: how many in a row.
        self._quiet: dict[str, int] = {}
        self._finishing: set[str] = set()  # jobs in on_finished: see _renew_leases
        self.events_relayed = 0
        self._wake = asyncio.Event()  # a job was put up for following, or stop: claim now

    async def run(self, stop: asyncio.Event) -> None:
        """Claim, follow and renew until ``stop`` is set; then let leases lapse."""
        writer = asyncio.create_task(self.writer.run())
        listener = asyncio.create_task(self._listen())
        stopper = asyncio.create_task(stop.wait())
        stopper.add_done_callback(lambda _: self._wake.set())
        last_renew = 0.0
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    now = time.monotonic()
                    if self.active and now - last_renew > self.lease_ms / 3000:
                        await self._renew_leases()
                        last_renew = now
                    await self._claim_more()
                except (StoreError, OSError) as exc:
                    log.warning("follower cannot reach Redis: %s", exc)
                except Exception:
                    # Never let a pass end the follower: every stream it would claim
                    # stays unrelayed, its jobs running for ever. (redis-py's cluster
                    # client raised AttributeError on a connection a failover closed.)
                    log.exception("follower pass failed; carrying on")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
        finally:
            for helper in (listener, stopper):
                helper.cancel()
            held = list(self.active)
            for task in self.active.values():
                task.cancel()
            await asyncio.gather(*self.active.values(), return_exceptions=True)
            writer.cancel()
            await self._hand_back(held)

    async def _listen(self) -> None:
        """Wake the claim loop when a job is put up for following, not at its next poll
        (which stays, for wake-ups missed while Redis was away)."""
        backoff = Backoff()
        while True:
            try:
                if await self.store.wait_wake(timeout=self.lease_ms / 3000):
                    self._wake.set()
                backoff.reset()
            except (StoreError, OSError) as exc:
                log.info("follow wake-ups unavailable (%s); polling meanwhile", exc)
                await asyncio.sleep(backoff.next())

    async def _hand_back(self, job_ids: list[str]) -> None:
        """On a clean stop, make our streams claimable at once instead of at lease end."""
        if not job_ids:
            return
        try:
            await self.store.renew(self.owner, 0, job_ids)
        except (StoreError, OSError) as exc:
            log.warning(
                "could not hand back %d streams (their leases will lapse): %s", len(job_ids), exc
            )

    async def _claim_more(self) -> None:
        room = self.capacity - len(self.active)
        if room <= 0:
            return
        claimed = await self.store.claim(self.owner, self.lease_ms, min(room, 500))
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
        lost = await self.store.renew(self.owner, expiry, list(self.active))
        for job_id in lost:  # someone else holds it now: stop, they relay the rest
            task = self.active.get(job_id)
            # Not one in on_finished: nothing is left to relay, and its finalize (which
            # releases the lease once the job ends) would lose its outcome.
            if task is not None and job_id not in self._finishing:
                task.cancel()

    async def _job_fields(self, job_id: str) -> tuple[str, str | None, int]:
        """The job's worker id and status; a Redis blip is waited out, not fatal (a
        follow task that died here would leave its stream until the lease expired)."""
        backoff = Backoff()
        while True:
            try:
                return await self.store.job_worker_and_status(job_id)
            except (StoreError, OSError) as exc:
                log.warning(
                    "reading job %s failed: %s; retrying in %.1fs", job_id, exc, backoff.delay
                )
            await asyncio.sleep(backoff.next())

    async def _follow(self, job_id: str) -> None:
        await self._follow_turn(job_id)
        while job_id in self.again:
            self.again.discard(job_id)
            await self._follow_turn(job_id)

    async def _follow_turn(self, job_id: str) -> None:
        worker_id, status, start = await self._job_fields(job_id)
        if not worker_id or status in TERMINAL:
            self._quiet.pop(job_id, None)
            await self._finish(job_id)
            return
        # Followed again while nothing new came (the stream closes at once and the
        # upstream says the turn still runs): wait longer each time, not a tight loop.
        quiet = self._quiet.get(job_id, 0)
        if quiet:
            await asyncio.sleep(backoff_ceiling(quiet, QUIET_INITIAL, QUIET_MAX))
        new_updates = 0
        backoff = Backoff()
        bad_event, parse_failures = -1, 0
        marked_running = status == "running"
        self.writer.forget(worker_id)  # a failure of an earlier follow is not ours
        retrying = False
        while True:
            if retrying:
                # The job may have ended, or expired with its records, or been lost with
                # Redis's last writes (its updates are then refused: APPEND_UPDATES
                # answers GONE), while this one retried.
                _, status, _ = await self._job_fields(job_id)
                if status is None or status in TERMINAL:
                    break
            retrying = True
            try:
                # A turn still 'submitted' has stored nothing (its first batch marks it
                # running): no read of the count; a duplicate would be refused anyway.
                if status == "submitted" and backoff.retries == 0:
                    relayed = start
                else:
                    relayed = await self.store.relayed(worker_id, job_id)
                async for update in self.client.stream_updates(worker_id):
                    if update.index < relayed:
                        continue  # a reconnect replays from 0: stored already
                    self.writer.add(worker_id, update.index, json.dumps(update.data), job_id)
                    new_updates += 1
                    self.events_relayed += 1
                    EVENTS_RELAYED.inc()
                    if not marked_running:
                        marked_running = True
                        self.writer.mark_running(job_id)
                await self.writer.barrier(worker_id)
                break
            except RelayStopped:
                log.info("stream of %s: its job ended here; no longer relayed", job_id)
                self._quiet.pop(job_id, None)
                return  # no finalize: the end sweep settles the turn
            except MalformedEventError as exc:
                if exc.index != bad_event:  # got further: a new event, counted anew
                    bad_event, parse_failures = exc.index, 0
                parse_failures += 1
                if parse_failures >= self.max_parse_failures:
                    await self._fail_unreadable(job_id, worker_id, exc, parse_failures)
                    break
                log.info("stream of %s: %s; retrying in %.1fs", job_id, exc, backoff.delay)
            except (StreamError, APIConnectionError) as exc:
                log.info(
                    "stream of %s broke (%s); reconnecting in %.1fs", job_id, exc, backoff.delay
                )
            except APIStatusError as exc:
                if exc.retryable:
                    log.info("stream of %s: %s; retrying in %.1fs", job_id, exc, backoff.delay)
                else:
                    await self._mark(job_id, "failed", str(exc))
                    break
            except (StoreError, OSError) as exc:
                log.warning("relay of %s failed: %s; retrying", job_id, exc)
            await asyncio.sleep(backoff.next())
        self._count_quiet(job_id, new_updates)
        await self._finish(job_id)

    async def _finish(self, job_id: str) -> None:
        self._finishing.add(job_id)
        try:
            await self.on_finished(job_id)
        finally:
            self._finishing.discard(job_id)

    def _count_quiet(self, job_id: str, new_updates: int) -> None:
        if new_updates:
            self._quiet.pop(job_id, None)
            return
        if len(self._quiet) >= 4 * self.capacity:  # bounded: count anew
            self._quiet.clear()
        self._quiet[job_id] = self._quiet.get(job_id, 0) + 1

    async def _fail_unreadable(
        self, job_id: str, worker_id: str, exc: MalformedEventError, tries: int
    ) -> None:
        """Fail the job over an event that stays unreadable; the updates before it are
        written first (a Redis blip there is not worth keeping the stream for)."""
        with contextlib.suppress(StreamError):
            await self.writer.barrier(worker_id)
        log.warning("stream of %s: %s, %d times; failing the job", job_id, exc, tries)
        await self._mark(job_id, "failed", f"update stream unreadable after {tries} tries: {exc}")

    async def _mark(self, job_id: str, status: JobStatus, detail: str = "") -> None:
        await self.store.transition(job_id, status, detail)


def describe_state(follower: Follower) -> dict[str, Any]:
    return {
        "owner": follower.owner,
        "active": len(follower.active),
        "events_relayed": follower.events_relayed,
        "written": follower.writer.written,
    }
