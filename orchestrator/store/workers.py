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
from orchestrator.store.cells import Cells
from orchestrator.store.compact import pack_snapshot, raw_hget, unpack_snapshot
from orchestrator.store.files import now_ms
from orchestrator.store.keys import Keys
from orchestrator.store.retention import RetentionPolicy
from orchestrator.wire.models import Worker


class WorkerStore:
    """Snapshots, fields and updates of upstream workers."""

    r: Any
    keys: Keys
    cells: Cells
    cell_of_worker: Any
    retention: RetentionPolicy
    updates_maxlen: int
    _append: Any
    _worker_field: Any

    def worker_keys(self, worker_id: str, job_id: str = "") -> Keys:
        """The keys of the cell holding the worker's records: its job's (``job_id``,
        any job of the worker's), else found (:meth:`RedisStore.cell_of_worker`)."""
        if job_id or self.cells.count == 1:
            return self.cells.of_job(job_id)
        return self.cells.keys[self.cell_of_worker(worker_id) or 0]

    def save_snapshot(self, worker: Worker) -> None:
        """Store the worker's snapshot, making its hash if need be (reconcile's repair of
        a worker whose job is kept). A job's steps use :meth:`update_snapshot`."""
        self.r.hset(
            self.worker_keys(worker.id).worker(worker.id), "snapshot", pack_snapshot(worker)
        )

    def update_snapshot(self, worker: Worker, job_id: str = "") -> bool:
        """Store the worker's latest snapshot, only into its hash (WORKER_FIELD): False
        if it has no records (expired, or lost with the job that made them), since a
        hash made by this write alone would never expire."""
        return self.set_worker_field(worker.id, "snapshot", pack_snapshot(worker), job_id)

    def snapshot_into(self, batch: Batch, worker: Worker, job_id: str) -> int:
        """Queue :meth:`update_snapshot`; the index of its reply."""
        keys = [self.worker_keys(worker.id, job_id).worker(worker.id)]
        args = ["snapshot", pack_snapshot(worker)]
        return batch.script(self._worker_field, keys, args)

    def set_worker_field(
        self, worker_id: str, field: str, value: str | bytes, job_id: str = ""
    ) -> bool:
        """Write a field of the worker's hash, only if it has one (WORKER_FIELD)."""
        keys = [self.worker_keys(worker_id, job_id).worker(worker_id)]
        return int(self._worker_field(keys=keys, args=[field, value])) == 1

    def snapshot(self, worker_id: str, job_id: str = "") -> Worker | None:
        raw = raw_hget(self.r, self.worker_keys(worker_id, job_id).worker(worker_id), "snapshot")
        return unpack_snapshot(raw) if raw else None

    def relayed(self, worker_id: str, job_id: str = "") -> int:
        return int(
            self.r.hget(self.worker_keys(worker_id, job_id).worker(worker_id), "relayed") or 0
        )

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
        k = self.worker_keys(worker_id, job_id)
        return append_call(k, self.retention, self.updates_maxlen, worker_id, first_index,
                           payloads, job_id)  # fmt: skip


def append_call(
    keys: Keys, policy: RetentionPolicy, maxlen: int, worker_id: str, first: int,
    payloads: Sequence[str], job_id: str = "",
) -> tuple[list[str], list[Any]]:  # fmt: skip
    """KEYS and ARGV of APPEND_UPDATES (the job's keys only when ``job_id`` is given)."""
    names = [keys.worker(worker_id), keys.updates(worker_id)]
    if job_id:
        names += [keys.job(job_id), keys.ledger("worker", worker_id), keys.retention]
    return names, [first, maxlen, now_ms(), job_id, worker_id, policy.ttl_ms({}), *payloads]
