"""Concurrent streams: N workers running at once, followed live by one follower process.

    python -m bench.streams --workers 1000 --turn-seconds 10 --events 10

Starts its own Redis and an emulator subprocess, runs the real :class:`Follower` in this
process, and reports event lag (emulator emit time to stored in Redis), RSS and CPU of
the follower process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from orchestrator.aclient import AsyncWorkersClient
from orchestrator.follower import Follower, UpdateWriter
from orchestrator.jobs import validate_submission
from orchestrator.keys import Keys
from orchestrator.redis_server import RedisServer, free_port
from orchestrator.store import RedisStore, connect

KEY = "bench-key"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_emulator(turn_seconds: float, events: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "orchestrator",
        "emulator",
        "--port",
        str(port),
        "--turn-seconds",
        str(turn_seconds),
        "--events-per-turn",
        str(events),
    ]
    proc = subprocess.Popen(
        args,
        env={**os.environ, "EMULATOR_API_KEY": KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/_emulator/ledger", headers={"Authorization": f"Bearer {KEY}"})
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("emulator did not start")


async def run(workers: int, turn_seconds: float, events: int, shards: int) -> dict[str, Any]:
    with RedisServer(appendonly=False) as server:
        emu, url = start_emulator(turn_seconds, events)
        try:
            return await _measure(server.url, url, workers, turn_seconds, events, shards)
        finally:
            emu.terminate()
            emu.wait(timeout=10)


async def _measure(
    redis_url: str, api_url: str, workers: int, turn_seconds: float, events: int, shards: int
) -> dict[str, Any]:
    store = RedisStore(connect(redis_url), "bench")
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    lags: list[float] = []
    live_lags: list[float] = []  # all but each turn's first event (which waits for a claim)
    original = UpdateWriter._write

    async def timed_write(self: UpdateWriter, batch: dict[str, tuple[int, list[str]]]) -> None:
        await original(self, batch)
        now = time.time() * 1000
        for _, payloads in batch.values():
            for payload in payloads:
                event = json.loads(payload)
                lags.append(now - event["at"])
                if event.get("type") != "start":
                    live_lags.append(now - event["at"])

    UpdateWriter._write = timed_write  # type: ignore[method-assign]
    finished: set[str] = set()

    async def on_finished(job_id: str) -> None:
        finished.add(job_id)

    client = AsyncWorkersClient(
        api_url, KEY, stream_read_timeout=turn_seconds * 3, pool_shards=shards
    )
    follower = Follower(
        r, Keys("bench"), client, on_finished, capacity=workers + 10, poll_seconds=0.05
    )
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    cpu0 = time.process_time()
    creator = AsyncWorkersClient(api_url, KEY)
    sem = asyncio.Semaphore(50)

    async def make(i: int) -> None:
        async with sem:
            worker = await creator.create(f"bench {i}")
        sub = validate_submission(1000, input=f"bench {i}")

        def register() -> None:  # blocking Redis calls: off the follower's loop
            job, _ = store.create_job(sub)
            store.set_submitted(job, worker)

        await asyncio.get_running_loop().run_in_executor(None, register)

    started = time.monotonic()
    await asyncio.gather(*(make(i) for i in range(workers)))
    created_in = time.monotonic() - started
    peak = rss_mb()
    deadline = time.monotonic() + turn_seconds * 3 + 60
    while len(finished) < workers and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        peak = max(peak, rss_mb())
    cpu = time.process_time() - cpu0
    stop.set()
    await task
    await creator.aclose()
    await client.aclose()
    await r.aclose()
    lags.sort()
    q = statistics.quantiles(lags, n=100) if len(lags) > 1 else [0.0] * 99
    live = statistics.quantiles(live_lags, n=100) if len(live_lags) > 1 else [0.0] * 99
    return {
        "workers": workers,
        "events_expected": workers * events,
        "events_stored": len(lags),
        "finished": len(finished),
        "create_seconds": round(created_in, 2),
        "lag_ms_p50": round(q[49], 1),
        "lag_ms_p99": round(q[98], 1),
        "lag_ms_max": round(lags[-1], 1) if lags else 0.0,
        "live_lag_ms_p50": round(live[49], 1),
        "live_lag_ms_p99": round(live[98], 1),
        "rss_mb_peak": round(peak, 1),
        "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_seconds": round(cpu, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streams")
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--turn-seconds", type=float, default=10.0)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--shards", type=int, default=20)
    args = parser.parse_args()
    result = asyncio.run(run(args.workers, args.turn_seconds, args.events, args.shards))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
