"""Webhook subscriptions and their deliveries.

A subscription's record (URL, events, tenant) is kept apart from its signing secret, so
listing never reads a secret. A delivery is one event for one subscription; its id is
derived from both, so recording it twice (a step run again) adds nothing. Deliveries to
(re)try wait in a due set by time; the sweep claims what is due (moving it a claim
window ahead, so a lost task is sent again), a delivered one leaves the set, and one
whose last attempt failed goes to the dead set until it is replayed.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from orchestrator.store.batch import Batch
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.scripts.jobs import CLAIM_DUE

#: How long a delivered delivery's record is kept (for ``list`` and debugging).
DELIVERED_KEEP_SECONDS = 7 * 86_400


class WebhookStore:
    def __init__(self, store: RedisStore) -> None:
        self.r: Any = store.r
        self.keys = store.keys

    @cached_property
    def _claim(self) -> Any:
        # Made on first use: a store is made for each job's end, to count subscriptions.
        return self.r.register_script(CLAIM_DUE)

    # --- subscriptions ---------------------------------------------------------------

    def add(self, record: dict[str, Any], secret: str) -> None:
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.webhooks, record["id"], json.dumps(record, sort_keys=True))
            pipe.hset(self.keys.webhook_secrets, record["id"], secret)
            pipe.execute()

    def count_into(self, batch: Batch) -> int:
        """Queue a count of the subscriptions; the index of its reply."""
        batch.pipe.hlen(self.keys.webhooks)
        return len(batch.pipe) - 1

    def subscriptions(self) -> list[dict[str, Any]]:
        records = [json.loads(raw) for raw in self.r.hvals(self.keys.webhooks)]
        return sorted(records, key=lambda r: (r["created_at"], r["id"]))

    def get(self, sub_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.keys.webhooks, sub_id)
        return None if raw is None else dict(json.loads(raw))

    def secret(self, sub_id: str) -> str | None:
        raw = self.r.hget(self.keys.webhook_secrets, sub_id)
        return None if raw is None else str(raw.decode() if isinstance(raw, bytes) else raw)

    def remove(self, sub_id: str) -> bool:
        """Forget the subscription and its secret; its pending deliveries are dropped
        when their turn comes. False if there was none."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.webhooks, sub_id)
            pipe.hdel(self.keys.webhook_secrets, sub_id)
            removed, _ = pipe.execute()
        return bool(removed)

    # --- deliveries ------------------------------------------------------------------

    def record(self, delivery_id: str, fields: dict[str, str], due_ms: int) -> bool:
        """Record a delivery and put it up to be sent; False (nothing written) if it was
        recorded before."""
        key = self.keys.webhook_delivery(delivery_id)
        if not self.r.hsetnx(key, "subscription", fields["subscription"]):
            return False
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={**fields, "attempts": 0, "state": "pending"})
            pipe.zadd(self.keys.webhooks_due, {delivery_id: due_ms})
            pipe.execute()
        return True

    def delivery(self, delivery_id: str) -> dict[str, str] | None:
        raw = self.r.hgetall(self.keys.webhook_delivery(delivery_id))
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

    def claim_due(self, now: int, claim_ms: int, most: int = 100) -> list[str]:
        """Deliveries due by ``now``, moved ``claim_ms`` ahead (sent again after that
        unless their attempt settles them first)."""
        due = self._claim(keys=[self.keys.webhooks_due], args=[now, now + claim_ms, most])
        return [_text(d) for d in due]

    def next_due(self) -> int | None:
        first = self.r.zrange(self.keys.webhooks_due, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    def attempted(self, delivery_id: str, error: str | None, retry_at: int | None) -> None:
        """After an attempt: delivered (``error`` None), to try again at ``retry_at``, or
        dead (no ``retry_at``)."""
        key = self.keys.webhook_delivery(delivery_id)
        now = now_ms()
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "attempts", 1)
            pipe.hset(key, mapping={"updated_at": now, "last_error": error or ""})
            if error is None:
                pipe.hset(key, "state", "delivered")
                pipe.zrem(self.keys.webhooks_due, delivery_id)
                pipe.zrem(self.keys.webhooks_dead, delivery_id)
                pipe.expire(key, DELIVERED_KEEP_SECONDS)
            elif retry_at is not None:
                pipe.hset(key, "state", "pending")
                pipe.zadd(self.keys.webhooks_due, {delivery_id: retry_at})
            else:
                pipe.hset(key, "state", "failed")
                pipe.zrem(self.keys.webhooks_due, delivery_id)
                pipe.zadd(self.keys.webhooks_dead, {delivery_id: now})
            pipe.execute()

    def drop(self, delivery_id: str, why: str) -> None:
        """Give up on a delivery with no subscription any more (nothing to send to)."""
        key = self.keys.webhook_delivery(delivery_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"state": "dropped", "last_error": why})
            pipe.expire(key, DELIVERED_KEEP_SECONDS)
            pipe.zrem(self.keys.webhooks_due, delivery_id)
            pipe.zrem(self.keys.webhooks_dead, delivery_id)
            pipe.execute()

    def dead(self, limit: int = 1000) -> list[dict[str, str]]:
        """Dead deliveries, newest first (without their payloads)."""
        ids = [_text(i) for i in self.r.zrevrange(self.keys.webhooks_dead, 0, limit - 1)]
        out = []
        for delivery_id in ids:
            found = self.delivery(delivery_id)
            if found is not None:
                found.pop("payload", None)
                out.append({"id": delivery_id, **found})
        return out

    def replay(self, delivery_id: str) -> bool:
        """Put a dead delivery up again, its attempts counted from zero (same event id,
        so a receiver that did get it once dedupes it). False if it is not dead."""
        if self.r.zscore(self.keys.webhooks_dead, delivery_id) is None:
            return False
        key = self.keys.webhook_delivery(delivery_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"attempts": 0, "state": "pending"})
            pipe.zrem(self.keys.webhooks_dead, delivery_id)
            pipe.zadd(self.keys.webhooks_due, {delivery_id: now_ms()})
            pipe.execute()
        return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
