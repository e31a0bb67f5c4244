"""The measuring side of ``python -m bench records`` and ``soak``, run as a script
(``python bench/records_probe.py ...``) so that it imports the ``orchestrator`` of
whatever tree ``PYTHONPATH`` names: today's layout and an older one are measured by the
very same code. It uses only what both layouts have: ``Orchestrator.submit``/``get``,
and Redis itself (SCAN, MEMORY USAGE, INFO).

Prints one JSON object: bytes per job by record kind (MEMORY USAGE summed over the
kind's keys, divided by the jobs), and the ``used_memory`` delta per job.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

import redis

#: Key (after the prefix) -> record kind; the first match wins.
KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("job history", re.compile(r"job:[^:]+:history")),
    ("job files", re.compile(r"job:[^:]+:files")),
    ("job", re.compile(r"job:[^:]+")),
    ("worker", re.compile(r"worker:[^:]+")),
    ("updates", re.compile(r"updates:.+")),
    ("ledger worker row", re.compile(r"ledger:worker:.+")),
    ("ledger turn records", re.compile(r"ledger-turn:.+|ledger:turns")),
    ("idempotency", re.compile(r"idem:.+")),
    ("rollups", re.compile(r"ledger.*")),
    ("broker", re.compile(r"broker:.*")),
]


#: A job's input as a backend would write one (longer than 64 bytes, as most are: the
#: job hash is then a hash table in either layout, never a listpack).
INPUT = (
    "Summarise today's support tickets for the billing team, group them by product "
    "and list the three most urgent ones with their ticket ids"
)


def kind_of(rest: str) -> str:
    for kind, pattern in KINDS:
        if pattern.fullmatch(rest):
            return kind
    return "indexes and other"


def usage_by_kind(r: redis.Redis, prefix: str) -> dict[str, int]:
    """MEMORY USAGE (SAMPLES 0: every element) summed per record kind."""
    out: dict[str, int] = {}
    names = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        with r.pipeline(transaction=False) as pipe:
            for name in chunk:
                pipe.memory_usage(name, samples=0)
            sizes = pipe.execute()
        for name, size in zip(chunk, sizes, strict=True):
            kind = kind_of(str(name)[len(prefix) + 1 :])
            out[kind] = out.get(kind, 0) + int(size or 0)
    return out


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def memory_stats(r: redis.Redis) -> dict[str, int]:
    """MEMORY STATS' top-level figures (bytes): where ``used_memory`` went (the keys'
    dataset, client buffers, script caches)."""
    return {str(k): int(v) for k, v in r.memory_stats().items() if isinstance(v, int)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--live", action="store_true", help="measure while the turns run")
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()

    from orchestrator.facade import Orchestrator
    from orchestrator.settings import load_settings

    settings = load_settings(
        redis_url=args.redis_url, key_prefix=args.prefix, workers_api_url=args.api_url,
        workers_api_key=args.api_key,
    )  # fmt: skip
    r = redis.Redis.from_url(args.redis_url, decode_responses=True)
    # Redis trims the buffers of a client idle for 2 s: the worker's connections, busy
    # while it started, are measured at rest, as they are after the jobs.
    time.sleep(3.0)
    before = used_memory(r)
    stats_before = memory_stats(r)
    with Orchestrator(settings) as orch:
        ids = [orch.submit(f"{INPUT} ({i})", tags={"tenant": "probe"}).id for i in range(args.jobs)]
        want = ("running",) if args.live else ("completed",)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            states = [orch.get(i).status for i in ids]
            if all(s in want for s in states):
                break
            time.sleep(0.2)
        else:
            print(json.dumps({"error": f"jobs not {want[0]} in time"}))
            return 1
        time.sleep(args.settle)  # live: updates accumulate; finished: files and ledger
        after = used_memory(r)
        stats_after = memory_stats(r)
        kinds = usage_by_kind(r, args.prefix)
    per_job = {k: round(v / args.jobs) for k, v in sorted(kinds.items())}
    records = sum(v for k, v in per_job.items() if k not in ("broker", "rollups"))
    delta = round((after - before) / args.jobs)
    stats = {k: round((stats_after[k] - v) / args.jobs) for k, v in stats_before.items()
             if k in ("dataset.bytes", "clients.normal", "lua.caches")}  # fmt: skip
    print(json.dumps({
        "jobs": args.jobs, "live": args.live, "per_job": per_job,
        "records_per_job": records, "used_memory_delta_per_job": delta,
        "memory_stats_delta_per_job": stats,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
