"""Spend and traffic control in Redis: budget caps and holds, concurrency limits, and
the fleet rate limit. The policy (what a cap is, which caps apply, period maths,
warnings) is in :mod:`orchestrator.controls`; these classes only read and write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from orchestrator.ledger import COST_FIELDS
from orchestrator.store.batch import Batch, Queue
from orchestrator.store.cells import each_cell
from orchestrator.store.jobs import RedisStore
from orchestrator.store.keys import Keys
from orchestrator.store.scripts import spend as scripts

#: How long a cap's "warned" flag lives: past the end of any period it is set in.
WARNED_TTL_SECONDS = 40 * 86_400


class CapHold(NamedTuple):
    """One cap a reservation is checked against: where its spend is read (a ledger
    rollup), the scope and period key its holds are counted under, and its size."""

    dimension: str
    value: str
    scope: str
    period: str
    limit_micro: int


class Refusal(NamedTuple):
    """A reservation refused: the index of the cap that would be passed, what is left."""

    cap_index: int
    left_micro: int


class BudgetStore:
    """Budget caps (as JSON), holds, overshoots, warning flags and jobs waiting for
    the next period."""

    def __init__(self, store: RedisStore) -> None:
        self.r = store.r
        self.keys = store.keys
        self.cells = store.cells
        self._reserve = self.r.register_script(scripts.RESERVE_BUDGET)
        self._release = self.r.register_script(scripts.RELEASE_HOLD)
        self._settle = self.r.register_script(scripts.SETTLE_HOLD)

    # --- caps ----------------------------------------------------------------------

    # The control keys hold the caps as set; each cell holds a copy for its scripts
    # (BEGIN_ATTEMPT), written first, so a cap is in force where it is listed.

    def put_cap(self, name: str, raw: str) -> None:
        for k in self.cells.others():
            self.r.hset(k.budget_caps, name, raw)
        self.r.hset(self.keys.budget_caps, name, raw)

    def remove_cap(self, name: str) -> bool:
        for k in self.cells.others():
            self.r.hdel(k.budget_caps, name)
        return bool(self.r.hdel(self.keys.budget_caps, name))

    def caps(self) -> list[str]:
        """Every cap's JSON, by name."""
        raw: dict[str, str] = self.r.hgetall(self.keys.budget_caps)
        return [value for _, value in sorted(raw.items())]

    # --- holds ---------------------------------------------------------------------

    def reserve(
        self, job_id: str, amount: int, at_ms: int, caps: Sequence[CapHold],
        *, spanning: bool = False,
    ) -> Refusal | None:  # fmt: skip
        """Hold ``amount`` against every cap in one script; None when held (or held
        already), else which cap would be passed (nothing is held then). In the job's
        cell, or (``spanning``: caps spanning tenants, with several cells) in the
        control keys, where those caps' spend is counted (:meth:`settle_spanning`)."""
        k = self.keys if spanning else self.cells.of_job(job_id)
        keys = [k.budget_holds, k.budget_hold_times]
        for cap in caps:
            keys += [k.ledger(cap.dimension, cap.value), k.budget_reserved(cap.scope, cap.period)]
        args = [job_id, amount, at_ms, len(caps), *[cap.limit_micro for cap in caps]]
        result = self._reserve(keys=keys, args=args)
        if int(result[0]) == 1:
            return None
        return Refusal(int(result[1]) - 1, int(result[2]))

    def release(self, job_id: str) -> int | None:
        """Release a job's hold (idempotent); returns the amount, or None if none held."""
        raw = self.r.hget(self.cells.of_job(job_id).budget_holds, job_id)
        if raw is None:
            return None
        batch = Batch(self.r)
        index = self.release_into(batch, job_id, raw)
        done = batch.execute()[index]
        return self.amount_of(raw) if int(done) == 1 else None

    def spanning_hold(self, job_id: str) -> str | None:
        """The job's raw hold in the control keys (caps spanning tenants), or None."""
        if self.cells.count == 1:
            return None
        raw = self.r.hget(self.keys.budget_holds, job_id)
        return None if raw is None else str(raw)

    def settle_spanning(
        self, job_id: str, raw_hold: str, cost: dict[str, int] | None,
        rows: Sequence[tuple[str, str]],
    ) -> bool:  # fmt: skip
        """Release the job's control-keys hold (as read: ``raw_hold``) and add what its
        turn posted (``cost``: the cell's record, None for nothing) to the control-keys
        ``rows`` its caps read, in one script; False if the hold was gone already."""
        hold = json.loads(raw_hold)
        figures = [int((cost or {}).get(f, 0)) for f in COST_FIELDS]
        keys = [self.keys.budget_holds, self.keys.budget_hold_times,
                *[self.keys.ledger(dim, value) for dim, value in rows], *hold["keys"]]  # fmt: skip
        args = [job_id, raw_hold, hold["amount"], len(rows), *figures]
        return int(self._settle(keys=keys, args=args)) == 1

    def spanning_holds_before(self, cutoff_ms: int) -> list[str]:
        """Ids of the jobs whose control-keys hold was taken before ``cutoff_ms``."""
        if self.cells.count == 1:
            return []
        return list(self.r.zrangebyscore(self.keys.budget_hold_times, "-inf", cutoff_ms))

    def hold_into(self, batch: Batch, job_id: str) -> int:
        """Queue a read of the job's raw hold (for :meth:`release_into`); its index."""
        batch.pipe.hget(self.cells.of_job(job_id).budget_holds, job_id)
        return len(batch.pipe) - 1

    def release_into(self, batch: Batch, job_id: str, raw_hold: str) -> int:
        """Queue the release of a hold read as ``raw_hold``; the index of its reply (1 if
        released, 0 if it was released already)."""
        hold = json.loads(raw_hold)
        k = self.cells.of_job(job_id)
        keys = [k.budget_holds, k.budget_hold_times, *hold["keys"]]
        return batch.script(self._release, keys, [job_id, raw_hold, hold["amount"]])

    @staticmethod
    def amount_of(raw_hold: str | None) -> int | None:
        """The amount (micro-USD) of a raw hold; None for no hold."""
        return int(json.loads(raw_hold)["amount"]) if raw_hold else None

    def settling(self, job_id: str) -> bool:
        """Whether the job ended here and its upstream turn is not yet settled (its hold
        reserves the money that turn is spending)."""
        return self.r.zscore(self.cells.of_job(job_id).jobs_ended, job_id) is not None

    def holds_before(self, cutoff_ms: int) -> list[str]:
        """Ids of the jobs whose hold was taken before ``cutoff_ms``."""
        replies = each_cell(
            self.r,
            self.cells,
            lambda pipe, k: pipe.zrangebyscore(k.budget_hold_times, "-inf", cutoff_ms),
        )
        return [job_id for reply in replies for job_id in reply]

    # --- spend, overshoots, warnings -----------------------------------------------

    def spent(self, dimension: str, value: str, *, spanning: bool = False) -> dict[str, int]:
        """The ledger rollup that holds a cap's spend (fields as stored; the cells'
        rows added up), or (``spanning``) the control keys' row of a cap spanning
        tenants."""
        rows = each_cell(
            self.r, self._where(spanning), lambda pipe, k: pipe.hgetall(k.ledger(dimension, value))
        )
        found: dict[str, int] = {}
        for raw in rows:
            for name, v in raw.items():
                found[name] = found.get(name, 0) + int(v)
        return found

    def reserved(self, scope: str, period: str, *, spanning: bool = False) -> int:
        """Micro-dollars held by turns in flight for a scope and period key (in the
        control keys for a cap spanning tenants)."""
        held = each_cell(
            self.r,
            self._where(spanning),
            lambda pipe, k: pipe.get(k.budget_reserved(scope, period)),
        )
        return sum(int(n or 0) for n in held)

    def _where(self, spanning: bool) -> tuple[Keys, ...]:
        """Where a cap's spend and holds are: the control keys for a cap spanning
        tenants, else every cell (a tenant's in one of them)."""
        return (self.keys,) if spanning else self.cells.keys

    def overshoots(self) -> dict[str, dict[str, int]]:
        """Per cap name: ``{count, micro}`` of turns that cost more than their hold."""
        raw: dict[str, str] = self.r.hgetall(self.keys.budget_overshoots)
        return {name: json.loads(value) for name, value in raw.items()}

    def add_overshoot(self, cap_name: str, over_micro: int) -> None:
        raw = self.r.hget(self.keys.budget_overshoots, cap_name)
        entry = json.loads(raw) if raw else {"count": 0, "micro": 0}
        entry = {"count": entry["count"] + 1, "micro": entry["micro"] + over_micro}
        self.r.hset(self.keys.budget_overshoots, cap_name, json.dumps(entry))

    def mark_warned(self, cap_name: str, period: str) -> bool:
        """True the first time for a cap and period key (then the warning is due)."""
        flag = self.keys.budget_warned(cap_name, period)
        return bool(self.r.set(flag, 1, nx=True, ex=WARNED_TTL_SECONDS))

    # --- jobs waiting for the next period ------------------------------------------

    def wait_until(self, job_id: str, until_ms: int) -> None:
        self.r.zadd(self.keys.budget_waiting, {job_id: until_ms})

    def due_waiting(self, now_ms: int) -> list[str]:
        """Ids of the waiting jobs whose period has begun (still listed)."""
        return list(self.r.zrangebyscore(self.keys.budget_waiting, "-inf", now_ms))

    def take_waiting(self, job_id: str) -> bool:
        """Take a job off the waiting list; False if another process took it first."""
        return bool(self.r.zrem(self.keys.budget_waiting, job_id))


