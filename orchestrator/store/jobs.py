"""The Redis store: jobs, worker snapshots, update streams, files and heartbeats (the
ledger part is :mod:`orchestrator.store.ledger`'s, the broker's keys
:mod:`orchestrator.store.broker`'s).

Only modules of :mod:`orchestrator.store` hold a Redis client or know a key name; everyone
else calls the named methods here. Multi-key writes go through the Lua scripts of
:mod:`orchestrator.store.scripts.jobs` or MULTI/EXEC pipelines, so a crash between two
writes never leaves half a change. See ``docs/redis-layout.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from orchestrator.errors import InputError, UnknownIdError
from orchestrator.jobs.model import (
    STATUSES,
    Job,
    Submission,
    next_due,
)
from orchestrator.ledger import cumulative
from orchestrator.store.batch import Batch, Queue
from orchestrator.store.broker import BrokerLayout, BrokerView
from orchestrator.store.cells import Cells, by_score, each_cell
from orchestrator.store.compact import TurnStore, pack_snapshot
from orchestrator.store.connection import connect
from orchestrator.store.creation import creation
from orchestrator.store.files import FilesStore, now_ms
from orchestrator.store.keys import Keys
from orchestrator.store.ledger import LedgerStore
from orchestrator.store.retention import RetentionPolicy, RetentionStore
from orchestrator.store.scripts import jobs as scripts
from orchestrator.store.scripts import records
from orchestrator.store.scripts.chain import CHAIN, SET_FIELD
from orchestrator.store.status import JobWatch, StatusStore
from orchestrator.store.status import job_id_checked as _job_id
from orchestrator.store.wakes import WakeList
from orchestrator.store.workers import WorkerStore
from orchestrator.wire.models import Worker

__all__ = ["JobWatch", "RedisStore", "connect", "now_ms"]


class RedisStore(StatusStore, LedgerStore, RetentionStore, FilesStore, TurnStore, WorkerStore):
    """Synchronous access to everything the orchestrator keeps in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        updates_maxlen: int = 100_000,
        retention: RetentionPolicy | None = None,
        cells: int = 1,
        tenant_tag: str = "tenant",
    ) -> None:
        # Typed as Any: redis-py's stubs cannot see decode_responses=True (every reply
        # here is str), and casting each of them would bury the logic.
        self.r: Any = client
        #: Key names per cell (docs/scaling.md); ``keys`` are the control keys, which
        #: with one cell are the whole layout.
        self.cells = Cells(client, prefix, cells, tenant_tag)
        self.keys = self.cells.control
        self.updates_maxlen = updates_maxlen
        self.retention = retention or RetentionPolicy()
        self._transition = client.register_script(records.TRANSITION)
        self._retain = client.register_script(records.RETAIN)
        self._settled = client.register_script(records.SETTLED)
        self._trim_index = client.register_script(records.TRIM_INDEX)
        self._note = client.register_script(records.NOTE)
        self._fold = client.register_script(records.FOLD_TURN)
        self._create = client.register_script(scripts.CREATE_JOB)
        self._begin = client.register_script(scripts.BEGIN_ATTEMPT)
        self._count = client.register_script(scripts.COUNT_ATTEMPT)
        self._submit = client.register_script(scripts.SUBMIT)
        self._set_field = client.register_script(SET_FIELD)
        self._record_file = client.register_script(records.RECORD_FILE)
        self._forget_lost = client.register_script(records.FORGET_LOST)
        self._worker_field = client.register_script(records.WORKER_FIELD)
        self._append = client.register_script(scripts.APPEND_UPDATES)
        self._post_turn = client.register_script(scripts.POST_TURN)
        self._release = client.register_script(scripts.RELEASE_FOLLOW)
        self._chain = client.register_script(CHAIN)
        #: What Celery's broker holds (queue depths, unacked tasks): by default its keys
        #: in this same Redis; ``runtime.store_for`` puts another broker's view here.
        self.broker: BrokerView = BrokerLayout(client, self.keys)

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        *,
        updates_maxlen: int = 100_000,
        retention: RetentionPolicy | None = None,
        password: str | None = None,
        sentinel_password: str | None = None,
        cells: int = 1,
        tenant_tag: str = "tenant",
    ) -> RedisStore:
        """A store on its own connection pool (:func:`orchestrator.store.connection.connect`)."""
        client = connect(url, password=password, sentinel_password=sentinel_password)
        return cls(client, prefix, updates_maxlen=updates_maxlen, retention=retention,
                   cells=cells, tenant_tag=tenant_tag)  # fmt: skip

    def broker_on(
        self, url: str, *, password: str | None = None, sentinel_password: str | None = None
    ) -> None:
        """Read the broker's keys in another Redis (``BROKER_URL``), on a client of its own."""
        client = connect(url, password=password, sentinel_password=sentinel_password)
        self.broker = BrokerLayout(client, self.keys, owned=True)

    def batch(self) -> Batch:
        """An empty batch: writes of several store methods (their ``*_into`` forms) go
        to Redis together in one round trip, in order."""
        return Batch(self.r)

    # --- jobs --------------------------------------------------------------------

    def create_job(self, sub: Submission) -> tuple[Job, bool]:
        """Write a new queued job, or return the one its idempotency key already names.

        One script checks and sets the idempotency key with the job's writes, so a
        duplicate is impossible, not merely unlikely: of two racing submissions with the
        same key, one writes and the other gets its job.
        """
        job, keys, args = creation(self.cells, self.place(sub), sub)
        written, found_id = self._create(keys=keys, args=args)
        if int(written) == 1:
            return job, True
        found = self.get_job(str(found_id))
        if found is None:
            raise InputError("idempotency_key", "names a job that is gone")
        return found, False

    def mark_sending(self, job_id: str) -> None:
        """The job's first task is about to be sent: watched until a worker takes it
        (:meth:`begin_attempt` clears the mark). Written before the send, so that a
        worker that begins at once leaves no mark; the outbox keeps the job until
        :meth:`mark_sent`, so a producer dying in between still has it sent again."""
        self.r.zadd(self.cells.of_job(job_id).dispatched, {job_id: now_ms()})

    def mark_sent(self, job_id: str) -> None:
        """The job's first task is on the broker: out of the outbox."""
        self.r.zrem(self.cells.of_job(job_id).outbox, job_id)

    def drop_unsent(self, job_id: str) -> None:
        """Out of the outbox without being sent (the job moved on without it)."""
        self.r.zrem(self.cells.of_job(job_id).outbox, job_id)

    @property
    def wakes(self) -> WakeList:
        """The relay's wake list (jobs the gateway stored for a streams worker to send)."""
        return WakeList(self.r, self.cells)

    def unsent(self, older_than_ms: int, limit: int = 500) -> list[str]:
        """Jobs written but never known sent (the sender died in between)."""
        cutoff = now_ms() - older_than_ms
        return self._each_cell(lambda k: k.outbox, cutoff, limit)

    def untaken(self, older_than_ms: int, limit: int = 500) -> list[str]:
        """Jobs whose first task was sent at least ``older_than_ms`` ago and that no
        worker has begun (the task waits in a backlog, or the broker lost it)."""
        return self._each_cell(lambda k: k.dispatched, now_ms() - older_than_ms, limit)

    def forget_dispatched(self, job_id: str) -> None:
        """Out of the sent-not-begun and the begun-not-submitted sets."""
        k = self.cells.of_job(job_id)
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zrem(k.dispatched, job_id)
            pipe.zrem(k.begun, job_id)
            pipe.execute()

    def get_job(self, job_id: str) -> Job | None:
        # A hash without an id is no job: a late set_submitted's write after Redis lost it.
        data = self.r.hgetall(self.cells.of_job(job_id).job(job_id))
        return Job.from_hash(data) if data.get("id") else None

    def job_into(self, batch: Batch, job_id: str) -> int:
        """Queue a read of the job (for :meth:`job_of`); the index of its reply."""
        batch.pipe.hgetall(self.cells.of_job(job_id).job(job_id))
        return len(batch.pipe) - 1

    @staticmethod
    def job_of(reply: Any) -> Job | None:
        """The job a :meth:`job_into` read found (None: none; an error reply raises)."""
        if isinstance(reply, Exception):
            raise reply
        return Job.from_hash(reply) if reply else None

    def require_job(self, job_id: str) -> Job:
        job = self.get_job(_job_id(job_id))
        if job is None:
            raise UnknownIdError("job_id", f"no job {job_id} (never made, or expired: RETENTION)")
        return job

    def begin_attempt(self, job_id: str) -> tuple[Job, bool]:
        """Read a job for its create step; True if its attempt was counted already.

        Counted in the same round trip when the job is queued and no limit or budget
        cap is configured (there is nothing to admit it against); otherwise the caller
        admits it, then calls :meth:`count_attempt`.
        """
        job_id = _job_id(job_id)
        k = self.cells.of_job(job_id)
        keys = [k.job(job_id), k.limits, k.budget_caps, k.dispatched, k.begun]
        counted, flat = self._begin(keys=keys, args=[job_id, now_ms()])
        if not flat:
            raise InputError("job_id", f"no job {job_id}")
        data = dict(zip(flat[::2], flat[1::2], strict=True))
        return Job.from_hash(data), int(counted) == 1

    def count_attempt(self, job_id: str) -> int:
        """Record, before calling upstream, that an attempt is being made: the attempts
        so far, or 0 for a job with no record (nothing written)."""
        k = self.cells.of_job(job_id)
        keys = [k.job(job_id), k.begun]
        return int(self._count(keys=keys, args=[job_id, now_ms()]))

    def stalled(self, older_than_ms: int, limit: int = 500) -> list[str]:
        """Jobs still queued whose upstream call began ``older_than_ms`` ago or more (see
        :attr:`Keys.begun`). Those that moved on (failed, ended here) or expired leave
        the set here, so a busy broker queue, which holds the re-send back, never lets
        them pile up."""
        found = self._each_cell(lambda k: k.begun, now_ms() - older_than_ms, limit)
        if not found:
            return []
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in found:
                pipe.hget(self.cells.of_job(job_id).job(job_id), "status")
            statuses = pipe.execute()
        done = [j for j, status in zip(found, statuses, strict=True) if status != "queued"]
        by_cell: dict[Keys, list[str]] = {}
        for job_id in done:
            by_cell.setdefault(self.cells.of_job(job_id), []).append(job_id)
        for k, ids in by_cell.items():
            self.r.zrem(k.begun, *ids)
        return [job_id for job_id in found if job_id not in done]

    def job_states(self) -> dict[str, int]:
        raws = each_cell(self.r, self.cells, lambda pipe, k: pipe.hgetall(k.job_states))
        return {s: sum(max(int(raw.get(s, 0)), 0) for raw in raws) for s in STATUSES}

    def recent_jobs(self, limit: int = 50) -> list[str]:
        replies = each_cell(
            self.r,
            self.cells,
            lambda pipe, k: pipe.zrevrange(k.jobs, 0, limit - 1, withscores=True),
        )
        found = [pair for reply in replies for pair in reply]
        return [job_id for job_id, _ in sorted(found, key=by_score, reverse=True)[:limit]]

    def set_submitted(self, job: Job, worker: Worker, *, follow_at: int = 0) -> bool:
        """After the upstream call: link the worker, store its snapshot, ask for a follower,
        then move the job to ``submitted`` (False if it had moved on already).

        ``update_from`` is where this turn's updates start in the worker's stream. With
        ``follow_at`` (epoch ms) the stream is up for following only from then on: the
        caller relays it meanwhile (a lease nobody renews: it lapses if the caller dies).
        """
        batch = Batch(self.r)
        moved_at = self.submit_into(batch, job, worker, follow_at=follow_at)
        return int(batch.execute()[moved_at]) == 1

    def submit_into(self, queue: Queue, job: Job, worker: Worker, *, follow_at: int = 0) -> int:
        """Queue :meth:`set_submitted`'s writes; the index of the move's reply (1 moved,
        0 submitted already, below 0 refused: the job moved on)."""
        k = self.cells.of_job(job.id)
        wkey = k.worker(worker.id)
        # A create's turn is the worker's first, even if a follower left over from a job
        # Redis lost has already relayed some of it.
        relayed = 0 if job.kind == "create" else int(self.r.hget(wkey, "relayed") or 0)
        seed: dict[str, int] = {}
        if job.kind == "continue" and not self.r.exists(wkey):
            # The worker's records expired with its last job: count this turn from the
            # cumulative figures the continue answered, or its cost would include every
            # earlier turn again.
            seed = cumulative(worker) or {}
        at = now_ms()
        upstream = job.model_copy(update={"status": "submitted"})
        # SUBMIT links the worker and puts the job up for following (writing nothing if
        # Redis lost the job meanwhile), then the job is 'submitted': a follower that
        # claims it finds its worker id.
        keys = [k.job(job.id), k.begun, wkey, k.updates(worker.id),
                k.ledger("worker", worker.id), k.follows, k.jobs_live]  # fmt: skip
        args: list[Any] = [job.id, worker.id, relayed, pack_snapshot(worker), follow_at,
                           self.keys.follow_wake, next_due(upstream, at)]  # fmt: skip
        args += [part for name, value in seed.items() for part in (f"counted:{name}", value)]
        queue.script(self._submit, keys, args)
        return self.transition_into(queue, job.id, "submitted", at)

    def request_follow(self, job_id: str, *, now: bool = False) -> None:
        """Put the job's stream up for a follower to claim.

        Without ``now`` it is a no-op when the job is already followed; with ``now`` a
        held lease is cut short so that any follower claims it at once.
        """
        k = self.cells.of_job(job_id)
        with self.r.pipeline(transaction=now) as pipe:
            if now:
                pipe.zadd(k.follows, {job_id: 0})
                pipe.hdel(k.follow_owners, job_id)
            else:
                pipe.zadd(k.follows, {job_id: 0}, nx=True)
            pipe.execute_command("PUBLISH", self.keys.follow_wake, job_id)  # raw, as above
            pipe.execute()

    def forget_lost(self, job_id: str, worker_id: str = "") -> bool:
        """A job with no record (lost with Redis's last writes, or expired): drop its
        follow entry, and let what late writes left of it and of its worker (named
        here, or by a partial job hash an older late write made) expire (FORGET_LOST).
        False if the job has a record (nothing written)."""
        k = self.cells.of_job(job_id)
        jkey = k.job(job_id)
        worker_id = worker_id or str(self.r.hget(jkey, "worker_id") or "")
        keys = [jkey, k.follows, k.follow_owners, k.worker(worker_id), k.updates(worker_id),
                k.ledger("worker", worker_id), k.retention]  # fmt: skip
        args: list[Any] = [job_id, worker_id, self.retention.ttl_ms({}), now_ms()]
        return int(self._forget_lost(keys=keys, args=args)) == 1

    def release_follow(self, job_id: str, owner: str = "") -> bool:
        k = self.cells.of_job(job_id)
        return int(self._release(keys=[k.follows, k.follow_owners], args=[job_id, owner])) == 1

    def following(self) -> int:
        return sum(each_cell(self.r, self.cells, lambda pipe, k: pipe.zcard(k.follows)))

    # --- cells ---------------------------------------------------------------------

    def place(self, sub: Submission) -> int:
        """The cell a new job of ``sub`` goes to (:meth:`Cells.place`)."""
        worker_id, tenant = self.cells.wanted(sub)
        worker = None if worker_id is None else self.cell_of_worker(worker_id)
        placed = None if tenant is None else self.cells.of_tenant(tenant)
        return self.cells.place(sub, worker, placed)

    def cell_of_worker(self, worker_id: str) -> int | None:
        """The cell holding the worker's records (None: none does): remembered, else
        found with one EXISTS per cell."""
        return self.cells.of_worker(worker_id, self._probe_worker)

    def _probe_worker(self, worker_id: str) -> list[bool]:
        found = each_cell(self.r, self.cells, lambda pipe, k: pipe.exists(k.worker(worker_id)))
        return [bool(n) for n in found]

    def _each_cell(self, index: Callable[[Keys], str], cutoff: int, limit: int) -> list[str]:
        """Members scored up to ``cutoff`` of a per-cell sorted set, at most ``limit``
        from each cell (lowest scores first)."""
        replies = each_cell(
            self.r, self.cells,
            lambda pipe, k: pipe.zrangebyscore(index(k), "-inf", cutoff, start=0, num=limit),
        )  # fmt: skip
        return [member for reply in replies for member in reply]

    # --- operations ----------------------------------------------------------------

    def ping(self) -> None:
        """Raise :data:`~orchestrator.store.connection.StoreError` if Redis does not answer."""
        self.r.ping()

    def close(self) -> None:
        """Close the store's connections (the store is not used after)."""
        self.broker.close()
        self.r.close()

    def record_heartbeat(self, name: str, at_ms: int, ttl_seconds: int) -> None:
        """The worker ``name`` took a task at ``at_ms``; forgotten after ``ttl_seconds``."""
        self.r.set(self.keys.heartbeat(name), at_ms, ex=ttl_seconds)

    def heartbeat(self, name: str) -> str | None:
        """The last heartbeat of ``name`` as written (epoch ms), or None."""
        raw = self.r.get(self.keys.heartbeat(name))
        return None if raw is None else str(raw)

    def check_eviction_policy(self, *, unknown_ok: bool = False) -> str | None:
        """The server's maxmemory-policy; raises if it could evict our keys. With
        ``unknown_ok``, None where the server refuses CONFIG (some managed services)."""
        policy = ""
        for server in self.servers():  # every server holding a cell
            try:
                reply = server.config_get("maxmemory-policy")
            except redis.ResponseError:
                if unknown_ok:
                    return None
                raise
            policy = str(reply.get("maxmemory-policy", ""))
            if policy not in ("noeviction", ""):
                raise InputError(
                    "maxmemory-policy", f"is {policy!r}; the store needs 'noeviction' (no key loss)"
                )
        return policy
