"""The live-update fan-out of a gateway process: one :class:`Hub`, its feeds (one per
followed job) and their clients (one per SSE connection).

One reader task watches every followed job with one blocking ``XREAD`` over their
workers' update streams, and reads their states (status, worker, the turn's bounds) in
one script call every ``STATE_EVERY`` (:class:`~orchestrator.store.live.LiveStore`), so
a job's updates are read once per process however many clients follow it. What the
reader does per read is in proportion to what arrived, not to the jobs followed: the
streams it watches and where each is at are kept up to date as feeds come, go and
deliver, and only jobs seen terminal are checked for their end. Each update is framed
once, as bytes, for all its clients.

Each client has a bounded buffer; one that falls ``GATEWAY_SSE_BUFFER`` events behind is
dropped (its connection ends) and resumes by itself with ``Last-Event-ID``, so it never
slows the others. A client takes everything buffered at once, so one that fell behind
catches up in one write. Keep-alives come from one timer per process, not one per
client wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from orchestrator.jobs.model import TERMINAL
from orchestrator.ledger import total_cost_micro
from orchestrator.store.live import LiveStore, Update

log = logging.getLogger(__name__)

#: How long one blocking read waits; a feed added meanwhile is read from the next one.
BLOCK_MS = 100
#: While updates flow, reads start at most this often (seconds). An XREAD naming a
#: thousand streams costs Redis milliseconds whatever it returns, and one is answered as
#: soon as any stream has news: without a pause, updates arriving one after another
#: would have the reader ask again and again, each time for one. The first update after
#: a quiet spell is read at once.
READ_EVERY = 0.01
#: How often the followed jobs' states are read (a status change, a worker that appears,
#: a turn's end are seen within this).
STATE_EVERY = 0.25
#: ... and of a job whose turn is streaming (its end is seen within this).
STATE_EVERY_STREAMING = 1.0
#: A terminal job whose last updates never show is ended after this many reads.
END_GRACE_READS = 50
#: Markers a client takes: dropped (close, the client resumes), keep-alive (a comment).
DROPPED = object()
KEEPALIVE = object()


class Client:
    """One connection's buffer: items offered by the reader, taken all at once."""

    __slots__ = ("dropped", "idle", "items", "limit", "waiter")

    def __init__(self, limit: int) -> None:
        self.items: deque[Any] = deque()
        self.limit = limit
        self.dropped = False
        self.idle = True  # nothing offered since the last keep-alive tick
        self.waiter: asyncio.Future[None] | None = None

    def offer(self, item: Any) -> None:
        if self.dropped:
            return
        self.idle = False
        if len(self.items) >= self.limit:
            # Too slow: its backlog goes, and a marker tells it to close and resume.
            self.dropped = True
            self.items.clear()
            item = DROPPED
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[Any]:
        """Everything offered since the last take; waits for something if there is none."""
        if not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        items = list(self.items)
        self.items.clear()
        return items


@dataclass(eq=False)
class Feed:
    job_id: str
    clients: set[Client] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    job: dict[str, str] = field(default_factory=dict)  # the state (store.live.STATE_FIELDS)
    after: int = -1  # the last index delivered
    positioned: bool = False  # whether ``after`` is set: the turn has begun
    watched: bool = False  # whether the reader's XREAD names its worker's stream
    polled: float = 0.0  # when its state was last read (monotonic)
    ended: bool = False
    grace: int = 0

    worker_id: str | None = None  # kept with ``job`` (read for every feed on every read)

    def update(self, state: dict[str, str]) -> None:
        self.job = state
        self.worker_id = state.get("worker_id") or None

    def send(self, item: Any) -> None:
        for client in self.clients:
            client.offer(item)


