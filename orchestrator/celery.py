"""The Celery app (``celery -A orchestrator worker``) and its configuration.

Two queues: ``api`` for short upstream calls (create, continue, finalize, file fetches,
schedule runs) and ``streams`` for stream following. Following itself is not one task
per stream: a ``workers.follow`` task only registers the job in Redis, and the async
follower inside each ``streams`` worker process (:mod:`orchestrator.jobs.follower`) claims
and relays up to thousands of streams on one event loop, under leases.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.signals import worker_init
from kombu.entity import Queue

from orchestrator.settings import Settings, get_settings
from orchestrator.store.broker import broker_prefix

API_QUEUE = "api"
STREAMS_QUEUE = "streams"
QUEUES = (API_QUEUE, STREAMS_QUEUE)

TASK_ROUTES = {
    "workers.create": API_QUEUE,
    "workers.continue": API_QUEUE,
    "workers.finalize": API_QUEUE,
    "workers.fetch_file": API_QUEUE,
    "workers.run_schedule": API_QUEUE,
    "workers.run_schedules": API_QUEUE,
    "workers.sweep": API_QUEUE,
    "workers.settle_ended": API_QUEUE,
    # workers.heartbeat is sent to each worker's own direct queue, never routed here.
    "workers.follow": STREAMS_QUEUE,
}


#: How long a dead worker's claim on the unacked-restore pass can hold it back.
UNACKED_MUTEX_SECONDS = 10


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from ours. Raises ConfigError without REDIS_URL."""
    from orchestrator.errors import ConfigError

    if settings.redis_url is None:
        raise ConfigError("REDIS_URL", "is not set (the dev stack sets it; workers need it)")
    timeout = settings.visibility_timeout
    return {
        "broker_url": settings.redis_url,
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
        # Every task is far shorter than this; the Redis transport redelivers a task
        # not acked within it, so nothing may outlive it (followers hand over earlier).
        # A dead worker's unacked tasks are restored after the visibility timeout; sweep
        # for them at a tenth of it rather than kombu's default of every ~100 s.
        "broker_transport_options": {
            # Broker keys under our prefix too, so deployments sharing a Redis never
            # take (or restore) each other's tasks.
            "global_keyprefix": broker_prefix(settings.key_prefix),
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
        },
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
        "task_queues": [Queue(name) for name in QUEUES],  # type: ignore[no-untyped-call]
        "task_default_queue": API_QUEUE,
        "task_routes": TASK_ROUTES,
        "include": ["workers_tasks.tasks", "workers_tasks.schedule_tasks"],
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
    }


def make_app(settings: Settings) -> Celery:
    """A Celery app configured from explicit settings (a producer, say)."""
    instance = Celery("orchestrator", set_as_current=False)
    instance.conf.update(celery_config(settings))
    return instance


# The app that `celery -A orchestrator` and `orchestrator worker` run: configured
# lazily from the environment.
app = Celery("orchestrator")


@app.on_configure.connect  # type: ignore[untyped-decorator]
def _configure(sender: Celery, **_: Any) -> None:
    # Lazy, so importing the app (for the CLI's --help, say) needs no settings.
    sender.conf.update(celery_config(get_settings()))


#: How long a thread may hold the GIL while another waits (Python's default: 5 ms). A
#: worker's task threads wait on Redis and HTTP while Celery's consumer thread publishes
#: task events; handing the GIL back sooner after their I/O returns cut the create step
#: (task start to request at the API) by 10-15% in a threads-pool worker (probe around
#: start_turn, 300 paced submits, four alternating runs: 1.49-1.50 ms -> 1.24-1.35 ms).
SWITCH_INTERVAL_SECONDS = 0.0005


@worker_init.connect  # type: ignore[untyped-decorator]
def _responsive_threads(**_: Any) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)  # inherited by prefork children
