"""Archive commands: ``orchestrator archive list | show DAY [--json] | import DAY``.

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

from orchestrator.errors import InputError
from orchestrator.settings import Settings, load_settings


def register(sub: Any) -> None:
    """Add the ``archive`` command to the CLI's subparsers."""
    archive = sub.add_parser("archive", help="finished jobs archived before they expired")
    verbs = archive.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs.add_parser("list", help="each archived UTC day: jobs and bytes")
    show = verbs.add_parser("show", help="the jobs of one UTC day")
    show.add_argument("day", help="YYYY-MM-DD")
    show.add_argument("--json", action="store_true", help="the records as JSON Lines")
    load = verbs.add_parser("import", help="put a day's jobs back in Redis (one retention)")
    load.add_argument("day", help="YYYY-MM-DD")
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
        for day in archive.days():
            count = sum(1 for _ in archive.read(day))
            print(f"{day}  {count} jobs  {archive.path(day).stat().st_size} bytes")
        return 0
    day = check_day(args.day)
    if args.verb == "show":
        for record in archive.read(day):
            if args.json:
                print(json.dumps(record, sort_keys=True))
            else:
                job, posted = record["job"], record.get("ledger") or {}
                cost = sum(int(v) for k, v in posted.items() if k.endswith("_cost_micro"))
                updates = len(record.get("updates") or [])
                worker = job.get("worker_id") or "-"
                print(f"{job['id']}  {job.get('status')}  worker={worker}  updates={updates}"
                      f"  cost_micro={cost}")  # fmt: skip
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
    print(f"imported {put} jobs of {day}; {kept} were in Redis already")
    return 0
