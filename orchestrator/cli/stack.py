"""``orchestrator up`` and ``orchestrator demo``: the whole stack on one machine."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.ops.stack import Stack
from orchestrator.settings import load_settings


def register(sub: Any) -> None:
    up = sub.add_parser("up", help="run the whole stack in the foreground (Ctrl-C stops it)")
    _common(up)
    up.add_argument("--demo", action="store_true", help="also run the demo once it is up")
    up.set_defaults(func=run_up)
    demo = sub.add_parser("demo", help="start the stack, run a few jobs, show costs, stop")
    _common(demo)
    demo.add_argument("--jobs", type=int, default=3)
    demo.set_defaults(func=run_demo)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("var/stack"))
    parser.add_argument("--no-flower", action="store_true")
    parser.add_argument("--no-beat", action="store_true")
    parser.add_argument("--flower-port", type=int, default=5555)
    parser.add_argument("--no-gateway", action="store_true", help="without the HTTP API")
    parser.add_argument("--gateway-port", type=int, default=0, help="default: a free port")


def _stack(args: argparse.Namespace) -> Stack:
    return Stack(
        load_settings(),
        args.workdir.resolve(),
        with_beat=not args.no_beat,
        with_flower=not args.no_flower,
        flower_port=args.flower_port,
        with_gateway=not args.no_gateway,
        gateway_port=args.gateway_port,
    )


def _on_term(*_: object) -> None:
    raise KeyboardInterrupt


def run_up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    signal.signal(signal.SIGTERM, _on_term)
    try:
        stack.start()
        print("up        every part is ready; Ctrl-C stops them all", flush=True)
        if args.demo:
            demo(stack, jobs=3)
        last = ""
        while True:
            report = stack.health()
            line = "health    " + "  ".join(f"{k}={v}" for k, v in report.items())
            if line != last:
                print(line, flush=True)
                last = line
            time.sleep(2)
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


def run_demo(args: argparse.Namespace) -> int:
    stack = _stack(args)
    signal.signal(signal.SIGTERM, _on_term)
    try:
        stack.start()
        demo(stack, jobs=args.jobs)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        stack.stop()


def demo(stack: Stack, *, jobs: int) -> None:
    """Submit a few jobs (and a schedule when beat runs), tail one, print costs."""
    from orchestrator.facade import Orchestrator
    from orchestrator.money import format_usd

    settings = load_settings(
        redis_url=stack.env["REDIS_URL"],
        workers_api_url=stack.env["WORKERS_API_URL"],
        workers_api_key=stack.env["WORKERS_API_KEY"],
    )
    with Orchestrator(settings) as orch:
        submitted = [
            orch.submit(
                f"Demo task {i + 1}: summarise the weekly report",
                budget=("low", "standard", "high")[i % 3],
                tags={"tenant": ("acme", "globex")[i % 2]},
                fetch_files=(i == 0),
            )
            for i in range(jobs)
        ]
        for job in submitted:
            print(f"submitted {job.id}  budget={job.budget}  tags={job.tags}", flush=True)
        first = submitted[0]
        print(f"tail      live updates of {first.id}:", flush=True)
        for index, data in orch.updates(first.id, timeout=120):
            kind = data.get("type") if isinstance(data, dict) else "?"
            print(f"  update {index:>3}  {kind}", flush=True)
        for job in submitted:
            done = orch.wait(job.id, timeout=120)
            print(f"finished  {done.id}  {done.status}  worker={done.worker_id}", flush=True)
        report = orch.costs(by="tag")
        print("\ncosts by tag")
        print(f"  {'tag':<16} {'turns':>5} {'cost':>14} {'tokens':>9}")
        for row in report["rows"]:
            cost = format_usd(row["usage_cost_micro"])
            print(f"  {row['key']:<16} {row['turns']:>5} {cost:>14} {row['total_tokens']:>9}")
        total = report["total"]
        print(
            f"  {'total':<16} {total['turns']:>5} {format_usd(total['usage_cost_micro']):>14}"
            f" {total['total_tokens']:>9}"
        )
    sys.stdout.flush()
