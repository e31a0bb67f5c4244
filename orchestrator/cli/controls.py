"""Spend and traffic commands: ``orchestrator budgets ...`` and ``orchestrator limits ...``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from orchestrator import rules
from orchestrator.cli import output
from orchestrator.cli.output import json_option
from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.settings import load_settings

PERIOD_HELP = "the cap's period, a UTC day or month (default day)"

BAR = 24


def register(sub: Any) -> None:
    actions = _shown_group(
        sub, "budgets", "budget caps: show (default), set, remove",
        "spent, reserved and cap per scope, with a bar", "print {caps: [...]}", run_budgets_show,
    )  # fmt: skip
    put = actions.add_parser("set", help="create or replace a cap")
    put.add_argument("scope", metavar="SCOPE", help="'global' or 'tag:key=value'")
    put.add_argument("--usd", required=True, help="the cap in USD, e.g. 25 or 12.50")
    put.add_argument("--period", choices=("day", "month"), default="day", help=PERIOD_HELP)
    put.add_argument("--warn-at", type=float, default=0.8, help="warn at this share (0-1]")
    put.add_argument(
        "--on-exceed", choices=("refuse", "wait"), default="refuse",
        help="over the cap a job is refused, or waits for the next period (default refuse)",
    )  # fmt: skip
    json_option(put, "print the cap as JSON")
    put.set_defaults(func=run_budgets_set)
    rm = actions.add_parser("remove", help="remove a cap")
    rm.add_argument("scope", metavar="SCOPE", help="'global' or 'tag:key=value'")
    rm.add_argument("--period", choices=("day", "month"), default="day", help=PERIOD_HELP)
    json_option(rm, 'print {"removed": {scope, period}}')
    rm.set_defaults(func=run_budgets_remove)

    lact = _shown_group(
        sub, "limits", "concurrency limits: show (default), set, remove",
        "each limit with its running and waiting turns", "print {limits: [...]}", run_limits_show,
    )  # fmt: skip
    lset = lact.add_parser("set", help="at most N running turns for KEY")
    lset.add_argument("key", metavar="KEY", help="'tag:key=value' or 'budget:<tier>'")
    lset.add_argument("limit", metavar="N", type=int, help=f"1 to {rules.LIMIT_MAX}")
    json_option(lset, 'print {"key", "limit"}')
    lset.set_defaults(func=run_limits_set)
    lrm = lact.add_parser("remove", help="remove a limit")
    lrm.add_argument("key", metavar="KEY", help="'tag:key=value' or 'budget:<tier>'")
    json_option(lrm, 'print {"removed": KEY}')
    lrm.set_defaults(func=run_limits_remove)


def _shown_group(
    sub: Any, name: str, text: str, show_text: str, json_text: str, show: Callable[..., int]
) -> Any:
    """``orchestrator NAME`` and ``NAME show`` both run ``show``; the group's action
    parsers, for its other actions."""
    group = sub.add_parser(name, help=text)
    json_option(group, json_text)
    group.set_defaults(func=show)
    actions = group.add_subparsers(dest="action", metavar="ACTION")
    shown = actions.add_parser("show", help=show_text)
    json_option(shown, json_text)
    shown.set_defaults(func=show)
    return actions


def _bar(ratio: float) -> str:
    filled = min(BAR, round(ratio * BAR))
    return "[" + "#" * filled + "." * (BAR - filled) + "]"


def _said_all(args: argparse.Namespace, name: str, rows: list[Any], none: str) -> bool:
    """Print ``{name: rows}`` with ``--json``, or ``none`` when there are no rows; True
    when that was all there is to print (else the caller prints its table)."""
    if args.json:
        output.emit({name: rows})
        return True
    if not rows:
        print(none)
        return True
    return False


def run_budgets_show(args: argparse.Namespace) -> int:
    with Orchestrator(load_settings()) as orch:
        rows = orch.budgets.status()
    if _said_all(
        args, "caps", rows, "no budget caps (set one: orchestrator budgets set global --usd 50)"
    ):
        return 0
    print(f"{'cap':<28} {'period':<10} {'spent':>12} {'reserved':>12} {'cap':>12}  use")
    for row in rows:
        mark = " !" if row["ratio"] >= row["warn_at"] else ""
        print(
            f"{row['cap']:<28} {row['period']:<10} {output.usd(row['spent_micro']):>12} "
            f"{output.usd(row['reserved_micro']):>12} {output.usd(row['cap_micro']):>12}  "
            f"{_bar(row['ratio'])} {row['ratio'] * 100:5.1f}%{mark}"
        )
        if row["overshoots"]:
            print(
                f"{'':<28} {row['overshoots']} turn(s) cost more than their hold, "
                f"by {output.usd(row['overshoot_micro'])} in all"
            )
    return 0


def run_budgets_set(args: argparse.Namespace) -> int:
    usd = rules.new_cap_usd(args.usd, "usd")
    with Orchestrator(load_settings()) as orch:
        cap = orch.budgets.set_cap(
            scope=args.scope, period=args.period, limit_usd=usd, warn_at=args.warn_at,
            on_exceed=args.on_exceed,
        )  # fmt: skip
    if args.json:
        output.emit(
            {
                "cap": cap.name, "period": args.period, "cap_micro": cap.limit_micro,
                "warn_at": args.warn_at, "on_exceed": cap.on_exceed,
            }
        )  # fmt: skip
    else:
        print(f"cap {cap.name}: {output.usd(cap.limit_micro)}, {cap.on_exceed} when reached")
    return 0


def run_budgets_remove(args: argparse.Namespace) -> int:
    with Orchestrator(load_settings()) as orch:
        removed = orch.budgets.remove_cap(args.scope, args.period)
    if not removed:
        raise InputError("scope", f"no cap {args.scope}/{args.period}")
    return output.done(
        args.json,
        {"removed": {"scope": args.scope, "period": args.period}},
        output.clean(f"removed cap {args.scope}/{args.period}"),
    )


def run_limits_show(args: argparse.Namespace) -> int:
    with Orchestrator(load_settings()) as orch:
        rows = orch.limits.status()
    if _said_all(
        args,
        "limits",
        rows,
        "no concurrency limits (set one: orchestrator limits set tag:tenant=acme 5)",
    ):
        return 0
    print(f"{'key':<32} {'limit':>6} {'running':>8} {'waiting':>8}")
    for row in rows:
        print(f"{row['key']:<32} {row['limit']:>6} {row['running']:>8} {row['waiting']:>8}")
    return 0


def run_limits_set(args: argparse.Namespace) -> int:
    with Orchestrator(load_settings()) as orch:
        orch.limits.set(args.key, args.limit)
    return output.done(
        args.json,
        {"key": args.key, "limit": args.limit},
        output.clean(f"limit {args.key}: at most {args.limit} running"),
    )


def run_limits_remove(args: argparse.Namespace) -> int:
    with Orchestrator(load_settings()) as orch:
        if not orch.limits.remove(args.key):
            raise InputError("key", f"no limit on {args.key}")
    return output.done(args.json, {"removed": args.key}, output.clean(f"removed limit {args.key}"))
