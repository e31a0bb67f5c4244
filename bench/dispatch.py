"""Dispatch overhead and throughput, each against bare Celery in the same run.

- dispatch: ``Orchestrator.submit()`` to the create request reaching the emulator (its
  arrival time per Idempotency-Key = job id, recorded by ``bench.emulator``), against
  ``send_task`` to a no-op task's first line. Same broker, same pool (one worker
  process: prefork x 4, the api queue's production pool, then threads x 8); ours and
  the baseline alternate, one call every 10 ms, so calls do not queue and drift on the
  machine hits both alike.
- throughput: N jobs submitted back to back and run to ``completed`` (create, 10
  updates relayed, finalize, ledger posted) by one ``orchestrator worker`` process
  (queues api+streams, threads x 8), against N no-op tasks on the same pool.

Throughput repetitions alternate ours and the baseline, so drift hits both.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import TERMINAL
from orchestrator.settings import load_settings

from .bare import TASK, make_bare_app, starts_key
from .harness import API_KEY, Context, Result, arrivals, cpu_seconds, percentile, wait_for


def bare_args(pool: str, concurrency: int) -> list[str]:
    """The baseline worker: ``celery -A bench.bare worker`` with this pool."""
    return [
        sys.executable, "-m", "celery", "-A", "bench.bare", "worker", "-Q", "bench",
        "-P", pool, "-c", str(concurrency), "-E", "--loglevel", "INFO", "-n", "bare@%h",
    ]  # fmt: skip


BARE_ARGS = bare_args("threads", 8)
# The api queue's production pool (docs/operations.md): prefork, 4 processes.
PREFORK = ("prefork", 4)


def _orchestrator(ctx: Context, api_url: str, prefix: str) -> Orchestrator:
    settings = load_settings(
        redis_url=ctx.redis_url, key_prefix=prefix, workers_api_url=api_url,
        workers_api_key=API_KEY,
    )  # fmt: skip
    return Orchestrator(settings)


def _interleaved(
    ctx: Context, orch: Orchestrator, bare_app: Any, api_url: str, n: int, pace: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """n calls of ours and n of the baseline, alternating every ``pace / 2`` seconds, so
    drift on a shared machine hits both alike; each side's latencies and call times."""
    run = uuid.uuid4().hex[:8]
    ours_sent: dict[str, float] = {}
    bare_sent: dict[str, float] = {}
    ours_took: list[float] = []
    bare_took: list[float] = []
    start = time.monotonic()
    for i in range(n):
        for half, (sent, took) in enumerate(((ours_sent, ours_took), (bare_sent, bare_took))):
            delay = start + (2 * i + half) * pace / 2 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t, t0 = time.monotonic(), time.time()
            if half == 0:
                sent[orch.submit(f"dispatch {i}", budget="low").id] = t0
            else:
                bare_app.send_task(TASK, args=[run, str(i)])
                sent[str(i)] = t0
            took.append((time.monotonic() - t) * 1000)
    seen: dict[str, float] = {}

    def all_arrived() -> bool:
        seen.update(arrivals(api_url))
        return all(j in seen for j in ours_sent)

    wait_for(all_arrived, 60, "every create request at the emulator", every=0.2)
    with ctx.redis() as r:
        wait_for(lambda: r.hlen(starts_key(run)) >= n, 60, "every bare task to start")
        starts = r.hgetall(starts_key(run))
    ours = {"lat": [(seen[j] - t0) * 1000 for j, t0 in ours_sent.items()], "call": ours_took}
    bare = {"lat": [(float(starts[k]) - t0) * 1000 for k, t0 in bare_sent.items()]}
    return ours, {**bare, "call": bare_took}


