"""Archive commands: ``orchestrator archive list | show DAY | import DAY`` (each takes
``--json``).

The archive is ``ARCHIVE_DIR`` (see :mod:`orchestrator.ops.archive`): one gzip JSON
Lines file per UTC day of finished jobs. ``list`` prints each day with its jobs and
size; ``show`` prints a day's jobs (one line each, or the records as JSON Lines with
``--json``); ``import`` puts a day's jobs back in Redis for one retention period (jobs
still in Redis are left alone; the ledger is never touched: rollups are kept for good).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli import output
from orchestrator.errors import InputError
from orchestrator.ledger import total_cost_micro
from orchestrator.settings import Settings, load_settings


def register(sub: Any) -> None:
    """Add the ``archive`` command to the CLI's subparsers."""
    archive = sub.add_parser("archive", help="finished jobs archived before they expired")
    verbs = archive.add_subparsers(dest="verb", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="each archived UTC day: jobs and bytes")
    output.json_option(listing, "print [{day, jobs, bytes}] as JSON")
    show = verbs.add_parser("show", help="the jobs of one UTC day")
    show.add_argument("day", help="YYYY-MM-DD")
    output.json_option(show, "print the records as JSON Lines (one job a line)")
    load = verbs.add_parser("import", help="put a day's jobs back in Redis (one retention)")
    load.add_argument("day", help="YYYY-MM-DD")
    output.json_option(load, "print {day, imported, in_redis} as JSON")
    archive.set_defaults(func=run_archive)


def _dir(settings: Settings) -> Any:
    from orchestrator.ops.archive import ArchiveDir

    if settings.archive_dir is None:
        raise InputError("archive_dir", "ARCHIVE_DIR is not set: there is no archive")
    return ArchiveDir(settings.archive_dir)


def run_archive(args: argparse.Namespace) -> int:
    from orchestrator.ops.archive import check_day

    settings = load_settings()
    archive = _dir(settings)
    if args.verb == "list":
        days = [
            {"day": day, "jobs": sum(1 for _ in archive.read(day)),
             "bytes": archive.path(day).stat().st_size}
            for day in archive.days()
        ]  # fmt: skip
        if args.json:
            output.emit(days)
            return 0
        for row in days:
            print(f"{row['day']}  {row['jobs']} jobs  {row['bytes']} bytes")
        return 0
    day = check_day(args.day)
    if args.verb == "show":
        for record in archive.read(day):
            if args.json:
                output.emit_line(record)
            else:
                job, posted = record["job"], record.get("ledger") or {}
                # Nothing posted is an unknown cost, not a zero one.
                cost = (output.usd(total_cost_micro({k: int(v) for k, v in posted.items()}))
                        if posted else "-")  # fmt: skip
                updates = len(record.get("updates") or [])
                worker = job.get("worker_id") or "-"
                print(output.clean(f"{job['id']}  {job.get('status')}  worker={worker}"
                                   f"  updates={updates}  cost={cost}"))  # fmt: skip
        return 0
    from orchestrator.runtime import store_for
    from orchestrator.store.archive import ArchiveStore

    store = store_for(settings)
    try:
        restore = ArchiveStore(store)
        put = kept = 0
        for record in archive.read(day):
            ttl = store.retention.ttl_ms(json.loads(record["job"].get("tags") or "{}"))
            if restore.restore(record, ttl):
                put += 1
            else:
                kept += 1
    finally:
        store.close()
    return output.done(
        args.json,
        {"day": day, "imported": put, "in_redis": kept},
        f"imported {put} jobs of {day}; {kept} were in Redis already",
    )
