"""First update at once: from a job put up for following to its first update stored.

    python -m bench.first_update [--background 1000]

The real :class:`~orchestrator.jobs.follower.Follower` runs in this process (production
poll interval 0.25 s); a probe process creates one worker at a time at the emulator,
notes the instant just before ``set_submitted`` (the step that puts the job up for
following and publishes the wake-up), and paces on. The lag is that instant to the
write of the worker's update 0. ``--background N`` first starts N long turns in
another process and waits until the follower follows them all, so probes meet a busy
follower. The baseline is the same follower with the wake-up channel ignored (the
claim poll alone, as before), alternated in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
from orchestrator.wire.client import WorkersClient

from .harness import API_KEY, ROOT, Context, Result, percentile
from .streams import DEFAULT_GC, PREFIX

PROBED = "bench:first-update:submitted"


def _probe(redis_url: str, api_url: str, probes: int, pace: float) -> None:
    """Create ``probes`` workers one at a time; note when each job was put up (child)."""
    store = RedisStore(connect(redis_url), PREFIX)
    with WorkersClient(api_url, API_KEY) as client:
        for i in range(probes):
            worker = client.create(f"probe {i}")
            job, _ = store.create_job(validate_submission(1000, input=f"probe {i}"))
            at = time.time() * 1000
            store.set_submitted(job, worker)
            store.r.hset(PROBED, worker.id, at)
            time.sleep(pace)


class _PollOnly(FollowStore):
    """The follower's store with the wake-up channel ignored: claims at the poll only."""

    async def wait_wake(self, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False


def _child(code: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)


async def measure(
    redis_url: str, api_url: str, probes: int, pace: float, background: int, wake: bool
) -> dict[str, Any]:
    follower_tune_gc()  # as the streams worker does when its follower starts
    r = connect_async(redis_url)
    keys = Keys(PREFIX)
    first_written: dict[str, float] = {}
    original = UpdateWriter._write

    async def timed_write(self: UpdateWriter, batch: Pending) -> None:
        await original(self, batch)
        now = time.time() * 1000
        for worker_id, (_, first, _) in batch.items():
            if first == 0:
                first_written.setdefault(worker_id, now)

    async def on_finished(job_id: str) -> None:
        await r.zrem(keys.follows, job_id)
        await r.hdel(keys.follow_owners, job_id)

    client = AsyncWorkersClient(
        api_url, API_KEY, stream_read_timeout=120,
        max_connections=background + probes + 50, pool_shards=max(1, background // 50),
    )  # fmt: skip
    store = (FollowStore if wake else _PollOnly)(r, PREFIX)
    follower = Follower(store, client, on_finished, capacity=background + probes + 10)
    UpdateWriter._write = timed_write  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    children: list[subprocess.Popen[bytes]] = []
    try:
        if background:
            children.append(_child(
                f"from bench.streams import _create; "
                f"_create({redis_url!r}, {api_url!r}, {background}, 50)"
            ))  # fmt: skip
            deadline = time.monotonic() + 60 + background / 20
            while len(follower.active) < background and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if len(follower.active) < background:
                raise RuntimeError(f"only {len(follower.active)} of {background} streams live")
        live = len(follower.active)
        children.append(_child(
            f"from bench.first_update import _probe; "
            f"_probe({redis_url!r}, {api_url!r}, {probes}, {pace})"
        ))  # fmt: skip
        deadline = time.monotonic() + 60 + probes * (pace + 0.1)
        submitted: dict[str, str] = {}
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            submitted = await r.hgetall(PROBED)
            if len(submitted) >= probes and all(w in first_written for w in submitted):
                break
    finally:
        stop.set()
        await task
        UpdateWriter._write = original  # type: ignore[method-assign]
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)
        await client.aclose()
        await r.delete(PROBED)
        await r.aclose()
        gc.unfreeze()
        gc.set_threshold(*DEFAULT_GC)
    lags = [first_written[w] - float(at) for w, at in submitted.items() if w in first_written]
    return {
        "probes": probes,
        "first_updates": len(lags),
        "live_streams_at_probe": live,
        "lag_ms_p50": round(percentile(lags, 50), 1),
        "lag_ms_p99": round(percentile(lags, 99), 1),
        "lag_ms_max": round(max(lags, default=float("nan")), 1),
    }


def _once(
    ctx: Context, probes: int, pace: float, background: int, wake: bool, turn_seconds: float
) -> dict[str, Any]:
    proc, url = ctx.emulator(f"first-update-emulator-{background}", turn_seconds, 10)
    try:
        return asyncio.run(measure(ctx.redis_url, url, probes, pace, background, wake))
    finally:
        ctx.stop(proc)
        ctx.flush()


def scenario(ctx: Context) -> Result:
    probes, pace = ctx.size(200, 40), 0.05
    loads: list[tuple[int, float, str]] = ctx.size(
        [(0, 0.5, "≤ 50 ms"), (1000, 40.0, "≤ 250 ms")], [(0, 0.5, "≤ 50 ms")]
    )
    res = Result(
        "first_update",
        "First update at once: job put up for following to its first update stored",
        baseline="the same follower claiming at its 0.25 s poll only (wake-ups ignored)",
        params={"probes_per_rep": probes, "pace_ms": pace * 1000,
                "follower": "in the measuring process, production poll interval 0.25 s",
                "probe": "a separate process: create upstream, register, one at a time",
                "loads": ", ".join(f"{n} live streams ({t:g} s turns)" for n, t, _ in loads)},
    )  # fmt: skip
    for background, turn_seconds, goal in loads:
        ours: list[dict[str, Any]] = []
        base: list[dict[str, Any]] = []
        for _ in range(ctx.reps if not background else 1):
            ours.append(_once(ctx, probes, pace, background, True, turn_seconds))
            base.append(_once(ctx, probes, pace, background, False, turn_seconds))
        tag = "idle stack" if not background else f"{background} streams live"
        p99 = res.add(f"first-update lag p99, {tag}", "ms",
                      [r["lag_ms_p99"] for r in ours], [r["lag_ms_p99"] for r in base],
                      goal=goal)  # fmt: skip
        p99.met = max(p99.ours) <= float(goal.split()[1])
        res.add(f"first-update lag p50, {tag}", "ms",
                [r["lag_ms_p50"] for r in ours], [r["lag_ms_p50"] for r in base])  # fmt: skip
        lost = res.add(f"first updates missing, {tag}", "probes",
                       [r["probes"] - r["first_updates"] for r in ours])  # fmt: skip
        lost.met = not any(lost.ours)
        res.notes.append(f"{tag}, each repetition (ours, then poll only): "
                         + json.dumps({"ours": ours, "poll_only": base}))  # fmt: skip
    return res


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.first_update")
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--background", type=int, default=0)
    parser.add_argument("--turn-seconds", type=float, default=None)
    parser.add_argument("--poll-only", action="store_true", help="ignore wake-ups")
    args = parser.parse_args()
    turn = args.turn_seconds
    if turn is None:
        turn = 40.0 if args.background else 0.5
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    with RedisServer(appendonly=False) as server:
        ctx = Context(server.url, False, logs, logs)
        try:
            got = _once(ctx, args.probes, 0.05, args.background, not args.poll_only, turn)
        finally:
            ctx.stop_all()
    print(json.dumps(got, indent=2))


if __name__ == "__main__":
    main()
