"""Roles and topologies without worker processes: which broker the settings name, the
Celery configuration for each (Redis, Sentinel, RabbitMQ), the connection factory's
address forms and passwords, and reading RabbitMQ's queues."""

from __future__ import annotations

import socket

import pytest

from orchestrator.celery import (
    BATCH_QUEUE,
    _batch_router,
    celery_config,
    consumed_queues,
    retry_countdown,
)
from orchestrator.errors import ConfigError
from orchestrator.ops.rabbitmq import RabbitQueues, TemporaryVhost
from orchestrator.ops.redis_server import RedisServer, free_port
from orchestrator.ops.sentinel import SentinelGroup
from orchestrator.runtime import store_for
from orchestrator.settings import load_settings
from orchestrator.store.broker import BrokerLayout
from orchestrator.store.connection import StoreError, connect, parse_sentinel_url

from .topologies import need_rabbitmq

SENTINELS = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/main/2"


def test_the_broker_is_the_store_unless_broker_url_names_another() -> None:
    one = load_settings(redis_url="redis://127.0.0.1:1/0")
    assert (one.broker, one.broker_kind, one.broker_is_store) == (one.redis_url, "redis", True)
    rabbit = load_settings(redis_url="redis://127.0.0.1:1/0", broker_url="amqp://u@h:5672/v")
    assert (rabbit.broker_kind, rabbit.broker_is_store) == ("amqp", False)
    assert load_settings(redis_url=SENTINELS).broker_kind == "sentinel"
    with pytest.raises(ConfigError, match="REDIS_URL"):
        _ = load_settings(redis_url=None).broker


@pytest.mark.parametrize(
    ("variable", "url", "says"),
    [
        ("BROKER_URL", "http://h/", "must start with amqp://"),
        ("REDIS_URL", "redis+sentinel://:pw@h:1/m/0", "REDIS_PASSWORD"),
        ("REDIS_URL", "redis+sentinel://h:1", "names no master"),
        ("REDIS_URL", "redis+sentinel://h:x/m/0", "host:port"),
        ("BROKER_URL", "redis+sentinel://h:1/m/zero", "db"),
    ],
)
def test_a_bad_address_names_its_variable_and_not_its_value(
    variable: str, url: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{variable.lower(): url})
    assert caught.value.variable == variable and says in str(caught.value)
    assert "pw" not in str(caught.value)


def test_a_retry_on_rabbitmq_waits_whole_seconds_and_at_least_one() -> None:
    """kombu's delayed delivery refuses a countdown under 1 s (celery then rejects the
    task without requeueing it: the job would wait forever)."""
    rabbit = load_settings(redis_url="redis://127.0.0.1:1/0", broker_url="amqp://u@h:5672/v")
    one = load_settings(redis_url="redis://127.0.0.1:1/0")
    assert [retry_countdown(rabbit, s) for s in (0.05, 0.4, 1.0, 1.2)] == [1.0, 1.0, 1.0, 2.0]
    assert retry_countdown(one, 0.4) == 0.4


def test_sentinel_address_parts() -> None:
    where = parse_sentinel_url(SENTINELS)
    assert where.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (where.master, where.db) == ("main", 2)


def test_redis_broker_keeps_its_prefix_and_priorities() -> None:
    conf = celery_config(load_settings(redis_url="redis://127.0.0.1:1/0", key_prefix="k"))
    options = conf["broker_transport_options"]
    assert conf["broker_url"] == "redis://127.0.0.1:1/0"
    assert options["global_keyprefix"] == "k:broker:" and options["priority_steps"] == [0, 3, 6, 9]
    assert [q.name for q in conf["task_queues"]] == ["api", "streams"]


def test_sentinel_broker_lists_each_sentinel_and_keeps_passwords_out_of_the_url() -> None:
    settings = load_settings(
        redis_url=SENTINELS, redis_password="data-pw", redis_sentinel_password="sentinel-pw"
    )
    conf = celery_config(settings)
    assert conf["broker_url"] == "sentinel://10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2"
    options = conf["broker_transport_options"]
    assert options["master_name"] == "main"
    assert options["sentinel_kwargs"] == {"password": "sentinel-pw"}
    assert conf["broker_password"] == "data-pw"  # the store's Redis is the broker here


