"""``/v1/schedules``: create (all four kinds), update, list, get, describe, history,
pause, resume, trigger and cancel. Schedules are not per tenant: untenanted tokens only;
reads for role read, changes for role admin."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from orchestrator import rules
from orchestrator.gateway.auth import GlobalAdmin, GlobalReader
from orchestrator.gateway.errors import COMMON, ApiError, not_found, responses
from orchestrator.gateway.schemas import Changed, ScheduleBody, ScheduleUpdateBody, Triggered
from orchestrator.gateway.state import Gateway, gateway

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], responses=responses(*COMMON))
GW = Annotated[Gateway, Depends(gateway)]
Row = dict[str, Any]


def _require(gw: Gateway, schedule_id: str) -> str:
    """The schedule id if such a schedule exists; 404 otherwise (a path that is no
    schedule id names no schedule either)."""
    if not rules.SCHEDULE_ID.ok(schedule_id):
        raise not_found(f"schedule {rules.shown(schedule_id)}", "schedule_id")
    gw.orch.schedules.get(schedule_id)  # UnknownIdError: 404
    return schedule_id


@router.post("", status_code=201, response_model=Row)
def create(body: ScheduleBody, _: GlobalAdmin, gw: GW) -> Row:
    """A new schedule: ``when`` is ``{"type": "scheduled", "date": ...}``, ``delayed``
    (``delayInSeconds``), ``cron`` (``cron``) or ``interval`` (``intervalSeconds``);
    seconds are JSON integers, and a key the kind does not take is refused."""
    made = gw.orch.schedules.create(
        body.worker, body.input, body.when, budget=body.budget, tags=body.tags,
        timezone=body.timezone, catch_up=body.catch_up, overlap=body.overlap,
    )  # fmt: skip
    return _shown(gw, made.id)


def _shown(gw: Gateway, schedule_id: str) -> Row:
    """The schedule in the Workers API's shape, with the tags each run's job gets."""
    stored = gw.orch.schedules.get(schedule_id)
    return {**stored.wire().to_wire(), "tags": dict(stored.tags)}


@router.patch("/{schedule_id}", response_model=Row, responses=responses(409))
def update(schedule_id: str, body: ScheduleUpdateBody, _: GlobalAdmin, gw: GW) -> Row:
    """Change the fields given (as the create body names them); the rest stay. A new
    ``when`` or ``timezone`` runs from its first slot after now. 409: done or cancelled."""
    sid = _require(gw, schedule_id)
    if not gw.orch.schedules.get(sid).live:
        raise ApiError(409, "the schedule is not live", field="schedule_id")
    gw.orch.schedules.update(sid, **body.model_dump(exclude_unset=True))
    return _shown(gw, sid)


@router.get("", response_model=list[Row])
def list_schedules(
    _: GlobalReader,
    gw: GW,
    include_finished: bool = False,
    worker: Annotated[str | None, Query(description="only this worker's live ones")] = None,
) -> list[Row]:
    """Every schedule with its next run (finished ones on request)."""
    if worker is not None:
        wid = gw.orch.worker_id_of(worker)  # checked by the id rules first
        return [dict(s.to_wire()) for s in gw.orch.schedules.list(wid).schedules]
    return gw.orch.schedules.list_all(include_finished=include_finished)


@router.get("/{schedule_id}", response_model=Row)
def get(schedule_id: str, _: GlobalReader, gw: GW) -> Row:
    """The schedule in the Workers API's shape, and its tags."""
    return _shown(gw, _require(gw, schedule_id))


@router.get("/{schedule_id}/describe", response_model=Row)
def describe(
    schedule_id: str, _: GlobalReader, gw: GW, count: Annotated[int, Query(ge=1, le=100)] = 10
) -> Row:
    """Its next fire times, run counts and cost."""
    return gw.orch.schedules.describe(_require(gw, schedule_id), count)


@router.get("/{schedule_id}/history", response_model=list[Row])
def history(
    schedule_id: str, _: GlobalReader, gw: GW, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[Row]:
    """The newest runs first: slot, status, job, its status and cost."""
    return gw.orch.schedules.history(_require(gw, schedule_id), limit)


@router.post("/{schedule_id}/pause", response_model=Changed)
def pause(schedule_id: str, _: GlobalAdmin, gw: GW) -> Changed:
    return Changed(changed=gw.orch.schedules.pause(_require(gw, schedule_id)))


@router.post("/{schedule_id}/resume", response_model=Changed)
def resume(schedule_id: str, _: GlobalAdmin, gw: GW) -> Changed:
    return Changed(changed=gw.orch.schedules.resume(_require(gw, schedule_id)))


@router.post("/{schedule_id}/trigger", response_model=Triggered, responses=responses(409))
def trigger(schedule_id: str, _: GlobalAdmin, gw: GW) -> Triggered:
    """Run it now (same dedupe and overlap rules as a due slot)."""
    sid = _require(gw, schedule_id)
    if not gw.orch.schedules.get(sid).live:
        raise ApiError(409, "the schedule is not live", field="schedule_id")
    return Triggered(slot=gw.orch.schedules.trigger(sid))


@router.post("/{schedule_id}/cancel", response_model=Changed)
def cancel(schedule_id: str, _: GlobalAdmin, gw: GW) -> Changed:
    """Stop it for good (its history stays)."""
    return Changed(changed=gw.orch.schedules.cancel(_require(gw, schedule_id)).cancelled)
