"""How the store's keys and load spread over a Redis Cluster's primaries.

The measure of issue #17: N jobs of 100 tenants (10,000 full, 500 ``--quick``) submitted
in-process at a steady pace to a store on a fresh cluster of three primaries (no
replicas: only the primaries' own work counts), run by one ``orchestrator worker``
against the emulator with instant turns. The broker is the benchmark's own Redis, so
the cluster holds the store's keys and commands only.

Per primary: its keys at the end (DBSIZE), its ``used_memory`` growth since the cluster
started, the commands it processed during the run (INFO commandstats, less the
administrative ones: INFO, CLUSTER, PING, ...; a script's own calls count one by one)
and its CPU. Each as a share of all primaries, and the largest/smallest ratio against
the goal "≤ 1.5" (keys, commands).

The store runs in ``CELLS`` cells (``STORE_CELLS``, docs/scaling.md: sixteen per
primary), each tenant in one of them; with one cell every key would be under one hash
tag and one primary would hold everything. The per-job cost of a cluster against one
Redis is measured by the ``topologies`` scenario (``python -m bench topologies spread``
runs both).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis

from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import TERMINAL
from orchestrator.ops.processes import settings_of, wait_for
from orchestrator.ops.redis_cluster import RedisCluster
from orchestrator.ops.redis_server import RedisServer

from .harness import Context, Result, cpu_seconds

TENANTS = 100
CELLS = 48
GOAL = 1.5
#: Commands that are not the store's work: the cluster client's topology reads, health
#: checks and this benchmark's own sampling.
ADMIN = frozenset({"info", "cluster", "ping", "command", "client", "hello", "config",
                   "select", "readonly", "auth", "dbsize", "echo"})  # fmt: skip


@dataclass
class Sample:
    """One primary's counters at one moment."""

    keys: int
    memory: int
    calls: dict[str, int]  # the store's commands by name (a script's inner calls too)
    cpu: float

    @property
    def commands(self) -> int:
        return sum(self.calls.values())


def _sample(node: RedisServer) -> Sample:
    assert node.process is not None
    with redis.Redis(port=node.port, decode_responses=True) as client:
        stats = client.info("commandstats")
        memory = int(client.info("memory")["used_memory"])
        keys = int(client.dbsize())
    # "cmdstat_cluster|slots": Redis 7 names subcommands; the family decides.
    calls = {k[8:]: int(v["calls"]) for k, v in stats.items()}
    ours = {k: v for k, v in calls.items() if k.split("|")[0].lower() not in ADMIN}
    return Sample(keys, memory, ours, cpu_seconds(node.process.pid))


def _fewest(before: Sample, after: Sample) -> str:
    """The commands a primary processed during the run, by name (for the one with the
    fewest: what reaches it)."""
    delta = {k: v - before.calls.get(k, 0) for k, v in after.calls.items()}
    top = sorted(((v, k) for k, v in delta.items() if v > 0), reverse=True)[:5]
    return ", ".join(f"{k} x{v:,}" for v, k in top) or "none"


def _slots(node: RedisServer) -> list[tuple[int, int]]:
    """The slot ranges ``node`` serves, in order."""
    with redis.Redis(port=node.port) as client:
        reply = client.execute_command("CLUSTER", "SLOTS")
    return sorted((int(r[0]), int(r[1])) for r in reply if int(r[2][1]) == node.port)


def _run_jobs(orch: Orchestrator, n: int, rate: float) -> tuple[float, int]:
    """Submit ``n`` jobs at ``rate`` a second, ``TENANTS`` tenants in turn, and wait
    until all have ended; returns the seconds from first submit to the last end and how
    many did not complete."""
    t0 = time.monotonic()
    for i in range(n):
        ahead = t0 + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)  # the pace itself, not a wait for an event
        orch.submit(f"spread {i}", budget="low", tags={"tenant": f"t{i % TENANTS}"})

    def ended() -> bool:
        states = orch.store.job_states()
        return sum(states[s] for s in TERMINAL) >= n

    # Polled slowly: each poll is a store command on a primary, counted with the jobs'.
    wait_for(ended, 60 + n / 5, f"{n} jobs to end", every=0.25)
    seconds = time.monotonic() - t0
    return seconds, n - orch.store.job_states()["completed"]


