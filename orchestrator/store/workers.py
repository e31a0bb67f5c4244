"""A worker's records in Redis: its hash (snapshot, stored-update count) and its updates
stream (mixed into :class:`~orchestrator.store.jobs.RedisStore`; the follower's
:class:`~orchestrator.store.follows.FollowStore` writes updates through
:func:`append_call` too). Completed turns folded into the hash are
:mod:`orchestrator.store.compact`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.store.batch import Batch, Queue
from orchestrator.store.compact import pack_snapshot, raw_hget, unpack_snapshot
from orchestrator.store.files import now_ms
from orchestrator.store.keys import Keys
from orchestrator.store.retention import RetentionPolicy
from orchestrator.wire.models import Worker


class WorkerStore:
    """Snapshots, fields and updates of upstream workers."""

    r: Any
    keys: Keys
    retention: RetentionPolicy
    updates_maxlen: int
    _append: Any
    _worker_field: Any

    def save_snapshot(self, worker: Worker) -> None:
        """Store the worker's snapshot, making its hash if need be (reconcile's repair of
        a worker whose job is kept). A job's steps use :meth:`update_snapshot`."""
        self.r.hset(self.keys.worker(worker.id), "snapshot", pack_snapshot(worker))

    def update_snapshot(self, worker: Worker) -> bool:
        """Store the worker's latest snapshot, only into its hash (WORKER_FIELD): False
        if it has no records (expired, or lost with the job that made them), since a
        hash made by this write alone would never expire."""
        return self.set_worker_field(worker.id, "snapshot", pack_snapshot(worker))

    def snapshot_into(self, batch: Batch, worker: Worker) -> int:
        """Queue :meth:`update_snapshot`; the index of its reply."""
        keys, args = [self.keys.worker(worker.id)], ["snapshot", pack_snapshot(worker)]
        return batch.script(self._worker_field, keys, args)

    def set_worker_field(self, worker_id: str, field: str, value: str | bytes) -> bool:
        """Write a field of the worker's hash, only if it has one (WORKER_FIELD)."""
        keys = [self.keys.worker(worker_id)]
        return int(self._worker_field(keys=keys, args=[field, value])) == 1

    def snapshot(self, worker_id: str) -> Worker | None:
        raw = raw_hget(self.r, self.keys.worker(worker_id), "snapshot")
        return unpack_snapshot(raw) if raw else None

    def relayed(self, worker_id: str) -> int:
        return int(self.r.hget(self.keys.worker(worker_id), "relayed") or 0)

    def append_updates(
        self, worker_id: str, first_index: int, payloads: Sequence[str], job_id: str = ""
    ) -> int:
        """Store updates ``first_index...``; those already stored are skipped. With
        ``job_id`` (whose turn they are) nothing is stored if that job has no record."""
        keys, args = self._append_call(worker_id, first_index, payloads, job_id)
        return int(self._append(keys=keys, args=args))

    def append_updates_into(
        self, batch: Queue, worker_id: str, first_index: int, payloads: Sequence[str],
        job_id: str = "",
    ) -> int:  # fmt: skip
        """Queue :meth:`append_updates`; the index of its reply."""
        keys, args = self._append_call(worker_id, first_index, payloads, job_id)
        return batch.script(self._append, keys, args)

    def _append_call(
        self, worker_id: str, first_index: int, payloads: Sequence[str], job_id: str
    ) -> tuple[list[str], list[Any]]:
        return append_call(self.keys, self.retention, self.updates_maxlen, worker_id,
                           first_index, payloads, job_id)  # fmt: skip


def append_call(
    keys: Keys, policy: RetentionPolicy, maxlen: int, worker_id: str, first: int,
    payloads: Sequence[str], job_id: str = "",
) -> tuple[list[str], list[Any]]:  # fmt: skip
    """KEYS and ARGV of APPEND_UPDATES (the job's keys only when ``job_id`` is given)."""
    names = [keys.worker(worker_id), keys.updates(worker_id)]
    if job_id:
        names += [keys.job(job_id), keys.ledger("worker", worker_id), keys.retention]
    return names, [first, maxlen, now_ms(), job_id, worker_id, policy.ttl_ms({}), *payloads]
