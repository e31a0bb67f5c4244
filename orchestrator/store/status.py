"""A job's status moves and the retention they start (mixed into
:class:`~orchestrator.store.jobs.RedisStore`): every move goes through the one
TRANSITION script of :mod:`orchestrator.store.scripts.records`, which keeps the live
index and the ended set, the history and the event channel, and on an end sets the
expiry of the job's records (docs/retention.md). A job ended here keeps its records
until its upstream turn is settled (:meth:`StatusStore.settled`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.errors import InputError
from orchestrator.jobs.model import LOCAL_ENDS, TERMINAL, Job, JobStatus
from orchestrator.store.batch import Queue
from orchestrator.store.cells import Cells
from orchestrator.store.connection import StoreError, pubsub
from orchestrator.store.files import now_ms
from orchestrator.store.keys import Keys
from orchestrator.store.retention import (
    RECORD_FIELDS,
    RetentionPolicy,
    fields_of,
    retain_call,
    settled_call,
    transition_call,
)
from orchestrator.store.scripts.records import HISTORY_MAX

#: How often a move is tried again when the job's worker was linked between the read
#: of its fields and the script (the script answers -2 then).
_TRIES = 5


def history_line(status: str, at: int, detail: str = "") -> str:
    """One entry of a job's ``history`` field, as HISTORY_FN writes it:
    ``<at ms> <status>``, then the detail as a JSON string when there is one."""
    line = f"{at} {status}"
    return f"{line} {json.dumps(detail)}" if detail else line


def history_entries(raw: str) -> list[dict[str, Any]]:
    """``{"status", "at", "detail"}`` of each line of a ``history`` field (``detail``
    "" when none); a line written as a JSON object (before 30 Nov 2026) reads too."""
    out: list[dict[str, Any]] = []
    for line in raw.split("\n"):
        if line.startswith("{"):
            e = json.loads(line)
            out.append({"status": e["status"], "at": int(e["at"]), "detail": e.get("detail") or ""})
        elif line:
            at, _, rest = line.partition(" ")
            status, _, detail = rest.partition(" ")
            out.append(
                {"status": status, "at": int(at), "detail": json.loads(detail) if detail else ""}
            )
    return out


def job_id_checked(value: object) -> str:
    """``value`` if it looks like a job id; InputError naming ``job_id`` otherwise."""
    if not isinstance(value, str) or not value.startswith("job_"):
        raise InputError("job_id", f"{value!r} is not a job id")
    return value


class StatusStore:
    """Status moves, their history and event channel, and the retention they start."""

    r: Any
    keys: Keys
    cells: Cells
    retention: RetentionPolicy
    _transition: Any
    _retain: Any
    _settled: Any
    _release: Any
    _note: Any
    _set_field: Any
    fold_turn_into: Any

    def transition(self, job_id: str, status: JobStatus, detail: str = "") -> bool:
        """Move a job forward; False if it already was there or may not move. An end
        sets the expiry of the job's records in the same script (see
        :mod:`orchestrator.store.retention`), except an end reached here
        (``LOCAL_ENDS``): the job enters the ended set, and its retention waits for
        :meth:`settled`."""
        k = self.cells.of_job(job_id)
        for _ in range(_TRIES):
            fields = None
            if status in TERMINAL and status not in LOCAL_ENDS:
                fields = fields_of(self.r.hmget(k.job(job_id), RECORD_FIELDS))
            keys, args = transition_call(
                k, self.retention, job_id, status, now_ms(), detail, fields
            )
            result = int(self._transition(keys=keys, args=args))
            if result != -2:  # -2: its worker was linked meanwhile; read it again
                return result == 1
        return False

    def transition_into(self, batch: Queue, job_id: str, status: JobStatus, at: int) -> int:
        """Queue a move to a status that is not an end (no fields to read); the index of
        its reply (1 moved, 0 there already, -1 refused)."""
        k = self.cells.of_job(job_id)
        assert status not in TERMINAL
        keys, args = transition_call(k, self.retention, job_id, status, at, "", None)
        return batch.script(self._transition, keys, args)

    def complete_into(
        self, batch: Queue, job: Job, update_to: int, updates: Sequence[str] | None = None
    ) -> None:
        """Queue the end of a settled turn: where its updates end, its updates folded
        out of the stream (:meth:`~orchestrator.store.compact.TurnStore.fold_turn_into`,
        which reads them first unless ``updates`` holds them), ``completed`` (with its
        records' expiry), and the release of its follow lease."""
        job_id = job.id
        k = self.cells.of_job(job_id)
        batch.script(self._set_field, [k.job(job_id)], ["update_to", update_to])
        self.fold_turn_into(batch, job, update_to, updates)
        fields = (job.worker_id or "", job.idempotency_key or "", job.tags)
        keys, args = transition_call(k, self.retention, job_id, "completed", now_ms(), "", fields)
        batch.script(self._transition, keys, args)
        batch.script(self._release, [k.follows, k.follow_owners], [job_id, ""])

    def settled(self, job_id: str) -> int:
        """A job ended here is settled (its upstream turn posted, or it had none): it
        leaves the ended set and its records' retention starts now (SETTLED; with an
        archive, it is queued for the archiver). 1 when done, 0 when the job was not
        in the ended set."""
        k = self.cells.of_job(job_id)
        for _ in range(_TRIES):
            fields = fields_of(self.r.hmget(k.job(job_id), RECORD_FIELDS))
            keys, args = settled_call(k, self.retention, job_id, now_ms(), fields)
            result = int(self._settled(keys=keys, args=args))
            if result != -2:
                return result
        return 0

    def retain_archived(self, job_id: str, ended_ms: int) -> int:
        """The archiver wrote the job: set its records' expiry (RETAIN). 1 when set, 0
        when the job was not waiting for the archive."""
        k = self.cells.of_job(job_id)
        for _ in range(_TRIES):
            fields = fields_of(self.r.hmget(k.job(job_id), RECORD_FIELDS))
            keys, args = retain_call(k, self.retention, job_id, ended_ms, now_ms(), fields)
            result = int(self._retain(keys=keys, args=args))
            if result != -2:
                return result
        return 0

    def note(self, job_id: str, detail: str) -> bool:
        """A history entry that changes nothing: the job's status as it is, a detail.
        False for a job that is gone."""
        k = self.cells.of_job(job_id)
        args = [now_ms(), detail[:1000], HISTORY_MAX]
        return int(self._note(keys=[k.job(job_id)], args=args)) == 1

    def history(self, job_id: str) -> list[dict[str, Any]]:
        k = self.cells.of_job(job_id)
        raw = self.r.hget(k.job(job_id), "history") or ""
        return [{**e, "detail": e["detail"] or None} for e in history_entries(raw)]

    def watch_job(self, job_id: str) -> JobWatch:
        """A subscription to the job's status moves: open it, then read the job; any
        later move wakes :meth:`JobWatch.wait` (use it as a context manager)."""
        k = self.cells.of_job(job_id)
        channel = k.job_events(job_id_checked(job_id))

        def subscribe() -> Any:
            subscription = pubsub(self.r, k.job(job_id))
            subscription.subscribe(channel)
            return subscription

        return JobWatch(subscribe)


class JobWatch:
    """A job's status moves, as they happen (see :meth:`StatusStore.watch_job`)."""

    #: How long a watch whose server went away waits before the caller re-reads.
    LOST_PAUSE = 0.2

    def __init__(self, subscribe: Callable[[], Any]) -> None:
        self._subscribe = subscribe
        self.pubsub: Any = subscribe()

    def wait(self, timeout: float) -> str | None:
        """The next status the job moved to, or None after ``timeout`` seconds. When
        the subscription's server went away (a failover), None after a short pause:
        the caller re-reads the job through a client that finds the new primary, and
        the next wait subscribes anew."""
        try:
            if self.pubsub is None:
                self.pubsub = self._subscribe()
            message = self.pubsub.get_message(timeout=max(timeout, 0.001))
        except StoreError:
            self.close()
            time.sleep(min(timeout, self.LOST_PAUSE))
            return None
        return None if message is None else str(message["data"])

    def close(self) -> None:
        subscription, self.pubsub = self.pubsub, None
        if subscription is not None:
            with contextlib.suppress(StoreError):
                subscription.close()

    def __enter__(self) -> JobWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
