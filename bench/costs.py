"""Cost report: ``Orchestrator.costs(by=...)`` latency as the ledger grows.

First 10,000 turns are posted for real (``RedisStore.post_turn``, the POST_TURN script
the finalize step runs) over 30 UTC days, 50 tenant tags and the four budget tiers,
one worker per turn; the report is timed. Then the ledger is grown to 1,000,000 turns
by writing what 990,000 more posts would leave, directly in pipelines: the same day,
tag and budget rollups incremented, 99,000 more worker rows (ten turns each), 990,000
more ``ledger:turns`` records. The report is timed again: the same row count, a
hundred times the turns. That the rows are exactly what POST_TURN writes is checked
against the real posts (row count and turn totals).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.jobs.model import Job
from orchestrator.ledger import FIELDS
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.store.keys import Keys
from orchestrator.wire.models import Worker

from .harness import Context, Result, percentile

PREFIX = "bc"
DAYS, TAGS, BUDGETS = 30, 50, ("low", "standard", "high", "unlimited")
CALLS = 50


def _turn(i: int) -> tuple[Job, Worker, int]:
    """The i-th real turn: its job, its worker's cumulative snapshot, when it was posted."""
    now = int(time.time() * 1000)
    job = Job(
        id=f"job_bench{i:08d}", kind="create", input="x", budget=BUDGETS[i % 4],
        tags={"tenant": f"t{i % TAGS}"}, status="running", created_at=now,
    )  # fmt: skip
    cost = 1000 + i % 997
    worker = Worker.model_validate(
        {
            "id": f"wrk_bench{i:08d}",
            "status": "completed",
            "costs": {
                "internal_cost_usd": f"{cost / 1e6:.6f}",
                "model_cost_usd": f"{2 * cost / 1e6:.6f}",
                "sandbox_cost_usd": "0.000100",
                "tool_cost_usd": "0.000050",
            },
            "usage": {
                "cache_read_tokens": 10, "cache_write_tokens": 5, "cost_usd": "0.003",
                "input_tokens": 100 + i % 50, "output_tokens": 200, "reasoning_tokens": 30,
                "steps": 3, "total_tokens": 330 + i % 50, "credits": 1,
            },
        }
    )  # fmt: skip
    return job, worker, now - (i % DAYS) * 86_400_000


def post_real(store: RedisStore, n: int) -> float:
    """Post n turns through POST_TURN; returns turns/s."""
    t0 = time.perf_counter()
    for i in range(n):
        job, worker, at = _turn(i)
        store.post_turn(job, worker, at)
    return n / (time.perf_counter() - t0)


def grow(store: RedisStore, start: int, total: int) -> None:
    """Add what posts ``start..total-1`` would leave (10 turns per worker row)."""
    keys: Keys = store.keys
    n = total - start
    per_row = {f: 1000 for f in FIELDS}
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=d)).isoformat() for d in range(DAYS)]
    with store.r.pipeline(transaction=False) as pipe:
        groups = [("day", days), ("tag", [f"tenant=t{t}" for t in range(TAGS)]),
                  ("budget", list(BUDGETS))]  # fmt: skip
        for dim, values in groups:
            share = n // len(values)
            for value in values:
                for f, v in per_row.items():
                    pipe.hincrby(keys.ledger(dim, value), f, v * share)
                pipe.hincrby(keys.ledger(dim, value), "turns", share)
                pipe.sadd(keys.ledger_index(dim), value)
        for f, v in per_row.items():
            pipe.hincrby(keys.ledger_total, f, v * n)
        pipe.hincrby(keys.ledger_total, "turns", n)
        pipe.execute()
    record = json.dumps(per_row)
    for base in range(start, total, 10_000):
        with store.r.pipeline(transaction=False) as pipe:
            ids = range(base, min(total, base + 10_000))
            pipe.mset({keys.ledger_turn(f"job_synth{i:08d}"): record for i in ids})
            workers = [f"wrk_synth{i:08d}" for i in ids if i % 10 == 0]
            for wid in workers:
                pipe.hset(keys.ledger("worker", wid), mapping={**per_row, "turns": 10})
            if workers:
                pipe.sadd(keys.ledger_index("worker"), *workers)
            pipe.execute()