class LimitStore:
    """Concurrency limits per key, the running slots, and the jobs waiting for one."""

    def __init__(self, store: RedisStore) -> None:
        self.r = store.r
        self.keys = store.keys
        self.cells = store.cells
        self._acquire = self.r.register_script(scripts.ACQUIRE_SLOTS)
        self._promote = self.r.register_script(scripts.PROMOTE_WAITING)
        self._release_gone = self.r.register_script(scripts.RELEASE_GONE)
        self._leave = self.r.register_script(scripts.LEAVE_WAITING)

    # Set as caps are (above): each cell's copy first, then the control keys.

    def set(self, key: str, limit: int) -> None:
        for k in self.cells.others():
            self.r.hset(k.limits, key, limit)
        self.r.hset(self.keys.limits, key, limit)

    def remove(self, key: str) -> bool:
        for k in self.cells.others():
            self.r.hdel(k.limits, key)
        return bool(self.r.hdel(self.keys.limits, key))

    def all(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.r.hgetall(self.keys.limits).items())}

    @staticmethod
    def _slot_keys(k: Keys, limit_keys: Sequence[str]) -> list[str]:
        keys = []
        for key in limit_keys:
            keys += [k.limit_running(key), k.limit_groups(key), k.limit_waiting(key)]
        return keys

    def acquire(self, job_id: str, group: str, limit_keys: Sequence[str]) -> str | None:
        """Take a slot of every limited key; None if taken, else the key it waits on."""
        k = self.cells.of_job(job_id)
        keys = [k.limits, k.limit_parked, k.limit_sequence, *self._slot_keys(k, limit_keys)]
        args = [job_id, group, len(limit_keys), *limit_keys]
        result = self._acquire(keys=keys, args=args)
        return None if int(result[0]) == 1 else str(result[1])

    def release(self, job_id: str, limit_keys: Sequence[str], now_ms: int) -> list[str]:
        """Free the job's slots; returns the waiting jobs that got them."""
        batch = Batch(self.r)
        index = self.release_into(batch, job_id, limit_keys, now_ms)
        return [str(j) for j in batch.execute()[index]]

    def release_into(
        self, batch: Queue, job_id: str, limit_keys: Sequence[str], now_ms: int
    ) -> int:
        """Queue :meth:`release`; the index of its reply (the promoted job ids)."""
        k = self.cells.of_job(job_id)
        keys = [k.limits, k.limit_parked, k.outbox, *self._slot_keys(k, limit_keys)]
        args = [job_id, now_ms, len(limit_keys), *limit_keys]
        return batch.script(self._promote, keys, args)

    def gone_holders(self, limit_keys: Sequence[str]) -> list[tuple[str, str]]:
        """(limit key, job id) of each running slot whose job has no record, as read
        now (two pipelined round trips; :meth:`release_gone` looks again)."""
        with self.r.pipeline(transaction=False) as pipe:
            for k in self.cells:
                for key in limit_keys:
                    pipe.smembers(k.limit_running(key))
            replies = pipe.execute()
        named = [key for _ in self.cells for key in limit_keys]
        held = [(key, str(j)) for key, jobs in zip(named, replies, strict=True)
                for j in sorted(jobs)]  # fmt: skip
        if not held:
            return []
        with self.r.pipeline(transaction=False) as pipe:
            for _, job_id in held:
                pipe.exists(self.cells.of_job(job_id).job(job_id))
            there = pipe.execute()
        return [slot for slot, found in zip(held, there, strict=True) if not found]

    def release_gone(self, job_id: str, key: str, now_ms: int) -> list[str] | None:
        """Free the job's slot of ``key`` if its record is gone (checked in the same
        script); None when nothing was freed (the job is there, or holds no slot),
        else the waiting jobs that got the slot."""
        k = self.cells.of_job(job_id)
        keys = [k.limits, k.limit_parked, k.outbox, *self._slot_keys(k, [key]), k.job(job_id)]
        promoted = self._release_gone(keys=keys, args=[job_id, now_ms, 1, key])
        return None if promoted is None else [str(j) for j in promoted]

    def leave_waiting(self, job_id: str, group: str) -> bool:
        """Take a job out of the queue it waits in for a slot (if it waits in one)."""
        k = self.cells.of_job(job_id)
        key = self.r.hget(k.limit_parked, job_id)
        if key is None:
            return False
        keys = [k.limit_parked, k.limit_waiting(key), k.limit_groups(key)]
        return int(self._leave(keys=keys, args=[job_id, key, group])) == 1

    def usage(self, key: str) -> tuple[int, int]:
        """(running, waiting) jobs of a limit key."""
        with self.r.pipeline(transaction=False) as pipe:
            for k in self.cells:
                pipe.scard(k.limit_running(key))
                pipe.zcard(k.limit_waiting(key))
            replies = [int(n) for n in pipe.execute()]
        return sum(replies[::2]), sum(replies[1::2])


