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

from orchestrator.errors import InputError
from orchestrator.jobs.model import TAG_KEY, TAG_VALUE, Job
from orchestrator.ops.instruments import RATE_LIMIT_WAITS
from orchestrator.store.batch import Batch
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.keys import Keys
from orchestrator.store.scripts import spend as spend_scripts
from orchestrator.wire.models import BUDGETS

MAX_RATE_WAIT = 60.0


def check_limit_key(key: str) -> str:
    """``tag:key=value`` or ``budget:<tier>``; InputError naming ``key`` otherwise."""
    kind, _, rest = key.partition(":")
    if kind == "budget" and rest in BUDGETS:
        return key
    tag, sep, value = rest.partition("=")
    if kind == "tag" and sep and TAG_KEY.match(tag) and TAG_VALUE.match(value):
        return key
    raise InputError("key", f"{key!r} is not 'tag:key=value' or 'budget:<tier>'")


class Limits:
    """Per-key concurrency limits over one :class:`RedisStore`."""

    def __init__(self, store: RedisStore, fair_tag: str = "tenant") -> None:
        self.store = store
        self.r = store.r
        self.keys = store.keys
        self.fair_tag = fair_tag
        self._acquire = self.r.register_script(spend_scripts.ACQUIRE_SLOTS)
        self._promote = self.r.register_script(spend_scripts.PROMOTE_WAITING)

    def set(self, key: str, limit: int) -> None:
        if not isinstance(limit, int) or limit < 1:
            raise InputError("limit", "must be a whole number of at least 1")
        self.r.hset(self.keys.limits, check_limit_key(key), limit)

    def remove(self, key: str) -> bool:
        return bool(self.r.hdel(self.keys.limits, check_limit_key(key)))

    def all(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.r.hgetall(self.keys.limits).items())}

    def candidate_keys(self, job: Job) -> list[str]:
        """Every key a limit could be set on for this job (set or not)."""
        return [f"budget:{job.budget}", *(f"tag:{k}={v}" for k, v in sorted(job.tags.items()))]

    def group(self, job: Job) -> str:
        return job.tags.get(self.fair_tag, "_")

    def acquire(self, job: Job) -> str | None:
        """Take a slot of every limited key; None if taken, else the key it waits on."""
        keys = self.candidate_keys(job)
        script_keys = [self.keys.limits, self.keys.limit_parked]
        for key in keys:
            script_keys += [self.keys.limit_running(key), self.keys.limit_groups(key)]
        args = [job.id, self.group(job), len(keys), *keys, self.keys.prefix]
        result = self._acquire(keys=script_keys, args=args)
        return None if int(result[0]) == 1 else str(result[1])

    def release(self, job: Job) -> list[str]:
        """Free the job's slots; returns the waiting jobs that got them (send them again)."""
        batch = Batch(self.r)
        index = self.release_into(batch, job)
        return [str(j) for j in batch.execute()[index]]

    def release_into(self, batch: Batch, job: Job) -> int:
        """Queue :meth:`release`; the index of its reply (the promoted job ids)."""
        keys = self.candidate_keys(job)
        script_keys = [self.keys.limits, self.keys.limit_parked, self.keys.outbox]
        for key in keys:
            script_keys += [self.keys.limit_running(key), self.keys.limit_groups(key)]
        args = [job.id, now_ms(), len(keys), *keys, self.keys.prefix]
        return batch.script(self._promote, script_keys, args)

    def status(self) -> list[dict[str, Any]]:
        """Per limited key: limit, running, waiting (all groups)."""
        rows = []
        for key, limit in self.all().items():
            groups = self.r.lrange(self.keys.limit_groups(key), 0, -1)
            waiting = sum(self.r.llen(self.keys.limit_waiting(key, g)) for g in groups)
            running = self.r.scard(self.keys.limit_running(key))
            rows.append({"key": key, "limit": limit, "running": running, "waiting": waiting})
        return rows


class _Rate:
    """What both rate limiters share: the GCRA settings and the registered scripts."""

    def __init__(self, r: Any, keys: Keys, per_second: float, burst: int = 1) -> None:
        if per_second <= 0:
            raise InputError("per_second", "must be positive")
        self.key = keys.rate
        self.interval_ms = 1000.0 / per_second
        self.burst = max(1, burst)
        self._acquire = r.register_script(spend_scripts.RATE_ACQUIRE)
        self._pause = r.register_script(spend_scripts.RATE_PAUSE)
        self.waits = 0

    def _args(self) -> list[float]:
        return [now_ms(), self.interval_ms, self.burst]

    def _pause_args(self, seconds: float) -> list[int]:
        return [now_ms() + int(seconds * 1000)]


class FleetRate(_Rate):
    """Requests per second for the whole fleet (GCRA in Redis) and a shared 429 pause.

    Give an instance to the clients as their ``throttle``: they call :meth:`before`
    before every attempt and :meth:`rate_limited` when the API answers 429.
    """

    def before(self, call: str) -> None:
        """Block until the fleet may send one more request."""
        deadline = time.monotonic() + MAX_RATE_WAIT
        while True:
            wait_ms = int(self._acquire(keys=[self.key], args=self._args()))
            if wait_ms <= 0 or time.monotonic() > deadline:
                return
            self.waits += 1
            RATE_LIMIT_WAITS.inc()
            time.sleep(wait_ms / 1000)

    def rate_limited(self, seconds: float) -> None:
        """Pause every client of the fleet for ``seconds`` (the API's Retry-After)."""
        self._pause(keys=[self.key], args=self._pause_args(seconds))


class AsyncFleetRate(_Rate):
    """:class:`FleetRate` for asyncio clients (a redis.asyncio client)."""

    async def before(self, call: str) -> None:
        deadline = time.monotonic() + MAX_RATE_WAIT
        while True:
            wait_ms = int(await self._acquire(keys=[self.key], args=self._args()))
            if wait_ms <= 0 or time.monotonic() > deadline:
                return
            self.waits += 1
            RATE_LIMIT_WAITS.inc()
            await asyncio.sleep(wait_ms / 1000)

    async def rate_limited(self, seconds: float) -> None:
        await self._pause(keys=[self.key], args=self._pause_args(seconds))
