"""Schedules for backends (``orch.schedules``); the run step behind them is
:mod:`orchestrator.schedules.run`.

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
from collections.abc import Mapping
from typing import Any

from celery import Celery
from pydantic import BaseModel

from orchestrator.errors import InputError, NotFoundError, UnknownIdError
from orchestrator.jobs.model import Submission
from orchestrator.jobs.submit import carried_over, check, require_worker, worker_id_of
from orchestrator.ledger import parse_row, total_cost_micro
from orchestrator.runtime import Runtime
from orchestrator.schedules.beat import misfire_grace_ms
from orchestrator.schedules.run import send_run, send_runs
from orchestrator.schedules.timing import (
    CatchUp,
    Overlap,
    Schedule,
    ScheduleRequest,
    iso,
    new_schedule,
    plan,
    to_ms,
    upcoming,
)
from orchestrator.schedules.update import revised
from orchestrator.store.jobs import now_ms
from orchestrator.store.schedules import (
    ScheduleStore,
    pending_member,
    split_member,
)
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


class ScheduleAPI:
    """Create, update, list, pause, resume, cancel, describe, trigger and import schedules.

    Built from the runtime (settings, store, API client) and the Celery app a trigger
    sends its run with: the pieces it uses, not the whole facade.
    """

    def __init__(self, rt: Runtime, app: Celery) -> None:
        self.rt = rt
        self.app = app
        self.store = ScheduleStore(rt.store)

    # --- the reference's calls -----------------------------------------------------

    def create(
        self,
        worker_id: str | None,
        input: str,
        when: Mapping[str, Any] | BaseModel,
        *,
        budget: Budget | None = None,
        tags: dict[str, str] | None = None,
        timezone: str = "UTC",
        catch_up: CatchUp = "skip",
        overlap: Overlap = "skip",
        queue_ttl: float | None = None,
        idle_timeout: float | None = None,
        deadline: float | None = None,
    ) -> WorkerSchedule:
        """A new schedule running ``input`` on the worker (a worker id or a job of ours).

        ``worker_id=None``: the first run creates a worker that later runs continue.
        ``when`` is a When model or its dict (``{"type": "cron", "cron": "0 7 * * *"}``).
        ``timezone`` (IANA) applies to cron; ``catch_up`` says what a recurring schedule
        does after beat was down (``skip`` the missed slots, or run ``once``);
        ``overlap`` what a slot does while the previous run still goes (``skip`` it, or
        ``buffer`` one run for when it ends). ``queue_ttl``, ``idle_timeout`` and
        ``deadline`` are each run's job limits, as for ``Orchestrator.submit`` (None: the
        settings' defaults when the run happens). ``budget`` and ``tags`` are each run's
        job's; on a worker, those not given are carried over as for a continue (the job
        named, else the worker's latest of ours; a tag given replaces only its key), so a
        tenant's scheduled runs are costed, capped and limited as the tenant's. Without a
        worker: ``standard`` and the tags given. Returns the reference's WorkerSchedule.
        """
        limits = {"queue_ttl": queue_ttl, "idle_timeout": idle_timeout, "deadline": deadline}
        given = {name: value for name, value in limits.items() if value is not None}
        when_data = when.model_dump(by_alias=True) if isinstance(when, BaseModel) else when
        request = validate(
            ScheduleRequest,
            {"when": when_data, "timezone": timezone, "catch_up": catch_up, "overlap": overlap},
        )
        wid = None
        if worker_id is not None:
            wid = worker_id_of(self.rt.store, worker_id)
            named = worker_id if worker_id.startswith("job_") else None
            budget, tags = carried_over(self.rt, named, wid, budget, tags)
        sub = check(
            self.rt.settings,
            kind="continue" if wid else "create",
            input=input,
            budget="standard" if budget is None else budget,
            tags={} if tags is None else tags,
            worker_id=wid,
            **given,
        )
        if wid is not None:
            self._require_worker(wid)
        return self._add(request, sub, limits={name: getattr(sub, name) for name in given})

    def update(
        self,
        schedule_id: str,
        *,
        input: str | None = None,
        when: Mapping[str, Any] | BaseModel | None = None,
        timezone: str | None = None,
        budget: Budget | None = None,
        tags: Mapping[str, str] | None = None,
        catch_up: CatchUp | None = None,
        overlap: Overlap | None = None,
        queue_ttl: float | None = None,
        idle_timeout: float | None = None,
        deadline: float | None = None,
    ) -> Schedule:
        """Change a live schedule in place: only the fields given (not None), each
        checked as :meth:`create` checks it; its id, history and slot records stay.

        ``tags`` replace the schedule's tags whole; an empty mapping (``{}``) clears
        them, None (the default) leaves them. A new ``when`` or ``timezone`` (cron
        only) makes its next run the new timing's first after now. A slot of the old
        timing already due then and not yet claimed by a beat is claimed and sent here,
        as a beat would have (within the misfire grace a beat uses,
        :func:`~orchestrator.schedules.beat.misfire_grace_ms`; later ones count as
        missed); one claimed before stays as it was. A paused schedule stays paused.
        UnknownIdError for an unknown id, InputError ``schedule_id`` for a done or
        cancelled one. Returns the stored record.
        """
        asked = {
            "input": input, "when": when, "timezone": timezone, "budget": budget,
            "tags": tags, "catch_up": catch_up, "overlap": overlap,
            "queue_ttl": queue_ttl, "idle_timeout": idle_timeout, "deadline": deadline,
        }  # fmt: skip
        given = {name: value for name, value in asked.items() if value is not None}
        for _ in range(10):  # a retry only when a beat or another change came between
            current, due_ms = self.store.read(schedule_id)
            if not current.live:
                raise InputError("schedule_id", f"schedule {schedule_id} is {current.status}")
            now = now_ms()
            new, retimed = revised(self.rt.settings, current, given, now)
            due = None
            if retimed and due_ms is not None and due_ms <= now:
                grace_ms = misfire_grace_ms(self.app.conf, self.rt.settings)
                due = plan(current.timing, due_ms, now, current.catch_up, grace_ms)
            verdict, claimed = self.store.update(
                current, due_ms, new, now, retimed=retimed, due=due
            )
            if verdict == "ok":
                break
            if verdict == "gone":
                raise UnknownIdError("schedule_id", f"no schedule {schedule_id}")
            if verdict == "over":
                raise InputError("schedule_id", f"schedule {schedule_id} is over")
        else:
            raise RuntimeError(f"schedule {schedule_id} kept changing during the update")
        if claimed:
            # Claimed before sending, like a beat's claim: a crash here is re-sent by beat.
            send_runs(self.app, [split_member(m) for m in claimed])
            self.store.sent(claimed)
        return self.store.require(schedule_id)

    def list(self, worker_id: str) -> ScheduleList:
        """The worker's live (active or paused) schedules, in the reference's list shape."""
        wid = worker_id_of(self.rt.store, worker_id)
        live = [s.wire() for s in self.store.for_worker(wid) if s.live]
        return ScheduleList(schedules=live, worker_id=wid)

    def cancel(self, schedule_id: str) -> ScheduleCancel:
        """Stop a schedule for good (its history stays); False if it was already over."""
        self.store.require(schedule_id)
        return ScheduleCancel(cancelled=self.store.change_state(schedule_id, "cancel") == 1)

    # --- ours ------------------------------------------------------------------------

    def get(self, schedule_id: str) -> Schedule:
        """The stored record (UnknownIdError ``schedule_id`` if unknown)."""
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
        send_run(self.app, schedule_id, slot)
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
            "limits": dict(s.limits),
            "created_at": iso(s.created_at),
            "updated_at": iso(s.updated_at or None),
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
            cost = self.rt.store.turn_cost(job_id) if job_id else None
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
        wid = worker_id_of(self.rt.store, worker_id)
        client = self.rt.client
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
        # The worker's latest job of ours lends its tags, as to a schedule created here.
        _, tags = carried_over(self.rt, None, worker_id, up.budget, None)
        sub = check(
            self.rt.settings,
            kind="continue",
            input=up.input,
            budget=up.budget,
            tags=tags,
            worker_id=worker_id,
        )
        return self._add(
            request,
            sub,
            allow_past=True,
            first_run_ms=None if up.type == "cron" else to_ms(up.next_run_at),
            upstream_id=up.id,
        )

    def _add(self, request: ScheduleRequest, sub: Submission, **options: Any) -> WorkerSchedule:
        """Store a new schedule of ``request`` running the checked ``sub`` (its input,
        budget, tags and worker); its wire form. ``options``: :func:`new_schedule`'s."""
        schedule = new_schedule(
            self.store.new_id(sub),
            request,
            input=sub.input,
            budget=sub.budget,
            tags=sub.tags,
            worker_id=sub.worker_id,
            now_ms=now_ms(),
            **options,
        )
        self.store.add(schedule)
        return schedule.wire()

    def _require_worker(self, worker_id: str) -> None:
        """InputError ``worker_id`` unless we know the worker or the API does."""
        require_worker(self.rt, worker_id)

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
            "tags": dict(s.tags),
        }
