"""The Redis side of schedules: records, the due index, claims, run records.

Layout (``docs/schedules.md``): a hash per schedule, a sorted set ``schedules:due`` of
active schedules by next run (ms), a sorted set ``schedules:pending`` of claimed slots
not yet known sent, and per schedule a runs hash (slot -> JSON) with a sorted set of
its slots. Every multi-key change is one Lua script of :mod:`orchestrator.store.scripts.schedules`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator import rules
from orchestrator.errors import UnknownIdError
from orchestrator.jobs.model import STATUSES, TERMINAL, Submission
from orchestrator.schedules.timing import CatchUp, Plan, Schedule, Timing
from orchestrator.store.cells import by_score, each_cell
from orchestrator.store.jobs import RedisStore
from orchestrator.store.jobs import now_ms as current_ms
from orchestrator.store.keys import Keys
from orchestrator.store.schedule_hash import (
    TIMING_FIELDS,
    UPDATED_FIELDS,
    schedule_from_hash,
    schedule_to_hash,
    timing_from_hash,
)
from orchestrator.store.scripts import schedules as scripts

# Runs kept per schedule; older records are dropped and their slots stay deduped by
# a floor (no slot at or below the newest dropped one runs again).
RUNS_KEPT = 10_000
# A run reserved but whose job was never made (its task died) blocks the next run of
# the schedule for at most this long.
RESERVATION_TIMEOUT_MS = 600_000
# A last run whose job is in one of these is still going (SCHEDULE_DECIDE's overlap).
GOING = [s for s in STATUSES if s not in TERMINAL]


@dataclass(frozen=True)
class Peek:
    """One tick's view: due schedules, claims to re-send, next run, buffered runs."""

    due: list[tuple[str, int]]
    resend: list[str]
    next_run_ms: int | None
    buffered: list[tuple[str, int]]


@dataclass(frozen=True)
class Claim:
    """A due schedule as read (``due_ms``) and what the beat decided to do with it,
    from its timing as of ``rev`` (None: not checked)."""

    schedule_id: str
    due_ms: int
    plan: Plan
    rev: int | None = None


@dataclass(frozen=True)
class Decision:
    """The run task's verdict for a slot (see SCHEDULE_DECIDE) and the run's record."""

    verdict: str
    record: dict[str, Any]


def pending_member(schedule_id: str, slot_ms: int) -> str:
    return f"{schedule_id}|{slot_ms}"


def split_member(member: str) -> tuple[str, int]:
    schedule_id, _, slot = member.rpartition("|")
    return schedule_id, int(slot)