def test_rabbitmq_broker_uses_durable_quorum_queues_confirms_and_a_batch_queue() -> None:
    settings = load_settings(
        redis_url="redis://127.0.0.1:1/0", broker_url="amqp://u@h:5672/v", broker_password="pw"
    )
    conf = celery_config(settings)
    assert conf["broker_url"] == "amqp://u@h:5672/v" and conf["broker_password"] == "pw"
    assert conf["broker_transport_options"] == {"confirm_publish": True}
    assert "global_keyprefix" not in conf["broker_transport_options"]
    queues = {q.name: q for q in conf["task_queues"]}
    assert set(queues) == {"api", BATCH_QUEUE, "streams"}
    for queue in queues.values():
        assert queue.durable and queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.exchange.type == "topic"  # Celery's native delayed delivery needs it
    assert conf["worker_detect_quorum_queues"] is True
    assert consumed_queues(["api", "streams"], settings) == ["api", BATCH_QUEUE, "streams"]
    redis_only = load_settings(redis_url="redis://127.0.0.1:1/0")
    assert consumed_queues(["api"], redis_only) == ["api"]


def test_batch_priority_routes_api_tasks_only() -> None:
    assert _batch_router("workers.create", [], {}, {"priority": 9}) == {"queue": BATCH_QUEUE}
    assert _batch_router("workers.create", [], {}, {"priority": 0}) is None
    assert _batch_router("workers.create", [], {}, {}) is None
    assert _batch_router("workers.follow", [], {}, {"priority": 9}) is None


def test_a_password_comes_from_settings_not_the_url() -> None:
    with RedisServer(args=["--requirepass", "store-secret"]) as server:
        settings = load_settings(redis_url=server.url, redis_password="store-secret")
        store = store_for(settings)
        try:
            store.ping()
        finally:
            store.close()
        bare = connect(server.url)
        with pytest.raises(StoreError):
            bare.ping()
        bare.close()


def test_a_separate_redis_broker_is_read_on_its_own_connection(redis_url: str) -> None:
    with RedisServer() as broker:
        settings = load_settings(redis_url=redis_url, broker_url=broker.url, key_prefix="sep")
        store = store_for(settings)
        try:
            assert isinstance(store.broker, BrokerLayout) and store.broker.owned
            raw = connect(broker.url)
            raw.rpush("sep:broker:api", "m")
            raw.close()
            assert store.broker.waiting("api") == 1
        finally:
            store.close()


def test_the_store_follows_the_primary_sentinel_names() -> None:
    with SentinelGroup(replicas=1) as group:
        store = store_for(load_settings(redis_url=group.url, key_prefix="sn"))
        try:
            store.record_heartbeat("w", 123, 60)
            assert store.heartbeat("w") == "123"
            old = group.kill_primary()
            group.wait_failover(old)
            assert store.heartbeat("w") == "123"  # replicated, read from the new primary
            store.record_heartbeat("w", 456, 60)
            assert store.heartbeat("w") == "456"
        finally:
            store.close()


def test_a_sentinel_whose_picked_port_is_taken_first_listens_on_another() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        picks = iter([held])  # the first sentinel's pick: bound by someone else already
        group = SentinelGroup(replicas=1, pick_port=lambda: next(picks, 0) or free_port())
        with group:
            assert next(picks, None) is None  # the held port was tried
            ports = group.sentinel_ports
            assert held not in ports and len(set(ports)) == 3
            assert group.url.split("://", 1)[1].split("/")[0] == ",".join(
                f"127.0.0.1:{port}" for port in ports
            )
            # Each sentinel knows the others on the ports they listen on.
            assert group.named() == {group.servers[0].port}
            store = store_for(load_settings(redis_url=group.url, key_prefix="sp"))
            try:
                store.record_heartbeat("w", 1, 60)
                assert store.heartbeat("w") == "1"
            finally:
                store.close()


def test_rabbitmq_depth_of_an_undeclared_queue_is_zero_and_bad_credentials_say_so() -> None:
    need_rabbitmq()
    with TemporaryVhost() as vhost:
        queues = RabbitQueues(vhost.url, vhost.password)
        try:
            assert queues.queue_figures(["api", "streams"]) == ({"api": 0, "streams": 0}, {})
            assert queues.held_tasks() == []
        finally:
            queues.close()
        wrong = RabbitQueues(vhost.url, "not-the-password", timeout=2)
        with pytest.raises(ConnectionError) as caught:
            wrong.waiting("api")
        assert vhost.user not in str(caught.value) and "not-the-password" not in str(caught.value)
        wrong.close()
