"""The bare-Celery baseline: the orchestrator's own Celery configuration (same broker,
acks_late, prefetch 1, JSON, task events) with one no-op task on its own queue.

    celery -A bench.bare worker -Q bench -P threads -c 8 -E

The task notes the instant it starts (one HSET), which is both the dispatch
baseline's end mark and the throughput baseline's completion count.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import redis
from celery import Celery

from bench.harness import baseline_config
from orchestrator.celery import configured_app, lazy_app
from orchestrator.settings import Settings, get_settings

QUEUE = "bench"
TASK = "bench.noop"


def make_bare_app(settings: Settings) -> Celery:
    """A producer of the baseline's tasks (the driver side)."""
    return configured_app("bare", baseline_config(settings, TASK, QUEUE))


# The worker side (`celery -A bench.bare worker`), configured from the environment.
app = lazy_app("bare", functools.partial(baseline_config, task=TASK, queue=QUEUE))


_redis: dict[str, Any] = {}


def starts_key(run: str) -> str:
    return f"bench:bare:{run}"


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def noop(run: str, token: str) -> None:
    started = time.time()
    r = _redis.get("r")
    if r is None:
        r = _redis["r"] = redis.Redis.from_url(str(get_settings().redis_url))
    r.hset(starts_key(run), token, started)