class Hub:
    """Every feed of this process and the one reader task that serves them."""

    def __init__(self, live: LiveStore, buffer: int, keepalive: float = 15.0) -> None:
        self.live = live
        self.buffer = buffer
        self.keepalive = keepalive
        self.feeds: dict[str, Feed] = {}
        self._by_worker: dict[str, list[Feed]] = {}  # the watched feeds, by worker
        self._watches: dict[str, int] = {}  # worker -> lowest index its feeds delivered
        self._ending: set[Feed] = set()  # feeds whose job was seen terminal (or gone)
        self._reader: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        self._last_read = 0.0  # when the last read that brought updates began (monotonic)

    async def close(self) -> None:
        # Also a flag: redis-py can swallow a cancellation (a zero timeout met while
        # taking a pooled connection), and the loops must end all the same.
        self._closed = True
        for task in (self._reader, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.live.close()

    async def join(self, job_id: str) -> tuple[Feed, Client]:
        client = Client(self.buffer)
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = Feed(job_id)
            feed.clients.add(client)
            try:
                feed.update(await self.live.state(job_id))
                await self._position(feed, fresh=True)
            except BaseException:
                self.feeds.pop(job_id, None)
                raise
            finally:
                feed.ready.set()
            self._track(feed)
        else:
            feed.clients.add(client)
            await feed.ready.wait()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_loop())
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick())
        return feed, client

    def leave(self, feed: Feed, client: Client) -> None:
        feed.clients.discard(client)
        if not feed.clients and self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]
            self._untrack(feed)

    # --- what the reader watches ---------------------------------------------------

    def _track(self, feed: Feed) -> None:
        """Keep the reader's view of a ready feed current: its stream watched once its
        turn has begun, its end looked for once its job is terminal."""
        if feed.ended or not feed.ready.is_set() or self.feeds.get(feed.job_id) is not feed:
            return
        worker = feed.worker_id
        if feed.positioned and not feed.watched and worker is not None:
            feed.watched = True
            group = self._by_worker.setdefault(worker, [])
            group.append(feed)
            self._watches[worker] = min(f.after for f in group)
        if not feed.job or feed.job.get("status") in TERMINAL:
            self._ending.add(feed)

    def _untrack(self, feed: Feed) -> None:
        self._ending.discard(feed)
        worker = feed.worker_id
        if not feed.watched or worker is None:
            return
        feed.watched = False
        group = self._by_worker.get(worker, [])
        if feed in group:
            group.remove(feed)
        if group:
            self._watches[worker] = min(f.after for f in group)
        else:
            self._by_worker.pop(worker, None)
            self._watches.pop(worker, None)

    async def _position(self, feed: Feed, *, fresh: bool) -> None:
        """Set where the feed reads from once the job's turn has begun. A new feed reads
        on from what is stored now (its clients catch up on the rest themselves); a feed
        whose clients joined before the turn began reads the turn from its start."""
        start = feed.job.get("update_from")
        if feed.positioned or feed.worker_id is None or not start:
            return
        first = int(start) - 1
        feed.after = max(first, await self.live.last_index(feed.worker_id)) if fresh else first
        feed.positioned = True

    # --- the reader ----------------------------------------------------------------

    async def _read_loop(self) -> None:
        polled = 0.0
        while self.feeds and not self._closed:
            try:
                now = time.monotonic()
                if now - polled >= STATE_EVERY:
                    polled = now
                    await self._poll(now)
                await self._read()
                for feed in list(self._ending):
                    await self._maybe_end(feed)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis away or a bad record: log, wait a moment, try again; clients
                # keep their connection (keep-alives go on) and lose nothing.
                log.exception("live-update reader failed; retrying")
                await asyncio.sleep(1)

    async def _poll(self, now: float) -> None:
        """Read the states of the feeds due: a streaming turn's only news is its end, so
        it is read every ``STATE_EVERY_STREAMING``; a feed waiting for its turn to begin,
        every ``STATE_EVERY``. A feed still making its first read (in join) waits."""
        due = [
            f for f in self.feeds.values()
            if f.ready.is_set() and not f.ended
            and (not f.positioned or now - f.polled >= STATE_EVERY_STREAMING)
        ]  # fmt: skip
        if not due:
            return
        for feed, state in zip(due, await self.live.states([f.job_id for f in due]), strict=True):
            feed.update(state)
            feed.polled = now
            await self._position(feed, fresh=False)
            self._track(feed)

    async def _read(self) -> None:
        """One blocking read of every watched stream; deliver what came."""
        if not self._watches:
            await asyncio.sleep(BLOCK_MS / 1000)
            return
        pause = self._last_read + READ_EVERY - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        # Two jobs of one worker (a turn ending as the next begins) read from the lower.
        read_from = dict(self._watches)
        started = time.monotonic()
        got = await self.live.wait(read_from, BLOCK_MS)
        self._last_read = started if got else 0.0
        for worker, updates in got.items():
            group = self._by_worker.get(worker)
            if not group:
                continue
            for feed in group:
                # A feed that joined during the read, behind where it began, would
                # see a gap: it is served by the next read, from its own position.
                if feed.after >= read_from[worker]:
                    self._deliver(feed, updates)
            self._watches[worker] = (
                group[0].after if len(group) == 1 else min(f.after for f in group)
            )

    def _deliver(self, feed: Feed, updates: list[Update]) -> None:
        end = turn_end(feed.job)
        for index, data in updates:
            if index > feed.after and (end is None or index < end):
                feed.after = index
                feed.send((index, frame(index, data)))  # framed once for every client

    async def _maybe_end(self, feed: Feed) -> None:
        """End a terminal job's feed once its last update was delivered."""
        if feed.positioned and feed.worker_id is not None:
            self._deliver(feed, await self.live.updates(feed.worker_id, feed.after))
        end = turn_end(feed.job)
        feed.grace += 1
        if end is not None and feed.after + 1 < end and feed.grace < END_GRACE_READS:
            return
        feed.ended = True
        self._untrack(feed)
        feed.send(await self.end_event(feed.job_id, feed.job))
        if self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]

    async def _tick(self) -> None:
        """A keep-alive to each client offered nothing since the last tick."""
        while self.feeds and not self._closed:
            await asyncio.sleep(self.keepalive)
            for feed in list(self.feeds.values()):
                for client in feed.clients:
                    if client.idle:
                        client.offer(KEEPALIVE)
                    client.idle = True

    async def end_event(self, job_id: str, job: dict[str, str]) -> dict[str, Any]:
        cost = await self.live.turn_cost(job_id) if job else None
        return {
            "job_id": job_id,
            "status": job.get("status", "gone"),
            "error": job.get("error") or None,
            "cost": cost,
            "cost_micro": total_cost_micro(cost) if cost else None,
        }


def turn_end(job: dict[str, str]) -> int | None:
    """Where a finished turn's updates end (exclusive), or None while unknown."""
    end = job.get("update_to")
    return int(end) if end else None


def frame(index: int, data: str) -> bytes:
    """One update as an SSE event."""
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"id: {index}\n{lines}\n".encode()
