"""Job commands: submit, continue, status, tail, files, email, costs (``cancel`` is
:mod:`orchestrator.cli.cancel`'s).

Every command prints for people by default and takes ``--json`` for scripts. Input is
checked (by the :class:`~orchestrator.facade.Orchestrator` facade, or here for what only
the command line has) before anything is written or enqueued; a rejection is one
``error: <field>: <message>`` line on stderr and exit status 2 (see ``cli.main``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator import rules
from orchestrator.cli import output, tail
from orchestrator.cli.output import json_option as _json_option
from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import FAILED_ENDS, LIMITS, Job, parse_tags
from orchestrator.ledger import total_cost_micro
from orchestrator.settings import load_settings
from orchestrator.store.keys import LEDGER_DIMENSIONS
from orchestrator.wire.models import BUDGETS

#: ``costs --by``: the ledger's dimensions, and each job's own turn.
COST_GROUPS = (*LEDGER_DIMENSIONS, "job")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the job commands to the ``orchestrator`` parser's sub-commands."""
    submit = sub.add_parser("submit", help="start a new worker with INPUT")
    submit.add_argument("input", metavar="INPUT", help="the task text; '-' reads stdin")
    _submission_options(submit)
    submit.set_defaults(func=run_submit)

    cont = sub.add_parser("continue", help="add a turn to a worker (by worker or job id)")
    cont.add_argument("worker_or_job", metavar="WORKER_OR_JOB", help="a worker id or job id")
    cont.add_argument("input", metavar="INPUT", help="the task text; '-' reads stdin")
    _submission_options(cont, carried=True)
    cont.set_defaults(func=run_continue)

    status = sub.add_parser("status", help="show a job")
    status.add_argument("job_id", metavar="JOB_ID", help="the job's id (job_...)")
    status.add_argument("--history", action="store_true", help="also list status changes")
    _json_option(status)
    status.set_defaults(func=run_status)

    tail = sub.add_parser("tail", help="print a job's updates live until its turn ends")
    tail.add_argument("job_id", metavar="JOB_ID", help="the job's id (job_...)")
    tail.add_argument(
        "--after", type=int, default=None, metavar="N", help="only updates after index N"
    )
    tail.add_argument("--no-follow", action="store_true", help="print what is stored, exit")
    tail.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    tail.add_argument("--raw", action="store_true", help="each update as INDEX<TAB>JSON")
    _json_option(tail, "one {index, data} object per line")
    tail.set_defaults(func=run_tail)

    files = sub.add_parser("files", help="list a job's fetched files, or download one")
    files.add_argument("job_id", metavar="JOB_ID", help="the job's id (job_...)")
    files.add_argument("--download", metavar="NAME", help="download this published file now")
    files.add_argument("--to", metavar="PATH", type=Path, help="where --download writes")
    _json_option(files)
    files.set_defaults(func=run_files)

    email = sub.add_parser("email", help="show a worker's email address")
    email.add_argument("worker_or_job", metavar="WORKER_OR_JOB", help="a worker id or job id")
    _json_option(email)
    email.set_defaults(func=run_email)

    costs = sub.add_parser("costs", help="the cost ledger, grouped by one dimension")
    costs.add_argument(
        "--by", choices=COST_GROUPS, default="day",
        help="group by this (default day; job: each job's turn, newest first)",
    )  # fmt: skip
    costs.add_argument("--since", metavar="YYYY-MM-DD", help="first day (--by day or job)")
    costs.add_argument("--until", metavar="YYYY-MM-DD", help="last day (--by day or job)")
    costs.add_argument(
        "--limit", type=int, default=None, metavar="N",
        help="with --by job: the newest N jobs (default 50)",
    )  # fmt: skip
    _json_option(costs, "print the report as returned by Orchestrator.costs")
    costs.set_defaults(func=run_costs)


def _submission_options(parser: argparse.ArgumentParser, *, carried: bool = False) -> None:
    """A continue's budget and tags not given are the earlier job's (``carried``)."""
    parser.add_argument(
        "--budget", choices=BUDGETS, default=None if carried else "standard",
        help="budget tier (default: the earlier job's)" if carried
        else "budget tier (default standard)",
    )  # fmt: skip
    parser.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE",
        help="repeatable; over the earlier job's tags" if carried else "repeatable",
    )  # fmt: skip
    parser.add_argument("--idempotency-key", metavar="K", help="same key, same job")
    parser.add_argument("--fetch-files", action="store_true", help="fetch published files")
    parser.add_argument(
        "--priority", choices=("interactive", "batch"), default="interactive",
        help="interactive jobs are taken before batch ones",
    )  # fmt: skip
    for name in ("queue-ttl", "idle-timeout", "deadline"):
        setting = "JOB_" + name.upper().replace("-", "_")
        parser.add_argument(
            f"--{name}", type=float, metavar="SECONDS",
            help=f"the job's {name.replace('-', ' ')} (default: {setting})",
        )  # fmt: skip
    parser.add_argument("--wait", action="store_true", help="wait until the job ends")
    parser.add_argument("--tail", action="store_true", help="print updates until the turn ends")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds for --wait/--tail (default 600)"
    )
    _json_option(parser, "print the job as JSON (after updates, one per line, with --tail)")


