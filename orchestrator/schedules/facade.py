"""Schedules for backends (``orch.schedules``) and the run step behind them.

    s = orch.schedules.create(worker_id, "Daily digest", {"type": "cron", "cron": "0 7 * * *"},
                              timezone="Europe/Berlin", budget="low")
    orch.schedules.describe(s.id)["next_runs"]     # the next 10 fire times
    orch.schedules.history(s.id)                   # slot, fired_at, job id, status, cost

Runs happen when ``orchestrator beat`` finds a slot due (see ``docs/schedules.md``);
each becomes a job submitted with ``schedule_id``, so its cost lands in the ledger under
the schedule (``orch.costs(by="schedule")``). Every method validates first and raises
:class:`~orchestrator.errors.InputError` naming the field; nothing is written then.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celery import Celery
from pydantic import BaseModel

from orchestrator.errors import InputError, NotFoundError
from orchestrator.jobs.model import validate_submission
from orchestrator.ledger import parse_row, total_cost_micro
from orchestrator.runtime import Runtime
from orchestrator.schedules.timing import (
    CatchUp,
    Overlap,
    Schedule,
    ScheduleRequest,
    new_schedule,
    to_datetime,
    to_ms,
    upcoming,
)
from orchestrator.store.jobs import now_ms
from orchestrator.store.schedules import ScheduleStore, new_schedule_id, pending_member
from orchestrator.wire.models import (
    Budget,
    CronWhen,
    DelayedWhen,
    IntervalWhen,
    ScheduleCancel,
    ScheduledWhen,
    ScheduleList,
    WorkerSchedule,
)
from orchestrator.wire.routes import validate

if TYPE_CHECKING:
    from orchestrator.facade import Orchestrator

log = logging.getLogger(__name__)

RUN_TASK = "workers.run_schedule"
RUNS_TASK = "workers.run_schedules"
#: Slots one ``workers.run_schedules`` message carries: a burst of 10,000 due slots is
#: 100 publishes, not 10,000, and each message is still a short task.
RUNS_PER_MESSAGE = 100


def iso(ms: int | None) -> str | None:
    """Epoch ms as an ISO 8601 UTC string (None stays None)."""
    if ms is None:
        return None
    return to_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def send_run(app: Celery, schedule_id: str, slot_ms: int, producer: Any = None) -> None:
    """Put one run of a schedule on the broker (ids only)."""
    app.send_task(
        RUN_TASK,
        args=[schedule_id, slot_ms],
        argsrepr=f"{schedule_id} slot={iso(slot_ms)}",
        producer=producer,
    )


def send_runs(app: Celery, runs: Sequence[tuple[str, int]], producer: Any = None) -> None:
    """Put several runs on the broker as one ``workers.run_schedules`` message (ids only).

    Callers keep a message to ``RUNS_PER_MESSAGE`` runs so each task stays short.
    """
    first = f"{runs[0][0]} slot={iso(runs[0][1])}"
    label = first if len(runs) == 1 else f"{len(runs)} runs from {first}"
    chunk = [[sid, slot] for sid, slot in runs]
    app.send_task(RUNS_TASK, args=[chunk], argsrepr=label, producer=producer)


def run_slot(rt: Runtime, app: Celery, schedule_id: str, slot_ms: int) -> str:
    """Run one slot of a schedule, at most once however often it is delivered.

    Decides overlap from our own job state (the last run's job not terminal: skip, or
    buffer one run), then submits the job through the same path as ``submit`` /
    ``continue_``, with idempotency key ``sched:<id>:<slot>`` so a repeated task maps
    to the same job. A schedule without a worker creates one on its first run and
    continues it afterwards. Returns the verdict (``fired``, ``skipped``, ``buffered``,
    ``wait``, ``duplicate``, ``gone`` or ``error``).
    """
    ss = ScheduleStore(rt.store)
    for _ in range(10):
        schedule = ss.get(schedule_id)
        if schedule is None:
            return "gone"
        schedule = _learn_worker(rt, ss, schedule)
        decision = ss.decide(schedule, slot_ms, now_ms())
        if decision.verdict != "retry":
            break
    else:
        raise RuntimeError(f"schedule {schedule_id}: last run kept changing")
    if decision.verdict != "fire":
        return decision.verdict
    kind = "continue" if schedule.worker_id else "create"
    try:
        sub = validate_submission(
            rt.settings.max_input_chars,
            kind=kind,
            input=schedule.input,
            budget=schedule.budget,
            worker_id=schedule.worker_id,
            schedule_id=schedule.id,
            idempotency_key=f"sched:{schedule.id}:{slot_ms}",
            priority="batch",  # nobody waits on a screen for a scheduled run
        )
    except InputError as exc:
        ss.set_job(schedule.id, slot_ms, "", str(exc))
        log.error("schedule %s slot %s: %s", schedule.id, slot_ms, exc)
        return "error"
    from orchestrator.jobs.steps import dispatch

    job, created = rt.store.create_job(sub)
    if created:
        dispatch(app, rt, job)
    ss.set_job(schedule.id, slot_ms, job.id)
    return "fired"


def _learn_worker(rt: Runtime, ss: ScheduleStore, schedule: Schedule) -> Schedule:
    """A worker-less schedule adopts the worker its previous run's job created."""
    if schedule.worker_id or not schedule.last_job.startswith("job_"):
        return schedule
    job = rt.store.get_job(schedule.last_job)
    if job is None or job.worker_id is None:
        return schedule
    ss.set_worker(schedule.id, job.worker_id)
    return ss.get(schedule.id) or schedule


