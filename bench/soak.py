"""``python -m bench soak [--jobs N] [--retention 10s] [--minutes M] [--no-compare]``:
jobs through a real Redis, a real ``orchestrator worker`` (Celery, queues api+streams,
threads x 8) and the emulator (10 updates a turn), with a short retention, at a steady
``--rate`` of jobs a second (at most ``--window`` unfinished at once), until ``N`` jobs
have run or ``M`` minutes have passed.

Reports ``used_memory`` sampled every 2 s (flat: max/min over the last half of the run
at most 1.2), the ledger against the emulator's own, to the micro-dollar, and bytes per
retained finished job: ``used_memory`` above the empty store divided by the finished
jobs whose records are kept at that moment, at the end of the run. With the comparison
on (the default), bytes per finished job of today's layout and of the older one
(``bench records``'s probe, retention seven days) are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from orchestrator.facade import Orchestrator
from orchestrator.ledger import FIELDS
from orchestrator.ops.processes import celery_worker
from orchestrator.ops.redis_server import RedisServer
from orchestrator.settings import load_settings
from orchestrator.store.retention import COMPACT_SERVER_CONFIG

from .harness import API_KEY, ROOT, Context
from .records import BEFORE_REV, BEFORE_SERVER_CONFIG, checkout, measure, untracked

SAMPLE_SECONDS = 2.0
#: Jobs of each layout the comparison measures (fewer lets fixed costs show per job).
COMPARE_JOBS = 300


def _states(orch: Orchestrator) -> dict[str, int]:
    return orch.store.job_states()


def run(
    ctx: Context, jobs: int, minutes: float, retention: str, window: int, rate: float
) -> dict[str, Any]:
    _, api_url = ctx.emulator("soak-emulator", turn_seconds=0.0, events=10)
    prefix = "s" + uuid.uuid4().hex[:8]
    env = ctx.env(api_url, prefix=prefix, RETENTION=retention, RESEND_AFTER_SECONDS="10")
    ctx._started(celery_worker(env, ctx.logs / "soak-worker.log", name="soak", cwd=ROOT))
    settings = load_settings(
        redis_url=ctx.redis_url, key_prefix=prefix, workers_api_url=api_url,
        workers_api_key=API_KEY, retention=retention,
    )  # fmt: skip
    r = ctx.redis()
    samples: list[tuple[float, int, int, int]] = []  # (t, used_memory, finished, retained)
    with Orchestrator(settings) as orch:
        empty = int(r.info("memory")["used_memory"])
        t0 = time.monotonic()
        deadline = t0 + minutes * 60
        submitted, next_sample = 0, t0
        while time.monotonic() < deadline:
            states = _states(orch)
            finished = states.get("completed", 0) + states.get("failed", 0)
            if finished >= jobs:
                break
            # A steady arrival rate (a backlog never beyond the window): the jobs kept
            # are then rate x retention, and memory flat, whatever the machine's pace.
            due = int((time.monotonic() - t0) * rate) + 1
            room = min(window - (submitted - finished), jobs - submitted, due - submitted)
            for _ in range(max(room, 0)):
                orch.submit(f"soak job {submitted}", budget="low", tags={"tenant": "soak"})
                submitted += 1
            now = time.monotonic()
            if now >= next_sample:
                used = int(r.info("memory")["used_memory"])
                samples.append((now - t0, used, finished, orch.store.retained()))
                next_sample = now + SAMPLE_SECONDS
            if room <= 0:
                time.sleep(0.05)
        elapsed = time.monotonic() - t0
        wait_until = time.monotonic() + 120
        while time.monotonic() < wait_until:
            states = _states(orch)
            if states.get("completed", 0) + states.get("failed", 0) >= submitted:
                break
            time.sleep(0.2)
        states = _states(orch)
        retained_now = orch.store.retained()
        used_now = int(r.info("memory")["used_memory"])
        ours = orch.costs()["total"]
    with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
        truth = http.get(f"{api_url}/_emulator/ledger").json()
    r.close()
    half = [used for t, used, _, _ in samples if t >= elapsed / 2] or [0]
    money = [f for f in FIELDS if f.endswith("_micro") or f.endswith("_tokens")]
    mismatched = {f: (ours.get(f), truth.get(f)) for f in money if ours.get(f) != truth.get(f)}
    return {
        "submitted": submitted,
        "completed": states.get("completed", 0),
        "failed": states.get("failed", 0),
        "seconds": round(elapsed, 1),
        "jobs_per_second": round(submitted / elapsed, 1) if elapsed else 0,
        "used_memory_empty": empty,
        "used_memory_last_half_max": max(half),
        "used_memory_last_half_min": min(half),
        "flat_ratio": round(max(half) / min(half), 3) if min(half) else None,
        "retained_at_end": retained_now,
        "bytes_per_retained_job": (
            round((used_now - empty) / retained_now) if retained_now else None
        ),
        "ledger_turns": ours.get("turns"),
        "emulator_turns": truth.get("turns_completed"),
        "ledger_mismatches": mismatched,
        "samples": [
            {"t": round(t, 1), "used_memory": u, "finished": f, "retained": k}
            for t, u, f, k in samples
        ],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--retention", default="10s")
    parser.add_argument("--window", type=int, default=200, help="most jobs unfinished at once")
    parser.add_argument("--rate", type=float, default=50.0, help="jobs submitted a second")
    parser.add_argument("--no-compare", action="store_true", help="skip the layout comparison")
    parser.add_argument("--out", type=Path, default=None, help="also write the report (JSON)")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    print(f"bench soak: logs in {logs}", flush=True)
    report: dict[str, Any] = {"command": "python -m bench soak " + " ".join(argv)}
    with RedisServer(appendonly=False) as server:
        ctx = Context(server.url, False, logs, logs, reps=1)
        untracked(ctx)
        try:
            if not args.no_compare:
                before = checkout(BEFORE_REV, logs / "before")
                for layout, code, config in (("before", before, BEFORE_SERVER_CONFIG),
                                             ("after", ROOT, COMPACT_SERVER_CONFIG)):  # fmt: skip
                    m = measure(ctx, code, 10, COMPARE_JOBS, False, config)
                    clients = m.get("memory_stats_delta_per_job", {}).get("clients.normal", 0)
                    report[f"{layout}_bytes_per_finished_job"] = m["used_memory_delta_per_job"]
                    report[f"{layout}_records_per_finished_job"] = m["records_per_job"]
                    report[f"{layout}_clients_per_finished_job"] = clients
                ctx.flush()
            report["soak"] = run(
                ctx, args.jobs, args.minutes, args.retention, args.window, args.rate
            )
        finally:
            ctx.stop_all()
    soak = report["soak"]
    print(json.dumps({k: v for k, v in soak.items() if k != "samples"}, indent=2))
    trace = [s["used_memory"] for s in soak["samples"]]
    if trace:
        step = max(1, len(trace) // 20)
        print("used_memory over time (MB):",
              " ".join(f"{u / 1e6:.1f}" for u in trace[::step]))  # fmt: skip
    if "before_bytes_per_finished_job" in report:
        b, a = report["before_bytes_per_finished_job"], report["after_bytes_per_finished_job"]
        print(f"bytes per finished job (probe, {COMPARE_JOBS} jobs, 10 updates): before {b},"
              f" after {a}"
              f" ({a / b:.2f} of before)")  # fmt: skip
        rb, ra = report["before_records_per_finished_job"], report["after_records_per_finished_job"]
        cb, ca = report["before_clients_per_finished_job"], report["after_clients_per_finished_job"]
        print(f"  records (MEMORY USAGE): before {rb}, after {ra} ({ra / rb:.2f});"
              f" less the connections' buffers (before {cb}, after {ca}):"
              f" before {b - cb}, after {a - ca} ({(a - ca) / (b - cb):.2f})")  # fmt: skip
    if soak["bytes_per_retained_job"] is not None:
        print(f"bytes per retained finished job in the soak: {soak['bytes_per_retained_job']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    ok = (soak["flat_ratio"] or 99) <= 1.2 and not soak["ledger_mismatches"]
    print("flat and exact" if ok else "NOT flat or NOT exact", flush=True)
    return 0 if ok else 1