# --- submit and continue ---------------------------------------------------------


def run_submit(args: argparse.Namespace) -> int:
    """Start a new worker; see :func:`_enqueue`."""
    return _enqueue(args, None)


def run_continue(args: argparse.Namespace) -> int:
    """Add a turn to a worker named by its id or a job's; see :func:`_enqueue`."""
    return _enqueue(args, args.worker_or_job)


def _enqueue(args: argparse.Namespace, worker_or_job: str | None) -> int:
    """Enqueue the job, print it, then optionally tail its updates and wait for it.

    Exit status 1 when ``--wait`` or ``--tail`` sees the job end without completing.
    """
    rules.positive_seconds(args.timeout, "timeout")
    tags = parse_tags(args.tag)
    text = _stdin() if args.input == "-" else args.input
    options: dict[str, Any] = {
        "budget": args.budget,
        "tags": tags if tags or worker_or_job is None else None,
        "idempotency_key": args.idempotency_key,
        "fetch_files": args.fetch_files,
        "priority": args.priority,
        "queue_ttl": args.queue_ttl,
        "idle_timeout": args.idle_timeout,
        "deadline": args.deadline,
    }
    with Orchestrator(load_settings()) as orch:
        if worker_or_job is not None:
            job = orch.continue_(worker_or_job, text, **options)
        else:
            job = orch.submit(text, **options)
        if not args.json:
            print(f"{job.id}  {job.status}", flush=True)
        try:
            if args.tail:
                _print_updates(orch, job.id, orch.updates(job.id, timeout=args.timeout), args)
            if args.wait or args.tail:
                job = orch.wait(job.id, timeout=args.timeout)
                if not args.json:
                    _print_outcome(orch, job, with_output=not args.tail)
        except TimeoutError:
            if args.json:  # a script still learns the job id and where it stands
                _print_job(orch.get(job.id), one_line=args.tail)
            raise
        if args.json:
            _print_job(job, one_line=args.tail)
    return 1 if job.status in FAILED_ENDS else 0


def _stdin() -> str:
    try:
        text = sys.stdin.read()
    except UnicodeDecodeError:
        text = None
    if text is None or output.undecodable([text]) is not None:
        # (Python's UTF-8 mode reads undecodable bytes as lone surrogates.)
        raise InputError("input", "standard input is not valid UTF-8 text")
    return text


def _print_job(job: Job, *, one_line: bool) -> None:
    dumped = job.model_dump(mode="json")
    if one_line:
        output.emit_line(dumped)
    else:
        output.emit(dumped)


def _print_outcome(orch: Orchestrator, job: Job, *, with_output: bool = True) -> None:
    """The final status line, then the error or (unless the tail showed it already) the
    worker's output text."""
    print(f"{job.id}  {job.status}")
    if job.error:
        output.fields([("error", job.error)])
    worker = orch.worker(job.id) if with_output else None
    if job.status == "completed" and worker is not None and worker.output_text:
        print(output.clean(worker.output_text))


# --- watching --------------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    """Show one job's fields (and with ``--history`` its status changes)."""
    with Orchestrator(load_settings()) as orch:
        job = orch.get(args.job_id)
        history = orch.history(job.id) if args.history else None
        cost = orch.cost(job.id)
    if args.json:
        dumped = job.model_dump(mode="json")
        if history is not None:
            dumped["history"] = history
        dumped["cost"] = cost
        output.emit(dumped)
        return 0
    tags = " ".join(f"{k}={v}" for k, v in sorted(job.tags.items()))
    if job.update_from is not None:
        end = "" if job.update_to is None else str(job.update_to - 1)
        updates = f"{job.update_from}..{end}"
    else:
        updates = "-"
    fields = [
        ("id", job.id),
        ("kind", job.kind),
        ("status", job.status),
        ("budget", job.budget),
        ("tags", tags or "-"),
        ("worker", job.worker_id or "-"),
        ("attempts", str(job.attempts)),
        ("created", output.when(job.created_at)),
        ("updates", updates),
        ("input", job.short_input(60)),
    ]
    limits = [f"{n}={v:g}s" for n in LIMITS if (v := getattr(job, n)) is not None]
    fields.append(("limits", " ".join(limits) or "-"))
    if job.schedule_id:
        fields.append(("schedule", job.schedule_id))
    fields.append(("cost", _cost_text(job, cost)))
    if job.error:
        fields.append(("error", job.error))
    output.fields(fields)
    if history is not None:
        print("history")
        for entry in history:
            detail = f"  {entry['detail']}" if entry["detail"] else ""
            print(output.clean(f"  {output.when(entry['at'])}  {entry['status']}{detail}"))
    return 0


