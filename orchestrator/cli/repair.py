"""Repair commands: ``orchestrator reconcile [--hours H] [--fix] [--json]``.

``reconcile`` compares the store with fresh upstream snapshots of the workers of recent
jobs and prints one line per difference (see :mod:`orchestrator.ops.reconcile`); with
``--fix`` it repairs each one (the upstream is the source of truth for money). Exit
status 0 when nothing is left to repair, 1 when differences remain (found without
``--fix``) or a worker could not be read upstream, 2 for bad input.
"""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.cli import output
from orchestrator.errors import InputError
from orchestrator.settings import load_settings


def register(sub: Any) -> None:
    """Add the ``reconcile`` command to the CLI's subparsers."""
    rec = sub.add_parser(
        "reconcile",
        help="compare the ledger, snapshots and job states with the upstream; --fix repairs",
    )
    rec.add_argument(
        "--hours", type=float, default=24.0, help="check the workers of jobs of the last H hours"
    )
    rec.add_argument("--fix", action="store_true", help="repair every difference found")
    rec.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="S",
        help="a job is stuck only if it has not moved for S seconds (default 60)",
    )
    output.json_option(rec, "print the report as JSON")
    rec.set_defaults(func=run_reconcile)


def run_reconcile(args: argparse.Namespace) -> int:
    from orchestrator.ops.reconcile import MAX_HOURS

    if not 0 < args.hours <= MAX_HOURS:
        raise InputError("hours", f"must be more than 0 and at most {MAX_HOURS}")
    if args.grace < 0:
        raise InputError("grace", "must not be negative")
    settings = load_settings()
    from orchestrator.celery import make_app
    from orchestrator.ops.reconcile import Reconciler, render
    from orchestrator.runtime import store_for
    from orchestrator.wire.client import WorkersClient

    store = store_for(settings)  # ConfigError without REDIS_URL
    app = make_app(settings)

    def send_finalize(job_id: str) -> None:
        app.send_task("workers.finalize", args=[job_id], argsrepr=job_id)

    try:
        with WorkersClient.from_settings(settings) as client:
            reconciler = Reconciler(store, client, send_finalize=send_finalize)
            report = reconciler.run(args.hours, fix=args.fix, grace_seconds=args.grace)
    finally:
        store.close()
    if args.json:
        output.emit(report.to_json())
    else:
        for line in render(report):
            print(output.clean(line))
    return 0 if report.clean else 1
