"""What a schedule becomes when updated (``orch.schedules.update``): every field given
checked by create's rules, the rest as stored. Pure: the store step and the sending of
runs are :meth:`orchestrator.schedules.facade.ScheduleAPI.update`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from orchestrator.errors import InputError
from orchestrator.jobs.model import LIMITS
from orchestrator.jobs.submit import check
from orchestrator.schedules.timing import Schedule, ScheduleRequest, new_schedule, to_datetime
from orchestrator.settings import Settings
from orchestrator.wire.models import CronWhen, DelayedWhen, IntervalWhen, ScheduledWhen
from orchestrator.wire.routes import validate

#: The fields an update may be given (as ``create`` takes them).
FIELDS = ("input", "when", "timezone", "budget", "tags", "catch_up", "overlap", *LIMITS)


def when_of(schedule: Schedule) -> BaseModel:
    """The ``when`` a schedule's timing was made from."""
    t = schedule.timing
    if t.kind == "scheduled":
        return ScheduledWhen(date=to_datetime(t.at_ms))
    if t.kind == "delayed":
        return DelayedWhen(delay_in_seconds=schedule.delay_seconds)
    if t.kind == "cron":
        return CronWhen(cron=t.cron)
    return IntervalWhen(interval_seconds=t.interval_ms // 1000)


def revised(
    settings: Settings, current: Schedule, given: Mapping[str, Any], now_ms: int
) -> tuple[Schedule, bool]:
    """``current`` with the ``given`` fields (none None), and whether its timing is new.

    InputError naming the field for anything create would refuse. A new ``when`` or
    ``timezone`` makes a new timing, its next run computed from ``now_ms`` as at
    creation (a ``delayed`` one counts from now, an interval's grid starts now).
    """
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise InputError(unknown[0], "is not a field of a schedule update")
    if not given:
        raise InputError("changes", f"give at least one of {', '.join(FIELDS)}")
    when = given.get("when")
    if "timezone" in given and when is None and current.kind != "cron":
        raise InputError("timezone", f"applies to cron; this schedule is {current.kind}")
    when = when_of(current) if when is None else when
    request = validate(
        ScheduleRequest,
        {
            "when": when.model_dump(by_alias=True) if isinstance(when, BaseModel) else when,
            "timezone": given.get("timezone", current.timing.tz),
            "catch_up": given.get("catch_up", current.catch_up),
            "overlap": given.get("overlap", current.overlap),
        },
    )
    limits = {**current.limits, **{name: given[name] for name in LIMITS if name in given}}
    sub = check(
        settings,
        kind="continue" if current.worker_id else "create",
        input=given.get("input", current.input),
        budget=given.get("budget", current.budget),
        tags=given.get("tags", dict(current.tags)),
        worker_id=current.worker_id,
        **limits,
    )
    retimed = "when" in given or "timezone" in given
    timing = current.timing, current.next_run_ms, current.delay_seconds
    if retimed:
        fresh = new_schedule(
            current.id, request, input=sub.input, budget=sub.budget,
            worker_id=current.worker_id, now_ms=now_ms,
        )  # fmt: skip
        timing = fresh.timing, fresh.next_run_ms, fresh.delay_seconds
    new = dataclasses.replace(
        current,
        timing=timing[0],
        next_run_ms=timing[1],
        delay_seconds=timing[2],
        input=sub.input,
        budget=sub.budget,
        tags=dict(sub.tags),
        limits={name: getattr(sub, name) for name in limits},
        catch_up=request.catch_up,
        overlap=request.overlap,
        updated_at=now_ms,
    )
    return new, retimed
