"""A liveness heartbeat that proves consumption, not just a live process; kept out of
Flower.

Every worker sends itself a ``workers.heartbeat`` task on its own direct queue every
few seconds; running it records the time as the heartbeat of its node name
(``RedisStore.record_heartbeat``). A worker that reconnected after a Redis restart but
takes no more tasks (celery#8030, #10205) stops refreshing it, and ``orchestrator health
--max-age`` turns that into a failure. A thread that only wrote a timestamp would keep
beating in exactly that case, so the beat still travels through the broker.

It is invisible to Flower, which builds its task list from task events: the task sends
none (``send_events=False``), and the beats are published by a producer of their own
with ``task_send_sent_event`` off, so not even a ``task-sent`` event names them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from celery.utils import worker_direct

from orchestrator.celery import app, make_app
from orchestrator.runtime import get_runtime
from orchestrator.settings import get_settings

log = logging.getLogger(__name__)

INTERVAL = 10.0
TTL_SECONDS = 300
TASK = "workers.heartbeat"

_stop = threading.Event()


@app.task(name=TASK, ignore_result=True, send_events=False)
def heartbeat(node: str, sent_ms: int) -> int:
    """Record that ``node`` ran a task; returns the queueing delay in ms."""
    now = int(time.time() * 1000)
    get_runtime().store.record_heartbeat(node, now, TTL_SECONDS)
    return now - sent_ms


def _quiet_producer() -> Celery:
    """An app that publishes like the worker's, without ``task-sent`` events."""
    producer = make_app(get_settings())
    producer.conf.task_send_sent_event = False
    return producer


def _beat(node: str) -> None:
    queue = worker_direct(node)
    producer = _quiet_producer()
    try:
        while not _stop.is_set():
            try:
                producer.send_task(
                    TASK, args=[node, int(time.time() * 1000)], queue=queue, expires=INTERVAL * 3
                )
            except Exception as exc:  # the broker may be away; keep trying
                log.warning("heartbeat not sent: %s", exc)
            _stop.wait(INTERVAL)
    finally:
        producer.close()


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    if sender is None:
        return
    _stop.clear()
    threading.Thread(target=_beat, args=(sender.hostname,), name="heartbeat", daemon=True).start()


@worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    _stop.set()
