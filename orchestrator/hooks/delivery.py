"""Attempting deliveries: the sweep sends a ``workers.deliver_webhook`` task (its only
argument the delivery id) for each delivery due; the task posts the signed event once.
A 2xx answer delivers it; anything else (another status, a refused or unreachable
target, a timeout) puts it up again after an exponential backoff (``wire.retry``'s
ceiling: ``WEBHOOK_BACKOFF_SECONDS`` doubled per attempt, up to
``WEBHOOK_BACKOFF_MAX_SECONDS``), until ``WEBHOOK_MAX_ATTEMPTS``; then it is dead
(``orchestrator webhooks list-failed`` / ``replay``). At least once: a claimed delivery
whose task is lost is sent again when its claim runs out, and the event id (the
``webhook-id`` header) is the same on every attempt, so receivers dedupe.
"""

from __future__ import annotations

import logging
import time

import httpx
from celery import Celery

from orchestrator import rules
from orchestrator.errors import InputError
from orchestrator.hooks import signing
from orchestrator.hooks.targets import check_target
from orchestrator.settings import Settings
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.webhooks import WebhookStore
from orchestrator.wire.deadline import deadline, sync_transport
from orchestrator.wire.retry import backoff_ceiling

log = logging.getLogger(__name__)

TASK = "workers.deliver_webhook"
#: A claimed delivery is sent again after this long unless its attempt settled it (more
#: than an attempt can last: the timeout bounds the whole exchange).
CLAIM_MS = 120_000
#: The most of a receiver's answer read (it is not used; reading it all would let a
#: receiver hold the worker).
ANSWER_MAX_BYTES = 1024


def send_due(app: Celery, store: RedisStore, now: int | None = None) -> int:
    """Send a delivery task for each delivery due; the number sent."""
    hooks = WebhookStore(store)
    due = hooks.claim_due(now_ms() if now is None else now, CLAIM_MS)
    for delivery_id in due:
        app.send_task(TASK, args=[delivery_id], argsrepr=delivery_id)
    return len(due)


def next_due(store: RedisStore) -> int | None:
    return WebhookStore(store).next_due()


def deliver(settings: Settings, store: RedisStore, delivery_id: str) -> str:
    """One attempt at a delivery: ``delivered``, ``retry``, ``failed`` (dead now),
    ``dropped`` (its subscription is gone) or ``skipped`` (not pending)."""
    if not rules.DELIVERY_ID.ok(delivery_id):
        return "skipped"
    hooks = WebhookStore(store)
    found = hooks.delivery(delivery_id)
    if found is None or found.get("state") != "pending":
        return "skipped"
    sub_id = found["subscription"]
    sub, secret = hooks.get(sub_id), hooks.secret(sub_id)
    if sub is None or secret is None:
        hooks.drop(delivery_id, "the subscription was deleted")
        return "dropped"
    error = post(settings, sub["url"], secret, found["msg_id"], found["payload"].encode())
    attempts = int(found.get("attempts", "0")) + 1
    if error is None:
        hooks.attempted(delivery_id, None, None)
        return "delivered"
    if attempts >= settings.webhook_max_attempts:
        log.warning("webhook %s to %s failed %d times: %s; dead", delivery_id, sub_id,
                    attempts, error)  # fmt: skip
        hooks.attempted(delivery_id, error, None)
        return "failed"
    wait = backoff_ceiling(
        attempts, settings.webhook_backoff_seconds, settings.webhook_backoff_max_seconds
    )
    log.info("webhook %s: %s; attempt %d in %.1fs", delivery_id, error, attempts + 1, wait)
    hooks.attempted(delivery_id, error, now_ms() + int(wait * 1000))
    return "retry"


def post(settings: Settings, url: str, secret: str, msg_id: str, body: bytes) -> str | None:
    """POST one signed message; None when the receiver took it (2xx), else why not."""
    try:
        # Resolved and checked before each attempt, not only when subscribed: a name
        # may point elsewhere since.
        check_target(url, settings.webhook_allow_private)
    except InputError as exc:
        return f"target refused: {exc.message}"
    headers = signing.headers(secret, msg_id, int(time.time()), body)
    timeout = settings.webhook_timeout_seconds
    transport = sync_transport(httpx.Limits(max_connections=1))
    try:
        with (
            httpx.Client(transport=transport, timeout=timeout, trust_env=False) as client,
            deadline(timeout),
            client.stream("POST", url, content=body, headers=headers) as answer,
        ):
            read = 0
            for chunk in answer.iter_raw():
                read += len(chunk)
                if read >= ANSWER_MAX_BYTES:
                    break
            status = answer.status_code
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}"
    return None if 200 <= status < 300 else f"answered {status}"
