"""Schedule commands (``orchestrator schedules ...``) and the beat (``orchestrator beat``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from orchestrator.cli import output
from orchestrator.cli.output import json_option
from orchestrator.errors import InputError
from orchestrator.jobs.model import parse_tags
from orchestrator.ops import exposition
from orchestrator.wire.models import BUDGETS

SCHEDULER = "orchestrator.schedules.beat:RedisScheduler"


def register(sub: Any) -> None:
    sched = sub.add_parser("schedules", help="recurring and one-shot runs of a worker")
    ssub = sched.add_subparsers(dest="schedules_command", metavar="ACTION")
    ssub.required = True

    create = ssub.add_parser("create", help="create a schedule (prints it with its next run)")
    create.add_argument(
        "worker", nargs="?", default=None,
        help="worker id or job id (none: the first run creates a worker)",
    )  # fmt: skip
    _schedule_options(create, new=True)
    json_option(create, "print the schedule as JSON")
    create.set_defaults(func=cmd_create)

    update = ssub.add_parser(
        "update", help="change a schedule's options given (its id and history stay)"
    )
    update.add_argument("schedule_id", help="the schedule's id (sch_...)")
    _schedule_options(update, new=False)
    json_option(update, "print the schedule as JSON")
    update.set_defaults(func=cmd_update)

    lst = ssub.add_parser("list", help="a worker's schedules, or all with their next runs")
    lst.add_argument(
        "worker", nargs="?", default=None, help="a worker id or job id (none: every schedule)"
    )
    lst.add_argument("--all", action="store_true", help="include done and cancelled ones")
    json_option(lst, "print the schedules as JSON")
    lst.set_defaults(func=cmd_list)

    show = ssub.add_parser("show", help="one schedule: next 10 runs, counts, cost")
    show.add_argument("schedule_id", help="the schedule's id (sch_...)")
    json_option(show, "print everything about it as JSON")
    show.set_defaults(func=cmd_show)

    for name, text in (
        ("pause", "stop running until resumed"),
        ("resume", "run again from the next slot"),
        ("cancel", "stop for good (history stays)"),
        ("trigger", "run now"),
    ):
        p = ssub.add_parser(name, help=text)
        p.add_argument("schedule_id", help="the schedule's id (sch_...)")
        json_option(p, "print the outcome as JSON")
        p.set_defaults(func=cmd_action, action=name)

    hist = ssub.add_parser("history", help="a schedule's runs, newest first")
    hist.add_argument("schedule_id", help="the schedule's id (sch_...)")
    hist.add_argument("--limit", type=int, default=20, help="newest N runs (default 20)")
    json_option(hist, "print the runs as JSON")
    hist.set_defaults(func=cmd_history)

    imp = ssub.add_parser("import", help="copy a worker's upstream schedules into ours")
    imp.add_argument("worker", help="a worker id or job id")
    imp.add_argument("--cancel-upstream", action="store_true", help="cancel the upstream copies")
    json_option(imp, "print {imported, already, cancelled_upstream} as JSON")
    imp.set_defaults(func=cmd_import)

    beat = sub.add_parser("beat", help="run the beat scheduler (any number may run at once)")
    beat.add_argument("--loglevel", default="INFO", help="Celery's log level (default INFO)")
    beat.add_argument("--max-interval", type=float, default=1.0, help="longest sleep (s)")
    beat.add_argument("--batch", type=int, default=500, help="due slots per Redis call")
    beat.add_argument(
        "--resend-after", type=float, default=10.0,
        help="seconds after which a claimed but unsent run is sent by another beat",
    )  # fmt: skip
    beat.add_argument(
        "--misfire-grace", type=float, default=None,
        help="seconds late a recurring slot may be and still run (later: missed); "
        "default SCHEDULE_MISFIRE_GRACE (5)",
    )  # fmt: skip
    exposition.add_options(beat)
    json_option(beat, 'print {"scheduler"} on stdout once starting (logs stay on stderr)')
    beat.set_defaults(func=run_beat)


def _schedule_options(p: argparse.ArgumentParser, *, new: bool) -> None:
    """The options of ``create`` and ``update`` (one list, one set of names); on an
    update none is required and none has a default: those not given stay."""
    keep = "" if new else " (not given: unchanged)"
    p.add_argument("--input", required=new, help="the input each run sends" + keep)
    kind = p.add_mutually_exclusive_group(required=new)
    kind.add_argument("--cron", help="5-field cron expression (see --tz)")
    kind.add_argument("--every", type=int, metavar="SECONDS", help="interval in seconds")
    kind.add_argument("--at", metavar="ISO", help="once, at this date-time (with zone)")
    kind.add_argument("--in", dest="delay", type=int, metavar="SECONDS", help="once, from now")
    p.add_argument(
        "--tz", default="UTC" if new else None,
        help="IANA time zone of --cron" + (" (default UTC)" if new else keep),
    )  # fmt: skip
    p.add_argument(
        "--budget", choices=BUDGETS, default=None,
        help="each run's budget tier"
        + (" (default: the worker's earlier job's, else standard)" if new else keep),
    )  # fmt: skip
    p.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE",
        help="each run's job tag; repeatable; "
        + ("over the worker's earlier job's tags" if new else "all of them: replace the old"),
    )  # fmt: skip
    if not new:
        p.add_argument(
            "--clear-tags", action="store_true",
            help="remove all of its tags (runs' jobs get none); not with --tag",
        )  # fmt: skip
    p.add_argument(
        "--catch-up", choices=("skip", "once"), default="skip" if new else None,
        help="after downtime: skip missed slots, or run once for them"
        + (" (default skip)" if new else keep),
    )  # fmt: skip
    p.add_argument(
        "--overlap", choices=("skip", "buffer"), default="skip" if new else None,
        help="a slot due while the last run still runs: skip it, or run it after"
        + (" (default skip)" if new else keep),
    )  # fmt: skip
    for name in ("queue-ttl", "idle-timeout", "deadline"):
        p.add_argument(f"--{name}", type=float, metavar="SECONDS", help=f"each run's job {name}")


def _when(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``when`` of --cron, --every, --at or --in (None: none given)."""
    if args.cron is not None:
        return {"type": "cron", "cron": args.cron}
    if args.every is not None:
        return {"type": "interval", "interval_seconds": args.every}
    if args.at is not None:
        return {"type": "scheduled", "date": args.at}
    if args.delay is not None:
        return {"type": "delayed", "delay_in_seconds": args.delay}
    return None


