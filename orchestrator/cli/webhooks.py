"""``orchestrator webhooks``: subscriptions (create, list, delete) and the deliveries
that failed for good (list-failed, replay)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from orchestrator import rules
from orchestrator.cli import output
from orchestrator.cli.output import json_option
from orchestrator.errors import InputError
from orchestrator.settings import load_settings


def register(sub: Any) -> None:
    hooks = sub.add_parser("webhooks", help="webhook subscriptions and failed deliveries")
    wsub = hooks.add_subparsers(dest="webhooks_command", metavar="ACTION", required=True)
    create = wsub.add_parser("create", help="subscribe a URL (its signing secret is shown once)")
    create.add_argument("url", help="the http or https URL events are posted to")
    create.add_argument(
        "--event", action="append", required=True, dest="events", metavar="EVENT",
        help=f"an event to send (repeat for several): {', '.join(rules.WEBHOOK_EVENTS)}",
    )  # fmt: skip
    create.add_argument("--tenant", default=None, help="only the events of this tenant's jobs")
    json_option(create, "print the record and the secret as JSON")
    create.set_defaults(func=run_create)
    lst = wsub.add_parser("list", help="the subscriptions (never their secrets)")
    json_option(lst, "print the records as JSON")
    lst.set_defaults(func=run_list)
    delete = wsub.add_parser("delete", help="end a subscription by its id")
    delete.add_argument("id", help="the subscription's id (whk_...)")
    json_option(delete, 'print {"id", "deleted"}')
    delete.set_defaults(func=run_delete)
    failed = wsub.add_parser("list-failed", help="deliveries whose every attempt failed")
    json_option(failed, "print the deliveries as JSON")
    failed.set_defaults(func=run_list_failed)
    replay = wsub.add_parser("replay", help="try a failed delivery again (same webhook-id)")
    replay.add_argument("id", help="the delivery's id (dlv_...)")
    json_option(replay, 'print {"id", "replayed"}')
    replay.set_defaults(func=run_replay)


def _store() -> Any:
    from orchestrator.runtime import store_for
    from orchestrator.store.webhooks import WebhookStore

    return WebhookStore(store_for(load_settings()))


def _shown(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "created_at": output.when(record["created_at"])}


def run_create(args: argparse.Namespace) -> int:
    from orchestrator.hooks.events import subscribe

    allow = load_settings().webhook_allow_private
    record, secret = subscribe(_store(), args.url, args.events, args.tenant, allow_private=allow)
    if args.json:
        output.emit({**_shown(record), "secret": secret})
        return 0
    output.fields([("id", record["id"]), ("url", record["url"]),
                   ("events", ",".join(record["events"])), ("tenant", record["tenant"] or "-"),
                   ("secret", secret)])  # fmt: skip
    print("the secret is shown only now: verify the webhook-signature header with it",
          file=sys.stderr)  # fmt: skip
    return 0


def run_list(args: argparse.Namespace) -> int:
    records = [_shown(r) for r in _store().subscriptions()]
    if args.json:
        output.emit(records)
        return 0
    if not records:
        print("no webhook subscriptions (add one: orchestrator webhooks create URL)")
        return 0
    rows = [[r["id"], r["tenant"] or "-", ",".join(r["events"]), r["created_at"], r["url"]]
            for r in records]  # fmt: skip
    output.table(["id", "tenant", "events", "created", "url"], rows)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    sub_id = rules.SUBSCRIPTION_ID.check(args.id, "id")
    if not _store().remove(sub_id):
        raise InputError("id", f"no webhook subscription {sub_id}")
    return output.done(args.json, {"id": sub_id, "deleted": True}, f"deleted {sub_id}")


def run_list_failed(args: argparse.Namespace) -> int:
    dead = _store().dead()
    shown = [{**d, "updated_at": output.when(int(d["updated_at"])) if d.get("updated_at")
              else None} for d in dead]  # fmt: skip
    if args.json:
        output.emit(shown)
        return 0
    if not shown:
        print("no failed deliveries")
        return 0
    rows = [[d["id"], d.get("event", ""), d.get("subscription", ""), d.get("attempts", ""),
             d["updated_at"] or "-", d.get("last_error", "")] for d in shown]  # fmt: skip
    output.table(["id", "event", "subscription", "attempts", "last", "error"], rows)
    return 0


def run_replay(args: argparse.Namespace) -> int:
    delivery_id = rules.DELIVERY_ID.check(args.id, "id")
    if not _store().replay(delivery_id):
        raise InputError("id", f"no failed delivery {delivery_id}")
    return output.done(
        args.json,
        {"id": delivery_id, "replayed": True},
        f"replaying {delivery_id}: sent again within a second by a streams worker",
    )
