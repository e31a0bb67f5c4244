"""Commands that run a long-lived part of the system: the emulator and Celery workers."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any

from pydantic import ValidationError

from orchestrator.celery import QUEUES, STREAMS_QUEUE
from orchestrator.cli import output
from orchestrator.cli.output import json_option
from orchestrator.errors import InputError
from orchestrator.ops import exposition
from orchestrator.settings import load_settings

POOLS = ("threads", "prefork", "solo", "gevent", "eventlet")


def register(sub: Any) -> None:
    emu = sub.add_parser("emulator", help="serve the local Workers API emulator")
    emu.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    emu.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    emu.add_argument(
        "--api-key",
        default=None,
        help="the key clients must send (default: $EMULATOR_API_KEY or $WORKERS_API_KEY)",
    )
    emu.add_argument(
        "--turn-seconds", type=float, default=1.0, help="how long a turn runs (default 1)"
    )
    emu.add_argument(
        "--events-per-turn", type=int, default=10, help="updates per turn (default 10)"
    )
    emu.add_argument("--seed", type=int, default=None, help="seed of the random choices")
    for fault, what in (
        ("429", "answers 429 (rate limited)"),
        ("500", "answers 500"),
        ("503", "answers 503"),
        ("cut-stream", "cuts a stream short"),
        ("lost-response", "(POSTs) do their work, then lose the answer (a 502)"),
        ("slow", "answer only after --slow-seconds"),
    ):
        emu.add_argument(
            f"--rate-{fault}", type=float, default=0.0,
            help=f"share of requests (0-1) that {what} (default 0)",
        )  # fmt: skip
    emu.add_argument(
        "--slow-seconds", type=float, default=1.0, help="delay of a slow answer (default 1)"
    )
    json_option(emu, 'print {"url"} on stdout once serving')
    emu.set_defaults(func=run_emulator)

    work = sub.add_parser(
        "worker",
        help="run a Celery worker (no flags: every queue in one process, the one-box default)",
    )
    work.add_argument("--queues", default=",".join(QUEUES), help="comma-separated queues")
    work.add_argument(
        "--pool", choices=POOLS, default="threads", help="Celery pool (default threads)"
    )
    work.add_argument(
        "--concurrency", type=int, default=8, help="tasks at once per process (default 8)"
    )
    work.add_argument("--hostname", default=None, help="Celery node name (default: generated)")
    work.add_argument("--loglevel", default="INFO", help="Celery's log level (default INFO)")
    exposition.add_options(work)
    json_option(work, 'print {"queues", "pool", "concurrency"} on stdout before starting')
    work.set_defaults(func=run_worker)

    flower = sub.add_parser("flower", help="run Flower (basic auth from FLOWER_USER/PASSWORD)")
    flower.add_argument("--address", default="127.0.0.1", help="address to bind (default loopback)")
    flower.add_argument("--port", type=int, default=5555, help="TCP port (default 5555)")
    flower.add_argument("--max-tasks", type=int, default=10_000, help="tasks kept in memory")
    flower.add_argument(
        "--no-auth", action="store_true", help="serve without auth (local use only)"
    )
    json_option(flower, 'print {"url"} on stdout before starting')
    flower.set_defaults(func=run_flower)


def run_emulator(args: argparse.Namespace) -> int:
    from orchestrator.emulator import EmulatorConfig, FaultConfig, serve

    api_key = (
        args.api_key or os.environ.get("EMULATOR_API_KEY") or os.environ.get("WORKERS_API_KEY")
    )
    if not api_key:
        raise InputError("api_key", "give --api-key or set EMULATOR_API_KEY")
    if not 0 < args.port < 65536:
        raise InputError("port", "must be 1-65535")
    try:
        config = EmulatorConfig(
            turn_seconds=args.turn_seconds,
            events_per_turn=args.events_per_turn,
            seed=args.seed,
            faults=FaultConfig(
                rate_429=args.rate_429,
                rate_500=args.rate_500,
                rate_503=args.rate_503,
                rate_cut_stream=args.rate_cut_stream,
                rate_lost_response=args.rate_lost_response,
                rate_slow=args.rate_slow,
                slow_seconds=args.slow_seconds,
                seed=args.seed,
            ),
        )
    except ValidationError as exc:
        # The option at fault, not pydantic's "1 validation error for EmulatorConfig".
        first = exc.errors()[0]
        name = str(first["loc"][-1]) if first["loc"] else "emulator"
        raise InputError(name, str(first["msg"])) from None
    url = f"http://{args.host}:{args.port}/api"
    if args.json:
        output.emit_line({"url": url})
    print(f"emulator on {url}", file=sys.stderr, flush=True)
    serve(args.host, args.port, api_key, config)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if not queues or unknown:
        raise InputError("queues", f"unknown {unknown}; choose from {', '.join(QUEUES)}")
    if args.concurrency < 1:
        raise InputError("concurrency", "must be at least 1")
    settings = load_settings()
    from orchestrator.celery import app, celery_config, consumed_queues

    celery_config(settings)  # fail early, one line, if REDIS_URL is missing
    argv = [
        "worker",
        "-Q", ",".join(consumed_queues(queues, settings)),
        "-P", args.pool,
        "-c", str(args.concurrency),
        "-E",
        "--loglevel", args.loglevel,
    ]  # fmt: skip
    if args.hostname:
        argv += ["-n", args.hostname]
    if args.json:
        output.emit_line({"queues": queues, "pool": args.pool, "concurrency": args.concurrency})
    if STREAMS_QUEUE in queues and args.pool == "prefork":
        print("note: the stream follower runs in the main process beside the pool", file=sys.stderr)
    where = exposition.wanted(args, settings)
    if where is not None and args.pool == "prefork":
        # Each pool child counts in its own memory (see orchestrator.ops.exposition).
        exposition.pooled("worker", "the prefork pool's children (the tasks)")
    exposition.serve("worker", where)
    app.worker_main(argv)
    return 0


def run_flower(args: argparse.Namespace) -> int:
    """Exec Flower on our app. Secrets travel in its environment, never in argv."""
    settings = load_settings()
    from orchestrator.celery import celery_config
    from orchestrator.ops.redis_server import port_taken

    celery_config(settings)
    env = dict(os.environ)
    if not args.no_auth:
        if not settings.flower_user or settings.flower_password is None:
            raise InputError(
                "FLOWER_USER", "and FLOWER_PASSWORD must be set (or pass --no-auth for local use)"
            )
        password = settings.flower_password.get_secret_value()
        env["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{password}"
    else:
        env.pop("FLOWER_BASIC_AUTH", None)
    env.setdefault("FLOWER_COOKIE_SECRET", secrets.token_urlsafe(32))
    if not 0 < args.port < 65536:
        raise InputError("port", "must be 1-65535")
    if port_taken(args.port, args.address):
        # Flower would only say so in a traceback.
        raise InputError("port", f"{args.address}:{args.port} is in use (give another --port)")
    if args.json:
        output.emit_line({"url": f"http://{args.address}:{args.port}"})
    argv = [
        sys.executable, "-m", "celery", "-A", "orchestrator", "flower",
        f"--address={args.address}", f"--port={args.port}",
        # Bounded memory: Flower keeps a window of recent tasks, not a history.
        f"--max_tasks={args.max_tasks}", "--max_workers=200",
        "--persistent=False", "--purge_offline_workers=300",
    ]  # fmt: skip
    os.execvpe(sys.executable, argv, env)
    return 0  # not reached