def _cost_text(job: Job, cost: dict[str, int] | None) -> str:
    """The job's turn cost, or why there is none yet."""
    if cost is not None:
        return f"{output.usd(total_cost_micro(cost))} ({cost.get('total_tokens', 0)} tokens)"
    if job.cost_known is False:
        return "unknown so far (the upstream has not reported it)"
    return "- (not posted)" if job.done else "- (not posted yet)"


def run_tail(args: argparse.Namespace) -> int:
    """Print a job's updates as they arrive, until its turn ends."""
    if args.after is not None and args.after < 0:
        raise InputError("after", "must be an update index (0 or more)")
    rules.positive_seconds(args.timeout, "timeout")
    with Orchestrator(load_settings()) as orch:
        updates = orch.updates(
            args.job_id, after=args.after, block=not args.no_follow, timeout=args.timeout
        )
        _print_updates(orch, args.job_id, updates, args)
    return 0


def _print_updates(
    orch: Orchestrator, job_id: str, updates: Iterable[tuple[int, Any]], args: argparse.Namespace
) -> None:
    """Updates as JSON lines (``--json``), as stored (``--raw``) or as assembled text
    ending with the turn's status and cost."""
    if args.json:
        for index, data in updates:
            output.emit_line({"index": index, "data": data})
        return
    if getattr(args, "raw", False):
        tail.raw(updates)
        return
    transcript = tail.Transcript()
    try:
        for index, data in updates:
            transcript.feed(index, data)
    finally:
        job = orch.get(job_id)
        transcript.close(tail.summary(job.id, job.status, transcript.updates, orch.cost(job.id)))


# --- results ---------------------------------------------------------------------


def run_files(args: argparse.Namespace) -> int:
    """List the files fetched for a job, or download one published file now."""
    if (args.download is None) != (args.to is None):
        field = "to" if args.to is None else "download"
        raise InputError(field, "--download NAME and --to PATH go together")
    with Orchestrator(load_settings()) as orch:
        if args.download is not None:
            dest: Path = args.to
            if dest.is_dir():
                dest = dest / PurePosixPath(args.download).name
            got = orch.download(args.job_id, args.download, dest)
            if args.json:
                output.emit(got)
            else:
                print(f"saved {args.download} to {got['path']} ({got['size']} bytes)")
                print(f"sha256 {got['sha256']}")
            return 0
        files = orch.files(args.job_id)
    if args.json:
        output.emit(files)
    elif not files:
        print("no files fetched")
    else:
        rows = [
            [name, str(info.get("size", "-")), info.get("sha256", "-"), _file_place(info)]
            for name, info in files.items()
        ]
        output.table(["name", "size", "sha256", "path"], rows, right=(1,))
    return 0


def _file_place(info: dict[str, Any]) -> str:
    if "refused" in info:
        return f"refused: {info['refused']}"
    if "error" in info:
        return f"error: {info['error']}"
    return str(info.get("path", "-"))


def run_email(args: argparse.Namespace) -> int:
    """Print the worker's email address (asked of the upstream API)."""
    with Orchestrator(load_settings()) as orch:
        address = orch.email(args.worker_or_job)
    if args.json:
        output.emit_line({"email": address})
    else:
        print(output.clean(address))
    return 0


def run_costs(args: argparse.Namespace) -> int:
    """The ledger by a dimension: turns, USD and tokens per key, and the total."""
    since = _day("since", args.since)
    until = _day("until", args.until)
    if args.by not in ("day", "job") and (since or until):
        raise InputError("since" if since else "until", "only filters --by day or job")
    if args.by != "job" and args.limit is not None:
        raise InputError("limit", "only with --by job")
    with Orchestrator(load_settings()) as orch:
        report = orch.costs(
            args.by, since=since, until=until, limit=50 if args.limit is None else args.limit
        )
    if args.json:
        output.emit(report)
        return 0
    rows = [_cost_cells(row["key"], row) for row in report["rows"]]
    label = "total (all time)" if since or until else "total"
    if not rows:
        rows.append(["(no turns)", "", "", ""])
    output.table(
        [args.by, "turns", "usd", "tokens"],
        rows,
        right=(1, 2, 3),
        footer=_cost_cells(label, report["total"]),
    )
    return 0


def _cost_cells(key: str, row: dict[str, Any]) -> list[str]:
    if row.get("posted") is False:  # --by job: a job whose turn is not posted (yet)
        return [key, "0", "-", "-"]
    money = output.usd(total_cost_micro(row))
    return [key, str(row["turns"]), money, str(row["total_tokens"])]


def _day(field: str, text: str | None) -> date | None:
    return None if text is None else rules.day(text, field)
