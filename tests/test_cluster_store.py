"""The store on a real Redis Cluster (``orchestrator/ops/redis_cluster.py``: three primaries
with a replica each): the ``redis+cluster://`` address and what the settings refuse with
it, every key of a deployment in the one slot of its hash tag, and the store's paths that
a cluster client takes differently: scripts inside pipelines, transactions, pub/sub (a
job's moves, the followers' wake-up), the live fan-out's blocking read, the gateway's
job writes and token checks, the memory gauge's per-server reads, and a watch and a
script surviving the tag's primary being killed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from orchestrator.errors import ConfigError
from orchestrator.jobs.model import validate_submission
from orchestrator.ops.redis_cluster import RedisCluster
from orchestrator.settings import load_settings
from orchestrator.store.connection import connect_async, home_client, parse_cluster_url
from orchestrator.store.follows import FollowStore
from orchestrator.store.jobs import RedisStore
from orchestrator.store.keys import Keys, hash_tag
from orchestrator.store.live import LiveStore
from orchestrator.store.status import JobWatch
from orchestrator.store.tokens import TokenStore

from .processes import joined

AMQP = "amqp://u@127.0.0.1:5672/v"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(primaries=3, replicas=1) as running:
        yield running


@pytest.fixture
def store(cluster: RedisCluster, key_prefix: str) -> Iterator[RedisStore]:
    s = RedisStore.from_url(cluster.url, key_prefix)
    yield s
    s.close()


def _job(store: RedisStore, text: str = "hello") -> str:
    job, _ = store.create_job(validate_submission(100, input=text, budget="low"))
    return job.id


def _next_move(watch: JobWatch, tries: int = 5) -> str | None:
    """The next status a watch sees (a None before it is the subscription's
    confirmation, read and skipped, or a lost server's short pause)."""
    for _ in range(tries):
        moved = watch.wait(10.0)
        if moved is not None:
            return moved
    return None


def _sees_cancel(store: RedisStore, watch: JobWatch, job_id: str, after: float) -> bool:
    """Cancel ``job_id`` ``after`` seconds from now; whether ``watch`` sees it."""
    moved = threading.Timer(after, store.transition, (job_id, "cancelled"))
    moved.start()
    try:
        return _next_move(watch) == "cancelled"
    finally:
        joined(moved)


def test_a_cluster_store_needs_a_broker_of_its_own_and_never_is_one() -> None:
    url = "redis+cluster://10.0.0.1:7000,10.0.0.2:7001/"
    assert parse_cluster_url(url) == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    settings = load_settings(redis_url=url, broker_url=AMQP)
    assert (settings.broker_kind, settings.broker_is_store) == ("amqp", False)
    with pytest.raises(ConfigError) as caught:
        load_settings(redis_url=url)
    assert caught.value.variable == "BROKER_URL" and "amqp://" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_settings(redis_url="redis://127.0.0.1:1/0", broker_url=url)
    assert caught.value.variable == "BROKER_URL" and "cannot be Celery's broker" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://:pw@h:1/", "REDIS_PASSWORD"),
        ("redis+cluster://h:1/3", "only db 0"),
        ("redis+cluster://h:x/", "host:port"),
        ("redis+cluster:///", "host:port"),
    ],
)
def test_a_bad_cluster_address_names_redis_url_and_not_its_value(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(redis_url=url, broker_url=AMQP)
    assert caught.value.variable == "REDIS_URL" and says in str(caught.value)
    assert "pw" not in str(caught.value)


def test_every_key_of_a_deployment_hashes_to_the_one_slot_of_its_tag(
    store: RedisStore, key_prefix: str
) -> None:
    keys = store.keys
    assert keys.prefix == "{" + key_prefix + "}" == hash_tag(keys.prefix)
    assert Keys.for_client(object(), key_prefix).prefix == key_prefix  # one Redis: as is
    names = [
        keys.job("job_1"), keys.jobs, keys.outbox, keys.follows, keys.updates("w"),
        keys.worker("w"), keys.ledger("tag", "tenant=a"), keys.ledger_total,
        keys.budget_reserved("global", "2026-11"), keys.limit_running("tag:t=a"),
        keys.schedule("s"), keys.schedules_due, keys.token_bucket("ab"), keys.webhooks_due,
        keys.job_events("job_1"), keys.follow_wake,
    ]  # fmt: skip
    assert {key_slot(name.encode()) for name in names} == {key_slot(keys.jobs.encode())}
    # And they are where the cluster puts that slot: one primary holds them all.
    job_id = _job(store)
    holder = home_client(store.r, keys.jobs)
    assert holder.exists(keys.job(job_id), keys.jobs, keys.outbox) == 3


def test_pipelines_scripts_and_transactions_run_on_the_cluster(store: RedisStore) -> None:
    job_id = _job(store, "pipelined")
    store.r.hset(store.keys.worker("w1"), "relayed", 0)
    batch = store.batch()
    store.append_updates_into(batch, "w1", 0, ['{"n":0}', '{"n":1}'])
    batch.pipe.hset(store.keys.job(job_id), "note", "x")
    assert batch.execute() == [2, 1]
    assert store.turn_costs([job_id, "job_missing"]) == [None, None]  # MGET in a pipeline
    store.request_follow(job_id, now=True)  # a transaction with its wake-up
    assert store.r.zscore(store.keys.follows, job_id) == 0
    sample = store.memory_sample()
    assert sample["kinds"]["job"] > 0 and sample["used_memory"] > 0
    assert store.check_eviction_policy() == "noeviction"


def test_a_watch_wakes_on_a_move_and_the_fan_out_reads_updates(
    cluster: RedisCluster, store: RedisStore, key_prefix: str
) -> None:
    job_id = _job(store, "watched")
    with store.watch_job(job_id) as watch:
        assert _sees_cancel(store, watch, job_id, 0.2)

    async def live() -> dict[str, list[tuple[int, str]]]:
        fan_out = LiveStore.from_url(cluster.url, key_prefix)
        follows = FollowStore.from_url(cluster.url, key_prefix)
        try:
            assert await follows.wait_wake(0.01) is False  # subscribed from here on
            woken = asyncio.ensure_future(follows.wait_wake(10.0))
            reading = asyncio.ensure_future(fan_out.wait({"w2": -1}, 10_000))
            store.r.hset(store.keys.worker("w2"), "relayed", 0)
            store.append_updates("w2", 0, ['{"n":0}'])
            store.request_follow(job_id)
            assert await asyncio.wait_for(woken, 10) is True
            return await asyncio.wait_for(reading, 10)
        finally:
            await follows.close()
            await fan_out.close()

    assert asyncio.run(live()) == {"w2": [(0, '{"n":0}')]}


def test_the_gateways_writes_and_token_checks_run_on_the_cluster(
    cluster: RedisCluster, store: RedisStore, key_prefix: str
) -> None:
    token, record = TokenStore(store).create("submitter", "acme", "cluster")

    async def gateway() -> tuple[str, bool, bool, Any]:
        fan_out = LiveStore.from_url(cluster.url, key_prefix)
        try:
            writer = fan_out.job_writer(wake=True)
            sub = validate_submission(
                100, input="via gateway", budget="low", idempotency_key="k1"
            )
            job, new = await writer.create_job(sub)
            again, second = await writer.create_job(sub)
            assert again.id == job.id
            checked = await fan_out.token_check().authenticate(token, 10.0, 5)
            return job.id, new, second, checked
        finally:
            await fan_out.close()

    job_id, new, second, checked = asyncio.run(gateway())
    assert (new, second) == (True, False)
    assert store.get_job(job_id) is not None
    # The outbox relay's pop and read, on the cluster: woken once, by the new job only.
    assert store.wakes.take(1, 10) == [job_id]
    assert [job.id for job in store.wakes.unsent([job_id])] == [job_id]
    assert checked is not None and checked[0]["id"] == record["id"] and checked[1] == 0


def test_a_burst_past_the_pool_size_fails_nothing(
    cluster: RedisCluster, key_prefix: str
) -> None:
    """A follower's burst of concurrent calls (more than ``max_connections``) all answer:
    the asyncio cluster client's pools do not queue a call, so they are not bounded."""
    key = f"{{{key_prefix}}}:burst"

    async def burst() -> list[Any]:
        client: Any = connect_async(cluster.url, max_connections=8)
        try:
            await client.set(key, "1")
            # Each BLPOP holds its connection for a moment: all 40 are in flight at once.
            waits = [client.blpop([key + ":none"], 0.2) for _ in range(40)]
            return list(await asyncio.gather(*waits, *(client.get(key) for _ in range(40))))
        finally:
            await client.aclose()

    replies = asyncio.run(burst())
    assert replies[:40] == [None] * 40 and replies[40:] == ["1"] * 40


def test_a_watch_and_the_scripts_carry_on_after_the_tags_primary_is_killed(
    key_prefix: str,
) -> None:
    """The tag's primary SIGKILLed: its replica is promoted; a job watch subscribed on the
    dead primary subscribes again on the new one, and the scripts (which the promoted
    replica never loaded) run again, from a pipeline too."""
    with RedisCluster(primaries=3, replicas=1) as own:
        store = RedisStore.from_url(own.url, key_prefix)
        try:
            job_id = _job(store, "survivor")
            store.r.hset(store.keys.worker("w3"), "relayed", 0)
            assert store.append_updates("w3", 0, ['{"n":0}']) == 1
            slot = key_slot(store.keys.jobs.encode())
            # Replication is asynchronous: the replica has it all before the kill.
            assert int(home_client(store.r, store.keys.jobs).execute_command("WAIT", 1, 5000)) == 1
            with store.watch_job(job_id) as watch:
                old = own.kill_primary(slot)
                own.wait_failover(old, slot)
                assert watch.wait(1.0) is None  # the lost server: a short pause
                assert _sees_cancel(store, watch, job_id, 0.5)
            batch = store.batch()
            store.append_updates_into(batch, "w3", 1, ['{"n":1}'])
            assert batch.execute() == [2]
            assert store.get_job(job_id).status == "cancelled"
        finally:
            store.close()
