"""``python -m bench.console_load [--jobs N]``: the console's requests as jobs pile up.

One Redis server and one gateway process of its own; jobs are written straight into the
store (10 tenants, all queued), then each request the console makes is timed over HTTP
(50 calls, p50 / p99) with 1,000 jobs stored and again with ``--jobs`` (default
100,000). Pages and counts come from indexes, so the figures should not grow with the
number of jobs. Prints a Markdown table; every process it started is stopped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from orchestrator.jobs.model import Submission
from orchestrator.ops.processes import deployment_env, gateway_server
from orchestrator.ops.redis_server import RedisServer, free_port
from orchestrator.store.connection import connect
from orchestrator.store.jobs import RedisStore
from orchestrator.store.tokens import TokenStore

PREFIX = "console-load"
CALLS = 50


def _requests() -> dict[str, tuple[str, dict[str, str]]]:
    today = datetime.now(UTC).date()
    month = {"since": (today - timedelta(days=29)).isoformat(), "until": today.isoformat()}
    return {
        "console page `GET /`": ("/", {}),
        "jobs, newest 50": ("/v1/jobs", {"limit": "50"}),
        "jobs of one tenant (tag index)": ("/v1/jobs", {"tag": "tenant=t3", "limit": "50"}),
        "jobs by a status none has (bounded scan)": ("/v1/jobs", {"status": "failed"}),
        "spend per day, 30 days, by tenant": ("/v1/costs/daily", month),
        "spend per day, 30 days, by tier": ("/v1/costs/daily", {**month, "by": "budget"}),
    }


def _seed(store: RedisStore, count: int) -> None:
    for i in range(count):
        store.create_job(Submission(input=f"job {i}", tags={"tenant": f"t{i % 10}"}))


def _measure(client: httpx.Client) -> dict[str, tuple[float, float]]:
    out = {}
    for name, (path, params) in _requests().items():
        times = []
        for _ in range(CALLS):
            t0 = time.perf_counter()
            client.get(path, params=params).raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        out[name] = (statistics.median(times), times[int(len(times) * 0.99) - 1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console_load")
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs for the second run")
    args = parser.parse_args(argv)
    redis = RedisServer(appendonly=False).start()
    gateway = None
    try:
        store = RedisStore(connect(redis.url), PREFIX)
        token, _ = TokenStore(store).create("read", None, "console-load")
        fast = {"GATEWAY_RATE_PER_SECOND": "100000", "GATEWAY_RATE_BURST": "100000"}
        env = deployment_env(redis.url, PREFIX, "http://127.0.0.1:9", "unused", **fast)
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            gateway = gateway_server(env, Path(tmp) / "gateway.log", port).start(timeout=60)
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                  headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            _seed(store, 1_000)
            small = _measure(client)
            t0 = time.perf_counter()
            _seed(store, args.jobs - 1_000)
            seeded = time.perf_counter() - t0
            big = _measure(client)
            client.close()
        print(f"seeded {args.jobs - 1_000:,} more jobs in {seeded:.0f} s\n")
        print(f"| request | 1,000 jobs p50 / p99 | {args.jobs:,} jobs p50 / p99 |")
        print("|---|---|---|")
        for name in small:
            (a, b), (c, d) = small[name], big[name]
            print(f"| {name} | {a:.1f} / {b:.1f} ms | {c:.1f} / {d:.1f} ms |")
    finally:
        if gateway is not None:
            gateway.stop()
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
