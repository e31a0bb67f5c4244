"""What the archiver reads and writes in Redis (see :mod:`orchestrator.ops.archive`).

Finished jobs wait in the archive queue (a sorted set by end time) while an archive is
configured: TRANSITION queued them there instead of setting their expiry. The archiver
reads each one's records (:meth:`ArchiveStore.record`), writes them to the day's file,
and only then sets their expiry (``RedisStore.retain_archived``), so nothing expires
unarchived. ``import`` puts a day's records back (:meth:`ArchiveStore.restore`), with a
fresh retention, and never touches the ledger: the money was counted when it happened.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from orchestrator.ledger import FIELDS
from orchestrator.store.cells import by_score, each_cell
from orchestrator.store.compact import raw_hget, snapshot_text
from orchestrator.store.keys import Keys
from orchestrator.store.ledger import LEDGER_FIELD, pack_posted, posted_record
from orchestrator.store.status import history_entries, history_line

if TYPE_CHECKING:
    from orchestrator.store.jobs import RedisStore


class ArchiveStore:
    """The archive queue, a finished job's records as one dict, and their re-import."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.r: Any = store.r
        self.keys = store.keys
        self.cells = store.cells

    def due(self, limit: int = 500) -> list[tuple[str, int]]:
        """Finished jobs waiting for the archiver, oldest first, with their end (ms)."""
        replies = each_cell(
            self.r,
            self.cells,
            lambda pipe, k: pipe.zrange(k.archive_queue, 0, limit - 1, withscores=True),
        )
        pairs = sorted((p for reply in replies for p in reply), key=by_score)
        return [(str(job_id), int(score)) for job_id, score in pairs[:limit]]

    def waiting(self) -> int:
        return sum(each_cell(self.r, self.cells, lambda pipe, k: pipe.zcard(k.archive_queue)))

    def take_turn(self, owner: str, ttl_ms: int) -> bool:
        """One archiver of the fleet at a time writes (a lease of ``ttl_ms``)."""
        lock = self.keys.pass_lock("archive")
        if self.r.set(lock, owner, nx=True, px=ttl_ms):
            return True
        return bool(self.r.get(lock) == owner and self.r.pexpire(lock, ttl_ms))

    def give_turn(self, owner: str) -> None:
        lock = self.keys.pass_lock("archive")
        if self.r.get(lock) == owner:
            self.r.delete(lock)

    def record(self, job_id: str) -> dict[str, Any] | None:
        """The job's records as one JSON-able dict: ``job`` (its hash, history apart),
        ``history``, ``updates`` (its turn's, ``[index, data]``), ``ledger`` (what its
        turn posted), ``files`` and ``worker`` (the snapshot). None if the job is gone."""
        keys = self.cells.of_job(job_id)
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.job(job_id))
            pipe.get(keys.ledger_turn(job_id))
            pipe.hgetall(keys.job_files(job_id))
            data, turn, files = pipe.execute()
        if not data:
            return None
        posted = posted_record(data.pop(LEDGER_FIELD, None) or turn)
        worker_id = data.get("worker_id") or ""
        snapshot, updates = None, []
        if worker_id:
            raw = raw_hget(self.r, keys.worker(worker_id), "snapshot")
            snapshot = snapshot_text(raw) if raw else None
            start = int(data.get("update_from") or 0)
            end = data.get("update_to")
            stop = int(end) if end not in (None, "") else None
            stored = self.store.read_updates(
                worker_id, start - 1, count=10**9, turn=start, job_id=job_id
            )
            updates = [[i, d] for i, d in stored if stop is None or i < stop]
        history = history_entries(data.pop("history", "") or "")
        data.pop("history_n", None)
        return {
            "job": data,
            "history": history,
            "updates": updates,
            # Named, integers as strings: the archive's format, whatever Redis's.
            "ledger": {k: str(v) for k, v in posted.items()} if posted else None,
            "files": {name: json.loads(v) for name, v in sorted(files.items())},
            "worker": json.loads(snapshot) if snapshot else None,
        }

    def restore(self, record: dict[str, Any], ttl_ms: int) -> bool:
        """Put an archived job's records back for ``ttl_ms`` (job hash with its history
        and turn record, files index; its worker's snapshot and its turn's updates when
        the worker has no records). False (nothing written) when the job is in Redis.
        A turn record of other fields than today's (another version's) goes back as the
        older layout's string key, which every reader still reads."""
        job = {str(k): str(v) for k, v in dict(record["job"]).items()}
        job_id = job["id"]
        keys = self.cells.of_job(job_id)
        if self.r.exists(keys.job(job_id)):
            return False
        mapping = {**job}
        ledger = record.get("ledger")
        older = ledger is not None and set(ledger) != set(FIELDS)  # another version's fields
        if ledger is not None and not older:
            mapping[LEDGER_FIELD] = pack_posted(ledger)
        lines = [history_line(str(h["status"]), int(h["at"]), str(h.get("detail") or ""))
                 for h in record.get("history") or []]  # fmt: skip
        worker_id = job.get("worker_id") or ""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(keys.job(job_id), mapping={**mapping, "history": "\n".join(lines),
                                                 "history_n": len(lines)})  # fmt: skip
            pipe.pexpire(keys.job(job_id), ttl_ms)
            if record.get("files"):
                files = {n: json.dumps(v, sort_keys=True) for n, v in record["files"].items()}
                pipe.hset(keys.job_files(job_id), mapping=files)
                pipe.pexpire(keys.job_files(job_id), ttl_ms)
            if older:
                pipe.set(keys.ledger_turn(job_id), json.dumps(ledger), px=ttl_ms)
            pipe.execute()
        if worker_id and record.get("worker") and not self.r.exists(keys.worker(worker_id)):
            self._restore_worker(keys, worker_id, record, ttl_ms)
        return True

    def _restore_worker(
        self, keys: Keys, worker_id: str, record: dict[str, Any], ttl_ms: int
    ) -> None:
        """The worker's snapshot and the job's updates (in the job's cell, ``keys``),
        read-only copies for ``ttl_ms``: ``relayed`` is left unset, so no follower
        appends to them."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(keys.worker(worker_id), "snapshot", json.dumps(record["worker"]))
            pipe.pexpire(keys.worker(worker_id), ttl_ms)
            for index, data in record.get("updates") or []:
                pipe.xadd(keys.updates(worker_id), {"data": json.dumps(data)}, id=f"0-{index + 1}")
            if record.get("updates"):
                pipe.pexpire(keys.updates(worker_id), ttl_ms)
            pipe.execute()
