"""Traffic control shared by the whole fleet: per-key concurrency limits and one
upstream rate limit, both kept in Redis.

Concurrency: at most N running turns per tag value (``tag:tenant=acme``) or budget tier
(``budget:high``). A job over a limit waits in a list of its fairness group (the value
of the ``FAIR_SHARE_TAG`` tag, e.g. its tenant); when a turn ends its slot goes to the
next waiting job, round-robin across groups, and that job is sent again. No polling.

Rate: a GCRA limiter on requests per second for every client on every machine, plus a
fleet-wide pause: one 429 with ``Retry-After`` pauses every client for that long.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from orchestrator import rules
from orchestrator.errors import InputError
from orchestrator.jobs.model import Job
from orchestrator.ops.instruments import RATE_LIMIT_WAITS
from orchestrator.store.batch import Queue
from orchestrator.store.cells import one_tenant
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.spend import AsyncRateStore, LimitStore, RateStore
from orchestrator.wire.models import BUDGETS

MAX_RATE_WAIT = 60.0


def check_limit_key(key: str) -> str:
    """``tag:key=value`` or ``budget:<tier>``; InputError naming ``key`` otherwise."""
    if isinstance(key, str):
        kind, _, rest = key.partition(":")
        if kind == "budget" and rest in BUDGETS:
            return key
        tag, sep, value = rest.partition("=")
        if kind == "tag" and sep and rules.TAG_KEY.ok(tag) and rules.TAG_VALUE.ok(value):
            return key
    raise InputError("key", f"{rules.shown(key)} is not 'tag:key=value' or 'budget:<tier>'")


class Limits:
    """Per-key concurrency limits: the policy over a :class:`LimitStore`."""

    def __init__(self, store: RedisStore, fair_tag: str = "tenant") -> None:
        self.slots = LimitStore(store)
        self.fair_tag = fair_tag

    def set(self, key: str, limit: int) -> None:
        checked = check_limit_key(key)
        one_tenant(self.slots.cells, checked, "key")
        self.slots.set(checked, rules.limit_value(limit, "limit"))

    def remove(self, key: str) -> bool:
        return self.slots.remove(check_limit_key(key))

    def all(self) -> dict[str, int]:
        return self.slots.all()

    def candidate_keys(self, job: Job) -> list[str]:
        """Every key a limit could be set on for this job (set or not)."""
        return [f"budget:{job.budget}", *(f"tag:{k}={v}" for k, v in sorted(job.tags.items()))]

    def group(self, job: Job) -> str:
        return job.tags.get(self.fair_tag, "_")

    def acquire(self, job: Job) -> str | None:
        """Take a slot of every limited key; None if taken, else the key it waits on."""
        return self.slots.acquire(job.id, self.group(job), self.candidate_keys(job))

    def release(self, job: Job) -> list[str]:
        """Free the job's slots; returns the waiting jobs that got them (send them again)."""
        return self.slots.release(job.id, self.candidate_keys(job), now_ms())

    def leave_waiting(self, job: Job) -> bool:
        """Take the job out of a limit's queue without a slot (it ended while waiting)."""
        return self.slots.leave_waiting(job.id, self.group(job))

    def reclaim_gone(self) -> tuple[int, list[str]]:
        """Free the slots held by jobs whose record is gone (deleted by hand, or lost
        with a Redis that came back without it): no end of theirs will ever free them.
        Returns the slots freed and the waiting jobs that got them (send them again).
        The script that frees a slot looks for the record again, so a live job's slot is
        kept, and of two sweeps at once only one frees it."""
        freed, promoted = 0, []
        for key, job_id in self.slots.gone_holders(list(self.all())):
            got = self.slots.release_gone(job_id, key, now_ms())
            if got is not None:
                freed += 1
                promoted += got
        return freed, promoted

    def release_into(self, batch: Queue, job: Job) -> int:
        """Queue :meth:`release`; the index of its reply (the promoted job ids)."""
        return self.slots.release_into(batch, job.id, self.candidate_keys(job), now_ms())

    def status(self) -> list[dict[str, Any]]:
        """Per limited key: limit, running, waiting (all groups)."""
        rows = []
        for key, limit in self.all().items():
            running, waiting = self.slots.usage(key)
            rows.append({"key": key, "limit": limit, "running": running, "waiting": waiting})
        return rows


class _Rate:
    """What both rate limiters share: the GCRA settings."""

    def __init__(self, per_second: float, burst: int = 1) -> None:
        if per_second <= 0:
            raise InputError("per_second", "must be positive")
        self.interval_ms = 1000.0 / per_second
        self.burst = max(1, burst)
        self.waits = 0

    @staticmethod
    def _pause_until(seconds: float) -> int:
        return now_ms() + int(seconds * 1000)


class FleetRate(_Rate):
    """Requests per second for the whole fleet (GCRA in Redis) and a shared 429 pause.

    Give an instance to the clients as their ``throttle``: they call :meth:`before`
    before every attempt and :meth:`rate_limited` when the API answers 429.
    """

    def __init__(self, rates: RateStore, per_second: float, burst: int = 1) -> None:
        super().__init__(per_second, burst)
        self.rates = rates

    def before(self, call: str) -> None:
        """Block until the fleet may send one more request."""
        deadline = time.monotonic() + MAX_RATE_WAIT
        while True:
            wait_ms = self.rates.acquire(now_ms(), self.interval_ms, self.burst)
            if wait_ms <= 0 or time.monotonic() > deadline:
                return
            self.waits += 1
            RATE_LIMIT_WAITS.inc()
            time.sleep(wait_ms / 1000)

    def rate_limited(self, seconds: float) -> None:
        """Pause every client of the fleet for ``seconds`` (the API's Retry-After)."""
        self.rates.pause(self._pause_until(seconds))


class AsyncFleetRate(_Rate):
    """:class:`FleetRate` for asyncio clients (over an :class:`AsyncRateStore`)."""

    def __init__(self, rates: AsyncRateStore, per_second: float, burst: int = 1) -> None:
        super().__init__(per_second, burst)
        self.rates = rates

    async def before(self, call: str) -> None:
        deadline = time.monotonic() + MAX_RATE_WAIT
        while True:
            wait_ms = await self.rates.acquire(now_ms(), self.interval_ms, self.burst)
            if wait_ms <= 0 or time.monotonic() > deadline:
                return
            self.waits += 1
            RATE_LIMIT_WAITS.inc()
            await asyncio.sleep(wait_ms / 1000)

    async def rate_limited(self, seconds: float) -> None:
        await self.rates.pause(self._pause_until(seconds))
