"""Live updates as server-sent events, fanned out: ``GET /v1/jobs/{id}/events`` (token)
and ``GET /v1/links/{link}/events`` (signed link).

Each gateway process has one :class:`Hub`: one reader task that watches every job some
client follows with one blocking ``XREAD`` over their workers' update streams, and reads
their states (status, worker, the turn's bounds) in one pipeline every ``STATE_EVERY``
(:class:`~orchestrator.store.live.LiveStore`), so a job's updates are read once per
process however many clients follow it. Each client
has a bounded queue; one that falls ``GATEWAY_SSE_BUFFER`` events behind is dropped (its
connection ends) and resumes by itself with ``Last-Event-ID``, so it never slows the others.

A client joins its job's feed first, then reads what is stored after its position, then
takes the feed's events, skipping any index it has sent: whatever was stored before the
feed's first read is in that catch-up, and whatever after it comes through the feed, so
nothing is missed and nothing is sent twice. ``id:`` is the update's index; the last
event, ``event: end``, carries the job's end state and cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse

from orchestrator import rules
from orchestrator.gateway.auth import Reader
from orchestrator.gateway.errors import COMMON, ApiError, not_found, responses
from orchestrator.gateway.links import verify
from orchestrator.gateway.state import Gateway, gateway
from orchestrator.jobs.model import TERMINAL, Job
from orchestrator.ledger import total_cost_micro
from orchestrator.store.live import LiveStore, Update

log = logging.getLogger("orchestrator.gateway.events")

#: How long one blocking read waits; a feed added meanwhile is read from the next one.
BLOCK_MS = 100
#: How often the followed jobs' states are read (a status change, a worker that appears,
#: a turn's end are seen within this).
STATE_EVERY = 0.25
#: ... and of a job whose turn is streaming (its end is seen within this).
STATE_EVERY_STREAMING = 1.0
#: A terminal job whose last updates never show is ended after this many reads.
END_GRACE_READS = 50
DROPPED = object()


@dataclass(eq=False)
class Client:
    queue: asyncio.Queue[Any]
    dropped: bool = False

    def offer(self, item: Any) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # Too slow: its backlog goes, and a marker tells it to close and resume.
            self.dropped = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(DROPPED)


@dataclass(eq=False)
class Feed:
    job_id: str
    clients: set[Client] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    job: dict[str, str] = field(default_factory=dict)  # the state (store.live.STATE_FIELDS)
    after: int = -1  # the last index delivered
    positioned: bool = False  # whether ``after`` is set: the turn has begun
    polled: float = 0.0  # when its state was last read (monotonic)
    ended: bool = False
    grace: int = 0

    worker_id: str | None = None  # kept with ``job`` (read for every feed on every read)

    def update(self, state: dict[str, str]) -> None:
        self.job = state
        self.worker_id = state.get("worker_id") or None

    def send(self, item: Any) -> None:
        for client in list(self.clients):
            client.offer(item)


class Hub:
    """Every feed of this process and the one reader task that serves them."""

    def __init__(self, live: LiveStore, buffer: int) -> None:
        self.live = live
        self.buffer = buffer
        self.feeds: dict[str, Feed] = {}
        self._reader: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        await self.live.close()

    async def join(self, job_id: str) -> tuple[Feed, Client]:
        client = Client(asyncio.Queue(maxsize=self.buffer))
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
        else:
            feed.clients.add(client)
            await feed.ready.wait()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_loop())
        return feed, client

    def leave(self, feed: Feed, client: Client) -> None:
        feed.clients.discard(client)
        if not feed.clients and self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]

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

    async def _read_loop(self) -> None:
        polled = 0.0
        while self.feeds:
            # A feed still making its first read (in join) is not read here yet.
            feeds = [f for f in self.feeds.values() if f.ready.is_set() and not f.ended]
            try:
                now = time.monotonic()
                if now - polled >= STATE_EVERY:
                    polled = now
                    await self._poll(feeds, now)
                await self._read(feeds)
                for feed in feeds:
                    if not feed.job or feed.job.get("status") in TERMINAL:
                        await self._maybe_end(feed)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis away or a bad record: log, wait a moment, try again; clients
                # keep their connection (keep-alives go on) and lose nothing.
                log.exception("live-update reader failed; retrying")
                await asyncio.sleep(1)

    async def _poll(self, feeds: list[Feed], now: float) -> None:
        """Read the states of the feeds due: a streaming turn's only news is its end, so
        it is read every ``STATE_EVERY_STREAMING``; a feed waiting for its turn to begin,
        every ``STATE_EVERY``."""
        due = [f for f in feeds if not f.positioned or now - f.polled >= STATE_EVERY_STREAMING]
        if not due:
            return
        for feed, state in zip(due, await self.live.states([f.job_id for f in due]), strict=True):
            feed.update(state)
            feed.polled = now
            await self._position(feed, fresh=False)

    async def _read(self, feeds: list[Feed]) -> None:
        """One blocking read of every positioned feed's stream; deliver what came."""
        by_worker: dict[str, list[Feed]] = {}
        for feed in feeds:
            worker = feed.worker_id
            if feed.positioned and worker is not None:
                by_worker.setdefault(worker, []).append(feed)
        if not by_worker:
            await asyncio.sleep(BLOCK_MS / 1000)
            return
        # Two jobs of one worker (a turn ending as the next begins) read from the lower.
        watches = {worker: min(f.after for f in group) for worker, group in by_worker.items()}
        for worker, updates in (await self.live.wait(watches, BLOCK_MS)).items():
            for feed in by_worker.get(worker, ()):
                self._deliver(feed, updates)

    def _deliver(self, feed: Feed, updates: list[Update]) -> None:
        end = _turn_end(feed.job)
        for index, data in updates:
            if index > feed.after and (end is None or index < end):
                feed.after = index
                feed.send((index, _frame(index, data)))  # formatted once for every client

    async def _maybe_end(self, feed: Feed) -> None:
        """End a terminal job's feed once its last update was delivered."""
        if feed.positioned and feed.worker_id is not None:
            turn = _turn_start(feed.job)
            self._deliver(feed, await self.live.updates(feed.worker_id, feed.after, turn=turn))
        end = _turn_end(feed.job)
        feed.grace += 1
        if end is not None and feed.after + 1 < end and feed.grace < END_GRACE_READS:
            return
        feed.ended = True
        feed.send(await self.end_event(feed.job_id, feed.job))
        if self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]

    async def end_event(self, job_id: str, job: dict[str, str]) -> dict[str, Any]:
        cost = await self.live.turn_cost(job_id) if job else None
        return {
            "job_id": job_id,
            "status": job.get("status", "gone"),
            "error": job.get("error") or None,
            "cost": cost,
            "cost_micro": total_cost_micro(cost) if cost else None,
        }


