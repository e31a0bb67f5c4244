"""A liveness heartbeat that proves consumption, not just a live process.

Every worker sends itself a ``workers.heartbeat`` task on its own direct queue every
few seconds; running it records the time as the heartbeat of its node name
(``RedisStore.record_heartbeat``). A worker
that reconnected after a Redis restart but takes no more tasks (celery#8030, #10205)
stops refreshing it, and ``orchestrator health --max-age`` turns that into a failure.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from celery.utils import worker_direct

from orchestrator.celery import app
from orchestrator.runtime import get_runtime

log = logging.getLogger(__name__)

INTERVAL = 10.0
TTL_SECONDS = 300

_stop = threading.Event()


@app.task(name="workers.heartbeat", ignore_result=True)
def heartbeat(node: str, sent_ms: int) -> int:
    """Record that ``node`` ran a task; returns the queueing delay in ms."""
    now = int(time.time() * 1000)
    get_runtime().store.record_heartbeat(node, now, TTL_SECONDS)
    return now - sent_ms


def _beat(node: str) -> None:
    queue = worker_direct(node)
    while not _stop.is_set():
        try:
            heartbeat.apply_async(
                args=[node, int(time.time() * 1000)], queue=queue, expires=INTERVAL * 3
            )
        except Exception as exc:  # the broker may be away; keep trying
            log.warning("heartbeat not sent: %s", exc)
        _stop.wait(INTERVAL)


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    if sender is None:
        return
    _stop.clear()
    threading.Thread(target=_beat, args=(sender.hostname,), name="heartbeat", daemon=True).start()


@worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    _stop.set()