def _dispatch_pool(
    ctx: Context, url: str, pool: str, concurrency: int, n: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Ours and the baseline, each on ``pool`` x ``concurrency``: their figures per rep."""
    warm, pace = 30, 0.02
    env = ctx.env(url, prefix="bd")
    ours_proc = ctx.worker(f"dispatch-{pool}", env, "api", concurrency=concurrency, pool=pool)
    bare_cmd = bare_args(pool, concurrency)
    bare_proc = ctx.spawn(f"dispatch-bare-{pool}", bare_cmd, env, ready="ready.")
    orch = _orchestrator(ctx, url, "bd")
    bare_app = make_bare_app(orch.settings)
    ours: dict[str, list[float]] = {"p50": [], "p99": [], "call": []}
    bare: dict[str, list[float]] = {"p50": [], "p99": [], "call": []}
    try:
        _interleaved(ctx, orch, bare_app, url, warm, pace)
        for _ in range(ctx.reps):
            got_ours, got_bare = _interleaved(ctx, orch, bare_app, url, n, pace)
            for figures, got in ((ours, got_ours), (bare, got_bare)):
                figures["p50"].append(percentile(got["lat"], 50))
                figures["p99"].append(percentile(got["lat"], 99))
                figures["call"].append(percentile(got["call"], 50))
    finally:
        orch.close()
        ctx.stop(ours_proc)
        ctx.stop(bare_proc)
    return ours, bare


def dispatch(ctx: Context) -> Result:
    n = ctx.size(400, 100)
    res = Result(
        "dispatch",
        "Dispatch overhead: submit() to the create request at the emulator",
        baseline="bare Celery: send_task to a no-op task's start (same broker, same pool)",
        params={"calls_per_rep": n, "warmup_calls": 30, "pace_ms": 20.0, "interleaved": True,
                "pools": "prefork x 4 (the api queue's production pool), then threads x 8; "
                "one worker process each", "emulator": "turn_seconds=0"},
    )  # fmt: skip
    _, url = ctx.emulator("dispatch-emulator")
    for pool, concurrency in (PREFORK, ("threads", 8)):
        ours, bare = _dispatch_pool(ctx, url, pool, concurrency, n)
        tag = f"{pool} x {concurrency}"
        p50 = res.add(f"latency p50, {tag}", "ms", ours["p50"], bare["p50"],
                      goal="p50 ≤ 1.5x bare" if pool == PREFORK[0] else "")  # fmt: skip
        if pool == PREFORK[0]:
            p50.met = p50.ratio is not None and p50.ratio <= 1.5
        res.add(f"latency p99, {tag}", "ms", ours["p99"], bare["p99"])
        res.add(
            f"caller blocked p50, {tag}", "ms", ours["call"], bare["call"],
            note="time submit() / send_task() itself takes in the caller",
        )  # fmt: skip
    res.notes.append(
        "threads pool: the create step shares the process's GIL with Celery's consumer "
        "thread, which publishes the task's events as the step starts; its Redis read took "
        "0.6-0.8 ms there against 0.17 ms in a quiet process (probe of start_turn)"
    )
    return res


def _ours_throughput(ctx: Context, orch: Orchestrator, pid: int, n: int) -> dict[str, float]:
    before = orch.store.job_states()
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    for i in range(n):
        orch.submit(f"throughput {i}", budget="low", tags={"tenant": f"t{i % 10}"})

    def done() -> bool:
        states = orch.store.job_states()
        finished = sum(states[s] - before[s] for s in TERMINAL)
        return finished >= n

    wait_for(done, 60 + n / 5, f"{n} jobs to finish", every=0.02)
    seconds = time.monotonic() - t0
    failed = orch.store.job_states()["failed"] - before["failed"]
    return {"rate": n / seconds, "cpu_ms": (cpu_seconds(pid) - cpu0) * 1000 / n, "failed": failed}


def _bare_throughput(ctx: Context, app: Any, pid: int, n: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    for i in range(n):
        app.send_task(TASK, args=[run, str(i)])
    with ctx.redis() as r:
        wait_for(lambda: r.hlen(starts_key(run)) >= n, 60 + n / 5, f"{n} bare tasks", every=0.02)
    seconds = time.monotonic() - t0
    return {"rate": n / seconds, "cpu_ms": (cpu_seconds(pid) - cpu0) * 1000 / n, "failed": 0}


def throughput(ctx: Context) -> Result:
    n = ctx.size(2000, 200)
    res = Result(
        "throughput",
        "Throughput: jobs completed per second (create, 10 updates, finalize, ledger)",
        baseline="bare Celery no-op tasks/s on the same pool",
        params={"jobs_per_rep": n, "pool": "one worker process, threads x 8 (api+streams)",
                "emulator": "turn_seconds=0, events_per_turn=10",
                "submitter": "one thread in the driver, back to back"},
    )  # fmt: skip
    _, url = ctx.emulator("throughput-emulator")
    env = ctx.env(url, prefix="bt")
    worker = ctx.worker("throughput-onebox", env, "api,streams")
    bare = ctx.spawn("throughput-bare", BARE_ARGS, env, ready="ready.")
    orch = _orchestrator(ctx, url, "bt")
    bare_app = make_bare_app(orch.settings)
    ours: dict[str, list[float]] = {"rate": [], "cpu_ms": [], "failed": []}
    base: dict[str, list[float]] = {"rate": [], "cpu_ms": [], "failed": []}
    try:
        _ours_throughput(ctx, orch, worker.pid, 20)
        _bare_throughput(ctx, bare_app, bare.pid, 20)
        for _ in range(ctx.reps):
            for figures, got in (
                (ours, _ours_throughput(ctx, orch, worker.pid, n)),
                (base, _bare_throughput(ctx, bare_app, bare.pid, n)),
            ):
                for key, value in got.items():
                    figures[key].append(value)
    finally:
        orch.close()
    rate = res.add("throughput", "jobs/s", ours["rate"], base["rate"], goal="≥ 1/3 of bare")
    rate.met = rate.ratio is not None and rate.ratio >= 1 / 3
    res.add(
        "worker CPU per job", "ms", ours["cpu_ms"], base["cpu_ms"],
        note="CPU time of the worker process divided by jobs (baseline: by tasks)",
    )  # fmt: skip
    if any(ours["failed"]):
        res.notes.append(f"jobs failed per repetition: {ours['failed']}")
    return res
