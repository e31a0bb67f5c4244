"""The follower claims a job put up for following at once (a wake-up on the follow
channel), and still by its poll when no wake-up comes; a pass that fails in an
unexpected way does not end it."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from orchestrator.jobs.follower import Follower
from orchestrator.jobs.model import validate_submission
from orchestrator.store.follows import FollowStore
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.store.keys import Keys
from orchestrator.wire.aclient import AsyncWorkersClient
from orchestrator.wire.client import WorkersClient

from .conftest import Emulator
from .processes import async_wait_for


class _Glitching(FollowStore):
    """The follower's real store; its first ``glitches`` claims raise what redis-py's
    cluster client raised on a connection a failover had closed."""

    glitches = 0
    passes = 0  # claims that returned or raised

    async def claim(self, owner: str, lease_ms: int, limit: int) -> list[str]:
        try:
            if self.glitches:
                self.glitches -= 1
                raise AttributeError("'NoneType' object has no attribute 'writelines'")
            return await super().claim(owner, lease_ms, limit)
        finally:
            self.passes += 1


def _followed(
    redis_url: str, key_prefix: str, emulator: Emulator, poll_seconds: float, *, wake: bool,
    glitches: int = 0,
) -> tuple[float, int]:  # fmt: skip
    """Start a follower, then put one job up (with its wake-up, or by a bare ZADD as a
    message lost would leave it); seconds until its stream was relayed, updates stored."""
    emulator.configure(turn_seconds=0.0, events_per_turn=3)
    keys = Keys(key_prefix)
    store = RedisStore(connect(redis_url), key_prefix)
    with WorkersClient(emulator.url, emulator.api_key) as client:
        worker = client.create("wake", budget="low")
    job, _ = store.create_job(validate_submission(100, input="wake", budget="low"))
    if not wake:  # submitted, then taken off the follows: put back later by a bare ZADD
        store.set_submitted(job, worker)
        store.r.zrem(keys.follows, job.id)

    async def scenario() -> float:
        r = aioredis.Redis.from_url(redis_url, decode_responses=True)
        finished: asyncio.Queue[float] = asyncio.Queue()

        async def on_finished(job_id: str) -> None:
            await finished.put(time.monotonic())

        async with AsyncWorkersClient(emulator.url, emulator.api_key) as api:
            follows = _Glitching(r, key_prefix)
            follows.glitches = glitches
            follower = Follower(follows, api, on_finished, poll_seconds=poll_seconds)
            stop = asyncio.Event()
            running = asyncio.create_task(follower.run(stop))
            async def subscribed() -> bool:
                return bool((await r.pubsub_numsub(keys.follow_wake))[0][1])

            async def claimed_once() -> bool:  # past the first claim, into the poll wait
                return follows.passes > 0

            await async_wait_for(subscribed, 10, "the follower to subscribe")
            await async_wait_for(claimed_once, 10, "the follower's first claim")
            t0 = time.monotonic()
            if wake:
                await asyncio.to_thread(store.set_submitted, job, worker)
            else:
                await r.zadd(keys.follows, {job.id: 0})
            try:
                took = await asyncio.wait_for(finished.get(), 30) - t0
            finally:
                stop.set()
                await asyncio.wait_for(running, 30)
        await r.aclose()
        return took

    took = asyncio.run(scenario())
    return took, store.relayed(worker.id)


def test_a_job_put_up_for_following_is_claimed_without_waiting_for_the_poll(
    redis_url: str, key_prefix: str, emulator: Emulator
) -> None:
    took, relayed = _followed(redis_url, key_prefix, emulator, 60.0, wake=True)
    assert relayed == 3
    assert took < 10, f"followed after {took:.1f} s: the wake-up did not wake the follower"


def test_without_a_wake_up_the_poll_still_claims(
    redis_url: str, key_prefix: str, emulator: Emulator
) -> None:
    took, relayed = _followed(redis_url, key_prefix, emulator, 0.2, wake=False)
    assert relayed == 3
    assert took < 10


def test_a_pass_that_fails_unexpectedly_does_not_end_the_follower(
    redis_url: str, key_prefix: str, emulator: Emulator
) -> None:
    took, relayed = _followed(redis_url, key_prefix, emulator, 0.1, wake=True, glitches=3)
    assert relayed == 3 and took < 10
