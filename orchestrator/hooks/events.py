"""Subscriptions, and the events they receive.

A subscription belongs to a tenant (it receives the events of jobs tagged
``tenant=<it>``, and ``budget.threshold`` of caps scoped ``tag:tenant=<it>``) or to no
tenant (every event). An event's id is derived from what happened (a job and the end
state it reached; a cap, its period and its warn line), so recording it again — a step
run twice — finds its deliveries recorded already and sends nothing twice; receivers
dedupe redeliveries by ``webhook-id``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from orchestrator import rules
from orchestrator.errors import InputError
from orchestrator.hooks.signing import new_secret
from orchestrator.hooks.targets import check_target
from orchestrator.jobs.model import Job
from orchestrator.ledger import total_cost_micro
from orchestrator.store.batch import Batch
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.webhooks import WebhookStore

TENANT_TAG = "tenant"
#: Job end states that have an event, and its name.
JOB_EVENTS = {s: f"job.{s}" for s in ("completed", "failed", "cancelled", "expired", "timed_out")}


def subscribe(
    hooks: WebhookStore, url: str, events: list[str], tenant: str | None, *,
    allow_private: bool,
) -> tuple[dict[str, Any], str]:  # fmt: skip
    """A new subscription: (its record; its secret, to show once). InputError naming
    the field for a bad URL (or one whose host may not be reached), event or tenant."""
    url = rules.webhook_url(url)
    events = rules.webhook_events(events)
    if tenant is not None:
        tenant = rules.TAG_VALUE.check(tenant, "tenant")
    check_target(url, allow_private)
    record = {
        "id": "whk_" + secrets.token_hex(8), "url": url, "events": events, "tenant": tenant,
        "created_at": int(time.time() * 1000),
    }  # fmt: skip
    secret = new_secret()
    hooks.add(record, secret)
    return record, secret


def require(hooks: WebhookStore, sub_id: str) -> dict[str, Any]:
    found = hooks.get(rules.SUBSCRIPTION_ID.check(sub_id, "id"))
    if found is None:
        raise InputError("id", f"no webhook subscription {sub_id}")
    return found


def _ids(event_key: str, sub_id: str) -> tuple[str, str]:
    msg_id = "msg_" + hashlib.sha256(event_key.encode()).hexdigest()[:32]
    return msg_id, "dlv_" + hashlib.sha256(f"{msg_id}:{sub_id}".encode()).hexdigest()[:32]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _record(
    hooks: WebhookStore, event_key: str, event: str, at_ms: int, data: dict[str, Any],
    subs: list[dict[str, Any]],
) -> int:  # fmt: skip
    body = json.dumps({"type": event, "timestamp": _iso(at_ms), "data": data}, sort_keys=True)
    made = 0
    now = now_ms()
    for sub in subs:
        msg_id, delivery_id = _ids(event_key, sub["id"])
        fields = {"subscription": sub["id"], "msg_id": msg_id, "event": event,
                  "payload": body, "created_at": str(now)}  # fmt: skip
        made += hooks.record(delivery_id, fields, now)
    return made


def subscribed_into(store: RedisStore, batch: Batch) -> int:
    """Queue a count of the subscriptions (for :func:`job_ended`'s ``subscribed``)."""
    return WebhookStore(store).count_into(batch)


def job_ended(store: RedisStore, job_id: str, subscribed: int | None = None) -> int:
    """Record the deliveries of a job's end event (if it ended, and anyone subscribed);
    the number recorded now. Called after each move to an end state; ``subscribed``: a
    count of the subscriptions read with the move (0 skips the read here)."""
    if subscribed == 0:
        return 0
    hooks = WebhookStore(store)
    subs = hooks.subscriptions()
    if not subs:
        return 0
    job = store.get_job(job_id)
    if job is None or job.status not in JOB_EVENTS:
        return 0
    event = JOB_EVENTS[job.status]
    tenant = job.tags.get(TENANT_TAG)
    wanted = [s for s in subs if event in s["events"] and s["tenant"] in (None, tenant)]
    if not wanted:
        return 0
    return _record(hooks, f"{job.id}:{job.status}", event, _ended_at(job), _job_data(store, job),
                   wanted)  # fmt: skip


def _ended_at(job: Job) -> int:
    return job.timestamps.get(job.status, now_ms())


def _job_data(store: RedisStore, job: Job) -> dict[str, Any]:
    """What a job event says: as the SSE end event, plus tags and ids. A job ended here
    whose turn is settled later has no cost yet (``cost`` null)."""
    cost = store.turn_cost(job.id)
    return {
        "job_id": job.id, "status": job.status, "error": job.error, "tags": job.tags,
        "worker_id": job.worker_id, "schedule_id": job.schedule_id, "cost": cost,
        "cost_micro": total_cost_micro(cost) if cost else None,
    }  # fmt: skip


def budget_crossed(store: RedisStore, row: dict[str, Any], scope: str) -> int:
    """Record the deliveries of a cap's warn line crossed in a period (``row``: the cap's
    status row: cap, period, cap/spent/reserved micro-dollars, ratio, warn_at)."""
    hooks = WebhookStore(store)
    event = "budget.threshold"
    subs = [s for s in hooks.subscriptions() if event in s["events"]
            and (s["tenant"] is None or scope == f"tag:{TENANT_TAG}={s['tenant']}")]  # fmt: skip
    if not subs:
        return 0
    keys = ("cap", "period", "cap_micro", "spent_micro", "reserved_micro", "ratio", "warn_at")
    data = {k: row[k] for k in keys if k in row}
    return _record(hooks, f"budget:{row['cap']}:{row['period']}", event, now_ms(),
                   {**data, "scope": scope}, subs)  # fmt: skip