def _ratio(values: list[float]) -> float:
    """Largest over smallest, the smallest floored at 1 (an empty primary gives a large
    finite ratio, not infinity)."""
    return max(values) / max(min(values), 1.0)


def scenario(ctx: Context) -> Result:
    n, rate = ctx.size(10_000, 500), 40.0
    res = Result(
        "spread",
        "Keys and load of the store over the primaries of a Redis Cluster",
        baseline="an even spread: each of the 3 primaries a third",
        params={"jobs": n, "tenants": TENANTS, "pace": f"{rate:g} jobs/s",
                "cluster": "3 primaries, no replicas, on this machine",
                "cells": f"STORE_CELLS={CELLS}",
                "broker": "the benchmark's one Redis (off the cluster)",
                "pool": "one worker process, threads x 8 (api+streams)",
                "emulator": "turn_seconds=0, events_per_turn=10"},
    )  # fmt: skip
    _, api_url = ctx.emulator("spread-emulator")
    prefix = "bs" + uuid.uuid4().hex[:6]
    with RedisCluster(primaries=3, replicas=0) as cluster:
        primaries = sorted(cluster.primaries(), key=_slots)
        slots = [",".join(f"{a}-{b}" for a, b in _slots(node)) for node in primaries]
        empty = [_sample(node) for node in primaries]
        env = ctx.env(api_url, prefix, REDIS_URL=cluster.url, BROKER_URL=ctx.redis_url,
                      STORE_CELLS=str(CELLS))  # fmt: skip
        worker = ctx.worker(f"spread-{prefix}", env, "api,streams")
        orch = Orchestrator(settings_of(env))
        try:
            before = [_sample(node) for node in primaries]
            seconds, not_completed = _run_jobs(orch, n, rate)
            after = [_sample(node) for node in primaries]
        finally:
            orch.close()
            ctx.stop(worker)
    res.params["slots"] = " / ".join(slots)
    runs = list(zip(empty, before, after, strict=True))
    measures = {
        # name: (per primary, unit for the note, goal applies)
        "keys": ([float(a.keys) for _, _, a in runs], "keys", True),
        "commands": ([float(a.commands - b.commands) for _, b, a in runs], "commands", True),
        # Since the cluster started (the worker's connecting included); an idle node's
        # can shrink a little, read as none.
        "used_memory growth": ([max(a.memory - e.memory, 0) / 1024 for e, _, a in runs],
                               "KiB", False),
        "CPU": ([(a.cpu - b.cpu) * 1000 for _, b, a in runs], "ms", False),
    }  # fmt: skip
    for name, (values, unit, goal) in measures.items():
        total = sum(values) or 1.0
        for i, value in enumerate(values):
            res.add(f"{name}: primary {i + 1} share", "%", [100 * value / total])
        ratio = _ratio(values)
        res.add(
            f"{name}: largest/smallest share", "x", [ratio],
            goal=f"≤ {GOAL:g}" if goal else "", met=ratio <= GOAL if goal else None,
        )  # fmt: skip
        each = " / ".join(f"{v:,.0f}" for v in values)
        res.notes.append(f"{name} per primary: {each} {unit}")
    commands = measures["commands"][0]
    idle = commands.index(min(commands))
    res.notes.append(f"commands on primary {idle + 1}: {_fewest(before[idle], after[idle])}")
    res.add("store commands per job (all primaries)", "commands", [sum(commands) / n])
    res.add("jobs ended per second", "jobs/s", [n / seconds])
    res.notes.append(
        "largest/smallest: the smallest floored at 1 of its unit, so a primary with none "
        "gives a large finite ratio (its share 0%) rather than infinity"
    )
    res.notes.append(
        "one repetition: the spread is the layout's, not noise; primaries in slot order"
    )
    if not_completed:
        res.notes.append(f"{not_completed} of {n} jobs did not complete")
    return res
