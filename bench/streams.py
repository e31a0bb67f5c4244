"""Concurrent streams: N workers running at once, followed live by one follower process.

    python -m bench.streams --workers 1000 --turn-seconds 10 --events 10

The real :class:`~orchestrator.jobs.follower.Follower` runs in this process with its
production poll interval; a separate process creates the workers at the emulator
(another process) and registers their jobs, so this process's CPU and RSS are the
follower's. Lag is emulator emit time (the event's ``at``) to stored in Redis, taken
when the batch holding the event is written. ``live`` lags leave out each turn's first
event, which also waits for the job to be registered and claimed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from orchestrator.jobs.follower import Follower
from orchestrator.jobs.model import validate_submission
from orchestrator.jobs.update_writer import UpdateWriter
from orchestrator.ops.gctune import tune_gc as follower_tune_gc
from orchestrator.ops.redis_server import RedisServer
from orchestrator.store.connection import connect_async
from orchestrator.store.follows import FollowStore, Pending
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.store.keys import Keys
from orchestrator.wire.aclient import AsyncWorkersClient
from orchestrator.wire.client import Update

from .harness import API_KEY, ROOT, Context, Result, cpu_seconds, percentile, rss_mb

PREFIX = "bs"
DEFAULT_GC = gc.get_threshold()


def _create(redis_url: str, api_url: str, workers: int, concurrency: int) -> None:
    """Create ``workers`` workers and register their jobs (run in a child process)."""

    async def main() -> None:
        store = RedisStore(connect(redis_url), PREFIX)
        creator = AsyncWorkersClient(api_url, API_KEY, max_connections=concurrency)
        sem = asyncio.Semaphore(concurrency)
        loop = asyncio.get_running_loop()

        async def make(i: int) -> None:
            async with sem:
                worker = await creator.create(f"bench {i}")
                sub = validate_submission(1000, input=f"bench {i}")

                def register() -> None:
                    job, _ = store.create_job(sub)
                    store.set_submitted(job, worker)

                await loop.run_in_executor(None, register)

        await asyncio.gather(*(make(i) for i in range(workers)))
        await creator.aclose()

    asyncio.run(main())


async def _loop_monitor(stalls: list[float], every: float = 0.01) -> None:
    """How late a 10 ms sleep wakes up: time the follower's event loop was busy (ms)."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(every)
        stalls.append((time.perf_counter() - t - every) * 1000)


class _TimedClient(AsyncWorkersClient):
    """The follower's client, noting how late each event is read (now - its ``at``)."""

    read_lags: list[float]

    async def stream_updates(self, worker_id: str, **kwargs: Any) -> AsyncIterator[Update]:
        async for update in super().stream_updates(worker_id, **kwargs):
            if update.data.get("type") != "start":
                self.read_lags.append(time.time() * 1000 - update.data["at"])
            yield update


