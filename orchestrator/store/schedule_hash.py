"""A schedule as one Redis hash: the fields it is stored with and read back from.

Its key is listed in ``docs/redis-layout.md``; :mod:`orchestrator.store.schedules` makes the
Redis calls. Counters start absent (0), and a record stored before a field existed
reads as that field's default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from orchestrator.jobs.model import LIMITS, limit_ms
from orchestrator.schedules.timing import COUNTERS, Schedule, Timing

TIMING_FIELDS = ("kind", "at_ms", "anchor_ms", "interval_ms", "cron", "tz", "catch_up", "rev")
# What an update may set (the rest is the schedule's state, moved by runs and actions).
UPDATED_FIELDS = frozenset(
    {"kind", "input", "budget", "tz", "cron", "interval_ms", "at_ms", "anchor_ms", "delay_s"}
    | {"catch_up", "overlap", "tags", "updated_at", *(f"{name}_ms" for name in LIMITS)}
)


def timing_from_hash(data: Mapping[str, str | None]) -> Timing:
    """The Timing of a schedule hash (or of its TIMING_FIELDS)."""
    return Timing(
        kind=data["kind"],  # type: ignore[arg-type]
        at_ms=int(data.get("at_ms") or 0),
        anchor_ms=int(data.get("anchor_ms") or 0),
        interval_ms=int(data.get("interval_ms") or 0),
        cron=data.get("cron") or "",
        tz=data.get("tz") or "UTC",
    )


def schedule_to_hash(s: Schedule) -> dict[str, str | int]:
    """The fields a new schedule is stored with (counters start absent, meaning 0)."""
    t = s.timing
    return {
        "id": s.id,
        "kind": t.kind,
        "input": s.input,
        "budget": s.budget,
        "worker_id": s.worker_id or "",
        "tz": t.tz,
        "cron": t.cron,
        "interval_ms": t.interval_ms,
        "at_ms": t.at_ms,
        "anchor_ms": t.anchor_ms,
        "delay_s": s.delay_seconds,
        "catch_up": s.catch_up,
        "overlap": s.overlap,
        "status": s.status,
        "next_run_ms": s.next_run_ms,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "upstream_id": s.upstream_id or "",
        "last_job": s.last_job,
        **{f"{name}_ms": limit_ms(s.limits.get(name)) for name in LIMITS},
        "tags": json.dumps(dict(s.tags), sort_keys=True),
    }


def schedule_from_hash(data: Mapping[str, str]) -> Schedule:
    return Schedule(
        id=data["id"],
        timing=timing_from_hash(data),
        input=data["input"],
        budget=data["budget"],  # type: ignore[arg-type]
        worker_id=data.get("worker_id") or None,
        catch_up=data.get("catch_up", "skip"),  # type: ignore[arg-type]
        overlap=data.get("overlap", "skip"),  # type: ignore[arg-type]
        status=data["status"],  # type: ignore[arg-type]
        next_run_ms=int(data.get("next_run_ms") or 0),
        created_at=int(data["created_at"]),
        updated_at=int(data.get("updated_at") or 0),
        rev=int(data.get("rev") or 0),
        delay_seconds=int(data.get("delay_s") or 0),
        upstream_id=data.get("upstream_id") or None,
        last_job=data.get("last_job") or "",
        counts={name: int(data.get(name) or 0) for name in COUNTERS},
        limits={
            name: int(ms) / 1000 for name in LIMITS if int(ms := data.get(f"{name}_ms") or 0) > 0
        },
        # A record stored before schedules had tags has no field: no tags.
        tags=json.loads(data.get("tags") or "{}"),
    )
