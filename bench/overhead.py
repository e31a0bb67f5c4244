"""Per-job overhead against the hand-written task (``bench.handwritten``), same run.

- overhead: N jobs submitted back to back and run to the end (create, 10 updates
  relayed, retrieve, costs posted) by one ``orchestrator worker`` process (queues
  api+streams, threads x 8), against N hand-written tasks on one worker process of the
  same pool; turns end at once, so this is the per-job cost of each. Repetitions
  alternate ours and the baseline, so drift on a shared machine hits both.
- long_turns: the same with 5 s turns, the hand-written task on its best pool (gevent
  x 500 when gevent is installed, else threads x 100): jobs/s with N jobs in flight.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
from typing import Any

from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import TERMINAL

from .dispatch import _orchestrator
from .handwritten import TASK, done_key, make_handwritten_app
from .harness import Context, Result, cpu_seconds, wait_for


def handwritten_args(pool: str, concurrency: int) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "bench.handwritten", "worker", "-Q",
        "handwritten", "-P", pool, "-c", str(concurrency), "--loglevel", "INFO",
        "-n", "handwritten@%h",
    ]  # fmt: skip


def _ours(orch: Orchestrator, pid: int, n: int, bound: float) -> dict[str, float]:
    before = orch.store.job_states()
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    for i in range(n):
        orch.submit(f"overhead {i}", budget="low", tags={"tenant": f"t{i % 10}"})

    def done() -> bool:
        states = orch.store.job_states()
        return sum(states[s] - before[s] for s in TERMINAL) >= n

    wait_for(done, bound, f"{n} jobs to finish", every=0.02)
    seconds = time.monotonic() - t0
    failed = orch.store.job_states()["failed"] - before["failed"]
    return {"rate": n / seconds, "cpu_ms": (cpu_seconds(pid) - cpu0) * 1000 / n, "failed": failed}


def _theirs(ctx: Context, app: Any, pid: int, n: int, bound: float) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    for i in range(n):
        app.send_task(TASK, args=[run, f"overhead {i}", f"t{i % 10}"])
    with ctx.redis() as r:
        wait_for(lambda: r.hlen(done_key(run)) >= n, bound, f"{n} hand-written jobs", every=0.02)
    seconds = time.monotonic() - t0
    return {"rate": n / seconds, "cpu_ms": (cpu_seconds(pid) - cpu0) * 1000 / n, "failed": 0}


def _compare(
    ctx: Context, name: str, turn_seconds: float, n: int, pool: tuple[str, int]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    _, url = ctx.emulator(f"{name}-emulator", turn_seconds)
    env = ctx.env(url, prefix="bo")
    worker = ctx.worker(f"{name}-ours", env, "api,streams")
    theirs = ctx.spawn(f"{name}-handwritten", handwritten_args(*pool), env, ready="ready.")
    orch = _orchestrator(ctx, url, "bo")
    app = make_handwritten_app(orch.settings)
    bound = 120 + n / 5 + turn_seconds * 3
    ours: dict[str, list[float]] = {"rate": [], "cpu_ms": [], "failed": []}
    base: dict[str, list[float]] = {"rate": [], "cpu_ms": [], "failed": []}
    try:
        _ours(orch, worker.pid, 20, bound)
        _theirs(ctx, app, theirs.pid, 20, bound)
        for _ in range(ctx.reps):
            for figures, got in (
                (ours, _ours(orch, worker.pid, n, bound)),
                (base, _theirs(ctx, app, theirs.pid, n, bound)),
            ):
                for key, value in got.items():
                    figures[key].append(value)
    finally:
        orch.close()
    return ours, base


def overhead(ctx: Context) -> Result:
    n = ctx.size(500, 100)
    res = Result(
        "overhead",
        "Per-job overhead: jobs/s against the hand-written task, turns that end at once",
        baseline="bench.handwritten (one Celery task per job: create, SSE read + XADD "
        "pipelined, retrieve, HINCRBY costs per day and tag; no exactly-once, leases, "
        "budgets), one worker process, threads x 8",
        params={"jobs_per_rep": n, "pool": "one worker process each, threads x 8 "
                "(ours: api+streams)", "emulator": "turn_seconds=0, events_per_turn=10",
                "submitter": "one thread in the driver, back to back"},
    )  # fmt: skip
    ours, base = _compare(ctx, "overhead", 0.0, n, ("threads", 8))
    rate = res.add("jobs/s, instant turns", "jobs/s", ours["rate"], base["rate"],
                   goal="≥ 0.8x hand-written")  # fmt: skip
    rate.met = rate.ratio is not None and rate.ratio >= 0.8
    res.add("worker CPU per job", "ms", ours["cpu_ms"], base["cpu_ms"],
            note="CPU time of the worker process divided by jobs")  # fmt: skip
    res.notes.append("where the CPU goes, step by step: bench/PROFILE.md "
                     "(python -m bench.profile spy)")  # fmt: skip
    if any(ours["failed"]):
        res.notes.append(f"jobs failed per repetition: {ours['failed']}")
    return res


def long_turns(ctx: Context) -> Result:
    n = ctx.size(500, 100)
    gevent = importlib.util.find_spec("gevent") is not None
    pool = ("gevent", 500) if gevent else ("threads", 100)
    res = Result(
        "long_turns",
        "Long turns: jobs/s with 5 s turns against the hand-written task on its best pool",
        baseline=f"bench.handwritten on {pool[0]} x {pool[1]}, one worker process",
        params={"jobs_per_rep": n, "ours": "one worker process, threads x 8 (api+streams)",
                "emulator": "turn_seconds=5, events_per_turn=10",
                "submitter": "one thread in the driver, back to back"},
    )  # fmt: skip
    ours, base = _compare(ctx, "long-turns", 5.0, n, pool)
    rate = res.add("jobs/s, 5 s turns", "jobs/s", ours["rate"], base["rate"],
                   goal="≥ 2x hand-written")  # fmt: skip
    rate.met = rate.ratio is not None and rate.ratio >= 2
    if any(ours["failed"]):
        res.notes.append(f"jobs failed per repetition: {ours['failed']}")
    return res


def turns_60s(ctx: Context) -> Result:
    """60 s turns with 2,000 jobs in flight: a report, no goal (issue: "report 60 s turns
    with 2,000 jobs in flight"). One repetition each: a turn lasts a minute."""
    n = ctx.size(2000, 200)
    gevent = importlib.util.find_spec("gevent") is not None
    # The hand-written task holds one pool slot a job for the whole turn: to have every
    # job in flight at once it needs as many greenlets as jobs.
    pool = ("gevent", n) if gevent else ("threads", 200)
    res = Result(
        "turns_60s",
        f"60 s turns, {n} jobs submitted at once: jobs/s against the hand-written task",
        baseline=f"bench.handwritten on {pool[0]} x {pool[1]}, one worker process",
        params={"jobs": n, "repetitions": 1,
                "ours": "one worker process, threads x 8 (api+streams)",
                "emulator": "turn_seconds=60, events_per_turn=10",
                "submitter": "one thread in the driver, back to back"},
    )  # fmt: skip
    reps, ctx.reps = ctx.reps, 1
    try:
        ours, base = _compare(ctx, "turns-60s", 60.0, n, pool)
    finally:
        ctx.reps = reps
    res.add("jobs/s, 60 s turns", "jobs/s", ours["rate"], base["rate"],
            note=f"{n} jobs / seconds from the first submit to the last end")  # fmt: skip
    res.add("worker CPU per job", "ms", ours["cpu_ms"], base["cpu_ms"])
    if any(ours["failed"]):
        res.notes.append(f"jobs failed: {ours['failed']}")
    return res