class _Count(logging.Handler):
    """Counts the follower's warnings (failed relays, Redis errors) by message start."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        key = text.split(" (", 1)[-1][:60] if "broke" in text else text.split(": ", 1)[-1][:60]
        self.counts[key] = self.counts.get(key, 0) + 1


async def measure(
    redis_url: str,
    api_url: str,
    workers: int,
    turn_seconds: float,
    events: int,
    pool: int | None = None,
    emulator_pid: int | None = None,
    tune_gc: bool = True,
) -> dict[str, Any]:
    """Follow ``workers`` concurrent turns; lag, RSS, CPU and peak concurrency.

    ``pool`` gives the follower a blocking Redis pool of that size (None: the streams
    worker's own client, ``connect_async``); ``tune_gc`` sets up the collector as the
    streams worker does (``ops.gctune.tune_gc``; False: Python's defaults).
    """
    if tune_gc:
        follower_tune_gc()  # as the streams worker does when its follower starts
    if pool:
        blocking = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=pool, timeout=30, decode_responses=True
        )
        r = aioredis.Redis(connection_pool=blocking)
    else:
        r = connect_async(redis_url)
    counter = _Count()
    follower_log = logging.getLogger("orchestrator.jobs.follower")
    level = follower_log.level
    follower_log.setLevel(logging.INFO)
    follower_log.addHandler(counter)
    written: list[tuple[float, list[str]]] = []
    original = UpdateWriter._write

    async def timed_write(self: UpdateWriter, batch: Pending) -> None:
        await original(self, batch)
        written.append((time.time() * 1000, [p for _, _, ps in batch.values() for p in ps]))

    finished: set[str] = set()

    keys = Keys(PREFIX)

    async def on_finished(job_id: str) -> None:
        # What the finalize step does first: the stream is no longer followed (else the
        # job would be claimed again when its lease runs out, and replayed).
        finished.add(job_id)
        await r.zrem(keys.follows, job_id)
        await r.hdel(keys.follow_owners, job_id)

    client = _TimedClient(
        api_url, API_KEY, stream_read_timeout=turn_seconds * 3 + 30,
        max_connections=workers + 50, pool_shards=max(1, workers // 50),
    )  # fmt: skip
    client.read_lags = []
    follower = Follower(FollowStore(r, PREFIX), client, on_finished, capacity=workers + 10)
    UpdateWriter._write = timed_write  # type: ignore[method-assign]
    stop = asyncio.Event()
    cpu0, t0 = cpu_seconds(), time.monotonic()
    emu_cpu0 = cpu_seconds(emulator_pid) if emulator_pid else 0.0
    task = asyncio.create_task(follower.run(stop))
    stalls: list[float] = []
    monitor = asyncio.create_task(_loop_monitor(stalls))
    code = f"from bench.streams import _create; _create({redis_url!r}, {api_url!r}, {workers}, 50)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    creator = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    peak_rss, peak_active, created_in = rss_mb(), 0, None
    deadline = time.monotonic() + turn_seconds + workers / 50 + 60
    try:
        while len(finished) < workers and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            peak_rss = max(peak_rss, rss_mb())
            peak_active = max(peak_active, len(follower.active))
            if created_in is None and creator.poll() is not None:
                if creator.returncode:
                    raise RuntimeError(f"the creator process failed ({creator.returncode})")
                created_in = time.monotonic() - t0
    finally:
        seconds = time.monotonic() - t0
        cpu = cpu_seconds() - cpu0
        emu_cpu = cpu_seconds(emulator_pid) - emu_cpu0 if emulator_pid else 0.0
        stop.set()
        monitor.cancel()
        await task
        UpdateWriter._write = original  # type: ignore[method-assign]
        if creator.poll() is None:
            creator.kill()
        creator.wait(timeout=10)
        await client.aclose()
        await r.aclose()
        follower_log.removeHandler(counter)
        follower_log.setLevel(level)
        if tune_gc:
            gc.unfreeze()
            gc.set_threshold(*DEFAULT_GC)
    lags, live, late = [], [], []
    created_at = (t0 + (created_in or seconds)) - time.monotonic() + time.time()
    for at, payloads in written:
        for payload in payloads:
            event = json.loads(payload)
            lags.append(at - event["at"])
            if event.get("type") != "start":
                live.append(at - event["at"])
                if event["at"] > created_at * 1000:
                    late.append(at - event["at"])
    return {
        "workers": workers,
        "events_expected": workers * events,
        "events_stored": len(lags),
        "finished": len(finished),
        "peak_concurrent": peak_active,
        "create_seconds": round(created_in or seconds, 2),
        "seconds": round(seconds, 2),
        "lag_ms_p50": round(percentile(lags, 50), 1),
        "lag_ms_p99": round(percentile(lags, 99), 1),
        "lag_ms_max": round(max(lags, default=0.0), 1),
        "live_lag_ms_p50": round(percentile(live, 50), 1),
        "live_lag_ms_p99": round(percentile(live, 99), 1),
        "live_read_lag_ms_p50": round(percentile(client.read_lags, 50), 1),
        "live_read_lag_ms_p99": round(percentile(client.read_lags, 99), 1),
        "live_lag_ms_p99_after_creation": round(percentile(late, 99), 1),
        "loop_stall_ms_p99": round(percentile(stalls, 99), 1),
        "loop_stall_ms_max": round(max(stalls, default=0.0), 1),
        "rss_mb_peak": round(peak_rss, 1),
        "follower_log": counter.counts,
        "cpu_seconds": round(cpu, 2),
        "emulator_cpu_seconds": round(emu_cpu, 2),
    }


def _once(
    ctx: Context,
    workers: int,
    turn_seconds: float,
    events: int,
    pool: int | None = None,
    tune_gc: bool = True,
) -> dict[str, Any]:
    proc, url = ctx.emulator(f"streams-emulator-{workers}", turn_seconds, events)
    try:
        return asyncio.run(
            measure(ctx.redis_url, url, workers, turn_seconds, events, pool, proc.pid, tune_gc)
        )
    finally:
        ctx.stop(proc)
        ctx.flush()


def scenario(ctx: Context) -> Result:
    events = 10
    # (workers, turn seconds, blocking Redis pool for the follower or None, repetitions)
    runs_of: list[tuple[int, float, int | None, int]] = ctx.size(
        # 5,000 x 120 s: creating them takes ~55 s here, so all are live for a minute.
        [(1000, 10.0, None, ctx.reps), (5000, 120.0, None, 1), (10000, 150.0, None, 1)],
        [(200, 3.0, None, ctx.reps)],
    )
    res = Result(
        "streams",
        "Concurrent streams followed live by one follower process",
        params={"events_per_turn": events,
                "turns": ", ".join(f"{n} workers x {t:g} s" for n, t, _, _ in runs_of),
                "follower": "in the measuring process, production poll interval 0.25 s",
                "creator": "a separate process, 50 creates at a time"},
    )  # fmt: skip
    for workers, turn_seconds, pool, reps in runs_of:
        runs = [_once(ctx, workers, turn_seconds, events, pool) for _ in range(reps)]

        def col(key: str, runs: list[dict[str, Any]] = runs) -> list[float]:
            return [float(run[key]) for run in runs]

        tag = f"{workers} streams" + (f", blocking pool {pool}" if pool else "")
        lag_goal = {1000: 250, 5000: 1000}.get(workers)
        goal = lag_goal is not None
        lag = res.add(f"{tag}: live lag p99", "ms", col("live_lag_ms_p99"),
                      goal=f"≤ {lag_goal} ms" if goal else "",
                      note="every event after a turn's first, creation burst included")  # fmt: skip
        steady = res.add(f"{tag}: live lag p99 once all are created", "ms",
                         col("live_lag_ms_p99_after_creation"),
                         goal=f"≤ {lag_goal} ms" if goal else "",
                         note="events emitted after the creator finished: every stream "
                         "live, no creation burst beside the follower")  # fmt: skip
        res.add(f"{tag}: live lag p50", "ms", col("live_lag_ms_p50"))
        res.add(f"{tag}: live read lag p99", "ms", col("live_read_lag_ms_p99"),
                note="emit to read by the follower: the upstream and machine share")  # fmt: skip
        res.add(f"{tag}: event-loop stall max", "ms", col("loop_stall_ms_max"))
        res.add(f"{tag}: lag p99 incl. first event", "ms", col("lag_ms_p99"),
                note="a turn's first event also waits for register + claim")  # fmt: skip
        rss = res.add(f"{tag}: follower RSS peak", "MiB", col("rss_mb_peak"),
                      goal="≤ 1024 MiB" if goal else "")  # fmt: skip
        res.add(f"{tag}: follower CPU", "s", col("cpu_seconds"),
                note=f"follower process CPU, whole run ({turn_seconds:g} s turns)")  # fmt: skip
        res.add(f"{tag}: peak concurrent", "streams", col("peak_concurrent"))
        stored = res.add(f"{tag}: events stored", "events", col("events_stored"),
                         note=f"of {workers * events} expected",
                         goal="all" if goal else "")  # fmt: skip
        res.add(f"{tag}: turns finished", "turns", col("finished"), note=f"of {workers}")
        if goal:
            lag.met = statistics.median(lag.ours) <= (lag_goal or 0)
            steady.met = statistics.median(steady.ours) <= (lag_goal or 0)
            rss.met = max(rss.ours) <= 1024
            stored.met = min(stored.ours) == workers * events
        res.notes.append(f"{tag}, each repetition: " + json.dumps(runs))
    return res


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streams")
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--turn-seconds", type=float, default=10.0)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--redis-pool", type=int, default=None,
                        help="give the follower a blocking Redis pool of this size "
                        "(default: the streams worker's own client)")  # fmt: skip
    parser.add_argument("--default-gc", action="store_true",
                        help="keep Python's collector settings (the streams worker tunes "
                        "them: orchestrator.ops.gctune.tune_gc)")  # fmt: skip
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    with RedisServer(appendonly=False) as server:
        ctx = Context(server.url, False, logs, logs)
        try:
            tune = not args.default_gc
            result = _once(ctx, args.workers, args.turn_seconds, args.events, args.redis_pool, tune)
        finally:
            ctx.stop_all()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