def _turn_end(job: dict[str, str]) -> int | None:
    """Where a finished turn's updates end (exclusive), or None while unknown."""
    end = job.get("update_to")
    return int(end) if end else None


def _turn_start(job: dict[str, str]) -> int | None:
    """Where the job's turn's updates begin (its folded form's name), or None."""
    start = job.get("update_from")
    return int(start) if start else None


def _frame(index: int, data: str) -> str:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"id: {index}\n{lines}\n"


async def stream(
    hub: Hub, job_id: str, after: int | None, *, keepalive: float, max_events: int
) -> AsyncIterator[str]:
    """The SSE text of one client: updates after ``after`` (None: from the turn's
    start), keep-alive comments, and the end event."""
    feed, client = await hub.join(job_id)
    try:
        yield "retry: 1000\n\n"
        sent = 0
        last = after

        async def catch_up(job: dict[str, str]) -> AsyncIterator[str]:
            nonlocal last, sent
            worker = job.get("worker_id")
            if not worker or not job.get("update_from"):
                # No turn begun yet (a continue job knows its worker before its turn
                # starts): what the stream holds is earlier turns', not this job's.
                return
            start = int(job["update_from"]) - 1
            if last is None or last < start:
                last = start
            end = _turn_end(job)
            while True:
                batch = await hub.live.updates(worker, last, turn=start + 1)
                if not batch:
                    return
                for index, data in batch:
                    if end is not None and index >= end:
                        return  # the worker's next turn: not this job's
                    last = index
                    sent += 1
                    yield _frame(index, data)

        async for frame in catch_up(feed.job):
            yield frame
            if max_events and sent >= max_events:
                return
        while True:
            if client.queue.empty():
                try:
                    # asyncio.timeout, not wait_for: no task made per event.
                    async with asyncio.timeout(keepalive):
                        item = await client.queue.get()
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
            else:
                item = client.queue.get_nowait()
            if item is DROPPED:
                return
            if isinstance(item, dict):  # the end: send what is left, then the end event
                async for frame in catch_up(await hub.live.state(job_id)):
                    yield frame
                yield f"event: end\ndata: {json.dumps(item)}\n\n"
                return
            index, frame = item
            if last is not None and index <= last:
                continue
            last = index
            sent += 1
            yield frame
            if max_events and sent >= max_events:
                return
    finally:
        hub.leave(feed, client)