def _pairs(flat: Sequence[Any]) -> list[tuple[str, int]]:
    return [(str(flat[i]), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


class ScheduleStore:
    """Schedules in Redis, over the same client and key prefix as a RedisStore."""

    def __init__(self, store: RedisStore) -> None:
        self._r: Any = store.r
        self._keys = store.keys
        self._store = store
        self._cells = store.cells
        self._peek = store.r.register_script(scripts.SCHEDULE_PEEK)
        self._claim = store.r.register_script(scripts.SCHEDULE_CLAIM)
        self._decide = store.r.register_script(scripts.SCHEDULE_DECIDE)
        self._set_job = store.r.register_script(scripts.SCHEDULE_SET_JOB)
        self._state = store.r.register_script(scripts.SCHEDULE_STATE)
        self._update = store.r.register_script(scripts.SCHEDULE_UPDATE)

    # --- records -----------------------------------------------------------------

    def new_id(self, sub: Submission) -> str:
        """An id for a new schedule running ``sub``, in the cell its jobs go to (its
        worker's, else its tenant's: docs/scaling.md)."""
        return self._cells.new_schedule_id(self._store.place(sub))

    def _at(self, schedule_id: str) -> Keys:
        return self._cells.of_schedule(schedule_id)

    def add(self, schedule: Schedule) -> None:
        """Store a new schedule and put it in the due index (one transaction)."""
        k = self._at(schedule.id)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(k.schedule(schedule.id), mapping=schedule_to_hash(schedule))
            pipe.zadd(k.schedules_all, {schedule.id: schedule.created_at})
            if schedule.status == "active":
                pipe.zadd(k.schedules_due, {schedule.id: schedule.next_run_ms})
            if schedule.worker_id:
                pipe.sadd(k.worker_schedules(schedule.worker_id), schedule.id)
            if schedule.upstream_id:
                pipe.hset(k.schedules_upstream, schedule.upstream_id, schedule.id)
            pipe.execute()

    def get(self, schedule_id: str) -> Schedule | None:
        data = self._r.hgetall(self._at(schedule_id).schedule(schedule_id))
        return schedule_from_hash(data) if data else None

    def require(self, schedule_id: str) -> Schedule:
        """The schedule; InputError ``schedule_id`` for what is not a schedule id (checked
        before a key is made of it), UnknownIdError for one no schedule has."""
        return self.read(schedule_id)[0]

    def read(self, schedule_id: str) -> tuple[Schedule, int | None]:
        """The schedule (as :meth:`require`) and its next run in the due index (None:
        not in it), read at one instant."""
        rules.SCHEDULE_ID.check(schedule_id, "schedule_id")
        k = self._at(schedule_id)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.hgetall(k.schedule(schedule_id))
            pipe.zscore(k.schedules_due, schedule_id)
            data, due = pipe.execute()
        if not data:
            raise UnknownIdError("schedule_id", f"no schedule {schedule_id}")
        return schedule_from_hash(data), None if due is None else int(due)

    def update(
        self, read: Schedule, due_ms: int | None, new: Schedule, now_ms: int, *,
        retimed: bool, due: Plan | None,
    ) -> tuple[str, list[str]]:  # fmt: skip
        """Store ``new``'s UPDATED_FIELDS over ``read`` (as read with ``due_ms``) in one
        step (SCHEDULE_UPDATE); ``retimed``: its next run goes in the due index, and the
        old timing's ``due`` slots are claimed. The verdict (``ok``, ``gone``, ``over``,
        ``retry``) and the pending members claimed."""
        stored = schedule_to_hash(new)
        fields = [x for name in sorted(UPDATED_FIELDS) for x in (name, stored[name])]
        fire = ",".join(map(str, due.fire)) if due else ""
        args = [
            read.id, now_ms, read.rev, "" if due_ms is None else due_ms,
            new.next_run_ms if retimed else "", due.missed if due else 0, fire, *fields,
        ]  # fmt: skip
        k = self._at(read.id)
        keys = [k.schedule(read.id), k.schedules_due, k.schedules_pending]
        verdict, *members = self._update(keys=keys, args=args)
        return str(verdict), [str(m) for m in members]

    def many(self, ids: Iterable[str]) -> list[Schedule]:
        ids = list(ids)
        with self._r.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.hgetall(self._at(sid).schedule(sid))
            replies = pipe.execute()
        return [schedule_from_hash(data) for data in replies if data]

    def all_ids(self) -> list[str]:
        replies = each_cell(
            self._r,
            self._cells,
            lambda pipe, k: pipe.zrange(k.schedules_all, 0, -1, withscores=True),
        )
        found = [pair for reply in replies for pair in reply]
        return [sid for sid, _ in sorted(found, key=by_score)]

    def for_worker(self, worker_id: str) -> list[Schedule]:
        sets = each_cell(
            self._r, self._cells, lambda pipe, k: pipe.smembers(k.worker_schedules(worker_id))
        )
        ids = sorted(set().union(*sets))
        found = self.many(ids)
        return sorted(found, key=lambda s: (s.created_at, s.id))

    def by_upstream(self, upstream_id: str) -> str | None:
        replies = each_cell(
            self._r, self._cells, lambda pipe, k: pipe.hget(k.schedules_upstream, upstream_id)
        )
        found = [str(sid) for sid in replies if sid]
        return found[0] if found else None

    def set_worker(self, schedule_id: str, worker_id: str) -> None:
        """Record the worker a worker-less schedule's first run created."""
        k = self._at(schedule_id)
        key = k.schedule(schedule_id)
        # Racing runs can only learn the same worker (from the same previous job).
        if not self._r.hget(key, "worker_id"):
            self._r.hset(key, "worker_id", worker_id)
        self._r.sadd(k.worker_schedules(worker_id), schedule_id)

    def change_state(self, schedule_id: str, action: str, next_run_ms: int = 0) -> int:
        """Pause, resume or cancel (SCHEDULE_STATE): 1 changed, 0 not, -1 unknown."""
        k = self._at(schedule_id)
        keys = [k.schedule(schedule_id), k.schedules_due, k.schedules_buffered]
        return int(self._state(keys=keys, args=[schedule_id, action, next_run_ms]))

    # --- beat --------------------------------------------------------------------

    def peek(self, now_ms: int, batch: int, resend_before_ms: int, buffered: int) -> Peek:
        """What a tick needs, in one round trip a cell (claims older than the cutoff are
        taken); with several cells, up to ``batch`` due from each."""
        due: list[tuple[str, int]] = []
        resend: list[str] = []
        nexts: list[int] = []
        buffered_runs: list[tuple[str, int]] = []
        for k in self._cells:
            keys = [k.schedules_due, k.schedules_pending, k.schedules_buffered]
            found, stale, nxt, buf = self._peek(
                keys=keys, args=[now_ms, batch, resend_before_ms, buffered]
            )
            due += _pairs(found)
            resend += [str(m) for m in stale]
            nexts += [int(float(nxt))] if nxt else []
            buffered_runs += _pairs(buf)
        return Peek(due, resend, min(nexts, default=None), buffered_runs)

    def timings(self, ids: Sequence[str]) -> dict[str, tuple[Timing, CatchUp, int]]:
        """The next-run inputs of each schedule and the rev they are of (a claim made
        with them checks it); ids whose hash is gone are left out."""
        with self._r.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.hmget(self._at(sid).schedule(sid), TIMING_FIELDS)
            replies = pipe.execute()
        out: dict[str, tuple[Timing, CatchUp, int]] = {}
        for sid, values in zip(ids, replies, strict=True):
            data = dict(zip(TIMING_FIELDS, values, strict=True))
            if data["kind"]:
                catch_up: CatchUp = data["catch_up"] or "skip"
                out[sid] = (timing_from_hash(data), catch_up, int(data["rev"] or 0))
        return out

    def drop_due(self, schedule_id: str) -> None:
        """Take an id whose record is gone out of the due index."""
        k = self._at(schedule_id)
        if not self._r.exists(k.schedule(schedule_id)):
            self._r.zrem(k.schedules_due, schedule_id)

    def claim(self, claims: Sequence[Claim], now_ms: int) -> list[str]:
        """Compare-and-advance each schedule (one script a cell); the pending members
        this caller won."""
        by_cell: dict[int, list[Claim]] = {}
        for c in claims:
            by_cell.setdefault(self._cells.index_of_schedule(c.schedule_id), []).append(c)
        return [m for cell, group in by_cell.items() for m in self._claim_in(cell, group, now_ms)]

    def _claim_in(self, cell: int, claims: Sequence[Claim], now_ms: int) -> list[str]:
        k = self._cells.keys[cell]
        keys = [k.schedules_due, k.schedules_pending]
        args: list[Any] = [now_ms]
        for c in claims:
            keys.append(k.schedule(c.schedule_id))
            nxt = "" if c.plan.next_ms is None else c.plan.next_ms
            fire = ",".join(map(str, c.plan.fire))
            rev = "" if c.rev is None else c.rev
            args += [c.schedule_id, c.due_ms, nxt, c.plan.missed, fire, rev]
        return [str(m) for m in self._claim(keys=keys, args=args)]

    def add_pending(self, members: Sequence[str], now_ms: int) -> None:
        for k, group in self._by_cell(members).items():
            self._r.zadd(k.schedules_pending, dict.fromkeys(group, now_ms))

    def sent(self, members: Sequence[str]) -> None:
        """These claimed runs are on the broker: forget the claims, and watch the runs
        until a worker begins them (:meth:`begun`)."""
        for k, group in self._by_cell(members).items():
            with self._r.pipeline(transaction=True) as pipe:
                pipe.zrem(k.schedules_pending, *group)
                pipe.zadd(k.schedules_dispatched, dict.fromkeys(group, current_ms()))
                pipe.execute()

    def begun(self, runs: Sequence[tuple[str, int]]) -> None:
        """A worker took these runs' message: the broker can no longer lose them."""
        for k, group in self._by_cell([pending_member(*r) for r in runs]).items():
            self._r.zrem(k.schedules_dispatched, *group)

    def _by_cell(self, members: Sequence[str]) -> dict[Keys, list[str]]:
        """Pending members (``<schedule id>|<slot>``) grouped by their schedule's cell."""
        found: dict[Keys, list[str]] = {}
        for member in members:
            found.setdefault(self._at(split_member(member)[0]), []).append(member)
        return found

    def untaken(self, older_than_ms: int, limit: int = 500) -> list[tuple[str, int]]:
        """Runs sent at least ``older_than_ms`` ago that no worker has begun."""
        cutoff = current_ms() - older_than_ms
        replies = each_cell(
            self._r, self._cells,
            lambda pipe, k: pipe.zrangebyscore(k.schedules_dispatched, "-inf", cutoff, 0, limit),
        )  # fmt: skip
        return [split_member(m) for reply in replies for m in reply]

    def recorded(self, runs: Sequence[tuple[str, int]]) -> list[bool]:
        """Whether each (schedule, slot) already has its run recorded."""
        with self._r.pipeline(transaction=False) as pipe:
            for sid, slot in runs:
                pipe.zscore(self._at(sid).schedule_slots(sid), slot)
            return [score is not None for score in pipe.execute()]

    def due_count(self) -> int:
        return self._count(lambda k: k.schedules_due)

    def pending(self) -> int:
        return self._count(lambda k: k.schedules_pending)

    def _count(self, index: Callable[[Keys], str]) -> int:
        return sum(each_cell(self._r, self._cells, lambda pipe, k: pipe.zcard(index(k))))

    def last_jobs(self, ids: Sequence[str]) -> dict[str, str]:
        """schedule id -> the status of its last run's job ('' none, 'reserved', or status)."""
        with self._r.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.hget(self._at(sid).schedule(sid), "last_job")
            lasts = pipe.execute()
        jobs = {sid: last for sid, last in zip(ids, lasts, strict=True) if last}
        real = {sid: last for sid, last in jobs.items() if last.startswith("job_")}
        with self._r.pipeline(transaction=False) as pipe:
            for job_id in real.values():
                pipe.hget(self._cells.of_job(job_id).job(job_id), "status")
            statuses = pipe.execute()
        out = dict.fromkeys(ids, "")
        for sid in jobs:
            out[sid] = "reserved"
        for sid, status in zip(real, statuses, strict=True):
            out[sid] = status or ""
        return out

    # --- runs ----------------------------------------------------------------------

    def decide(self, schedule: Schedule, slot_ms: int, now_ms: int) -> Decision:
        """Decide the slot's run once (fire, skip, buffer; or see it was done already)."""
        last = schedule.last_job
        k = self._at(schedule.id)
        # The schedule's jobs are in its cell (RedisStore.place).
        job_key = k.job(last if last.startswith("job_") else "-")
        keys = [k.schedule(schedule.id), k.schedule_runs(schedule.id),
                k.schedule_slots(schedule.id), k.schedules_buffered, job_key]  # fmt: skip
        args = [schedule.id, slot_ms, now_ms, last, RUNS_KEPT, RESERVATION_TIMEOUT_MS, *GOING]
        verdict, raw = self._decide(keys=keys, args=args)
        return Decision(str(verdict), json.loads(raw) if raw else {})

    def set_job(self, schedule_id: str, slot_ms: int, job_id: str, error: str = "") -> None:
        k = self._at(schedule_id)
        keys = [k.schedule(schedule_id), k.schedule_runs(schedule_id)]
        self._set_job(keys=keys, args=[slot_ms, job_id, error[:500]])

    def runs(self, schedule_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` run records, newest first."""
        k = self._at(schedule_id)
        slots = self._r.zrevrange(k.schedule_slots(schedule_id), 0, max(limit, 1) - 1)
        if not slots:
            return []
        raws = self._r.hmget(k.schedule_runs(schedule_id), slots)
        return [json.loads(raw) for raw in raws if raw]

    def job_states(self, job_ids: Sequence[str]) -> list[str | None]:
        with self._r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self._cells.of_job(job_id).job(job_id), "status")
            return list(pipe.execute())

    def schedule_cost(self, schedule_id: str) -> dict[str, str]:
        """The raw ledger row of the schedule (all its runs' turns)."""
        return dict(self._r.hgetall(self._at(schedule_id).ledger("schedule", schedule_id)))
