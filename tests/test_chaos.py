"""Chaos, the short versions CI runs (``python -m bench.chaos`` is the long form).

Each scenario runs against its own Redis server (free port, AOF, a password), real
``orchestrator worker`` / ``beat`` processes and the emulator, and prints its row of the
table in RELIABILITY.md. After the SIGKILL scenario (run with Flower watching) the
secrets audit looks for the API key and the Redis and Flower passwords everywhere.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from bench import chaos
from orchestrator.facade import Orchestrator
from orchestrator.jobs.follower import Follower
from orchestrator.jobs.model import Job, validate_submission
from orchestrator.jobs.update_writer import UpdateWriter
from orchestrator.ledger import MONEY_FIELDS
from orchestrator.ops.redis_server import free_port
from orchestrator.store.follows import FollowStore
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.store.keys import Keys
from orchestrator.wire.aclient import AsyncWorkersClient
from orchestrator.wire.client import WorkersClient
from orchestrator.wire.models import Worker
from orchestrator.wire.retry import RetryPolicy

from .conftest import Emulator
from .processes import Proc, async_wait_for, celery_worker, start_on_a_free_port, wait_for

pytestmark = pytest.mark.slow

FLOWER_USER = "chaos-admin"
FLOWER_PASSWORD = "flower-" + chaos.secrets.token_hex(16)


def show(row: chaos.Row) -> None:
    print("\n" + row.markdown())


def assert_clean(row: chaos.Row) -> None:
    show(row)
    assert (row.lost, row.dup_turns, row.bad_updates, row.ledger_diff) == (0, 0, 0, 0), row
    assert row.slots in (None, 0), row
    assert row.held == 0, row  # nothing left held once every job ended (the note says what)
    assert "workers exited" not in row.note, row  # none stopped by itself (a kombu crash)
    assert "token" not in row.note, row


# --- a Redis write failing under the follower ----------------------------------------


class SlowClose(AsyncWorkersClient):
    """The upstream closes each stream 0.1 s after its last event."""

    async def stream_updates(self, worker_id: str, *, via_retrieve: bool = False) -> Any:
        async for update in super().stream_updates(worker_id, via_retrieve=via_retrieve):
            yield update
        await asyncio.sleep(0.1)  # the last batch of updates is written meanwhile



def submitted_turn(
    redis_url: str, key_prefix: str, emulator: Emulator, text: str
) -> tuple[RedisStore, Worker, Job]:
    """A turn running upstream and its job in the store, submitted (ready to follow)."""
    store = RedisStore(connect(redis_url), key_prefix)
    with WorkersClient(emulator.url, emulator.api_key) as client:
        worker = client.create(text, budget="low", idempotency_key=key_prefix)
    job, _ = store.create_job(validate_submission(100, input=text, budget="low"))
    store.set_submitted(job, worker)
    return store, worker, job

def test_follower_never_drops_updates_when_a_write_fails(
    redis_url: str, key_prefix: str, emulator: Emulator
) -> None:
    """A write that fails mid-stream (Redis away for a moment) must not lose updates.

    The worker's hash is made unwritable for 0.4 s in the middle of a turn: the writes of
    that window fail, and the updates after it are refused as a gap. The follower must
    notice, reconnect and relay the rest before it reports the turn finished, also when
    the connection closes a moment after the last event (so that every write, failed or
    not, is done before the stream ends).
    """
    emulator.configure(turn_seconds=1.5, events_per_turn=15)
    keys = Keys(key_prefix)
    store, worker, job = submitted_turn(redis_url, key_prefix, emulator, "write failure")

    async def scenario() -> int:
        r = aioredis.Redis.from_url(redis_url, decode_responses=True)
        finished: asyncio.Queue[str] = asyncio.Queue()

        async def on_finished(job_id: str) -> None:
            await finished.put(job_id)

        async with SlowClose(emulator.url, emulator.api_key) as api:
            follows = FollowStore(r, key_prefix)
            follower = Follower(follows, api, on_finished, lease_seconds=5, poll_seconds=0.05)
            stop = asyncio.Event()
            running = asyncio.create_task(follower.run(stop))
            async def relayed_some() -> bool:
                return store.relayed(worker.id) >= 4

            await async_wait_for(relayed_some, 30, "the first updates to be relayed", 0.02)
            hidden = keys.worker(worker.id) + ":hidden"
            await r.rename(keys.worker(worker.id), hidden)
            await r.set(keys.worker(worker.id), "not a hash")  # every write fails now
            await asyncio.sleep(0.4)
            await r.delete(keys.worker(worker.id))
            await r.rename(hidden, keys.worker(worker.id))
            assert await asyncio.wait_for(finished.get(), 30) == job.id
            relayed = store.relayed(worker.id)
            stop.set()
            await asyncio.wait_for(running, 30)
        await r.aclose()
        return relayed

    relayed = asyncio.run(scenario())
    emitted = list(emulator.server.state.workers[worker.id].updates)
    assert (relayed, len(emitted)) == (15, 15), "updates lost: the turn ended with a gap"
    want = [json.loads(raw.decode().split("data: ", 1)[1]) for raw in emitted]
    assert [d for _, d in store.read_updates(worker.id, -1)] == want


class SlowWriter(UpdateWriter):
    """Each batch takes 0.2 s to reach Redis (a busy server, a slow network)."""

    async def _write(self, batch: dict[str, tuple[int, list[str]]]) -> None:
        await asyncio.sleep(0.2)
        await super()._write(batch)


def test_follower_finishes_a_turn_only_once_its_updates_are_stored(
    redis_url: str, key_prefix: str, emulator: Emulator
) -> None:
    """The turn is reported finished (and finalize sets ``update_to`` from the stored
    count) only after every update of the stream is in Redis, including a batch that was
    still being written when the stream closed."""
    emulator.configure(turn_seconds=2.5, events_per_turn=10)  # an event every 0.28 s
    keys = Keys(key_prefix)
    _, worker, _ = submitted_turn(redis_url, key_prefix, emulator, "slow writes")

    async def scenario() -> int:
        r = aioredis.Redis.from_url(redis_url, decode_responses=True)
        finished: asyncio.Queue[int] = asyncio.Queue()

        async def on_finished(job_id: str) -> None:
            await finished.put(await r.hget(keys.worker(worker.id), "relayed"))

        async with SlowClose(emulator.url, emulator.api_key) as api:
            follows = FollowStore(r, key_prefix)
            follower = Follower(follows, api, on_finished, lease_seconds=5, poll_seconds=0.05)
            follower.writer = SlowWriter(follows, maxlen=1000)
            stop = asyncio.Event()
            running = asyncio.create_task(follower.run(stop))
            relayed_when_finished = int(await asyncio.wait_for(finished.get(), 30))
            stop.set()
            await asyncio.wait_for(running, 30)
        await r.aclose()
        return relayed_when_finished

    assert asyncio.run(scenario()) == 10, "finished before its last updates were stored"


def test_a_stream_put_up_again_while_its_follow_task_ends_is_followed_again_at_once(
    redis_url: str, key_prefix: str, emulator: Emulator
) -> None:
    """Finalize found the turn still running and put the stream up again; this same
    follower claimed it before the ending follow task was gone. It must follow it again
    now, not after the new lease (30 s here) runs out."""
    emulator.configure(turn_seconds=0.3, events_per_turn=3)
    keys = Keys(key_prefix)
    store, _, job = submitted_turn(redis_url, key_prefix, emulator, "put up again")

    async def scenario() -> float:
        r = aioredis.Redis.from_url(redis_url, decode_responses=True)
        calls: asyncio.Queue[float] = asyncio.Queue()
        seen = 0

        async def on_finished(job_id: str) -> None:
            nonlocal seen
            seen += 1
            if seen == 1:
                store.request_follow(job_id, now=True)  # as a "refollow" finalize does
                async def ours() -> bool:  # claimed again by us, this task still alive
                    return await r.hget(keys.follow_owners, job_id) == follower.owner

                await async_wait_for(ours, 10, "the follower to claim the stream again")
            await calls.put(time.monotonic())

        async with AsyncWorkersClient(emulator.url, emulator.api_key) as api:
            follows = FollowStore(r, key_prefix)
            follower = Follower(follows, api, on_finished, lease_seconds=30, poll_seconds=0.05)
            stop = asyncio.Event()
            running = asyncio.create_task(follower.run(stop))
            first = await asyncio.wait_for(calls.get(), 30)
            second = await asyncio.wait_for(calls.get(), 10)
            stop.set()
            await asyncio.wait_for(running, 30)
        await r.aclose()
        return second - first

    assert asyncio.run(scenario()) < 5, "the stream waited for its own lease to lapse"
    assert store.relayed(str(store.get_job(job.id).worker_id)) == 3


def test_a_job_lost_with_redis_data_submitted_again_reuses_its_upstream_worker(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    """Redis loses its last second of writes (a host crash under ``appendfsync everysec``)
    while a job's turn runs: the store no longer knows the job, its idempotency key or
    its worker, and its follower's relay is refused (the worker has no records). The
    client submits the job again with the same key: that must not create (and pay for) a
    second upstream worker, the new job must own the turn's updates, and the ledger must
    match."""
    emulator.configure(turn_seconds=1.0, events_per_turn=5)
    worker = celery_worker(env, tmp_path / "w1.log", name="w1").start()
    try:
        job = orch.submit("lost with the AOF tail", idempotency_key="client-key-1")
        wait_for(lambda: orch.get(job.id).status == "running", 30, "the turn to run")
        r, keys, worker_id = orch.store.r, orch.store.keys, str(orch.get(job.id).worker_id)
        r.delete(keys.job(job.id), keys.idempotency("client-key-1"),
                 keys.worker(worker_id), keys.updates(worker_id))  # fmt: skip
        for zset in (keys.jobs, keys.outbox, keys.follows):
            r.zrem(zset, job.id)
        r.hdel(keys.follow_owners, job.id)
        # The follower of the forgotten job relays the turn again (until its next lease
        # renewal finds the lease gone); here: all of it, as it can when the turn is short.
        record = emulator.server.state.workers[worker_id]
        wait_for(lambda: len(record.updates) == 5 and not record.active, 30, "the turn's end")
        data = [
            json.dumps(json.loads(raw.decode().split("data: ", 1)[1])) for raw in record.updates
        ]
        # That follower's writes are refused: the worker has no records here (as after
        # its retention), so nothing it relays is stored as new.
        with pytest.raises(redis.ResponseError, match="GONE"):
            orch.store.append_updates(worker_id, 0, data)
        assert not r.exists(keys.updates(worker_id))
        again = orch.submit("lost with the AOF tail", idempotency_key="client-key-1")
        assert again.id != job.id  # the store forgot the key: a new job
        assert orch.wait(again.id, timeout=60).status == "completed"
    finally:
        worker.stop()
    truth = emulator.ledger()
    assert truth["workers_created"] == 1, "a second upstream worker for one submission"
    assert [i for i, _ in orch.updates(again.id, block=False)] == list(range(5))
    total = orch.costs()["total"]
    assert {f: total[f] for f in MONEY_FIELDS} == {f: truth[f] for f in MONEY_FIELDS}


def test_host_crash_under_everysec_then_submitting_again_by_key(tmp_path: Path) -> None:
    """The AOF loses its last second (truncated to its size a second before the crash):
    the jobs submitted in it are gone; the client submits them again by key."""
    with chaos.Cluster(tmp_path, fsync="everysec") as cluster:
        row = chaos.power_loss(cluster, jobs=60)
    assert_clean(row)
    assert "jobs gone" in row.note


# --- the scenarios -------------------------------------------------------------------


def test_sigkill_of_api_and_stream_workers_loses_nothing_and_leaks_no_secret(
    tmp_path: Path,
) -> None:
    # 3 slots per tenant: about what 4 jobs a second keep running, so some wait for one.
    with chaos.Cluster(tmp_path, turn=1.5, events=10, tenant_slots=3) as cluster:
        flower, url = start_flower(cluster, tmp_path)
        try:
            row = chaos.sigkill(cluster, jobs=80, per_second=4)
            seen = flower_answers(url)
        finally:
            flower.stop()
        assert_clean(row)
        assert row.faults >= 4
        assert seen["tasks"] > 0 and seen["workers"] > 0, seen
        audit(cluster, seen["text"])
        redis.Redis.from_url(cluster.url).set("planted", f"x{chaos.API_KEY}x")
        with pytest.raises(AssertionError, match="api key in Redis"):
            audit(cluster)  # the audit does find a secret where there is one


@pytest.mark.parametrize("fsync", ["everysec", "always"])
def test_redis_killed_and_restarted_mid_run(tmp_path: Path, fsync: str) -> None:
    with chaos.Cluster(tmp_path, fsync=fsync) as cluster:
        row = chaos.redis_restart(cluster, jobs=80)
        logs = cluster.logs()
    assert_clean(row)
    assert "Connection to broker lost" in logs  # the workers did see Redis go
    # ... and lived through it: kombu's restore on the closed channel used to stop one.
    assert "Unrecoverable error" not in logs


def test_redis_away_for_10_seconds(tmp_path: Path) -> None:
    with chaos.Cluster(tmp_path) as cluster:
        row = chaos.redis_outage(cluster, jobs=60, seconds=10)
    assert_clean(row)


def test_upstream_fault_storm(tmp_path: Path) -> None:
    with chaos.Cluster(tmp_path, HTTP_TIMEOUT="1") as cluster:
        row = chaos.storm(cluster, jobs=60)
    assert_clean(row)
    assert row.faults >= 20


def test_three_beats_with_random_kills_fire_each_slot_once(tmp_path: Path) -> None:
    with chaos.Cluster(tmp_path, turn=0.0, events=2) as cluster:
        row = chaos.beats(cluster, schedules=50, seconds=20, min_kills=6)
    assert_clean(row)
    assert row.jobs >= 500 and row.faults >= 6, row


# --- the secrets audit ---------------------------------------------------------------


def start_flower(cluster: chaos.Cluster, tmp_path: Path) -> tuple[Proc, str]:
    env = {**cluster.env, "FLOWER_USER": FLOWER_USER, "FLOWER_PASSWORD": FLOWER_PASSWORD}

    def flower(port: int) -> Proc:
        args = [sys.executable, "-m", "orchestrator", "flower", "--port", str(port)]
        return Proc(args, env, tmp_path / "flower.log", ready_line="Visit me at")

    proc, port = start_on_a_free_port(flower)
    return proc, f"http://127.0.0.1:{port}"


def flower_answers(url: str) -> dict[str, Any]:
    """Flower's /api/tasks and /api/workers (with auth), after it saw the run."""
    auth = (FLOWER_USER, FLOWER_PASSWORD)
    assert httpx.get(f"{url}/api/workers", timeout=10).status_code == 401
    tasks = httpx.get(f"{url}/api/tasks", auth=auth, timeout=30)
    workers = httpx.get(f"{url}/api/workers", auth=auth, params={"refresh": "true"}, timeout=30)
    assert tasks.status_code == workers.status_code == 200
    return {"tasks": len(tasks.json()), "workers": len(workers.json()),
            "text": tasks.text + workers.text}  # fmt: skip