class ScheduleAPI:
    """Create, list, pause, resume, cancel, describe, trigger and import schedules."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator
        self.store = ScheduleStore(orchestrator.store)

    # --- the reference's calls -----------------------------------------------------

    def create(
        self,
        worker_id: str | None,
        input: str,
        when: Mapping[str, Any] | BaseModel,
        *,
        budget: Budget = "standard",
        timezone: str = "UTC",
        catch_up: CatchUp = "skip",
        overlap: Overlap = "skip",
    ) -> WorkerSchedule:
        """A new schedule running ``input`` on the worker (a worker id or a job of ours).

        ``worker_id=None``: the first run creates a worker that later runs continue.
        ``when`` is a When model or its dict (``{"type": "cron", "cron": "0 7 * * *"}``).
        ``timezone`` (IANA) applies to cron; ``catch_up`` says what a recurring schedule
        does after beat was down (``skip`` the missed slots, or run ``once``);
        ``overlap`` what a slot does while the previous run still goes (``skip`` it, or
        ``buffer`` one run for when it ends). Returns the reference's WorkerSchedule.
        """
        when_data = when.model_dump(by_alias=True) if isinstance(when, BaseModel) else when
        request = validate(
            ScheduleRequest,
            {"when": when_data, "timezone": timezone, "catch_up": catch_up, "overlap": overlap},
        )
        wid = self.orch.worker_id_of(worker_id) if worker_id is not None else None
        sub = validate_submission(
            self.orch.settings.max_input_chars,
            kind="continue" if wid else "create",
            input=input,
            budget=budget,
            worker_id=wid,
        )
        if wid is not None:
            self._require_worker(wid)
        schedule = new_schedule(
            new_schedule_id(),
            request,
            input=sub.input,
            budget=sub.budget,
            worker_id=wid,
            now_ms=now_ms(),
        )
        self.store.add(schedule)
        return schedule.wire()

    def list(self, worker_id: str) -> ScheduleList:
        """The worker's live (active or paused) schedules, in the reference's list shape."""
        wid = self.orch.worker_id_of(worker_id)
        live = [s.wire() for s in self.store.for_worker(wid) if s.live]
        return ScheduleList(schedules=live, worker_id=wid)

    def cancel(self, schedule_id: str) -> ScheduleCancel:
        """Stop a schedule for good (its history stays); False if it was already over."""
        self.store.require(schedule_id)
        return ScheduleCancel(cancelled=self.store.change_state(schedule_id, "cancel") == 1)

    # --- ours ------------------------------------------------------------------------

    def get(self, schedule_id: str) -> Schedule:
        """The stored record (InputError ``schedule_id`` if unknown)."""
        return self.store.require(schedule_id)

    def pause(self, schedule_id: str) -> bool:
        """Leave the due index (no tick sees it) until resumed; False if not active."""
        self.store.require(schedule_id)
        return self.store.change_state(schedule_id, "pause") == 1

    def resume(self, schedule_id: str) -> bool:
        """Back in the due index at its next slot after now (a one-shot at its time)."""
        schedule = self.store.require(schedule_id)
        t = schedule.timing
        nxt = t.at_ms if schedule.kind in ("scheduled", "delayed") else upcoming(t, now_ms(), 1)[0]
        return self.store.change_state(schedule_id, "resume", nxt) == 1

    def trigger(self, schedule_id: str) -> int:
        """Run the schedule now (same path, dedupe and overlap rules); returns the slot."""
        schedule = self.store.require(schedule_id)
        if not schedule.live:
            raise InputError("schedule_id", f"schedule {schedule_id} is {schedule.status}")
        slot = now_ms()
        member = pending_member(schedule_id, slot)
        # Claimed before sending, like a beat's claim: a crash here is re-sent by beat.
        self.store.add_pending([member], slot)
        send_run(self.orch.app, schedule_id, slot)
        self.store.sent([member])
        return slot

    def list_all(self, *, include_finished: bool = False) -> builtins.list[dict[str, Any]]:
        """Every schedule with its next run (done and cancelled ones only on request)."""
        rows = []
        for s in self.store.many(self.store.all_ids()):
            if not include_finished and not s.live:
                continue
            rows.append(self._summary(s))
        return rows

    def describe(self, schedule_id: str, count: int = 10) -> dict[str, Any]:
        """Everything about one schedule: its next ``count`` fire times, counts, cost."""
        s = self.store.require(schedule_id)
        if s.status != "active":
            nxt: builtins.list[int] = []
        elif s.kind in ("scheduled", "delayed"):
            nxt = [s.timing.at_ms]
        else:
            nxt = [s.next_run_ms, *upcoming(s.timing, s.next_run_ms, count - 1)]
        cost = parse_row(self.store.schedule_cost(s.id))
        return {
            **self._summary(s),
            "schedule": s.wire().to_wire(),
            "input": s.input,
            "budget": s.budget,
            "timezone": s.timing.tz,
            "catch_up": s.catch_up,
            "overlap": s.overlap,
            "created_at": iso(s.created_at),
            "upstream_id": s.upstream_id,
            "next_runs": [iso(t) for t in nxt[:count]],
            "counts": dict(s.counts),
            "cost": {**cost, "total_cost_micro": total_cost_micro(cost)},
        }

    def history(self, schedule_id: str, limit: int = 50) -> builtins.list[dict[str, Any]]:
        """The newest runs, newest first: slot, fired_at, status, job id, job status, cost.

        ``status`` is the run's verdict (``fired``, ``skipped``, ``buffered``,
        ``error``); ``cost_micro`` is the job's posted turn cost (None until posted).
        """
        self.store.require(schedule_id)
        if limit < 1:
            raise InputError("limit", "must be at least 1")
        records = self.store.runs(schedule_id, limit)
        job_ids = [r["job_id"] for r in records if r.get("job_id")]
        states = dict(zip(job_ids, self.store.job_states(job_ids), strict=True))
        out = []
        for r in records:
            job_id = r.get("job_id") or None
            cost = self.orch.store.turn_cost(job_id) if job_id else None
            out.append(
                {
                    "slot": iso(int(r["slot"])),
                    "slot_ms": int(r["slot"]),
                    "fired_at": iso(int(r["fired_at"])),
                    "status": r["status"],
                    "job_id": job_id,
                    "job_status": states.get(job_id) if job_id else None,
                    "cost_micro": total_cost_micro(cost) if cost else None,
                    "error": r.get("error"),
                }
            )
        return out

    def import_upstream(self, worker_id: str, *, cancel_upstream: bool = False) -> dict[str, Any]:
        """Copy the worker's upstream schedules into ours (they then run through the queue).

        Idempotent: a schedule imported before is not imported twice. With
        ``cancel_upstream`` each upstream copy is cancelled once ours is stored.
        Returns ``{"imported": [WorkerSchedule], "already": [upstream ids],
        "cancelled_upstream": [upstream ids]}``.
        """
        wid = self.orch.worker_id_of(worker_id)
        client = self.orch.rt.client
        try:
            listing = client.list_schedules(wid)
        except NotFoundError:
            raise InputError("worker_id", f"no worker {wid} upstream") from None
        imported: builtins.list[WorkerSchedule] = []
        already: builtins.list[str] = []
        cancelled: builtins.list[str] = []
        for up in listing.schedules:
            if self.store.by_upstream(up.id):
                already.append(up.id)
            else:
                imported.append(self._import_one(wid, up))
            if cancel_upstream and client.cancel_schedule(wid, up.id).cancelled:
                cancelled.append(up.id)
        return {"imported": imported, "already": already, "cancelled_upstream": cancelled}

    # --- helpers ---------------------------------------------------------------------

    def _import_one(self, worker_id: str, up: WorkerSchedule) -> WorkerSchedule:
        when: BaseModel
        if up.type == "scheduled":
            when = ScheduledWhen(date=up.next_run_at)
        elif up.type == "delayed":
            when = DelayedWhen(delay_in_seconds=up.delay_in_seconds)
        elif up.type == "cron":
            when = CronWhen(cron=up.cron)
        else:
            when = IntervalWhen(interval_seconds=up.interval_seconds)
        request = validate(ScheduleRequest, {"when": when.model_dump(by_alias=True)})
        sub = validate_submission(
            self.orch.settings.max_input_chars,
            kind="continue",
            input=up.input,
            budget=up.budget,
            worker_id=worker_id,
        )
        schedule = new_schedule(
            new_schedule_id(),
            request,
            input=sub.input,
            budget=sub.budget,
            worker_id=worker_id,
            now_ms=now_ms(),
            allow_past=True,
            first_run_ms=None if up.type == "cron" else to_ms(up.next_run_at),
            upstream_id=up.id,
        )
        self.store.add(schedule)
        return schedule.wire()

    def _require_worker(self, worker_id: str) -> None:
        """InputError ``worker_id`` unless we know the worker or the API does."""
        if self.store.worker_known(worker_id):
            return
        try:
            self.orch.rt.client.retrieve(worker_id)
        except NotFoundError:
            raise InputError("worker_id", f"no worker {worker_id}") from None

    def _summary(self, s: Schedule) -> dict[str, Any]:
        t = s.timing
        spec = {
            "scheduled": lambda: f"at {iso(t.at_ms)}",
            "delayed": lambda: f"{s.delay_seconds}s after creation",
            "cron": lambda: f"cron {t.cron!r} ({t.tz})",
            "interval": lambda: f"every {t.interval_ms // 1000}s",
        }[s.kind]()
        return {
            "id": s.id,
            "type": s.kind,
            "when": spec,
            "status": s.status,
            "worker_id": s.worker_id,
            "next_run_at": iso(s.next_run_ms) if s.status == "active" else None,
            "runs": s.counts.get("runs", 0),
            "missed": s.counts.get("missed", 0),
            "skipped": s.counts.get("skipped", 0),
        }
