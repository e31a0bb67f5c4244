"""``orchestrator up`` and ``orchestrator demo``: the whole stack on one machine."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.cli import output
from orchestrator.cli.output import json_option
from orchestrator.ops.stack import Stack
from orchestrator.settings import load_settings


def register(sub: Any) -> None:
    up = sub.add_parser("up", help="run the whole stack in the foreground (Ctrl-C stops it)")
    _common(up)
    up.add_argument("--demo", action="store_true", help="also run the demo once it is up")
    up.set_defaults(func=run_up)
    demo = sub.add_parser("demo", help="start the stack, run a few jobs, show costs, stop")
    _common(demo)
    demo.add_argument("--jobs", type=int, default=3, help="how many jobs to submit (default 3)")
    demo.set_defaults(func=run_demo)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir", type=Path, default=Path("var/stack"),
        help="logs, Redis data and stack.env go here (default var/stack)",
    )  # fmt: skip
    parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
    parser.add_argument("--no-beat", action="store_true", help="do not start beat")
    parser.add_argument(
        "--no-metrics", action="store_true", help="do not start the Prometheus exporter"
    )
    parser.add_argument(
        "--flower-port", type=int, default=None,
        help="Flower's TCP port (default 5555, or a free one when 5555 is taken)",
    )  # fmt: skip
    parser.add_argument("--no-gateway", action="store_true", help="do not start the HTTP API")
    parser.add_argument(
        "--gateway-port", type=int, default=0, help="the HTTP API's TCP port (default: a free one)"
    )
    json_option(parser, 'one JSON object per line: {"part", "message", ...}')


def _stack(args: argparse.Namespace) -> Stack:
    return Stack(
        load_settings(),
        args.workdir.resolve(),
        with_beat=not args.no_beat,
        with_flower=not args.no_flower,
        with_metrics=not args.no_metrics,
        flower_port=args.flower_port,
        with_gateway=not args.no_gateway,
        gateway_port=args.gateway_port,
        json_lines=args.json,
    )


def _on_term(*_: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the stack, even when this process was started with
    SIGINT ignored (a non-interactive shell's ``cmd &`` does that, and Python then
    installs no handler of its own)."""
    signal.signal(signal.SIGINT, _on_term)
    signal.signal(signal.SIGTERM, _on_term)


class _Say:
    """The stack's voice: ``part      message`` lines, or JSON objects with ``--json``."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, part: str, message: str, **data: Any) -> None:
        if self.as_json:
            output.emit_line({"part": part, "message": message, **data})
        else:
            print(f"{part:<9} {message}", flush=True)


def run_up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    say = _Say(args.json)
    _stop_on_signals()
    try:
        stack.start()
        say("up", "every part is ready; Ctrl-C stops them all")
        if args.demo:
            demo(stack, jobs=3, say=say)
        last: dict[str, str] = {}
        while True:
            report = stack.health()
            if report != last:
                say("health", "  ".join(f"{k}={v}" for k, v in report.items()), parts=report)
                last = report
            time.sleep(2)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(stack)


def run_demo(args: argparse.Namespace) -> int:
    stack = _stack(args)
    stack.fresh_data = True  # each run shows its own jobs and costs
    stack.shell_file = False  # it stops in a minute: nothing to point another shell at
    _stop_on_signals()
    try:
        stack.start()
        demo(stack, jobs=args.jobs, say=_Say(args.json))
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        _stop(stack)


def _stop(stack: Stack) -> None:
    # A second Ctrl-C must not cut the stop short and leave children behind; the stop
    # is bounded (SIGKILL after a grace period).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stack.stop()


def demo(stack: Stack, *, jobs: int, say: _Say | None = None) -> None:
    """Submit a few jobs (and a schedule when beat runs), tail one, print costs."""
    from orchestrator.cli import tail
    from orchestrator.facade import Orchestrator
    from orchestrator.ledger import total_cost_micro

    say = say or _Say(False)
    settings = load_settings(
        redis_url=stack.env["REDIS_URL"],
        workers_api_url=stack.env["WORKERS_API_URL"],
        workers_api_key=stack.env["WORKERS_API_KEY"],
        key_prefix=stack.env.get("KEY_PREFIX") or stack.settings.key_prefix,
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
            say("submitted", f"{job.id}  budget={job.budget}  tags={job.tags}", job=job.id)
        first = submitted[0]
        say("tail", f"live updates of {first.id}:", job=first.id)
        if say.as_json:
            for index, data in orch.updates(first.id, timeout=120):
                output.emit_line({"part": "update", "index": index, "data": data})
        else:
            transcript = tail.Transcript()
            for index, data in orch.updates(first.id, timeout=120):
                transcript.feed(index, data)
            done = orch.get(first.id)
            transcript.close(
                tail.summary(done.id, done.status, transcript.updates, orch.cost(done.id))
            )
        for job in submitted:
            done = orch.wait(job.id, timeout=120)
            say(
                "finished", f"{done.id}  {done.status}  worker={done.worker_id}",
                job=done.id, status=done.status,
            )  # fmt: skip
        report = orch.costs(by="tag")
        if say.as_json:
            output.emit_line({"part": "costs", "report": report})
        else:
            rows = [
                [row["key"], str(row["turns"]), output.usd(total_cost_micro(row)),
                 str(row["total_tokens"])]
                for row in report["rows"]
            ]  # fmt: skip
            total = report["total"]
            footer = [
                "total", str(total["turns"]), output.usd(total_cost_micro(total)),
                str(total["total_tokens"]),
            ]  # fmt: skip
            print("\ncosts by tag")
            output.table(["tag", "turns", "usd", "tokens"], rows, right=(1, 2, 3), footer=footer)
    sys.stdout.flush()
