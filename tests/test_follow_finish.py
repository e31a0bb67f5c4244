"""A follow task whose stream is read and whose ``on_finished`` hook runs is not
cancelled when a renewal finds its lease gone: the hook's finalize released it (a job
that completes leaves the follows), and cancelling the task cut the hook off from its
outcome. On a loaded machine a renewal fell in that window now and then, and the
in-process follower of tests/injection.py reported nothing."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from orchestrator.jobs.follower import Follower
from orchestrator.jobs.model import validate_submission
from orchestrator.store.follows import FollowStore
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.wire.aclient import AsyncWorkersClient
from orchestrator.wire.client import WorkersClient

from .conftest import Emulator


class _Watching(FollowStore):
    """The follower's real store; ``lost`` is set once a renewal finds a lease gone."""

    lost: asyncio.Event

    async def renew(self, owner: str, expiry_ms: int, job_ids: list[str]) -> list[str]:
        gone = await super().renew(owner, expiry_ms, job_ids)
        if gone:
            self.lost.set()
        return gone


def test_a_renewal_during_on_finished_does_not_cut_the_hook_off(
    redis_url: str, key_prefix: str, emulator: Emulator
) -> None:
    emulator.configure(turn_seconds=0.0, events_per_turn=3)
    store = RedisStore(connect(redis_url), key_prefix)
    with WorkersClient(emulator.url, emulator.api_key) as client:
        worker = client.create("finish", budget="low")
    job, _ = store.create_job(validate_submission(100, input="finish", budget="low"))
    store.set_submitted(job, worker)
    steps: list[str] = []

    async def scenario() -> None:
        r = aioredis.Redis.from_url(redis_url, decode_responses=True)
        follows = _Watching(r, key_prefix)
        follows.lost = asyncio.Event()
        ended = asyncio.Event()

        async def on_finished(job_id: str) -> None:
            # As finalize does once the job completes, then a renewal meanwhile (a
            # loaded machine: the loop hears of the thread's result late).
            await asyncio.to_thread(store.release_follow, job_id)
            steps.append("released")
            await follows.lost.wait()  # bare: wait_for would swallow a cancel (3.11)
            steps.append("renewed")
            ended.set()

        async with AsyncWorkersClient(emulator.url, emulator.api_key) as api:
            # Renewals every 0.1 s: one falls in the hook's wait.
            follower = Follower(follows, api, on_finished, poll_seconds=0.05, lease_seconds=0.3)
            stop = asyncio.Event()
            running = asyncio.create_task(follower.run(stop))
            try:
                await asyncio.wait_for(ended.wait(), 20)
            finally:
                stop.set()
                await asyncio.wait_for(running, 30)
        await r.aclose()

    with contextlib.suppress(TimeoutError):  # reported below: how far the hook got
        asyncio.run(scenario())
    assert steps == ["released", "renewed"], f"the hook was cut off after {steps}"
    assert store.relayed(worker.id) == 3