def timed(store: RedisStore, by: str) -> tuple[float, float]:
    """p50 and p99 (ms) of ``costs(by)`` over CALLS calls (3 by worker: it is slow)."""
    out = []
    for _ in range(3 if by == "worker" else CALLS):
        t = time.perf_counter()
        report = store.costs(by)
        out.append((time.perf_counter() - t) * 1000)
    assert report["rows"], f"no rows by {by}"
    return percentile(out, 50), percentile(out, 99)


def measure(store: RedisStore, reps: int, dims: tuple[str, ...]) -> dict[str, Any]:
    got: dict[str, Any] = {d: {"p50": [], "p99": []} for d in dims}
    for _ in range(reps):
        for d in dims:
            p50, p99 = timed(store, d)
            got[d]["p50"].append(p50)
            got[d]["p99"].append(p99)
    return got


def scenario(ctx: Context) -> Result:
    real, total = ctx.size(10_000, 1_000), ctx.size(1_000_000, 100_000)
    res = Result(
        "costs",
        f"Cost report latency: {real:,} real turns, then {total:,} turns in the ledger",
        params={"real_turns": real, "total_turns": total, "days": DAYS, "tags": TAGS,
                "calls_per_rep": CALLS, "client": "RedisStore.costs, sync redis-py"},
    )  # fmt: skip
    store = RedisStore(connect(ctx.redis_url), PREFIX)
    rate = post_real(store, real)
    dims = ("day", "tag", "budget", "worker")
    small = measure(store, ctx.reps, dims)
    rows_small = {d: len(store.costs(d)["rows"]) for d in dims}
    turns_small = store.costs("day")["total"]["turns"]
    if turns_small != real or rows_small["day"] != DAYS or rows_small["tag"] != TAGS:
        raise RuntimeError(f"unexpected ledger after real posts: {rows_small}, {turns_small}")
    t0 = time.perf_counter()
    grow(store, real, total)
    grow_s = time.perf_counter() - t0
    big = measure(store, ctx.reps, dims)
    report = store.costs("day")
    if report["total"]["turns"] != total or len(report["rows"]) != DAYS:
        raise RuntimeError("the grown ledger does not add up")
    used = store.r.info("memory")["used_memory"] / 2**20
    for d in ("day", "tag"):
        res.add(f"costs(by={d}) p50 @ {real:,} real turns", "ms", small[d]["p50"],
                goal="≤ 20 ms").met = max(small[d]["p50"]) <= 20  # fmt: skip
        m = res.add(f"costs(by={d}) p50 @ {total:,} turns (vs {real:,})", "ms",
                    big[d]["p50"], small[d]["p50"], goal="≤ 20 ms, flat (≤ 1.5x)")  # fmt: skip
        m.met = max(big[d]["p50"]) <= 20 and m.ratio is not None and m.ratio <= 1.5
        res.add(f"costs(by={d}) p99 @ {total:,} turns (vs {real:,})", "ms",
                big[d]["p99"], small[d]["p99"])  # fmt: skip
    res.add(f"costs(by=budget) p50 @ {total:,} turns (vs {real:,})", "ms",
            big["budget"]["p50"], small["budget"]["p50"])  # fmt: skip
    res.add(f"costs(by=worker) p50 @ {total:,} turns (vs {real:,})", "ms",
            big["worker"]["p50"], small["worker"]["p50"],
            note="one row per worker: O(workers) by design, grows with workers")  # fmt: skip
    res.add("POST_TURN rate (real posts)", "turns/s", [rate])
    res.notes.append(
        f"rows at {real:,}: {rows_small}; at {total:,}: day {DAYS}, tag {TAGS}, "
        f"budget 4, worker {len(store.r.smembers(store.keys.ledger_index('worker'))):,}"
    )
    res.notes.append(f"ledger grown in {grow_s:.1f} s; Redis used memory {used:,.0f} MiB")
    store.r.close()
    return res
