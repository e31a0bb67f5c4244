"""Live updates as server-sent events, fanned out: ``GET /v1/jobs/{id}/events`` (token)
and ``GET /v1/links/{link}/events`` (signed link).

Each gateway process has one :class:`~orchestrator.gateway.fanout.Hub` that reads a
job's updates once however many clients follow it (see there). A client joins its job's
feed first, then reads what is stored after its position, then takes the feed's events,
skipping any index it has sent: whatever was stored before the feed's first read is in
that catch-up, and whatever after it comes through the feed, so nothing is missed and
nothing is sent twice. ``id:`` is the update's index; the last
event, ``event: end``, carries the job's end state and cost.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse

from orchestrator import rules
from orchestrator.gateway.auth import Reader
from orchestrator.gateway.errors import COMMON, ApiError, not_found, responses
from orchestrator.gateway.fanout import DROPPED, KEEPALIVE, Hub, frame, turn_end
from orchestrator.gateway.links import verify
from orchestrator.gateway.state import Gateway, gateway
from orchestrator.jobs.model import Job


async def stream(
    hub: Hub, job_id: str, after: int | None, *, max_events: int
) -> AsyncIterator[bytes]:
    """The SSE text of one client: updates after ``after`` (None: from the turn's
    start), keep-alive comments, and the end event. What the feed brought meanwhile is
    sent in one chunk."""
    feed, client = await hub.join(job_id)
    try:
        yield b"retry: 1000\n\n"
        sent = 0
        last = after

        async def catch_up(job: dict[str, str]) -> AsyncIterator[bytes]:
            nonlocal last, sent
            worker = job.get("worker_id")
            if not worker or not job.get("update_from"):
                # No turn begun yet (a continue job knows its worker before its turn
                # starts): what the stream holds is earlier turns', not this job's.
                return
            start = int(job["update_from"]) - 1
            if last is None or last < start:
                last = start
            end = turn_end(job)
            while True:
                batch = await hub.live.updates(worker, last)
                if not batch:
                    return
                for index, data in batch:
                    if end is not None and index >= end:
                        return  # the worker's next turn: not this job's
                    last = index
                    sent += 1
                    yield frame(index, data)

        async for chunk in catch_up(feed.job):
            yield chunk
            if max_events and sent >= max_events:
                return
        while True:
            chunks: list[bytes] = []
            for item in await client.take():
                if item is DROPPED:
                    break
                if item is KEEPALIVE:
                    chunks.append(b": keep-alive\n\n")
                elif isinstance(item, dict):  # the end: what is left, then the end event
                    if chunks:
                        yield b"".join(chunks)
                    async for chunk in catch_up(await hub.live.state(job_id)):
                        yield chunk
                    yield f"event: end\ndata: {json.dumps(item)}\n\n".encode()
                    return
                else:
                    index, framed = item
                    if last is not None and index <= last:
                        continue
                    last = index
                    sent += 1
                    chunks.append(framed)
                    if max_events and sent >= max_events:
                        break
            else:
                if chunks:
                    yield b"".join(chunks)
                continue
            # Dropped, or the most events sent: what was taken goes, then the end.
            if chunks:
                yield b"".join(chunks)
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
    body = stream(gw.hub, job_id, after, max_events=gw.settings.gateway_sse_max_events)
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
