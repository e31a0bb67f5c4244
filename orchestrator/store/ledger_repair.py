"""The reads and repairs of ``orchestrator reconcile`` (see
:mod:`orchestrator.ops.reconcile`): every repair is one atomic script, within one cell.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.jobs.model import Job
from orchestrator.ledger import FIELDS, rollups
from orchestrator.store.cells import by_score
from orchestrator.store.scripts import jobs as scripts

if TYPE_CHECKING:
    from orchestrator.store.jobs import RedisStore


class LedgerRepair:
    """What ``orchestrator reconcile`` reads and repairs (see
    :mod:`orchestrator.ops.reconcile`); every repair is one atomic script."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.r: Any = store.r
        self.keys = store.keys
        self._worker_script = self.r.register_script(scripts.RECONCILE_WORKER)
        self._total_script = self.r.register_script(scripts.RECONCILE_TOTAL)

    def jobs_since(self, since_ms: int) -> list[Job]:
        """Every job created at or after ``since_ms``, oldest first."""
        cells = self.store.cells
        with self.r.pipeline(transaction=False) as pipe:
            for k in cells:
                pipe.zrangebyscore(k.jobs, since_ms, "+inf", withscores=True)
            found = [pair for reply in pipe.execute() for pair in reply]
        ids = [job_id for job_id, _ in sorted(found, key=by_score)]
        jobs: list[Job] = []
        for start in range(0, len(ids), 500):
            with self.r.pipeline(transaction=False) as pipe:
                for job_id in ids[start : start + 500]:
                    pipe.hgetall(cells.of_job(job_id).job(job_id))
                jobs += [Job.from_hash(data) for data in pipe.execute() if data]
        return jobs

    def worker_figures(self, worker_id: str) -> tuple[list[int], list[int]]:
        """The worker's ``counted:<field>`` and its ledger row, per ledger field (in the
        order of :data:`orchestrator.ledger.FIELDS`), read at one instant."""
        k = self.store.worker_keys(worker_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hmget(k.worker(worker_id), [f"counted:{f}" for f in FIELDS])
            pipe.hmget(k.ledger("worker", worker_id), list(FIELDS))
            counted, row = pipe.execute()
        return [int(v or 0) for v in counted], [int(v or 0) for v in row]

    def worker_falls(self, worker_id: str) -> dict[str, int]:
        """The worker's outstanding ``fell:<field>`` anomalies (see POST_TURN)."""
        key = self.store.worker_keys(worker_id).worker(worker_id)
        values = self.r.hmget(key, [f"fell:{f}" for f in FIELDS])
        return {name: int(v) for name, v in zip(FIELDS, values, strict=True) if v is not None}

    def clear_falls(self, worker_id: str) -> None:
        """Forget the worker's ``fell:<field>`` anomalies (reconcile has followed the
        upstream figure)."""
        key = self.store.worker_keys(worker_id).worker(worker_id)
        self.r.hdel(key, *[f"fell:{f}" for f in FIELDS])

    def post_correction(
        self,
        job: Job,
        worker_id: str,
        figures: dict[str, int],
        at_ms: int,
        extra: Sequence[tuple[str, str]] = (),
    ) -> tuple[str, dict[str, Any]] | None:
        """Bring the ledger to the upstream's cumulative ``figures`` of a worker whose
        latest job is ``job`` (RECONCILE_WORKER); returns the correction's id and record,
        or None when nothing differed (a finalize posted it meanwhile)."""
        members = rollups(job, worker_id, at_ms, extra)
        own_row = members.index(("worker", worker_id)) + 1
        k = self.store.cells.of_job(job.id)
        keys = self.store.turn_keys(worker_id, members, k.ledger_corrections, k)
        args: list[Any] = [f"reconcile:{worker_id}:", len(members), json.dumps(figures), own_row]
        args += [value for _, value in members]
        result = self._worker_script(keys=keys, args=args)
        if not result:
            return None
        return str(result[0]), json.loads(result[1])

    def check_total(self, fix: bool) -> dict[str, tuple[int, int]]:
        """Fields where the ledger total differs from the sum of the day rows, as
        ``(total, sum)``; with ``fix`` the total is moved to the sum (RECONCILE_TOTAL).
        Day rows, not worker rows: those expire with their worker's records."""
        found: dict[str, tuple[int, int]] = {}
        for k in self.store.cells:  # each cell's total is the sum of its own day rows
            days = sorted(self.r.smembers(k.ledger_index("day")))
            keys = [k.ledger_total] + [k.ledger("day", d) for d in days]
            args = [json.dumps(list(FIELDS)), "1" if fix else "0"]
            for name, pair in json.loads(self._total_script(keys=keys, args=args)).items():
                total, summed = found.get(name, (0, 0))
                found[name] = (total + int(pair[0]), summed + int(pair[1]))
        return found