def _orch() -> Any:
    from orchestrator.facade import Orchestrator

    return Orchestrator()


def _print_json(value: Any) -> None:
    output.emit(value)


def cmd_create(args: argparse.Namespace) -> int:
    tags = parse_tags(args.tag)
    with _orch() as orch:
        made = orch.schedules.create(
            args.worker,
            args.input,
            _when(args),
            budget=args.budget,
            tags=tags or None,  # none given: a worker's earlier job's
            timezone=args.tz,
            catch_up=args.catch_up,
            overlap=args.overlap,
            queue_ttl=args.queue_ttl,
            idle_timeout=args.idle_timeout,
            deadline=args.deadline,
        )
        stored = orch.schedules.get(made.id)
    if args.json:
        _print_json({**made.to_wire(), "tags": dict(stored.tags)})
    else:
        print(f"{made.id}  {made.type}  next run {output.when(made.to_wire()['nextRunAt'])}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    if args.clear_tags and args.tag:
        raise InputError("tags", "give --tag or --clear-tags, not both")
    # {} clears them; None (no --tag) leaves them as they are.
    tags = {} if args.clear_tags else parse_tags(args.tag) or None
    with _orch() as orch:
        stored = orch.schedules.update(
            args.schedule_id,
            input=args.input,
            when=_when(args),
            timezone=args.tz,
            budget=args.budget,
            tags=tags,
            catch_up=args.catch_up,
            overlap=args.overlap,
            queue_ttl=args.queue_ttl,
            idle_timeout=args.idle_timeout,
            deadline=args.deadline,
        )
    wire = stored.wire().to_wire()
    if args.json:
        _print_json({**wire, "tags": dict(stored.tags), "status": stored.status})
    else:
        when = output.when(wire["nextRunAt"]) if stored.status == "active" else stored.status
        print(f"{stored.id}  {stored.kind}  updated; next run {when}")
    return 0


#: Columns shown as times, and as money (integer micro-dollars).
_TIMES = {"nextRunAt", "next_run_at", "slot", "fired_at"}
_MONEY = {"cost_micro"}


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        return "-"
    if column in _TIMES:
        return output.when(value)
    if column in _MONEY:
        return output.usd(int(value))
    return str(value)


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    headers = [c.replace("_micro", "").upper() for c in columns]
    output.table(headers, [[_cell(r, c) for c in columns] for r in rows])


def cmd_list(args: argparse.Namespace) -> int:
    with _orch() as orch:
        if args.worker:
            listing = orch.schedules.list(args.worker)
            if args.json:
                _print_json(listing.to_wire())
                return 0
            rows = [s.to_wire() for s in listing.schedules]
            print(f"worker {listing.worker_id}: {len(rows)} schedule(s)")
            _table(rows, ("id", "type", "nextRunAt", "budget", "input"))
            return 0
        found = orch.schedules.list_all(include_finished=args.all)
    if args.json:
        _print_json(found)
    elif not found:
        print("no schedules" if args.all else "no live schedules (--all: done ones too)")
    else:
        _table(found, ("id", "status", "when", "next_run_at", "runs", "missed", "skipped"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _orch() as orch:
        info = orch.schedules.describe(args.schedule_id)
    if args.json:
        _print_json(info)
        return 0
    keys = ("id", "status", "when", "worker_id", "budget", "timezone", "catch_up", "overlap")
    rows: list[tuple[str, object]] = [(k, "-" if info[k] is None else info[k]) for k in keys]
    rows.append(("tags", " ".join(f"{k}={v}" for k, v in sorted(info["tags"].items())) or "-"))
    counts = info["counts"]
    rows += [
        ("created", output.when(info["created_at"])),
        ("runs", f"{counts.get('runs', 0)} done, {counts.get('missed', 0)} missed, "
                 f"{counts.get('skipped', 0)} skipped"),
        ("cost", f"{output.usd(info['cost']['total_cost_micro'])} over "
                 f"{info['cost']['turns']} turn(s)"),
    ]  # fmt: skip
    nxt = [output.when(at) for at in info["next_runs"]] or ["-"]
    rows += [("next runs" if i == 0 else "", at) for i, at in enumerate(nxt)]  # one a line
    output.fields(rows, width=12)
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    sid = args.schedule_id
    with _orch() as orch:
        api = orch.schedules
        result: dict[str, Any] = {"id": sid, "action": args.action}
        if args.action == "trigger":
            slot = api.trigger(sid)
            result.update(slot=output.when(slot), slot_ms=slot)
            text = f"{sid}: run sent for slot {output.when(slot)}"
        else:
            change = {"pause": api.pause, "resume": api.resume}.get(args.action)
            changed = change(sid) if change else api.cancel(sid).cancelled
            result["changed"] = bool(changed)
            done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[args.action]
            text = f"{sid}: {done if changed else 'unchanged'}"
    if args.json:
        _print_json(result)
    else:
        print(output.clean(text))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise InputError("limit", "must be at least 1")
    with _orch() as orch:
        runs = orch.schedules.history(args.schedule_id, args.limit)
    if args.json:
        _print_json(runs)
    else:
        _table(runs, ("slot", "fired_at", "status", "job_id", "job_status", "cost_micro"))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    with _orch() as orch:
        result = orch.schedules.import_upstream(args.worker, cancel_upstream=args.cancel_upstream)
    if args.json:
        _print_json({**result, "imported": [s.to_wire() for s in result["imported"]]})
        return 0
    for s in result["imported"]:
        print(f"imported {s.id}  {s.type}  next run {output.when(s.to_wire()['nextRunAt'])}")
    for up in result["already"]:
        print(output.clean(f"already imported upstream {up}"))
    for up in result["cancelled_upstream"]:
        print(output.clean(f"cancelled upstream {up}"))
    return 0


def run_beat(args: argparse.Namespace) -> int:
    """Run ``celery beat`` with the Redis scheduler; refuses an evicting Redis first."""
    if args.max_interval <= 0:
        raise InputError("max_interval", "must be positive")
    if args.batch < 1:
        raise InputError("batch", "must be at least 1")
    if args.resend_after <= 0:
        raise InputError("resend_after", "must be positive")
    if args.misfire_grace is not None and args.misfire_grace < 0:
        raise InputError("misfire_grace", "must not be negative")
    from orchestrator.celery import app, celery_config
    from orchestrator.runtime import store_for
    from orchestrator.schedules.beat import CONF_BATCH, CONF_GRACE, CONF_RESEND_AFTER
    from orchestrator.settings import load_settings

    settings = load_settings()
    celery_config(settings)  # one line, not a traceback, if REDIS_URL is missing
    store = store_for(settings)
    try:
        store.check_eviction_policy()
    finally:
        store.close()
    app.conf.update(
        {
            CONF_BATCH: args.batch,
            CONF_RESEND_AFTER: args.resend_after,
            "beat_max_loop_interval": args.max_interval,
        }
    )
    if args.misfire_grace is not None:  # else the beat reads SCHEDULE_MISFIRE_GRACE
        app.conf[CONF_GRACE] = args.misfire_grace
    if args.json:
        output.emit_line({"scheduler": SCHEDULER})
    print(f"starting beat ({SCHEDULER})", file=sys.stderr, flush=True)
    exposition.serve("beat", exposition.wanted(args, settings))
    app.start(["beat", "-S", SCHEDULER, "--loglevel", args.loglevel])
    return 0
