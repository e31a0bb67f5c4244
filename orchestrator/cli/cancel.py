"""``orchestrator cancel``: end jobs here, named or by filter.

    orchestrator cancel JOB [JOB ...] [--reason R]
    orchestrator cancel --tag tenant=acme [--status queued] [--schedule ID] [--reason R]

The Workers API has no cancel route: the output says so, since a turn already started
upstream goes on and is billed (its cost is settled into the ledger when it ends).
"""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.cli import output
from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.jobs.lifecycle import UPSTREAM_NOTE
from orchestrator.jobs.model import STATUSES, TERMINAL, parse_tags
from orchestrator.settings import load_settings


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``cancel`` to the ``orchestrator`` parser's sub-commands."""
    cancel = sub.add_parser(
        "cancel",
        help="cancel jobs (named, or every live job matching --tag/--status/--schedule)",
        description=f"Cancel jobs. Note: {UPSTREAM_NOTE}.",
    )
    cancel.add_argument("job_ids", metavar="JOB", nargs="*", help="job ids to cancel")
    cancel.add_argument("--reason", metavar="R", help="kept in the job's history")
    cancel.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE",
        help="bulk: jobs with this tag (repeatable: all must match)",
    )  # fmt: skip
    cancel.add_argument(
        "--status", choices=[s for s in STATUSES if s not in TERMINAL], help="bulk: jobs in it"
    )
    cancel.add_argument("--schedule", metavar="ID", help="bulk: jobs run by this schedule")
    output.json_option(cancel, "print {jobs: [{id, status, cancelled_now}], note} as JSON")
    cancel.set_defaults(func=run_cancel)


def run_cancel(args: argparse.Namespace) -> int:
    """Cancel the named jobs, or every live job the filters match (not both)."""
    bulk = bool(args.tag or args.status or args.schedule)
    if bulk and args.job_ids:
        raise InputError(
            "job_id", "name jobs or give filters (--tag/--status/--schedule), not both"
        )
    if not bulk and not args.job_ids:
        raise InputError("job_id", "name at least one job, or give --tag/--status/--schedule")
    tags = parse_tags(args.tag)
    with Orchestrator(load_settings()) as orch:
        if bulk:
            ids = orch.cancel_many(
                tags=tags or None, status=args.status, schedule_id=args.schedule,
                reason=args.reason,
            )  # fmt: skip
            rows = [(job_id, "cancelled", True) for job_id in ids]
        else:
            rows = []
            before = [orch.get(job_id) for job_id in args.job_ids]  # all known, or none
            for job in before:
                after = orch.cancel(job.id, reason=args.reason)
                rows.append((after.id, after.status, not job.done))
    if args.json:
        jobs = [{"id": i, "status": s, "cancelled_now": now} for i, s, now in rows]
        output.emit({"jobs": jobs, "note": UPSTREAM_NOTE})
        return 0
    for job_id, status, now in rows:
        print(output.clean(f"{job_id}  {status}" + ("" if now else "  (had ended already)")))
    if not rows:
        print("no live job matched")
    if any(now for _, _, now in rows):  # nothing cancelled now: no turn to warn about
        output.error(UPSTREAM_NOTE, prefix="note")
    return 0
