"""The outbox relay (``GATEWAY_SEND=relay``, the default): the gateway's submit stores the
job and wakes the relay in one Redis call; a relay in a streams worker sends the first
task; the re-send sweep covers a relay that popped a job and died before sending it.

Real Redis (store and broker), real gateway and Celery worker processes, the emulator
over HTTP. Sends are counted in the broker itself: with no ``api`` worker running, every
first task sent stays in the ``api`` queue's lists.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from orchestrator.celery import API_QUEUE, make_app
from orchestrator.facade import Orchestrator
from orchestrator.jobs import relay
from orchestrator.jobs.model import Submission
from orchestrator.ops.processes import Proc, celery_worker
from orchestrator.ops.redis_server import free_port
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from orchestrator.store.broker import queue_keys
from orchestrator.store.intake import AsyncJobWriter
from orchestrator.store.jobs import RedisStore, connect

from .gateway_support import Gateway, start_gateway
from .processes import wait_for


def _sent(store: RedisStore) -> Counter[str]:
    """Job id -> first tasks of it waiting in the broker's ``api`` queue."""
    sent: Counter[str] = Counter()
    for name in queue_keys(API_QUEUE):
        for raw in store.r.lrange(store.keys.broker_prefix + name, 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            sent[body[0][0]] += 1
    return sent


@pytest.fixture
def rt(redis_url: str, key_prefix: str) -> Iterator[Runtime]:
    settings = load_settings(redis_url=redis_url, key_prefix=key_prefix,
                             workers_api_url="http://127.0.0.1:9", workers_api_key="k")  # fmt: skip
    runtime = Runtime(settings, RedisStore(connect(redis_url), key_prefix))
    yield runtime
    runtime.close()


def test_woken_jobs_are_sent_once_and_the_wake_list_is_capped(rt: Runtime) -> None:
    """``CREATE_JOB`` wakes the relay in the same call, the list kept to its cap (the
    oldest wakes dropped, their jobs still in the outbox); the relay sends each woken
    job still queued and unsent, once, and drops one that moved on or was sent."""
    store = rt.store

    async def submit(count: int) -> list[str]:
        client = aioredis.Redis.from_url(rt.settings.redis_url or "", decode_responses=True)
        writer = AsyncJobWriter(client, rt.settings.key_prefix, wake_cap=4)
        try:
            return [(await writer.create_job(Submission(input=f"j{i}")))[0].id
                    for i in range(count)]  # fmt: skip
        finally:
            await client.aclose()

    ids = asyncio.run(submit(6))
    assert store.wakes.length() == 4  # the two oldest wakes dropped
    assert set(store.unsent(-60_000)) == set(ids)  # every job still in the outbox
    cancelled, swept = ids[2], ids[3]
    store.transition(cancelled, "cancelled", "test")
    store.mark_sent(swept)  # as the re-send sweep does once it has sent a job
    app = make_app(rt.settings)
    assert relay.relay_once(app, rt, timeout=1) == 2
    assert store.wakes.length() == 0
    assert _sent(store) == Counter({ids[4]: 1, ids[5]: 1})
    assert set(store.unsent(-60_000)) == {ids[0], ids[1], cancelled}  # the sweep's to judge
    assert relay.relay_once(app, rt, timeout=0.1) == 0  # nothing left: waits, sends none


def _stop(gw: Gateway) -> None:
    for c in gw.clients:
        c.close()
    gw.proc.stop()


def test_a_job_submitted_over_http_is_sent_by_the_relay_and_completes(
    env: dict[str, str], tmp_path: Path, store: RedisStore, orch: Orchestrator
) -> None:
    """The gateway's broker is unreachable and the sweep is a minute away: the job runs
    within seconds only if the relay in the worker sent it (a gateway that sent it
    itself would fail to, and leave it to the sweep)."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    gw = start_gateway(env, tmp_path, store, BROKER_URL=dead)
    worker = celery_worker({**env, "RESEND_AFTER_SECONDS": "60"}, tmp_path / "worker.log")
    try:
        worker.start(timeout=90)
        made = gw.client("submit").post("/v1/jobs", json={"input": "over http"})
        assert made.status_code == 202, made.text
        job = orch.wait(made.json()["id"], timeout=30)
        assert job.status == "completed", job
        assert "first task not sent" not in gw.proc.text()
        assert "re-sending job" not in worker.text()
        assert store.wakes.length() == 0 and not store.unsent(-60_000)
    finally:
        worker.stop()
        _stop(gw)


def test_two_relays_send_each_job_once(
    env: dict[str, str], tmp_path: Path, store: RedisStore
) -> None:
    """Two streams workers, each with its relay, and a burst of submits: every job's
    first task is sent exactly once (counted in the broker; no api worker takes them)."""
    gw = start_gateway(env, tmp_path, store)
    relays: list[Proc] = []
    try:
        for name in ("r1", "r2"):
            relays.append(celery_worker(env, tmp_path / f"{name}.log", queues="streams",
                                        name=name, concurrency=2).start(timeout=90))  # fmt: skip
        clients = [gw.client("submit") for _ in range(4)]

        def submit(i: int) -> str:
            made = clients[i % 4].post("/v1/jobs", json={"input": f"burst {i}"})
            assert made.status_code == 202, made.text
            return str(made.json()["id"])

        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(submit, range(40)))
        wait_for(lambda: not store.unsent(-60_000), 30, "every job sent")
        assert _sent(store) == Counter(dict.fromkeys(ids, 1))
        assert store.wakes.length() == 0
    finally:
        for proc in relays:
            proc.stop()
        _stop(gw)


def test_a_relay_that_died_between_pop_and_send_leaves_the_job_to_the_sweep(
    env: dict[str, str], tmp_path: Path, store: RedisStore, orch: Orchestrator
) -> None:
    """A relay pops the job's wake and dies before sending: the job stays in the outbox
    and the re-send sweep of a worker sends it, after RESEND_AFTER_SECONDS."""
    gw = start_gateway(env, tmp_path, store)
    worker = celery_worker({**env, "RESEND_AFTER_SECONDS": "2"}, tmp_path / "worker.log")
    try:
        made = gw.client("submit").post("/v1/jobs", json={"input": "orphaned"})
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        assert store.wakes.take(1, 10) == [job_id]  # the relay's pop; then it dies
        assert job_id in store.unsent(-60_000)
        worker.start(timeout=90)
        job = orch.wait(job_id, timeout=30)
        assert job.status == "completed", job
        assert f"re-sending job {job_id}" in worker.text()
    finally:
        worker.stop()
        _stop(gw)
