"""``python -m bench records [--jobs N] [--before-rev REV]``: Redis bytes per job, by
record kind, for live and finished jobs at 10 and 500 updates a turn, in today's layout
and in an older one (``REV``, default the last commit before retention), measured by the
same probe (``bench/records_probe.py``) on one real Redis, real Celery and the emulator.

Each measurement is its own deployment (key prefix, emulator, ``orchestrator worker``
run from the layout's own tree) on a shared embedded Redis: ``N`` jobs are submitted,
then measured once all run (live: half-way through a 20 s turn) or all completed
(finished, retained: the default retention of seven days). Prints a Markdown table:
bytes per job by record kind (MEMORY USAGE), their sum ("records"), the ``used_memory``
delta per job, and the deltas of MEMORY STATS' ``clients.normal`` (the connections'
buffers: they swing with the worker's traffic by up to ~2 KB a job at 100 jobs, a cost of
the deployment, not of its jobs) and ``dataset.bytes`` (``used_memory`` less Redis's
own overheads: client buffers, script caches, the keyspace's hash tables); then the
after/before ratios. The server's
per-command latency histograms are off (:func:`untracked`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tarfile
import tempfile
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import redis

from orchestrator.ops.processes import celery_worker
from orchestrator.ops.redis_server import RedisServer
from orchestrator.store.retention import COMPACT_SERVER_CONFIG

from .harness import API_KEY, ROOT, Context

#: The last commit of main before retention: the "before" layout ...
BEFORE_REV = "a536ca2"
#: ... and the server settings it ran with (Redis's defaults).
BEFORE_SERVER_CONFIG = {"hash-max-ziplist-value": "64"}
LIVE_TURN_SECONDS = 20.0


def untracked(ctx: Context) -> None:
    """Turn off Redis 7's per-command latency histograms: the first use of a command
    allocates one (~28 KB), which at 100 jobs would add ~280 B to each job of whichever
    layout first used the command, not to any record (older servers lack the setting)."""
    with ctx.redis() as r, contextlib.suppress(redis.ResponseError):
        r.config_set("latency-tracking", "no")


def checkout(rev: str, into: Path) -> Path:
    """The tree of ``rev`` (git archive) under ``into``."""
    blob = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(
    ctx: Context, code: Path, events: int, jobs: int, live: bool, server: dict[str, str]
) -> dict[str, Any]:
    """One deployment of the tree ``code`` (the Redis set to ``server`` first): its jobs
    measured by the probe."""
    with ctx.redis() as r:
        for name, value in server.items():
            r.config_set(name, value)
    name = f"records-{uuid.uuid4().hex[:6]}"
    turn = LIVE_TURN_SECONDS if live else 0.0
    _, api_url = ctx.emulator(f"{name}-emulator", turn_seconds=turn, events=events)
    prefix = "r" + uuid.uuid4().hex[:8]
    env = ctx.env(api_url, prefix=prefix)
    env["PYTHONPATH"] = str(code)
    worker = ctx._started(
        celery_worker(env, ctx.logs / f"{name}-worker.log", name=name, cwd=code)
    )  # fmt: skip
    try:
        args = [sys.executable, str(ROOT / "bench" / "records_probe.py"),
                "--redis-url", ctx.redis_url, "--prefix", prefix, "--api-url", api_url,
                "--api-key", API_KEY, "--jobs", str(jobs),
                "--settle", str(turn / 2 if live else 3.0)]  # fmt: skip
        if live:
            args.append("--live")
        done = subprocess.run(
            args, env=env, cwd=code, capture_output=True, text=True, timeout=900, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"probe failed: {done.stdout[-500:]} {done.stderr[-2000:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        ctx.stop_all()
        del worker


def table(rows: list[tuple[str, int, bool, dict[str, Any]]]) -> str:
    kinds = sorted({k for *_, m in rows for k in m["per_job"]})
    head = ["layout", "updates", "state", *kinds, "records", "used_memory Δ", "clients Δ",
            "dataset Δ"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for layout, events, live, m in rows:
        cells = [layout, str(events), "live" if live else "finished"]
        cells += [str(m["per_job"].get(k, 0)) for k in kinds]
        cells += [str(m["records_per_job"]), str(m["used_memory_delta_per_job"])]
        stats = m.get("memory_stats_delta_per_job", {})
        cells += [str(stats.get("clients.normal", "")), str(stats.get("dataset.bytes", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(rows: list[tuple[str, int, bool, dict[str, Any]]]) -> str:
    """after / before of each pair of rows, by figure."""
    found = {(layout, events, live): m for layout, events, live, m in rows}
    lines = []
    for (layout, events, live), after in found.items():
        before = found.get(("before", events, live))
        if layout != "after" or before is None:
            continue

        def ratio(figure: Any, b: Any = before, a: Any = after) -> str:
            return f"{figure(a) / figure(b):.3f}" if figure(b) else "-"

        def less_clients(m: dict[str, Any]) -> int:
            clients = m.get("memory_stats_delta_per_job", {}).get("clients.normal", 0)
            return int(m["used_memory_delta_per_job"]) - int(clients)

        lines.append(
            f"after/before, {events} updates {'live' if live else 'finished'}: records "
            f"{ratio(lambda m: m['records_per_job'])}, used_memory Δ "
            f"{ratio(lambda m: m['used_memory_delta_per_job'])}, used_memory Δ less clients "
            f"{ratio(less_clients)}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench records", description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--before-rev", default=BEFORE_REV)
    parser.add_argument("--events", default="10,500", help="updates a turn, comma-separated")
    parser.add_argument("--no-live", action="store_true", help="finished jobs only")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="bench-records-"))
    print(f"bench records: logs in {logs}", flush=True)
    before = checkout(args.before_rev, logs / "before")
    rows: list[tuple[str, int, bool, dict[str, Any]]] = []
    with RedisServer(appendonly=False) as server:
        ctx = Context(server.url, False, logs, logs, reps=1)
        untracked(ctx)
        try:
            for events in (int(e) for e in args.events.split(",")):
                for live in (False,) if args.no_live else (False, True):
                    for layout, code, server in (
                        ("before", before, BEFORE_SERVER_CONFIG),
                        ("after", ROOT, COMPACT_SERVER_CONFIG),
                    ):
                        m = measure(ctx, code, events, args.jobs, live, server)
                        rows.append((layout, events, live, m))
                        print(f"  {layout} {events} updates {'live' if live else 'finished'}: "
                              f"{m['records_per_job']} B/job records, "
                              f"{m['used_memory_delta_per_job']} B/job used_memory "
                              f"(MEMORY STATS: {m.get('memory_stats_delta_per_job')})",
                              flush=True)  # fmt: skip
        finally:
            ctx.stop_all()
    print(table(rows))
    print(ratios(rows))
    print(f"command: python -m bench records {' '.join(argv)}".rstrip())
    return 0