class _RateScripts:
    """The fleet rate hash and its two scripts, on a sync or an asyncio client."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.key = keys.rate
        self._acquire = client.register_script(scripts.RATE_ACQUIRE)
        self._pause = client.register_script(scripts.RATE_PAUSE)


class RateStore(_RateScripts):
    """The fleet-wide GCRA limiter and 429 pause (see :class:`~.controls.limits.FleetRate`)."""

    def __init__(self, store: RedisStore) -> None:
        super().__init__(store.r, store.keys)

    def acquire(self, now_ms: int, interval_ms: float, burst: int) -> int:
        """0 when one more request may go now (it is counted), else ms to wait."""
        return int(self._acquire(keys=[self.key], args=[now_ms, interval_ms, burst]))

    def pause(self, until_ms: int) -> None:
        """Extend the fleet-wide pause to ``until_ms`` (never shortens it)."""
        self._pause(keys=[self.key], args=[until_ms])


class AsyncRateStore(_RateScripts):
    """:class:`RateStore` over a ``redis.asyncio`` client, under key prefix ``prefix``."""

    def __init__(self, client: Any, prefix: str) -> None:
        super().__init__(client, Keys.for_client(client, prefix))

    async def acquire(self, now_ms: int, interval_ms: float, burst: int) -> int:
        return int(await self._acquire(keys=[self.key], args=[now_ms, interval_ms, burst]))

    async def pause(self, until_ms: int) -> None:
        await self._pause(keys=[self.key], args=[until_ms])
