"""Stream relay: update events per second stored in Redis for one long stream.

The emulator runs a turn of N events with ``turn_seconds=0``, so the stream is pure
replay and the source is never the limit. Three readers of that same stream:

- ours: the real :class:`~orchestrator.jobs.follower.Follower` (claim, stream, dedupe Lua,
  batched writer) in this process, from claim to the last event stored;
- bare relay: an httpx-sse read loop that XADDs each event, pipelined in batches of 100
  (redis-py asyncio), no JSON decoding, no dedupe;
- bare read: the same loop with no writes at all (the ceiling).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import redis.asyncio as aioredis
from httpx_sse import EventSource

from orchestrator.jobs.follower import Follower
from orchestrator.jobs.model import validate_submission
from orchestrator.store.follows import FollowStore
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.store.keys import Keys
from orchestrator.wire.aclient import AsyncWorkersClient
from orchestrator.wire.models import Worker

from .harness import API_KEY, Context, Result, wait_for

PREFIX = "br"


def new_worker(api_url: str, events: int) -> Worker:
    """A worker whose turn of ``events`` events has run to its end (pure replay)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=60) as http:
        created = http.post("/api/workers", json={"input": "relay"}).json()

        def finished() -> dict[str, Any] | None:
            body: dict[str, Any] = http.get(f"/api/workers/{created['id']}").json()
            return body if body["status"] != "running" else None

        body = wait_for(finished, 120, f"a turn of {events} events", every=0.2)
    return Worker.model_validate(body)


async def ours(redis_url: str, api_url: str, worker: Worker, events: int) -> float:
    """Seconds from the follower's start to the last event stored."""
    store = RedisStore(connect(redis_url), PREFIX)
    job, _ = store.create_job(validate_submission(1000, input="relay"))
    store.set_submitted(job, worker)
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    client = AsyncWorkersClient(api_url, API_KEY, stream_read_timeout=120)
    done = asyncio.Event()

    async def finished(job_id: str) -> None:
        done.set()

    follower = Follower(FollowStore(r, PREFIX), client, finished, poll_seconds=0.05)
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(follower.run(stop))
    await asyncio.wait_for(done.wait(), 300)
    seconds = time.perf_counter() - t0
    stop.set()
    await task
    stored = store.relayed(worker.id)
    await client.aclose()
    await r.aclose()
    store.r.close()
    if stored != events:
        raise RuntimeError(f"the follower stored {stored} of {events} events")
    return seconds


async def bare(redis_url: str, api_url: str, worker_id: str, key: str, write: bool) -> float:
    """Seconds to read the whole stream (and XADD it in pipelined batches of 100)."""
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    timeout = httpx.Timeout(30, read=120)
    count = 0
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=timeout) as http:
        t0 = time.perf_counter()
        async with http.stream("GET", f"/api/workers/{worker_id}/stream") as response:
            batch: list[str] = []
            async for event in EventSource(response).aiter_sse():
                count += 1
                if not write:
                    continue
                batch.append(event.data)
                if len(batch) == 100:
                    await _flush(r, key, count - len(batch), batch)
                    batch = []
            if batch:
                await _flush(r, key, count - len(batch), batch)
        seconds = time.perf_counter() - t0
    if write and await r.xlen(key) != count:
        raise RuntimeError("the bare relay lost events")
    await r.delete(key)
    await r.aclose()
    return seconds


async def _flush(r: aioredis.Redis, key: str, first: int, batch: list[str]) -> None:
    async with r.pipeline(transaction=False) as pipe:
        for i, data in enumerate(batch):
            pipe.xadd(key, {"data": data}, id=f"0-{first + i + 1}")
        await pipe.execute()


def relay(ctx: Context) -> Result:
    events = ctx.size(100_000, 20_000)
    res = Result(
        "relay",
        "Stream relay: events/s stored in Redis for one long stream",
        baseline="bare relay loop: httpx-sse read + redis-py XADD pipelined in batches of 100",
        params={"events": events, "emulator": "turn_seconds=0 (replay)",
                "reader": "in this process, asyncio"},
    )  # fmt: skip
    _, url = ctx.emulator("relay-emulator", turn_seconds=0, events=events)
    rates: dict[str, list[float]] = {"ours": [], "bare": [], "read": []}
    for rep in range(ctx.reps):
        worker = new_worker(url, events)
        if worker.id is None:
            raise RuntimeError("no worker id")
        read_s = asyncio.run(bare(ctx.redis_url, url, worker.id, f"bench:relay:{rep}", False))
        bare_s = asyncio.run(bare(ctx.redis_url, url, worker.id, f"bench:relay:{rep}", True))
        ours_s = asyncio.run(ours(ctx.redis_url, url, worker, events))
        rates["read"].append(events / read_s)
        rates["bare"].append(events / bare_s)
        rates["ours"].append(events / ours_s)
        with ctx.redis() as r:  # keep Redis small between repetitions
            r.delete(Keys(PREFIX).updates(worker.id))
    m = res.add("relay rate", "events/s", rates["ours"], rates["bare"], goal="≥ 0.8x bare relay")
    m.met = m.ratio is not None and m.ratio >= 0.8
    res.add(
        "vs bare read (ceiling)", "events/s", rates["ours"], rates["read"],
        note="the same stream read with no writes at all",
    )  # fmt: skip
    return res