def redis_dump(url: str) -> Iterator[bytes]:
    """Every key name and value in the server (broker messages included)."""
    r = redis.Redis.from_url(url)
    for name in r.scan_iter(count=1000):
        yield name
        kind = r.type(name).decode()
        if kind == "string":
            yield r.get(name) or b""
        elif kind == "hash":
            yield from (k + b"=" + v for k, v in r.hgetall(name).items())
        elif kind == "list":
            yield from r.lrange(name, 0, -1)
        elif kind == "set":
            yield from r.smembers(name)
        elif kind == "zset":
            yield from r.zrange(name, 0, -1)
        elif kind == "stream":
            yield from (b"".join(k + b"=" + v for k, v in f.items()) for _, f in r.xrange(name))


def exception_texts(cluster: chaos.Cluster) -> list[str]:
    """What the errors a user may see say: unreachable Redis, refused key, dead API."""
    dead = cluster.url.replace(f":{cluster.redis.port}/", f":{free_port()}/")
    texts = []
    for url in (dead, cluster.url.replace(chaos.REDIS_PASSWORD, "not-the-password")):
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            texts.append(f"{exc!r} {exc}")
    for base in (cluster.emulator.url, f"http://127.0.0.1:{free_port()}"):
        try:
            with WorkersClient(base, chaos.API_KEY, retry=RetryPolicy(max_retries=0)) as client:
                client.retrieve("wrk_does_not_exist")
        except Exception as exc:
            texts.append(f"{exc!r} {exc} {getattr(exc, 'body', '')}")
    env = {**cluster.env, "REDIS_URL": dead}
    for argv in (["status", "job_123"], ["costs"], ["health"]):
        done = subprocess.run([sys.executable, "-m", "orchestrator", *argv], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        texts.append(done.stdout + done.stderr)
    assert len(texts) == 7 and all(texts), texts
    return texts


def audit(cluster: chaos.Cluster, flower_text: str = "") -> None:
    """The API key and the Redis and Flower passwords appear nowhere they may not."""
    secrets = {"api key": chaos.API_KEY, "redis password": chaos.REDIS_PASSWORD,
               "flower password": FLOWER_PASSWORD}  # fmt: skip
    dump = list(redis_dump(cluster.url))
    logs = cluster.logs() + (cluster.redis.data_dir / "redis.log").read_text(errors="replace")
    assert len(dump) > 100 and "Task workers.create" in logs  # there is something to look at
    errors = "\n".join(exception_texts(cluster))
    for what, secret in secrets.items():
        assert not [item for item in dump if secret.encode() in item], f"{what} in Redis"
        assert secret not in logs, f"{what} in a process log"
        assert secret not in flower_text, f"{what} in Flower's API"
        assert secret not in errors, f"{what} in an exception text"
