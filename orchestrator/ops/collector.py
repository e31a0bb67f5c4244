"""Prometheus metrics read from the Redis store on each scrape, and their exporter.

Read from Redis at scrape time (:class:`StoreCollector`, served by ``orchestrator
metrics``), so every exporter replica reports the same cluster-wide figures — aggregate
them with ``max``, never ``sum``:

- ``orchestrator_jobs{state}`` — jobs currently in each status (gauge);
- ``orchestrator_queue_depth{queue}`` — messages waiting on the broker (gauge);
- ``orchestrator_queue_unacked{queue}`` — messages a worker took and has not acked yet,
  i.e. running or prefetched (gauge); ``depth + unacked`` is the load to scale on;
- ``orchestrator_streams_followed`` — update streams to follow, claimed or not (gauge);
- ``orchestrator_cost_usd_total`` and ``orchestrator_cost_micro_usd_total`` — money
  (counters), one sample per ``budget``, one per ``tag`` (``key=value``) and one with
  neither label for the overall total. Select a dimension (``{budget!=""}``) before
  summing: the three sets overlap, and a job with two tags counts under both;
- ``orchestrator_tokens_total`` and ``orchestrator_turns_total`` — per ``budget`` and
  overall (counters);
- ``orchestrator_store_up`` (1 if Redis answered the scrape) and
  ``orchestrator_scrape_duration_seconds``.

The process-local instruments (upstream latency, retries, relayed events, schedule
runs) are in :mod:`orchestrator.ops.instruments`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.controls.budgets import Budgets
from orchestrator.controls.limits import Limits
from orchestrator.ledger import total_cost_micro
from orchestrator.money import MICRO_PER_USD
from orchestrator.store.connection import StoreError
from orchestrator.store.jobs import RedisStore

# The broker queues (as in :mod:`orchestrator.celery`, which this module does not import:
# the exporter does not load Celery).
QUEUES = ("api", "streams")

__all__ = [
    "StoreCollector",
    "StoreSnapshot",
    "read_snapshot",
    "serve",
    "store_registry",
]

log = logging.getLogger(__name__)


# --- figures read from Redis ------------------------------------------------------


@dataclass(frozen=True)
class StoreSnapshot:
    """Everything one scrape reports, read from Redis (money in integer micro-dollars)."""

    jobs: dict[str, int]
    queue_depth: dict[str, int]
    queue_unacked: dict[str, int]
    streams_followed: int
    by_budget: list[dict[str, Any]]
    by_tag: list[dict[str, Any]]
    total: dict[str, int]
    tags_dropped: int = 0
    budgets: list[dict[str, Any]] = field(default_factory=list)
    limits: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    retained: int = 0


def read_snapshot(
    store: RedisStore,
    *,
    queues: Sequence[str] = QUEUES,
    max_tags: int = 1000,
) -> StoreSnapshot:
    """Read the figures: the broker's queues in one round trip, then the store's few
    HGETALLs. Raises :class:`StoreError` when Redis does not answer.

    ``max_tags`` bounds the series: beyond it only the costliest tags are kept.
    """
    depth, unacked = store.broker.queue_figures(queues)
    budgets = store.costs(by="budget")
    tags = store.costs(by="tag")["rows"]
    tags.sort(key=lambda row: (-total_cost_micro(row), row["key"]))
    return StoreSnapshot(
        jobs=store.job_states(),
        queue_depth=depth,
        queue_unacked=unacked,
        streams_followed=store.following(),
        by_budget=budgets["rows"],
        by_tag=tags[:max_tags],
        total=budgets["total"],
        tags_dropped=max(len(tags) - max_tags, 0),
        budgets=Budgets(store).status(),
        limits=Limits(store).status(),
        memory=store.memory_sample(),
        retained=store.retained(),
    )


def _counter(name: str, doc: str) -> Metric:
    return Metric(name, doc, "counter")


def families(snap: StoreSnapshot) -> list[Metric]:
    """The metric families of one snapshot (pure: no I/O)."""
    jobs = GaugeMetricFamily("orchestrator_jobs", "Jobs currently in each state.", labels=["state"])
    for state, count in snap.jobs.items():
        jobs.add_metric([state], count)
    depth = GaugeMetricFamily(
        "orchestrator_queue_depth", "Messages waiting on a broker queue.", labels=["queue"]
    )
    for queue, count in snap.queue_depth.items():
        depth.add_metric([queue], count)
    unacked = GaugeMetricFamily(
        "orchestrator_queue_unacked",
        "Messages of a queue taken by a worker and not yet acknowledged (running or prefetched).",
        labels=["queue"],
    )
    for queue, count in snap.queue_unacked.items():
        unacked.add_metric([queue], count)
    followed = GaugeMetricFamily(
        "orchestrator_streams_followed",
        "Update streams registered for following (claimed by a follower or waiting).",
        value=snap.streams_followed,
    )
    usd = _counter("orchestrator_cost_usd", "Money spent upstream, in USD.")
    micro = _counter("orchestrator_cost_micro_usd", "Money spent upstream, in micro-dollars.")
    tokens = _counter("orchestrator_tokens", "Tokens used upstream (total_tokens).")
    turns = _counter("orchestrator_turns", "Turns whose cost was posted to the ledger.")
    labelled: list[tuple[dict[str, str], dict[str, Any]]] = [({}, snap.total)]
    labelled += [({"budget": row["key"]}, row) for row in snap.by_budget]
    for labels, row in labelled:
        money = total_cost_micro(row)
        usd.add_sample("orchestrator_cost_usd_total", labels, money / MICRO_PER_USD)
        micro.add_sample("orchestrator_cost_micro_usd_total", labels, money)
        tokens.add_sample("orchestrator_tokens_total", labels, row["total_tokens"])
        turns.add_sample("orchestrator_turns_total", labels, row["turns"])
    for row in snap.by_tag:
        money = total_cost_micro(row)
        usd.add_sample("orchestrator_cost_usd_total", {"tag": row["key"]}, money / MICRO_PER_USD)
        micro.add_sample("orchestrator_cost_micro_usd_total", {"tag": row["key"]}, money)
    dropped = GaugeMetricFamily(
        "orchestrator_metrics_tags_dropped",
        "Tags left out of the cost series to bound their number (the cheapest ones).",
        value=snap.tags_dropped,
    )
    return [jobs, depth, unacked, followed, usd, micro, tokens, turns, dropped,
            *_controls(snap), *_memory(snap)]  # fmt: skip


def _memory(snap: StoreSnapshot) -> list[Metric]:
    """Redis memory by record kind (a bounded sample: ``RetentionStore.memory_sample``)."""
    kinds = GaugeMetricFamily(
        "orchestrator_redis_memory_bytes",
        "Redis memory held by each kind of record (estimated from a bounded sample of "
        "MEMORY USAGE per kind).",
        labels=["kind"],
    )
    for kind, size in sorted(snap.memory.get("kinds", {}).items()):
        kinds.add_metric([kind], size)
    used = GaugeMetricFamily(
        "orchestrator_redis_used_memory_bytes",
        "Redis used_memory (INFO memory).",
        value=snap.memory.get("used_memory", 0),
    )
    most = GaugeMetricFamily(
        "orchestrator_redis_maxmemory_bytes",
        "Redis maxmemory (0: no limit).",
        value=snap.memory.get("maxmemory", 0),
    )
    retained = GaugeMetricFamily(
        "orchestrator_jobs_retained",
        "Finished jobs whose records are kept until their retention ends.",
        value=snap.retained,
    )
    return [kinds, used, most, retained]


def _controls(snap: StoreSnapshot) -> list[Metric]:
    """Budget caps (spent, reserved, cap in USD) and limits (running, waiting) per key."""
    names = ("spent", "reserved", "cap")
    gauges = {
        name: GaugeMetricFamily(
            f"orchestrator_budget_{name}_usd", f"Budget {name} in the current period, USD.",
            labels=["cap"],
        )
        for name in names
    }  # fmt: skip
    for row in snap.budgets:
        for name in names:
            gauges[name].add_metric([row["cap"]], row[f"{name}_micro"] / MICRO_PER_USD)
    running = GaugeMetricFamily(
        "orchestrator_limit_running", "Turns running under a concurrency limit.", labels=["key"]
    )
    waiting = GaugeMetricFamily(
        "orchestrator_limit_waiting", "Jobs waiting for a slot of a limit.", labels=["key"]
    )
    for row in snap.limits:
        running.add_metric([row["key"]], row["running"])
        waiting.add_metric([row["key"]], row["waiting"])
    return [*gauges.values(), running, waiting]


class StoreCollector(Collector):
    """Reads the store on each scrape. If Redis does not answer, only
    ``orchestrator_store_up 0`` and the scrape duration are reported (never an error page).

    Register it on a registry of its own (see :func:`store_registry`)."""

    def __init__(
        self,
        store: RedisStore,
        *,
        queues: Sequence[str] = QUEUES,
        max_tags: int = 1000,
    ) -> None:
        self.store = store
        self.queues = tuple(queues)
        self.max_tags = max_tags

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering the collector does not read Redis.
        empty = StoreSnapshot({}, {}, {}, 0, [], [], dict.fromkeys(("turns", "total_tokens"), 0))
        return [*families(empty), *self._health(1, 0.0)]

    def collect(self) -> Iterable[Metric]:
        started = time.perf_counter()
        try:
            snap = read_snapshot(self.store, queues=self.queues, max_tags=self.max_tags)
        except (StoreError, OSError) as exc:
            log.warning("metrics: Redis did not answer: %s", type(exc).__name__)
            return self._health(0, time.perf_counter() - started)
        return [*families(snap), *self._health(1, time.perf_counter() - started)]

    @staticmethod
    def _health(up: int, seconds: float) -> list[Metric]:
        return [
            GaugeMetricFamily(
                "orchestrator_store_up", "1 if Redis answered this scrape, else 0.", value=up
            ),
            GaugeMetricFamily(
                "orchestrator_scrape_duration_seconds",
                "Time spent reading Redis for this scrape.",
                value=seconds,
            ),
        ]


def store_registry(store: RedisStore, **options: Any) -> CollectorRegistry:
    """A fresh registry holding a :class:`StoreCollector` (options are passed to it)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(store, **options))
    return registry


def serve(store: RedisStore, address: str, port: int) -> tuple[str, int]:
    """Serve the store's metrics over HTTP in a daemon thread; returns the bound address.

    Every path answers with the metrics (``/metrics`` by convention). Port 0 picks a free
    port. The caller keeps the process alive.
    """
    server, _thread = start_http_server(port, addr=address, registry=store_registry(store))
    host, bound = server.server_address[:2]
    return str(host), int(bound)