# --- routes --------------------------------------------------------------------------

router = APIRouter(tags=["events"])
GW = Annotated[Gateway, Depends(gateway)]
SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}
}
LastId = Annotated[str | None, Header(alias="Last-Event-ID", description="resume after it")]
LastIdQuery = Annotated[
    str | None, Query(description="resume after it (for EventSource through a link)")
]


def _after(header: str | None, query: str | None) -> int | None:
    text = header if header is not None else query
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 15:
        raise ApiError(400, "must be an update index", field="last_event_id")
    return int(text)


async def _respond(
    gw: Gateway, job_id: str, after: int | None, visible: Any = None, *, cors: bool = False
) -> StreamingResponse:
    data = await gw.hub.live.job(job_id)
    job = Job.from_hash(data) if data else None
    if job is None or (visible is not None and not visible(job)):
        raise not_found(f"job {job_id}", "job_id")
    s = gw.settings
    body = stream(gw.hub, job_id, after, keepalive=s.gateway_sse_keepalive_seconds,
                  max_events=s.gateway_sse_max_events)  # fmt: skip
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if cors:  # a link is made for a browser on the backend's own origin
        headers["Access-Control-Allow-Origin"] = "*"
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


@router.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse,
            responses={**SSE, **responses(*COMMON)})  # fmt: skip
async def job_events(
    job_id: str, who: Reader, gw: GW, last_event_id: LastId = None,
    last_event_id_q: Annotated[str | None, Query(alias="last_event_id")] = None,
) -> StreamingResponse:  # fmt: skip
    """The job's turn's updates as they are stored (``id:`` = update index), resuming
    after ``Last-Event-ID``; keep-alive comments; ``event: end`` with the end state."""
    if not rules.JOB_ID.ok(job_id):
        raise not_found(f"job {rules.shown(job_id)}", "job_id")
    return await _respond(gw, job_id, _after(last_event_id, last_event_id_q), who.sees)


@router.get("/v1/links/{link}/events", response_class=StreamingResponse,
            responses={**SSE, **responses(400, 404, 500, 503)})  # fmt: skip
async def link_events(
    link: str, gw: GW, last_event_id: LastId = None,
    last_event_id_q: Annotated[str | None, Query(alias="last_event_id")] = None,
) -> StreamingResponse:  # fmt: skip
    """The same stream through a signed read link (no token); 404 once it expired."""
    key = gw.signing_key
    job_id = verify(key, link) if key is not None else None
    if job_id is None:
        raise ApiError(404, "no such link, or it expired", field="link")
    return await _respond(gw, job_id, _after(last_event_id, last_event_id_q), cors=True)
