"""Reconcile the store with the upstream: ``orchestrator reconcile [--hours H] [--fix]``.

The upstream is the source of truth for money. For every worker of the jobs created in
the last ``hours`` (the store's ``jobs`` index), the worker's snapshot is read again
(``WorkersClient.retrieve``) and compared with what Redis holds:

- ``money``: the worker's cumulative upstream cost and usage against its ledger row
  (``ledger:worker:<id>``) and its ``counted:<field>``. Fixed by one atomic script
  (``RECONCILE_WORKER``, run by ``LedgerRepair.post_correction``) that posts what never
  reached the ledger as a correction record ``reconcile:<worker>:<n>`` to the total
  and every rollup of the worker's latest job (day = today UTC, budget, tags, schedule,
  worker and the budget periods), repairs the worker row alone when only it was lost,
  and moves ``counted`` up to the upstream figure. A correction is not a turn:
  ``turns`` does not move.
- ``total``: the ledger total against the sum of the day rows (kept, where worker rows
  expire with their records); fixed by moving the total (``RECONCILE_TOTAL``,
  ``LedgerRepair.check_total``, after the money repairs). Jobs whose records have
  expired are not in the ``jobs`` index any more: reconcile covers the retention window.
- ``fell``: an anomaly kept by POST_TURN: a turn's upstream cumulative figure was below
  what the ledger had counted (nothing was posted for it, ``counted`` kept its high mark).
  Reported with the fall; fixed (``--fix``) by following the upstream figure: the
  ``money`` repair above brings ``counted`` and the ledger down to it, and the anomaly is
  cleared. Without ``--fix`` the report is not clean.
- ``figures``: an upstream figure outside the ledger's bounds (see
  :mod:`orchestrator.ledger`) is reported as an error; nothing is posted for it.
- ``stuck``: a job still ``submitted``/``running`` here whose worker is finished upstream
  (its finalize was lost); fixed by sending ``workers.finalize`` for it again.
- ``snapshot``: a finished worker's stored snapshot missing or unlike the upstream's;
  fixed by saving the upstream's.

Workers still running upstream, or whose latest job here moved within ``grace_seconds``
and is not finished, are skipped: their turn is in flight, and its finalize will post
it. Running a fix beside live workers is safe: every repair is a compare-and-set in one
script, and finalize is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.controls.budgets import turn_members
from orchestrator.errors import APIError, InputError
from orchestrator.jobs.model import Job
from orchestrator.ledger import FIELDS, FigureError, cumulative
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.ledger_repair import LedgerRepair
from orchestrator.wire.client import WorkersClient
from orchestrator.wire.models import Worker

SendFinalize = Callable[[str], None]
MAX_HOURS = 24 * 366


# How a per-field difference reads, by kind, after the field's name.
FIELD_TEXT: dict[str, Callable[[Any], str]] = {
    "money": lambda d: f"upstream {d['upstream']} ledger row {d['row']} counted {d['counted']}",
    "total": lambda d: f"total {d['total']} sum of day rows {d['days']}",
    "fell": lambda d: f"fell by {d} below what was counted (nothing posted for it)",
}


@dataclass
class Difference:
    """One disagreement between Redis and the upstream (or within the ledger)."""

    kind: str  # money | fell | total | stuck | snapshot
    subject: str  # worker id, job id, or "total"
    detail: dict[str, Any]
    fixed: bool = False
    repair: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        if self.kind in FIELD_TEXT:
            say = FIELD_TEXT[self.kind]
            text = "; ".join(f"{f} {say(d)}" for f, d in sorted(self.detail["fields"].items()))
        elif self.kind == "stuck":
            text = (
                f"job is {self.detail['status']}, worker {self.detail['worker_id']} is "
                f"{self.detail['upstream_status']} upstream"
            )
        else:
            text = f"stored snapshot is {self.detail['state']}"
        done = "  [fixed]" if self.fixed else ""
        return f"{self.kind:<9}{self.subject}  {text}{done}"


@dataclass
class Report:
    hours: float
    jobs: int = 0
    workers: int = 0
    skipped_running: int = 0
    differences: list[Difference] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.errors and all(d.fixed for d in self.differences)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["clean"] = self.clean
        return data


class Reconciler:
    """Compares (and repairs) the store against upstream snapshots of recent workers."""

    def __init__(
        self,
        store: RedisStore,
        client: WorkersClient,
        *,
        send_finalize: SendFinalize | None = None,
        threads: int = 8,
    ) -> None:
        self.store = store
        self.ledger = LedgerRepair(store)
        self.client = client
        self.send_finalize = send_finalize
        self.threads = threads

    def run(self, hours: float = 24.0, *, fix: bool = False, grace_seconds: float = 60.0) -> Report:
        if not 0 < hours <= MAX_HOURS:
            raise InputError("hours", f"must be more than 0 and at most {MAX_HOURS}")
        if grace_seconds < 0:
            raise InputError("grace", "must not be negative")
        report = Report(hours=hours)
        jobs = self.ledger.jobs_since(now_ms() - int(hours * 3_600_000))
        report.jobs = len(jobs)
        by_worker: dict[str, list[Job]] = {}
        for job in jobs:
            if job.worker_id:
                by_worker.setdefault(job.worker_id, []).append(job)
        report.workers = len(by_worker)
        upstream = self._retrieve(sorted(by_worker), report)
        cutoff = now_ms() - int(grace_seconds * 1000)
        for worker_id, worker in upstream.items():
            latest = max(by_worker[worker_id], key=lambda j: j.created_at)
            if worker.running or worker.status == "running" or _moved_since(latest, cutoff):
                report.skipped_running += 1  # in flight: its finalize will post the turn
                continue
            self._check_snapshot(worker, fix, report)
            self._check_money(worker, latest, fix, report)
            for job in by_worker[worker_id]:
                self._check_stuck(job, worker, fix, report)
        self._check_total(fix, report)
        return report

    # --- reading -------------------------------------------------------------------

    def _retrieve(self, worker_ids: list[str], report: Report) -> dict[str, Worker]:
        def one(worker_id: str) -> tuple[str, Worker | str]:
            try:
                return worker_id, self.client.retrieve(worker_id)
            except APIError as exc:
                return worker_id, str(exc)

        found: dict[str, Worker] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
            for worker_id, got in pool.map(one, worker_ids):
                if isinstance(got, str):
                    report.errors.append(f"{worker_id}: {got}")
                else:
                    found[worker_id] = got
        return found

    # --- the checks ----------------------------------------------------------------

    def _check_snapshot(self, worker: Worker, fix: bool, report: Report) -> None:
        stored = self.store.snapshot(worker.id)
        if stored is not None and stored.model_dump() == worker.model_dump():
            return
        state = "missing" if stored is None else "stale"
        diff = Difference("snapshot", worker.id, {"state": state})
        if fix:
            self.store.save_snapshot(worker)
            diff.fixed = True
        report.differences.append(diff)

    def _check_money(self, worker: Worker, latest: Job, fix: bool, report: Report) -> None:
        try:
            figures = cumulative(worker)
        except FigureError as exc:
            report.errors.append(f"{worker.id}: {exc}")
            return
        if figures is None:
            return  # costs still unknown upstream: nothing to compare yet
        falls = self.ledger.worker_falls(worker.id)
        counted_all, row_all = self.ledger.worker_figures(worker.id)
        wrong: dict[str, dict[str, int]] = {}
        for name, c, w in zip(FIELDS, counted_all, row_all, strict=True):
            u = figures[name]
            if c != u or w != u:
                wrong[name] = {"upstream": u, "row": w, "counted": c}
        if wrong:
            diff = Difference("money", worker.id, {"job_id": latest.id, "fields": wrong})
            if fix:
                diff.repair = self._post_correction(worker.id, latest, figures)
                diff.fixed = True
            report.differences.append(diff)
        if falls:
            fell = Difference("fell", worker.id, {"job_id": latest.id, "fields": falls})
            if fix:
                self.ledger.clear_falls(worker.id)
                fell.fixed = True
            report.differences.append(fell)

    def _post_correction(self, worker_id: str, job: Job, figures: dict[str, int]) -> dict[str, Any]:
        at = now_ms()
        posted = self.ledger.post_correction(
            job, worker_id, figures, at, turn_members(job.tags, at)
        )
        if posted is None:
            return {}  # a finalize posted it in the meantime
        correction_id, record = posted
        return {"id": correction_id, **{k: _ints(v) for k, v in record.items()}}

    def _check_stuck(self, job: Job, worker: Worker, fix: bool, report: Report) -> None:
        # Only jobs whose turn went upstream: a queued job's task is still to come, and
        # finalizing it would complete a turn that never ran.
        if job.status not in ("submitted", "running") or worker.status != "completed":
            return
        detail = {"status": job.status, "worker_id": worker.id, "upstream_status": worker.status}
        diff = Difference("stuck", job.id, detail)
        if fix and self.send_finalize is not None:
            self.send_finalize(job.id)
            diff.fixed = True
        report.differences.append(diff)

    def _check_total(self, fix: bool, report: Report) -> None:
        wrong = {
            name: {"total": total, "days": days}
            for name, (total, days) in self.ledger.check_total(fix).items()
        }
        if wrong:
            report.differences.append(Difference("total", "total", {"fields": wrong}, fixed=fix))


def _moved_since(job: Job, cutoff_ms: int) -> bool:
    """Whether a job not yet finished changed state after ``cutoff_ms`` (still in flight)."""
    return not job.done and max(job.timestamps.values(), default=job.created_at) > cutoff_ms


def _ints(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: int(v) for k, v in value.items()}
    return value  # cjson encodes an empty table as {} (a dict) or [] (a list)


def render(report: Report) -> Iterable[str]:
    """The report for people: one line per difference, then a summary line."""
    for diff in report.differences:
        yield diff.line()
    for error in report.errors:
        yield f"error    {error}"
    fixed = sum(d.fixed for d in report.differences)
    yield (
        f"checked  {report.jobs} jobs, {report.workers} workers of the last {report.hours:g} h "
        f"({report.skipped_running} in flight): {len(report.differences)} differences, "
        f"{fixed} fixed, {len(report.errors)} errors"
    )
