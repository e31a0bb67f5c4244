"""The Celery app (``celery -A orchestrator worker``) and its configuration, for every
broker: Redis (the store's own or another), Redis under Sentinel, or RabbitMQ.

Two queues: ``api`` for short upstream calls (create, continue, finalize, file fetches,
schedule runs) and ``streams`` for stream following. On RabbitMQ, batch jobs' ``api``
tasks go to a queue of their own, ``api.batch`` (quorum queues have no message
priorities), consumed by every worker that consumes ``api``. Following itself is not one task
per stream: a ``workers.follow`` task only registers the job in Redis, and the async
follower inside each ``streams`` worker process (:mod:`orchestrator.jobs.follower`) claims
and relays up to thousands of streams on one event loop, under leases.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery
from celery.signals import worker_init
from kombu.entity import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

from orchestrator.ops.rabbitmq import BATCH_QUEUES, QUORUM
from orchestrator.settings import Settings, get_settings
from orchestrator.store.broker import broker_prefix
from orchestrator.store.connection import parse_sentinel_url

API_QUEUE = "api"
STREAMS_QUEUE = "streams"
QUEUES = (API_QUEUE, STREAMS_QUEUE)
#: On RabbitMQ, the queue that takes an ``api`` task sent with a batch priority (> 0).
BATCH_QUEUE = BATCH_QUEUES[API_QUEUE]

TASK_ROUTES = {
    "workers.create": API_QUEUE,
    "workers.continue": API_QUEUE,
    "workers.finalize": API_QUEUE,
    "workers.fetch_file": API_QUEUE,
    "workers.run_schedule": API_QUEUE,
    "workers.run_schedules": API_QUEUE,
    "workers.sweep": API_QUEUE,
    "workers.settle_ended": API_QUEUE,
    "workers.deliver_webhook": API_QUEUE,
    # workers.heartbeat is sent to each worker's own direct queue, never routed here.
    "workers.follow": STREAMS_QUEUE,
}


log = logging.getLogger(__name__)

#: How long a dead worker's claim on the unacked-restore pass can hold it back.
UNACKED_MUTEX_SECONDS = 10


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from ours. Raises ConfigError without REDIS_URL."""
    timeout = settings.visibility_timeout
    conf: dict[str, Any] = {
        # The broker's password travels here (from settings), never in its URL.
        "broker_password": settings.broker_secret(),
        # Results live in our own store; Celery's result backend is not used.
        "task_ignore_result": True,
        "result_backend": None,
        # JSON only: no pickle on the broker (invariant 7).
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Never lose a job: ack after the task ran, requeue when the worker dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task that raised (JobEnded: its job failed) is acked, never redelivered:
        # running it again would change nothing. (Celery's default, stated.)
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_default_priority": 0,
        "task_time_limit": max(timeout // 2, 60),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Flower: workers send task events, producers send task-sent.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Each worker also consumes its own direct queue: the heartbeat task is sent
        # there, so a fresh heartbeat proves that this very worker still takes tasks.
        "worker_direct": True,
        "task_default_queue": API_QUEUE,
        "task_routes": TASK_ROUTES,
        "include": ["workers_tasks.tasks", "workers_tasks.schedule_tasks"],
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
    }
    if settings.broker_kind == "amqp":
        conf.update(_rabbitmq(settings))
    else:
        conf.update(_redis(settings))
    return conf


def _redis(settings: Settings) -> dict[str, Any]:
    """The Redis transport (one server, or the primary Sentinel names)."""
    timeout = settings.visibility_timeout
    options: dict[str, Any] = {
        # Broker keys under our prefix too, so deployments sharing a Redis never
        # take (or restore) each other's tasks.
        "global_keyprefix": broker_prefix(settings.key_prefix),
        # Every task is far shorter than this; the Redis transport redelivers a task
        # not acked within it, so nothing may outlive it (followers hand over earlier).
        # A dead worker's unacked tasks are restored after the visibility timeout; sweep
        # for them at a tenth of it rather than kombu's default of every ~100 s.
        "visibility_timeout": timeout,
        "unacked_restore_interval": max(1, min(10, timeout // 10)),
        "unacked_restore_throttle": 1,
        # A restore pass holds a Redis lock for milliseconds; a worker SIGKILLed inside
        # one left it for kombu's default 300 s, and no dead worker's task came back
        # until then (the chaos SIGKILL run hung on it). Overlapping passes are safe:
        # each message is restored in a transaction watching the unacked hash.
        "unacked_mutex_expire": UNACKED_MUTEX_SECONDS,
        # Interactive jobs (priority 0) are taken before batch ones (9): each queue
        # is one list per step and the worker pops them in order.
        "priority_steps": [0, 3, 6, 9],
        "queue_order_strategy": "priority",
    }
    url = settings.broker
    if settings.broker_kind == "sentinel":
        # kombu's sentinel transport: one sentinel:// address per sentinel, the master
        # name as an option; it asks them for the primary on every (re)connect.
        where = parse_sentinel_url(url, "BROKER_URL" if settings.broker_url else "REDIS_URL")
        url = ";".join(f"sentinel://{host}:{port}/{where.db}" for host, port in where.sentinels)
        options["master_name"] = where.master
        sentinel = settings.redis_secrets()["sentinel_password"]
        if sentinel:
            options["sentinel_kwargs"] = {"password": sentinel}
    return {
        "broker_url": url,
        "broker_transport_options": options,
        "task_queues": [Queue(name) for name in QUEUES],  # type: ignore[no-untyped-call]
    }


class _LeaveUnackedQoS(kombu_redis.QoS):
    """kombu's Redis QoS, except that a channel closed because the primary died does not
    crash the worker. kombu 5.7 rebuilds a closed channel's pool from a connection
    already released when it restores the channel's unacked messages, or when a task
    that was running acks on it after the reconnect: AttributeError, "Unrecoverable
    error", the worker exits. Here the messages stay in the broker's unacked hash, which
    the promoted replica has, and come back after the visibility timeout, as a SIGKILLed
    worker's do (a task that had finished runs once more: every step is idempotent)."""

    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)  # type: ignore[no-untyped-call]
        except Exception as exc:
            self._left(len(self._delivered), exc)
            self._delivered.clear()

    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
        except AttributeError as exc:  # the channel is closed (see the class)
            self._left(1, exc)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]
        except AttributeError as exc:
            self._left(1, exc)

    @staticmethod
    def _left(count: int, exc: Exception) -> None:
        log.warning(
            "%d unacked message(s) left for the visibility-timeout restore (%s)",
            count,
            type(exc).__name__,
        )


class _RedisChannel(kombu_redis.Channel):
    QoS = _LeaveUnackedQoS


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`_LeaveUnackedQoS`: a Redis restarted under
    a worker (a crash, an upgrade) is the same closed channel as a failed-over primary."""

    Channel = _RedisChannel


class _SentinelChannel(kombu_redis.SentinelChannel):
    QoS = _LeaveUnackedQoS


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with :class:`_LeaveUnackedQoS`."""

    Channel = _SentinelChannel


# Registered under the schemes themselves, not passed as ``broker_transport``: on a
# reconnect kombu switches to the next sentinel's URL and resolves its transport from
# the scheme again.
TRANSPORT_ALIASES["redis"] = f"{__name__}:RedisTransport"
TRANSPORT_ALIASES["rediss"] = f"{__name__}:RedisTransport"
TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"


def _quorum(name: str) -> Queue:
    # A topic exchange per queue: Celery's native delayed delivery (how a retry's
    # countdown waits on quorum queues) forwards only through topic or fanout exchanges.
    exchange = Exchange(name, type="topic", durable=True)  # type: ignore[no-untyped-call]
    return Queue(name, exchange, routing_key=name, durable=True, queue_arguments=QUORUM)  # type: ignore[no-untyped-call]


def _batch_router(
    name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any = None, **_: Any
) -> dict[str, str] | None:
    """On RabbitMQ, an ``api`` task sent with a batch priority goes to ``api.batch``."""
    if TASK_ROUTES.get(name) == API_QUEUE and (options.get("priority") or 0) > 0:
        return {"queue": BATCH_QUEUE}
    return None


def _rabbitmq(settings: Settings) -> dict[str, Any]:
    """RabbitMQ: durable, replicated quorum queues, publisher confirms, and the
    redelivery RabbitMQ does itself: a message taken but not acked goes back to its queue
    when the consumer's channel closes (a worker killed), with no visibility timeout and
    nothing for the lost-task sweeps to do (see :mod:`orchestrator.ops.rabbitmq`)."""
    names = (API_QUEUE, BATCH_QUEUE, STREAMS_QUEUE)
    return {
        "broker_url": settings.broker,
        # A publish returns once RabbitMQ has the message (on a quorum of nodes).
        "broker_transport_options": {"confirm_publish": True},
        "task_queues": [_quorum(name) for name in names],
        "task_default_exchange_type": "topic",
        "task_routes": (_batch_router, TASK_ROUTES),
        # Quorum queues refuse global QoS; Celery sees them and sets prefetch per consumer.
        "worker_detect_quorum_queues": True,
    }


def retry_countdown(settings: Settings, seconds: float) -> float:
    """A task retry's countdown as the broker can keep it. RabbitMQ's delayed delivery
    (kombu's, on quorum queues) counts whole seconds and refuses less than one: celery
    then rejects the task without requeueing it, and the job would wait forever. So
    on RabbitMQ a retry waits at least 1 s, rounded up to whole seconds."""
    if settings.broker_kind == "amqp":
        return float(max(1, math.ceil(seconds)))
    return seconds


def consumed_queues(queues: list[str], settings: Settings) -> list[str]:
    """The broker queues a worker asked for ``queues`` consumes: on RabbitMQ ``api``
    brings ``api.batch`` with it (interactive first; RabbitMQ serves a worker's queues
    in turn, so batch work takes at most its share of a worker that consumes both)."""
    if settings.broker_kind != "amqp":
        return list(queues)
    out: list[str] = []
    for queue in queues:
        out.append(queue)
        if queue in BATCH_QUEUES:
            out.append(BATCH_QUEUES[queue])
    return out


def configured_app(name: str, config: Mapping[str, Any]) -> Celery:
    """A Celery app of ``config``, not made the current app (a producer, say)."""
    instance = Celery(name, set_as_current=False)
    instance.conf.update(config)
    return instance


def lazy_app(name: str, config: Callable[[Settings], Mapping[str, Any]]) -> Celery:
    """The app a ``celery -A`` worker runs: ``config`` of the environment's settings,
    applied on first use, so importing the app (for the CLI's --help, say) needs none."""
    instance = Celery(name)

    def configure(sender: Celery, **_: Any) -> None:
        sender.conf.update(config(get_settings()))

    # Strong: Celery's signals hold receivers weakly, and this one is a closure.
    instance.on_configure.connect(configure, weak=False)
    return instance


def make_app(settings: Settings) -> Celery:
    """A Celery app configured from explicit settings (a producer, say)."""
    return configured_app("orchestrator", celery_config(settings))


# The app that `celery -A orchestrator` and `orchestrator worker` run.
app = lazy_app("orchestrator", celery_config)


#: How long a thread may hold the GIL while another waits (Python's default: 5 ms). A
#: worker's task threads wait on Redis and HTTP while Celery's consumer thread publishes
#: task events; handing the GIL back sooner after their I/O returns cut the create step
#: (task start to request at the API) by 10-15% in a threads-pool worker (probe around
#: start_turn, 300 paced submits, four alternating runs: 1.49-1.50 ms -> 1.24-1.35 ms).
SWITCH_INTERVAL_SECONDS = 0.0005


@worker_init.connect  # type: ignore[untyped-decorator]
def _responsive_threads(**_: Any) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)  # inherited by prefork children
