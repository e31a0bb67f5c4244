"""The Redis store: jobs, worker snapshots, update streams, the ledger and files.

The only code (with :mod:`orchestrator.store.keys`) that knows key names. Multi-key writes go
through the Lua scripts of :mod:`orchestrator.store.scripts.jobs` or MULTI/EXEC pipelines, so a
crash between two writes never leaves half a change. See ``docs/redis-layout.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import redis

from orchestrator.errors import InputError
from orchestrator.jobs.model import STATUSES, Job, JobStatus, Submission, new_job_id
from orchestrator.ledger import cumulative, empty_row, parse_row, utc_day
from orchestrator.store.batch import Batch
from orchestrator.store.keys import LEDGER_DIMENSIONS, Keys
from orchestrator.store.scripts import jobs as scripts
from orchestrator.wire.models import Worker

HISTORY_MAXLEN = 100


def now_ms() -> int:
    return int(time.time() * 1000)


def connect(url: str) -> redis.Redis:
    """A pooled client that decodes replies to str.

    The socket timeout stays above the longest blocking read we issue (5 s).
    """
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_keepalive=True,
        socket_timeout=30,
        socket_connect_timeout=5,
    )


def _job_id(value: object) -> str:
    """``value`` if it looks like a job id; InputError naming ``job_id`` otherwise."""
    if not isinstance(value, str) or not value.startswith("job_"):
        raise InputError("job_id", f"{value!r} is not a job id")
    return value


def posted_deltas(reply: Any) -> dict[str, int] | None:
    """The deltas a POST_TURN reply says were posted (None: posted before)."""
    return {k: int(v) for k, v in json.loads(reply).items()} if reply else None


class RedisStore:
    """Synchronous access to everything the orchestrator keeps in Redis."""

    def __init__(self, client: redis.Redis, prefix: str, *, updates_maxlen: int = 100_000) -> None:
        # Typed as Any: redis-py's stubs cannot see decode_responses=True (every reply
        # here is str), and casting each of them would bury the logic.
        self.r: Any = client
        self.keys = Keys(prefix)
        self.updates_maxlen = updates_maxlen
        self._transition = client.register_script(scripts.TRANSITION)
        self._create = client.register_script(scripts.CREATE_JOB)
        self._begin = client.register_script(scripts.BEGIN_ATTEMPT)
        self._append = client.register_script(scripts.APPEND_UPDATES)
        self._post_turn = client.register_script(scripts.POST_TURN)
        self._release = client.register_script(scripts.RELEASE_FOLLOW)

    # --- jobs --------------------------------------------------------------------

    def create_job(self, sub: Submission) -> tuple[Job, bool]:
        """Write a new queued job, or return the one its idempotency key already names.

        One script checks and sets the idempotency key with the job's writes, so a
        duplicate is impossible, not merely unlikely: of two racing submissions with the
        same key, one writes and the other gets its job.
        """
        job_id = new_job_id()
        created = now_ms()
        record = {
            "id": job_id,
            "kind": sub.kind,
            "input": sub.input,
            "budget": sub.budget,
            "tags": json.dumps(sub.tags, sort_keys=True),
            "idempotency_key": sub.idempotency_key or "",
            "fetch_files": "1" if sub.fetch_files else "0",
            "schedule_id": sub.schedule_id or "",
            "priority": sub.priority,
            "worker_id": sub.worker_id or "",
            "status": "queued",
            "attempts": "0",
            "created_at": str(created),
            "at_queued": str(created),
        }
        keys = [
            self.keys.job(job_id),
            self.keys.jobs,
            self.keys.outbox,
            self.keys.job_states,
            self.keys.job_history(job_id),
        ]
        if sub.idempotency_key:
            keys.append(self.keys.idempotency(sub.idempotency_key))
        flat = [part for item in record.items() for part in item]
        written, found_id = self._create(keys=keys, args=[job_id, created, *flat])
        if int(written) == 1:
            return Job.from_hash(record), True
        job = self.get_job(str(found_id))
        if job is None:
            raise InputError("idempotency_key", "names a job that is gone")
        return job, False

    def mark_sent(self, job_id: str) -> None:
        """The job's first task is on the broker: out of the outbox, and watched until a
        worker takes it (:meth:`begin_attempt`)."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.outbox, job_id)
            pipe.zadd(self.keys.dispatched, {job_id: now_ms()})
            pipe.execute()

    def drop_unsent(self, job_id: str) -> None:
        """Out of the outbox without being sent (the job moved on without it)."""
        self.r.zrem(self.keys.outbox, job_id)

    def unsent(self, older_than_ms: int, limit: int = 500) -> list[str]:
        """Jobs written but never known sent (the sender died in between)."""
        cutoff = now_ms() - older_than_ms
        return list(self.r.zrangebyscore(self.keys.outbox, "-inf", cutoff, start=0, num=limit))

    def untaken(self, older_than_ms: int, limit: int = 500) -> list[str]:
        """Jobs whose first task was sent at least ``older_than_ms`` ago and that no
        worker has begun (the task waits in a backlog, or the broker lost it)."""
        cutoff = now_ms() - older_than_ms
        key = self.keys.dispatched
        return list(self.r.zrangebyscore(key, "-inf", cutoff, start=0, num=limit))

    def forget_dispatched(self, job_id: str) -> None:
        self.r.zrem(self.keys.dispatched, job_id)

    def get_job(self, job_id: str) -> Job | None:
        data = self.r.hgetall(self.keys.job(job_id))
        return Job.from_hash(data) if data else None

    def require_job(self, job_id: str) -> Job:
        job = self.get_job(_job_id(job_id))
        if job is None:
            raise InputError("job_id", f"no job {job_id}")
        return job

    def transition(self, job_id: str, status: JobStatus, detail: str = "") -> bool:
        """Move a job forward; False if it already was there or may not move."""
        keys = [self.keys.job(job_id), self.keys.job_history(job_id), self.keys.job_states]
        result = self._transition(keys=keys, args=[status, now_ms(), detail[:1000], HISTORY_MAXLEN])
        return int(result) == 1

    def history(self, job_id: str) -> list[dict[str, Any]]:
        entries = self.r.xrange(self.keys.job_history(job_id))
        return [
            {"status": f["status"], "at": int(f["at"]), "detail": f.get("detail") or None}
            for _id, f in entries
        ]

    def begin_attempt(self, job_id: str) -> tuple[Job, bool]:
        """Read a job for its create step; True if its attempt was counted already.

        Counted in the same round trip when the job is queued and no limit or budget
        cap is configured (there is nothing to admit it against); otherwise the caller
        admits it, then calls :meth:`count_attempt`.
        """
        job_id = _job_id(job_id)
        keys = [self.keys.job(job_id), self.keys.limits, self.keys.budget_caps,
                self.keys.dispatched]  # fmt: skip
        counted, flat = self._begin(keys=keys, args=[job_id])
        if not flat:
            raise InputError("job_id", f"no job {job_id}")
        data = dict(zip(flat[::2], flat[1::2], strict=True))
        return Job.from_hash(data), int(counted) == 1

    def count_attempt(self, job_id: str) -> int:
        """Record, before calling upstream, that an attempt is being made."""
        return int(self.r.hincrby(self.keys.job(job_id), "attempts", 1))

    def job_states(self) -> dict[str, int]:
        raw = self.r.hgetall(self.keys.job_states)
        return {s: max(int(raw.get(s, 0)), 0) for s in STATUSES}

    def recent_jobs(self, limit: int = 50) -> list[str]:
        return list(self.r.zrevrange(self.keys.jobs, 0, limit - 1))

    def set_submitted(self, job: Job, worker: Worker) -> bool:
        """After the upstream call: link the worker, store its snapshot, ask for a follower,
        then move the job to ``submitted`` (False if it had moved on already).

        ``update_from`` is where this turn's updates start in the worker's stream.
        """
        wkey = self.keys.worker(worker.id)
        # A create's turn is the worker's first, even if a follower left over from a job
        # Redis lost has already relayed some of it.
        relayed = 0 if job.kind == "create" else int(self.r.hget(wkey, "relayed") or 0)
        # One round trip, in this order: a follower that claims the job finds its
        # worker id, and the job is 'submitted' only once it is up for following.
        batch = Batch(self.r)
        jkey = self.keys.job(job.id)
        batch.pipe.hset(jkey, mapping={"worker_id": worker.id, "update_from": relayed})
        batch.pipe.hset(wkey, mapping={"snapshot": worker.model_dump_json(), "active_job": job.id})
        batch.pipe.zadd(self.keys.follows, {job.id: 0}, nx=True)
        history = [jkey, self.keys.job_history(job.id), self.keys.job_states]
        batch.script(self._transition, history, ["submitted", now_ms(), "", HISTORY_MAXLEN])
        return int(batch.execute()[-1]) == 1

    def request_follow(self, job_id: str, *, now: bool = False) -> None:
        """Put the job's stream up for a follower to claim.

        Without ``now`` it is a no-op when the job is already followed; with ``now`` a
        held lease is cut short so that any follower claims it at once.
        """
        if now:
            with self.r.pipeline(transaction=True) as pipe:
                pipe.zadd(self.keys.follows, {job_id: 0})
                pipe.hdel(self.keys.follow_owners, job_id)
                pipe.execute()
        else:
            self.r.zadd(self.keys.follows, {job_id: 0}, nx=True)

    def release_follow(self, job_id: str, owner: str = "") -> bool:
        keys = [self.keys.follows, self.keys.follow_owners]
        return int(self._release(keys=keys, args=[job_id, owner])) == 1

    def following(self) -> int:
        return int(self.r.zcard(self.keys.follows))

    # --- workers and updates -----------------------------------------------------

    def save_snapshot(self, worker: Worker) -> None:
        self.r.hset(self.keys.worker(worker.id), "snapshot", worker.model_dump_json())

    def snapshot(self, worker_id: str) -> Worker | None:
        raw = self.r.hget(self.keys.worker(worker_id), "snapshot")
        return Worker.model_validate_json(raw) if raw else None

    def relayed(self, worker_id: str) -> int:
        return int(self.r.hget(self.keys.worker(worker_id), "relayed") or 0)

    def append_updates(self, worker_id: str, first_index: int, payloads: Sequence[str]) -> int:
        """Store updates ``first_index...``; those already stored are skipped."""
        keys = [self.keys.worker(worker_id), self.keys.updates(worker_id)]
        return int(self._append(keys=keys, args=[first_index, self.updates_maxlen, *payloads]))

    def read_updates(
        self, worker_id: str, after: int = -1, *, count: int = 500, block_ms: int | None = None
    ) -> list[tuple[int, Any]]:
        """Updates with index > ``after``, oldest first; blocks up to ``block_ms`` if none."""
        stream = self.keys.updates(worker_id)
        start = f"0-{after + 1}"
        if block_ms is None:
            entries = self.r.xrange(stream, f"({start}", "+", count=count)
        else:
            reply = self.r.xread({stream: start}, count=count, block=block_ms)
            entries = reply[0][1] if reply else []
        return [(int(eid.split("-")[1]) - 1, json.loads(f["data"])) for eid, f in entries]

    # --- ledger ------------------------------------------------------------------

    def settle_into(
        self, batch: Batch, job: Job, worker: Worker, at_ms: int, extra: Sequence[tuple[str, str]]
    ) -> tuple[int | None, int]:
        """Queue a finished turn's writes: its snapshot, then its ledger delta; returns
        the reply indexes of the delta (:func:`posted_deltas`) and of the updates
        relayed so far (the turn's ``update_to``)."""
        batch.pipe.hset(self.keys.worker(worker.id), "snapshot", worker.model_dump_json())
        posted = self.post_turn_into(batch, job, worker, at_ms, extra)
        batch.pipe.hget(self.keys.worker(worker.id), "relayed")
        return posted, len(batch.pipe) - 1

    def complete_into(self, batch: Batch, job_id: str, update_to: int) -> None:
        """Queue the end of a settled turn: where its updates end, ``completed``, and
        the release of its follow lease."""
        key = self.keys.job(job_id)
        batch.pipe.hset(key, "update_to", update_to)
        history = [key, self.keys.job_history(job_id), self.keys.job_states]
        batch.script(self._transition, history, ["completed", now_ms(), "", HISTORY_MAXLEN])
        batch.script(self._release, [self.keys.follows, self.keys.follow_owners], [job_id, ""])

    def post_turn(
        self,
        job: Job,
        worker: Worker,
        at_ms: int,
        extra: Sequence[tuple[str, str]] = (),
    ) -> dict[str, int] | None:
        """Post the turn's cost delta (cumulative now minus counted) exactly once.

        Returns the deltas, or None if costs are still unknown or it was already posted.
        """
        batch = Batch(self.r)
        index = self.post_turn_into(batch, job, worker, at_ms, extra)
        replies = batch.execute()
        return None if index is None else posted_deltas(replies[index])

    def post_turn_into(
        self,
        batch: Batch,
        job: Job,
        worker: Worker,
        at_ms: int,
        extra: Sequence[tuple[str, str]] = (),
    ) -> int | None:
        """Queue :meth:`post_turn` on a batch; the index of the reply for
        :func:`posted_deltas`, or None when the costs are unknown (nothing to post)."""
        figures = cumulative(worker)
        if figures is None:
            batch.pipe.hset(self.keys.job(job.id), "cost_known", "0")
            return None
        members = [("day", utc_day(at_ms)), ("budget", job.budget), ("worker", worker.id)]
        members += [("tag", f"{k}={v}") for k, v in sorted(job.tags.items())]
        if job.schedule_id:
            members.append(("schedule", job.schedule_id))
        members += extra
        keys = [self.keys.worker(worker.id), self.keys.ledger_turns, self.keys.ledger_total]
        keys += [self.keys.ledger(dim, value) for dim, value in members]
        keys += [self.keys.ledger_index(dim) for dim, _ in members]
        args: list[Any] = [job.id, len(members), json.dumps(figures)]
        args += [value for _, value in members]
        index = batch.script(self._post_turn, keys, args)
        batch.pipe.hset(self.keys.job(job.id), "cost_known", "1")
        return index

    def turn_cost(self, job_id: str) -> dict[str, int] | None:
        raw = self.r.hget(self.keys.ledger_turns, job_id)
        return {k: int(v) for k, v in json.loads(raw).items()} if raw else None

    def costs(
        self, by: str = "day", *, since: date | None = None, until: date | None = None
    ) -> dict[str, Any]:
        """Rows of the ledger by a dimension, plus the total.

        ``since``/``until`` (inclusive, UTC days) filter ``by="day"``; the total is always
        the all-time total. Cost is O(rows), independent of how many turns were posted.
        """
        if by not in LEDGER_DIMENSIONS:
            raise InputError("by", f"must be one of {', '.join(LEDGER_DIMENSIONS)}")
        if by == "day" and (since or until):
            start = since or until or date.today()
            end = until or max(start, date.today())
            if end < start:
                raise InputError("until", "is before since")
            if (end - start).days > 3660:
                raise InputError("since", "range is longer than ten years")
            span = (end - start).days + 1
            values = [(start + timedelta(days=i)).isoformat() for i in range(span)]
        else:
            values = sorted(self.r.smembers(self.keys.ledger_index(by)))
        with self.r.pipeline(transaction=False) as pipe:
            for value in values:
                pipe.hgetall(self.keys.ledger(by, value))
            pipe.hgetall(self.keys.ledger_total)
            replies = pipe.execute()
        rows = [
            {"key": value, **parse_row(data)}
            for value, data in zip(values, replies[:-1], strict=True)
            if data
        ]
        return {"by": by, "rows": rows, "total": parse_row(replies[-1]) or empty_row()}

    # --- files -------------------------------------------------------------------

    def record_file(self, job_id: str, name: str, info: dict[str, Any]) -> None:
        self.r.hset(self.keys.job_files(job_id), name, json.dumps(info, sort_keys=True))

    def files(self, job_id: str) -> dict[str, dict[str, Any]]:
        raw = self.r.hgetall(self.keys.job_files(job_id))
        return {name: json.loads(value) for name, value in sorted(raw.items())}

    # --- health ------------------------------------------------------------------

    def check_eviction_policy(self) -> str:
        """The server's maxmemory-policy; raises if it could evict our keys."""
        policy = str(self.r.config_get("maxmemory-policy").get("maxmemory-policy", ""))
        if policy not in ("noeviction", ""):
            raise InputError(
                "maxmemory-policy", f"is {policy!r}; the store needs 'noeviction' (no key loss)"
            )
        return policy
