"""The same jobs on each deployment topology, as a ratio to one Redis in the same run.

Topologies: ``redis`` (one Redis: broker and store; the baseline), ``rabbitmq``
(RabbitMQ quorum queues as the broker, the same Redis as the store), ``sentinel`` (a
primary, one replica and three sentinels; broker and store through Sentinel; no
failover here, the tests do that) and ``cluster`` (a Redis Cluster of three primaries
with a replica each as the store, one slot: all keys under one hash tag; RabbitMQ the
broker) and ``cells`` (that cluster with the store in ``CELLS`` cells spread over its
primaries, ``STORE_CELLS``). Each repetition runs N jobs (create, 10 updates,
finalize, ledger) back to back through one ``orchestrator worker`` (api+streams, threads
x 8) per topology, in a rotating order so drift on a shared machine hits all alike.

Figures per job: wall time (the inverse of throughput), the worker's CPU, and the
servers' CPU (the store's Redis, plus RabbitMQ's Erlang VM on ``rabbitmq``: that VM is
the machine's, so other load on it counts too).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from orchestrator.facade import Orchestrator
from orchestrator.ops.processes import settings_of
from orchestrator.ops.rabbitmq import TemporaryVhost
from orchestrator.ops.redis_cluster import RedisCluster
from orchestrator.ops.sentinel import SentinelGroup
from orchestrator.store.connection import connect

from .harness import Context, Result, cpu_seconds, wait_for

NAMES = ("redis", "rabbitmq", "sentinel", "cluster", "cells")
#: The cells of ``cells``: sixteen per primary (docs/scaling.md).
CELLS = 48


def _redis_pid(url: str) -> int:
    client = connect(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _rabbitmq_pid() -> int:
    out = subprocess.run(
        ["rabbitmqctl", "status", "--formatter", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return int(json.loads(out.stdout)["pid"])


Deployment = tuple[dict[str, str], list[int]]


@contextmanager
def _topologies(ctx: Context, api_url: str) -> Iterator[dict[str, Deployment]]:
    """Per topology: a deployment environment (prefix filled in per run) and the pids of
    its servers."""
    with ExitStack() as stack:
        vhost = stack.enter_context(TemporaryVhost())
        group = stack.enter_context(SentinelGroup())
        cluster = stack.enter_context(RedisCluster(primaries=3, replicas=1))
        cluster_pids = [n.process.pid for n in cluster.nodes if n.process is not None]
        store_pid = _redis_pid(ctx.redis_url)
        yield {
            "redis": (ctx.env(api_url), [store_pid]),
            "rabbitmq": (
                ctx.env(api_url, BROKER_URL=vhost.url, BROKER_PASSWORD=vhost.password),
                [store_pid, _rabbitmq_pid()],
            ),
            "sentinel": (
                {**ctx.env(api_url), "REDIS_URL": group.url},
                [_redis_pid(f"redis://127.0.0.1:{group.primary_port()}/0")],
            ),
            "cluster": (
                {
                    **ctx.env(api_url, BROKER_URL=vhost.url, BROKER_PASSWORD=vhost.password),
                    "REDIS_URL": cluster.url,
                },
                [*cluster_pids, _rabbitmq_pid()],
            ),
            "cells": (
                {
                    **ctx.env(api_url, BROKER_URL=vhost.url, BROKER_PASSWORD=vhost.password),
                    "REDIS_URL": cluster.url,
                    "STORE_CELLS": str(CELLS),
                },
                [*cluster_pids, _rabbitmq_pid()],
            ),
        }


def _run(ctx: Context, name: str, env: dict[str, str], pids: list[int], n: int) -> dict[str, float]:
    prefix = "bt" + uuid.uuid4().hex[:6]
    env = {**env, "KEY_PREFIX": prefix}
    worker = ctx.worker(f"topologies-{name}-{prefix}", env, "api,streams")
    orch = Orchestrator(settings_of(env))
    try:
        _jobs(orch, 20)  # warm-up: connections, scripts, queues declared
        cpu0, servers0, t0 = cpu_seconds(worker.pid), sum(map(cpu_seconds, pids)), time.monotonic()
        failed = _jobs(orch, n)
        seconds = time.monotonic() - t0
        return {
            "wall_ms": seconds * 1000 / n,
            "cpu_ms": (cpu_seconds(worker.pid) - cpu0) * 1000 / n,
            "server_ms": (sum(map(cpu_seconds, pids)) - servers0) * 1000 / n,
            "failed": failed,
        }
    finally:
        orch.close()
        ctx.stop(worker)


def _jobs(orch: Orchestrator, n: int) -> int:
    """Submit n jobs back to back and wait until all finish; returns how many failed."""
    before = orch.store.job_states()
    for i in range(n):
        orch.submit(f"topology {i}", budget="low", tags={"tenant": f"t{i % 10}"})

    def done() -> bool:
        states = orch.store.job_states()
        return sum(states[s] - before[s] for s in ("completed", "failed", "cancelled")) >= n

    wait_for(done, 60 + n / 5, f"{n} jobs to finish", every=0.02)
    return int(orch.store.job_states()["failed"] - before["failed"])


def scenario(ctx: Context) -> Result:
    n = ctx.size(600, 150)
    res = Result(
        "topologies",
        "Per-job cost on each topology, as a ratio to one Redis in the same run",
        baseline="one Redis for broker and store (the same jobs, the same worker)",
        params={"jobs_per_rep": n, "pool": "one worker process, threads x 8 (api+streams)",
                "emulator": "turn_seconds=0, events_per_turn=10",
                "sentinel": "primary + 1 replica + 3 sentinels on this machine",
                "rabbitmq": "quorum queues on the machine's RabbitMQ, own vhost",
                "cluster": "3 primaries + 1 replica each on this machine, one slot; "
                           "RabbitMQ broker",
                "cells": f"that cluster, STORE_CELLS={CELLS}; RabbitMQ broker"},
    )  # fmt: skip
    _, url = ctx.emulator("topologies-emulator")
    figures: dict[str, dict[str, list[float]]] = {
        name: {"wall_ms": [], "cpu_ms": [], "server_ms": [], "failed": []} for name in NAMES
    }
    with _topologies(ctx, url) as deployments:
        for rep in range(ctx.reps):
            order = NAMES[rep % len(NAMES) :] + NAMES[: rep % len(NAMES)]
            for name in order:
                env, pids = deployments[name]
                for key, value in _run(ctx, name, env, pids, n).items():
                    figures[name][key].append(value)
    base = figures["redis"]
    units: list[tuple[str, str, str]] = [
        ("wall_ms", "wall time per job", "ms"),
        ("cpu_ms", "worker CPU per job", "ms"),
        ("server_ms", "server CPU per job", "ms"),
    ]
    for key, label, unit in units:
        res.add(f"redis: {label}", unit, base[key])
        for name in NAMES[1:]:
            res.add(f"{name}: {label}", unit, figures[name][key], base[key],
                    note="ratio to one Redis")  # fmt: skip
    failed: dict[str, Any] = {k: v["failed"] for k, v in figures.items() if any(v["failed"])}
    if failed:
        res.notes.append(f"jobs failed per repetition: {failed}")
    return res
