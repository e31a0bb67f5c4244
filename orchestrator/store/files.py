"""A job's fetched files in Redis: the files index and the fetches being watched
(mixed into :class:`~orchestrator.store.jobs.RedisStore`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from orchestrator.store.batch import Batch
from orchestrator.store.keys import Keys


def now_ms() -> int:
    """Epoch milliseconds: the store's clock (every score and stamp it writes)."""
    return int(time.time() * 1000)


class FilesStore:
    """The files index of each job, and file fetches sent but not yet begun."""

    r: Any
    keys: Keys
    _record_file: Any

    def record_file(self, job_id: str, name: str, info: dict[str, Any]) -> bool:
        """Record how a fetch ended; False for a job with no record (nothing written:
        see RECORD_FILE)."""
        keys = [self.keys.job(job_id), self.keys.job_files(job_id)]
        args = [name, json.dumps(info, sort_keys=True)]
        return int(self._record_file(keys=keys, args=args)) == 1

    def files(self, job_id: str) -> dict[str, dict[str, Any]]:
        raw = self.r.hgetall(self.keys.job_files(job_id))
        return {name: json.loads(value) for name, value in sorted(raw.items())}

    def file_recorded(self, job_id: str, name: str) -> bool:
        return bool(self.r.hexists(self.keys.job_files(job_id), name))

    # File fetches sent and not yet begun, watched so a fetch the broker lost is sent
    # again; a member is ``<job id>|<file name>`` (job ids never hold a ``|``).

    def fetches_sent_into(self, batch: Batch, job_id: str, names: Sequence[str]) -> None:
        """Queue the record that fetches of the job's files ``names`` were sent now."""
        if names:
            at = now_ms()
            sent = {f"{job_id}|{name}": at for name in names}
            batch.pipe.zadd(self.keys.files_dispatched, sent)

    def fetch_resent(self, job_id: str, name: str) -> None:
        self.r.zadd(self.keys.files_dispatched, {f"{job_id}|{name}": now_ms()})

    def forget_fetch(self, job_id: str, name: str) -> None:
        """The fetch began (or needs no watching any more)."""
        self.r.zrem(self.keys.files_dispatched, f"{job_id}|{name}")

    def unbegun_fetches(self, older_than_ms: int, limit: int = 500) -> list[tuple[str, str]]:
        """(job id, file name) of fetches sent at least ``older_than_ms`` ago that no
        worker has begun."""
        cutoff = now_ms() - older_than_ms
        key = self.keys.files_dispatched
        members = self.r.zrangebyscore(key, "-inf", cutoff, start=0, num=limit)
        return [(job_id, name) for job_id, _, name in (m.partition("|") for m in members)]
