"""Memory: resident set size of idle processes, each started fresh per repetition.

Ours: an API worker (``orchestrator worker --queues api``, threads x 8), a stream
worker (``--queues streams``: the pool plus the asyncio follower thread) and the beat
(``orchestrator beat``). For reference, a bare Celery worker on the same pool and a
redbeat beat (``celery beat -S redbeat.RedBeatScheduler``), both on the bare app.
RSS is summed over each process group, read after the process has idled a while.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .dispatch import BARE_ARGS
from .harness import Context, Proc, Result, rss_mb

IDLE_SECONDS = 5.0


def group_rss(pgid: int) -> float:
    """RSS (MiB) of every process in the process group ``pgid``."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                total += rss_mb(entry.name)
        except (OSError, ValueError):
            continue
    return total


def scenario(ctx: Context) -> Result:
    res = Result(
        "memory",
        "Memory: RSS of idle processes",
        baseline="bare Celery worker on the same pool; a celery-redbeat beat",
        params={"idle_seconds": IDLE_SECONDS, "pool": "threads x 8"},
    )  # fmt: skip
    _, url = ctx.emulator("memory-emulator")
    env = ctx.env(url, prefix="bm")
    py = sys.executable
    kinds: dict[str, tuple[list[str], str]] = {
        "api worker": (_worker(py, "api"), "ready."),
        "stream worker": (_worker(py, "streams"), "ready."),
        "beat": ([py, "-m", "orchestrator", "beat", "--loglevel", "INFO"], "beat scheduler ready"),
        "bare worker": ([*BARE_ARGS[:-2], "-n", "mem-bare@%h"], "ready."),
        "redbeat beat": ([py, "-m", "celery", "-A", "bench.bare", "beat",
                          "-S", "redbeat.RedBeatScheduler", "--loglevel", "INFO"],
                         "beat: Starting"),
    }  # fmt: skip
    figures: dict[str, list[float]] = {k: [] for k in kinds}
    for rep in range(ctx.reps):
        procs: dict[str, Proc] = {}
        try:
            for kind, (args, ready) in kinds.items():
                name = f"memory-{kind.replace(' ', '-')}-{rep}"
                procs[kind] = ctx.spawn(name, args, env, ready=ready)
            time.sleep(IDLE_SECONDS)
            for kind, proc in procs.items():
                figures[kind].append(group_rss(proc.pid))
        finally:
            for proc in procs.values():
                ctx.stop(proc)
    res.add("idle API worker", "MiB", figures["api worker"], figures["bare worker"])
    res.add("idle stream worker", "MiB", figures["stream worker"], figures["bare worker"])
    res.add("idle beat", "MiB", figures["beat"], figures["redbeat beat"])
    return res


def _worker(py: str, queues: str) -> list[str]:
    return [
        py, "-m", "orchestrator", "worker", "--queues", queues, "--pool", "threads",
        "--concurrency", "8", "--hostname", f"mem-{queues}@%h", "--loglevel", "INFO",
    ]  # fmt: skip
