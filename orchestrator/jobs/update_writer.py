"""The update writer: one store write per tick for the updates of many streams.

The follower's streams all add to one :class:`UpdateWriter`, which gathers pending
updates for a few milliseconds and writes them in one pipelined round trip, so a
thousand streams cost a handful of Redis calls per tick, not one per event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from orchestrator.errors import StreamError
from orchestrator.store.follows import FollowStore, Pending

log = logging.getLogger(__name__)


class RelayStopped(StreamError):
    """The store refused a worker's updates: the job of its turn ended here (cancelled,
    timed out). Its follower lets the stream go; the turn is settled by the end sweep."""


class UpdateWriter:
    """Batches updates of many streams into one store write per tick."""

    def __init__(self, store: FollowStore, *, maxlen: int, max_delay: float = 0.003) -> None:
        self.store = store
        self.maxlen = maxlen
        self.max_delay = max_delay
        self._pending: Pending = {}
        self._running: list[str] = []  # jobs to move to 'running' with the next batch
        self._writing_running: list[str] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        # Workers whose write failed, and why, until their follower has been told.
        self._failed: dict[str, str] = {}
        self._writing = False
        self.written = 0

    def add(self, worker_id: str, index: int, payload: str, job_id: str = "") -> None:
        """Queue update ``index`` of a worker (callers add each worker's in order), of
        the turn of ``job_id`` (nothing is stored if that job has no record).

        Raises :class:`StreamError` when an earlier write of the worker failed: the
        caller must resume from the stored count, or the updates after it are lost.
        """
        self.check(worker_id)
        entry = self._pending.get(worker_id)
        if entry is None:
            self._pending[worker_id] = (job_id, index, [payload])
        else:
            entry[2].append(payload)
        self._wakeup.set()

    def mark_running(self, job_id: str) -> None:
        """Move the job to 'running' with the next batch (before any later barrier)."""
        self._running.append(job_id)
        self._wakeup.set()

    async def barrier(self, worker_id: str | None = None) -> None:
        """Wait until everything added so far is written; raise StreamError if a write
        failed (with ``worker_id``: any write of that worker since it was last told).

        A batch already being written counts: the waiter is released after it.
        """
        if self._pending or self._running or self._writing:
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
            stopped = "STOPPED" in failed
            raise (RelayStopped if stopped else StreamError)(
                f"update write failed: {failed}", call="relay"
            )

    def forget(self, worker_id: str) -> None:
        self._failed.pop(worker_id, None)

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.max_delay:
                await asyncio.sleep(self.max_delay)  # let more events gather
            batch, self._pending = self._pending, {}
            self._writing_running, self._running = self._running, []
            waiters, self._waiters = self._waiters, []
            error: BaseException | None = None
            if batch or self._writing_running:
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

    async def _write(self, batch: Pending) -> None:
        results: list[Any]
        running, self._writing_running = self._writing_running, []
        try:
            results = await self.store.append_updates(batch, self.maxlen, running)
        except Exception as exc:  # the whole batch failed (Redis away)
            results = [exc] * len(batch)
            self._running[:0] = running  # tried again with the next batch
        failed = {w: r for w, r in zip(batch, results, strict=True) if isinstance(r, Exception)}
        for worker_id, error in failed.items():
            self._failed[worker_id] = f"{type(error).__name__}: {error}"
        self.written += sum(len(p) for w, (_, _, p) in batch.items() if w not in failed)
        if failed:
            raise next(iter(failed.values()))
