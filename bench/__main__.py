"""``python -m bench [scenario ...] [--quick] [--out DIR]``: run the benchmarks.
``python -m bench records ...`` and ``python -m bench soak ...`` are commands of their
own (Redis bytes per job by layout; memory over a long run with retention).

Starts its own Redis server, emulator and Celery processes, runs each scenario with its
baseline in the same run, and writes ``RESULTS.md`` and ``RESULTS.json`` (to ``bench/``
unless ``--out`` says otherwise). ``--quick`` runs smoke sizes (under 3 minutes); the
full run takes under 30. Every process started is stopped, whatever happens.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from orchestrator.ops.redis_server import RedisServer

from . import report
from .harness import Context, Result, machine

# scenario -> (module of bench, function); imported when run.
SCENARIOS: dict[str, tuple[str, str]] = {
    "dispatch": ("dispatch", "dispatch"),
    "throughput": ("dispatch", "throughput"),
    "relay": ("relay", "relay"),
    "streams": ("streams", "scenario"),
    "beat": ("beat_scale", "scenario"),
    "costs": ("costs", "scenario"),
    "first_update": ("first_update", "scenario"),
    "overhead": ("overhead", "overhead"),
    "long_turns": ("overhead", "long_turns"),
    "turns_60s": ("overhead", "turns_60s"),
    "memory": ("memory", "scenario"),
    "gateway": ("gateway", "scenario"),
    "gateway_first": ("gateway_first", "scenario"),
    "topologies": ("topologies", "scenario"),
    "spread": ("spread", "scenario"),
}


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


#: Subcommands with their own arguments: name -> module of bench (its ``main(argv)``).
COMMANDS = {"records": "records", "soak": "soak"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        command = importlib.import_module(f"bench.{COMMANDS[argv[0]]}")
        return int(command.main(argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="scenario",
                        help=f"any of {', '.join(SCENARIOS)} (default: all)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke sizes (under 3 minutes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent,
                        help="where RESULTS.md/RESULTS.json go (default: bench/)")  # fmt: skip
    parser.add_argument("--reps", type=int, default=3, help="repetitions per figure (≥ 1)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    names = args.scenarios or list(SCENARIOS)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    print(f"bench: logs in {logs}", flush=True)
    started, t0 = time.time(), time.monotonic()
    results: list[Result] = []
    with RedisServer(appendonly=False) as server:
        ctx = Context(server.url, args.quick, args.out, logs, reps=max(1, args.reps))
        info = machine(server.url)
        try:
            for name in names:
                results.append(_run(ctx, name))
        finally:
            ctx.stop_all()
    reps = ["--reps", str(ctx.reps)] if ctx.reps != Context.reps else []
    command = "python -m bench " + shlex.join(
        [*args.scenarios, *(["--quick"] if args.quick else []), *reps]
    )
    run = {
        "command": command.strip(),
        "quick": args.quick,
        "reps": ctx.reps,
        "started_at": started,
        "seconds": round(time.monotonic() - t0, 1),
        "machine": info,
        "scenarios": [r.as_dict() for r in results],
    }
    md, js = report.write(args.out, run)
    print(f"bench: wrote {md} and {js} in {run['seconds']:.0f} s", flush=True)
    return 1 if any(r.title.endswith("(failed)") for r in results) else 0


def _run(ctx: Context, name: str) -> Result:
    print(f"bench: {name} ...", flush=True)
    ctx.flush()
    t0 = time.monotonic()
    try:
        module, function = SCENARIOS[name]
        result: Result = getattr(importlib.import_module(f"bench.{module}"), function)(ctx)
    except Exception as exc:
        trace = traceback.format_exc()
        (ctx.logs / f"{name}.traceback").write_text(trace)
        print(trace, file=sys.stderr, flush=True)
        result = Result(name, f"{name} (failed)", notes=[f"failed: {type(exc).__name__}: {exc}"])
    finally:
        ctx.stop_all()
    result.seconds = time.monotonic() - t0
    for metric in result.metrics:
        base = metric.as_dict()["baseline"]
        extra = f" vs {report.fmt(base['median'])} (x{report.fmt(metric.ratio)})" if base else ""
        ours = report.fmt(metric.as_dict()["ours"]["median"])
        print(f"  {metric.name}: {ours} {metric.unit}{extra}", flush=True)
    print(f"bench: {name} done in {result.seconds:.0f} s", flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
