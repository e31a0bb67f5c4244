"""The hand-written baseline: the Celery task a user would write without this project.

    celery -A bench.handwritten worker -Q handwritten -P threads -c 8

One task per job: create the worker, read its SSE stream and XADD each update
(pipelined), retrieve it, add its costs (micro-dollars) to a per-day and a per-tag hash.
No exactly-once, no leases, no budgets, no limits: a redelivered task creates a second
worker and counts its costs twice. Same Celery configuration as ours (see
``bench.bare``); the last write notes the job done (``done_key``).
"""

from __future__ import annotations

import functools
import threading
import time
from decimal import Decimal

import httpx
import redis
from celery import Celery
from httpx_sse import connect_sse

from bench.harness import baseline_config
from orchestrator.celery import configured_app, lazy_app
from orchestrator.settings import Settings, get_settings

QUEUE = "handwritten"
TASK = "bench.handwritten"


def make_handwritten_app(settings: Settings) -> Celery:
    """A producer of the baseline's tasks (the driver side)."""
    return configured_app("handwritten", baseline_config(settings, TASK, QUEUE))


app = lazy_app("handwritten", functools.partial(baseline_config, task=TASK, queue=QUEUE))


def done_key(run: str) -> str:
    return f"hw:done:{run}"


_local = threading.local()
_shared: dict[str, redis.Redis] = {}


def _clients() -> tuple[httpx.Client, redis.Redis]:
    settings = get_settings()
    if "r" not in _shared:
        _shared["r"] = redis.Redis.from_url(str(settings.redis_url))
    http = getattr(_local, "http", None)
    if http is None:  # one HTTP client per pool thread
        assert settings.workers_api_key is not None
        token = settings.workers_api_key.get_secret_value()
        http = _local.http = httpx.Client(
            base_url=str(settings.workers_api_url),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30, read=600),
        )
    return http, _shared["r"]


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def run_job(run: str, text: str, tag: str) -> None:
    http, r = _clients()
    created = http.post("/api/workers", json={"input": text, "budget": "low"})
    created.raise_for_status()
    worker_id = created.json()["id"]
    pipe = r.pipeline(transaction=False)
    with connect_sse(http, "GET", f"/api/workers/{worker_id}/stream") as source:
        for event in source.iter_sse():
            pipe.xadd(f"hw:updates:{worker_id}", {"data": event.data})
            if len(pipe) >= 100:
                pipe.execute()
    worker = http.get(f"/api/workers/{worker_id}")
    worker.raise_for_status()
    costs = worker.json().get("costs") or {}
    day = time.strftime("%Y-%m-%d", time.gmtime())
    for key in (f"hw:costs:day:{day}", f"hw:costs:tag:{tag}"):
        for field, usd in costs.items():
            pipe.hincrby(key, field, int(Decimal(str(usd)) * 1_000_000))
    pipe.hset(done_key(run), worker_id, time.time())
    pipe.execute()
