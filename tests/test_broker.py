"""Reading the broker's Redis keys: queue depth across priority lists, the lost-task
sweep's fleet-wide pass, and what a real publish puts under our prefix."""

from __future__ import annotations

import time

from orchestrator.celery import make_app
from orchestrator.settings import load_settings
from orchestrator.store import broker
from orchestrator.store.jobs import RedisStore


def test_waiting_counts_every_priority_list_of_the_queue_only(store: RedisStore) -> None:
    prefix = store.keys.broker_prefix
    store.r.rpush(prefix + "api", "a", "b")
    store.r.rpush(prefix + "api\x06\x169", "c")
    store.r.rpush(prefix + "streams", "d")
    store.r.rpush("api", "another deployment's")
    assert store.broker.waiting("api") == 3
    assert store.broker.waiting("streams") == 1


def test_a_published_task_is_under_our_prefix(
    store: RedisStore, redis_url: str, key_prefix: str
) -> None:
    app = make_app(load_settings(redis_url=redis_url, key_prefix=key_prefix))
    app.send_task("workers.create", args=["job_x"], priority=9)  # a batch job's step
    assert store.broker.waiting("api") == 1
    assert store.r.llen(store.keys.broker_queue("api") + broker.PRIORITY_SEP + "9") == 1


def test_one_caller_takes_the_pass_until_its_half_period_ends(store: RedisStore) -> None:
    lock = store.keys.pass_lock("test")
    assert store.broker.take_pass("test", 0.4)
    assert not store.broker.take_pass("test", 0.4)
    ttl = store.r.pttl(lock)
    assert 0 < ttl <= 200
    time.sleep(ttl / 1000 + 0.05)  # the TTL itself, read above, bounds this wait
    assert store.broker.take_pass("test", 0.4)


def test_unreadable_unacked_entries_are_skipped(store: RedisStore) -> None:
    unacked = store.keys.broker_prefix + broker.UNACKED_KEY
    store.r.hset(unacked, mapping={"t1": "not json", "t2": '[{"body": "!!"}, "", "api"]'})
    assert store.broker.held_tasks() == []
