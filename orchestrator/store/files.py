"""A job's fetched files in Redis: the files index and the fetches being watched
(mixed into :class:`~orchestrator.store.jobs.RedisStore`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from orchestrator.store.batch import Batch
from orchestrator.store.cells import Cells
from orchestrator.store.keys import Keys


def now_ms() -> int:
    """Epoch milliseconds: the store's clock (every score and stamp it writes)."""
    return int(time.time() * 1000)


class FilesStore:
    """The files index of each job, and file fetches sent but not yet begun."""

    r: Any
    keys: Keys
    cells: Cells
    _record_file: Any
    _each_cell: Any

    def record_file(self, job_id: str, name: str, info: dict[str, Any]) -> bool:
        """Record how a fetch ended; False for a job with no record (nothing written:
        see RECORD_FILE)."""
        k = self.cells.of_job(job_id)
        keys = [k.job(job_id), k.job_files(job_id)]
        args = [name, json.dumps(info, sort_keys=True)]
        return int(self._record_file(keys=keys, args=args)) == 1

    def files(self, job_id: str) -> dict[str, dict[str, Any]]:
        k = self.cells.of_job(job_id)
        raw = self.r.hgetall(k.job_files(job_id))
        return {name: json.loads(value) for name, value in sorted(raw.items())}

    def file_recorded(self, job_id: str, name: str) -> bool:
        k = self.cells.of_job(job_id)
        return bool(self.r.hexists(k.job_files(job_id), name))

    # File fetches sent and not yet begun, watched so a fetch the broker lost is sent
    # again; a member is ``<job id>|<file name>`` (job ids never hold a ``|``).

    def fetches_sent_into(self, batch: Batch, job_id: str, names: Sequence[str]) -> None:
        """Queue the record that fetches of the job's files ``names`` were sent now."""
        k = self.cells.of_job(job_id)
        if names:
            at = now_ms()
            sent = {f"{job_id}|{name}": at for name in names}
            batch.pipe.zadd(k.files_dispatched, sent)

    def fetch_resent(self, job_id: str, name: str) -> None:
        k = self.cells.of_job(job_id)
        self.r.zadd(k.files_dispatched, {f"{job_id}|{name}": now_ms()})

    def forget_fetch(self, job_id: str, name: str) -> None:
        """The fetch began (or needs no watching any more)."""
        k = self.cells.of_job(job_id)
        self.r.zrem(k.files_dispatched, f"{job_id}|{name}")

    def unbegun_fetches(self, older_than_ms: int, limit: int = 500) -> list[tuple[str, str]]:
        """(job id, file name) of fetches sent at least ``older_than_ms`` ago that no
        worker has begun."""
        members = self._each_cell(lambda k: k.files_dispatched, now_ms() - older_than_ms, limit)
        return [(job_id, name) for job_id, _, name in (m.partition("|") for m in members)]
