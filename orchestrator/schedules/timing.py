"""Schedule records and the next-run maths. Pure: no I/O, every time an epoch-ms int.

The four kinds of the reference: ``scheduled`` (once, at a date-time), ``delayed``
(once, N seconds after creation), ``cron`` (5 fields, in a time zone, UTC by default)
and ``interval`` (every N seconds from creation). A *slot* is one instant a schedule is
meant to run at; it names the run everywhere (dedupe, history, the job's
idempotency key).

Cron is computed on the wall clock of the schedule's zone, then mapped to instants
with one policy across daylight-saving changes: **once per wall-clock slot**. A wall
time that occurs twice (autumn) runs at its first occurrence only; one that does not
exist (spring) runs once at the first instant after the gap, and several such slots
collapse into that one run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict

from orchestrator import rules
from orchestrator.errors import InputError
from orchestrator.wire.models import (
    Budget,
    CronSchedule,
    CronWhen,
    DelayedSchedule,
    DelayedWhen,
    IntervalSchedule,
    IntervalWhen,
    ScheduledSchedule,
    ScheduledWhen,
    When,
    WorkerSchedule,
)

Kind = Literal["scheduled", "delayed", "cron", "interval"]
ScheduleStatus = Literal["active", "paused", "done", "cancelled"]
CatchUp = Literal["skip", "once"]
Overlap = Literal["skip", "buffer"]
ONE_SHOT: frozenset[str] = frozenset({"scheduled", "delayed"})
LIVE: frozenset[str] = frozenset({"active", "paused"})
COUNTERS = ("runs", "missed", "skipped", "claimed", "duplicates", "errors")

# A slot reached at most this late still runs; later ones count as missed.
MISFIRE_GRACE_MS = 5_000
# Missed slots of a cron schedule are counted up to this many per claim (a beat that
# was down for a year must not walk half a million minutes in one tick).
MAX_COUNTED = 10_000
# Slots fired for one schedule in one claim, at most (the grace bounds it anyway).
MAX_FIRE = 1_000

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
# The rule lives in orchestrator.rules (anchored \A…\Z: no trailing newline passes).
SCHEDULE_ID = rules.SCHEDULE_ID.regex


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime (naive ones are refused)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime: give a time zone")
    return (moment - EPOCH) // ONE_MS


def to_datetime(ms: int) -> datetime:
    """The UTC datetime of epoch milliseconds."""
    return EPOCH + timedelta(milliseconds=ms)


def iso(ms: int | None) -> str | None:
    """Epoch ms as an ISO 8601 UTC string (None stays None)."""
    if ms is None:
        return None
    return to_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA zone; InputError ``timezone`` if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError("timezone", f"unknown time zone {name!r}") from None


class ScheduleRequest(BaseModel):
    """How a schedule is asked for (validated before anything is written)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    when: When
    timezone: Annotated[str, AfterValidator(rules.check_validator(zone))] = "UTC"
    catch_up: CatchUp = "skip"
    overlap: Overlap = "skip"


@dataclass(frozen=True)
class Timing:
    """What the next-run maths needs of a schedule."""

    kind: Kind
    at_ms: int = 0  # one-shots: the instant
    anchor_ms: int = 0  # interval: the grid origin (slots are anchor + k * interval)
    interval_ms: int = 0
    cron: str = ""
    tz: str = "UTC"


@dataclass(frozen=True)
class Plan:
    """What to do with a schedule found due: slots to fire, missed count, next run."""

    fire: tuple[int, ...]
    missed: int
    next_ms: int | None


# --- cron on the wall clock ------------------------------------------------------


def _offset(ms: int, tz: ZoneInfo) -> timedelta | None:
    return to_datetime(ms).astimezone(tz).utcoffset()


def _gap_end(wall: datetime, tz: ZoneInfo) -> int:
    """The first instant after the DST gap that swallowed the wall time ``wall``."""
    a = to_ms(wall.replace(tzinfo=tz, fold=1))
    b = to_ms(wall.replace(tzinfo=tz, fold=0))
    lo, hi = min(a, b) // 1000, max(a, b) // 1000
    after = _offset(hi * 1000, tz)
    while hi - lo > 1:  # offset(lo) is the old one, offset(hi) the new one
        mid = (lo + hi) // 2
        if _offset(mid * 1000, tz) == after:
            hi = mid
        else:
            lo = mid
    return hi * 1000


def wall_to_ms(wall: datetime, tz: ZoneInfo) -> int:
    """The instant of a naive wall-clock time: first occurrence; gap -> its end."""
    ms = to_ms(wall.replace(tzinfo=tz, fold=0))
    if to_datetime(ms).astimezone(tz).replace(tzinfo=None) == wall:
        return ms
    return _gap_end(wall, tz)


def cron_instants(expr: str, tz_name: str, after_ms: int) -> Iterator[int]:
    """The cron's slots strictly after ``after_ms``, increasing, each once."""
    from croniter import croniter

    tz = zone(tz_name)
    start = to_datetime(after_ms).astimezone(tz).replace(tzinfo=None)
    # On a naive start croniter does plain calendar arithmetic: wall-clock times.
    walker = croniter(expr, start)
    last = after_ms
    stuck = 0
    while True:
        at = wall_to_ms(walker.get_next(datetime), tz)
        if at > last:
            last, stuck = at, 0
            yield at
        else:
            # Slots in a gap collapse onto its end; slots before ``after_ms`` in an
            # autumn fold are already past. Neither can go on for long.
            stuck += 1
            if stuck > 100_000:
                raise RuntimeError(f"cron {expr!r} makes no progress in {tz_name}")


# --- next runs ---------------------------------------------------------------------


def next_after(timing: Timing, after_ms: int) -> int | None:
    """The first slot strictly after ``after_ms`` (None: a one-shot already past)."""
    if timing.kind in ONE_SHOT:
        return timing.at_ms if timing.at_ms > after_ms else None
    if timing.kind == "interval":
        step = timing.interval_ms
        k = max(1, (after_ms - timing.anchor_ms) // step + 1)
        return timing.anchor_ms + k * step
    return next(cron_instants(timing.cron, timing.tz, after_ms))


def upcoming(timing: Timing, after_ms: int, count: int) -> list[int]:
    """The next ``count`` slots strictly after ``after_ms``."""
    if timing.kind == "cron":
        out: list[int] = []
        for at in cron_instants(timing.cron, timing.tz, after_ms):
            if len(out) >= count:
                break
            out.append(at)
        return out
    slots: list[int] = []
    t: int | None = after_ms
    while len(slots) < count and t is not None:
        t = next_after(timing, t)
        if t is not None:
            slots.append(t)
    return slots


def _count_slots(timing: Timing, start: int, end: int) -> tuple[int, int | None]:
    """(How many slots lie in [start, end), the last of them); ``start`` is a slot."""
    if start >= end:
        return 0, None
    if timing.kind == "interval":
        step = timing.interval_ms
        n = (end - start + step - 1) // step
        return n, start + (n - 1) * step
    count, last = 1, start
    for at in cron_instants(timing.cron, timing.tz, start):
        if at >= end:
            return count, last
        count, last = count + 1, at
        if count >= MAX_COUNTED:
            break
    return count, _last_before(timing, end, last)


def _last_before(timing: Timing, end: int, floor: int) -> int:
    """The last cron slot before ``end`` (at least ``floor``), looking back in widening windows."""
    window = 3_600_000
    while True:
        start = max(floor, end - window)
        last = None
        for at in cron_instants(timing.cron, timing.tz, start - 1):
            if at >= end:
                break
            last = at
        if last is not None or start == floor:
            return last if last is not None else floor
        window *= 8


def plan(
    timing: Timing, due_ms: int, now_ms: int, catch_up: CatchUp, grace_ms: int = MISFIRE_GRACE_MS
) -> Plan:
    """What to do with a schedule whose next run ``due_ms`` has come (``due_ms <= now_ms``).

    A one-shot fires once, however late, and is then done. A recurring schedule fires
    every slot up to ``now_ms`` that is at most ``grace_ms`` late; slots later than that
    are missed. With ``catch_up="once"``, if every due slot was missed, the latest of
    them fires anyway (once) and only the rest count as missed.
    """
    if timing.kind in ONE_SHOT:
        return Plan((due_ms,), 0, None)
    if due_ms > now_ms:
        return Plan((), 0, due_ms)
    cutoff = now_ms - grace_ms
    missed, last_missed = 0, None
    first = due_ms
    if due_ms < cutoff:
        nxt = next_after(timing, cutoff - 1)
        assert nxt is not None
        first = nxt
        missed, last_missed = _count_slots(timing, due_ms, first)
    fire: list[int] = []
    t = first
    while t <= now_ms:
        if len(fire) >= MAX_FIRE:
            later = next_after(timing, now_ms)
            assert later is not None
            missed += _count_slots(timing, t, later)[0]
            t = later
            break
        fire.append(t)
        nxt = next_after(timing, t)
        assert nxt is not None
        t = nxt
    if not fire and last_missed is not None and catch_up == "once":
        fire, missed = [last_missed], missed - 1
    return Plan(tuple(fire), missed, t)


# --- the stored record -------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A schedule as stored (one Redis hash; see ``docs/schedules.md``)."""

    id: str
    timing: Timing
    input: str
    budget: Budget
    worker_id: str | None
    catch_up: CatchUp
    overlap: Overlap
    status: ScheduleStatus
    next_run_ms: int
    created_at: int
    delay_seconds: int = 0
    upstream_id: str | None = None
    last_job: str = ""
    counts: Mapping[str, int] = field(default_factory=dict)
    # Per-run job limits given at creation (queue_ttl ...: seconds); the rest default.
    limits: Mapping[str, float] = field(default_factory=dict)
    # Each run's job tags: a tenant's scheduled runs are costed, capped and limited as its.
    tags: Mapping[str, str] = field(default_factory=dict)
    updated_at: int = 0  # 0: never updated
    rev: int = 0  # moved on by each update (a beat's claim checks it)

    @property
    def kind(self) -> Kind:
        return self.timing.kind

    @property
    def live(self) -> bool:
        """Active or paused (not done, not cancelled)."""
        return self.status in LIVE

    def wire(self) -> WorkerSchedule:
        """The reference's WorkerSchedule shape (``next_run_at`` as an aware datetime)."""
        t = self.timing
        at = to_datetime(t.at_ms if t.kind in ONE_SHOT else self.next_run_ms)
        common = {"id": self.id, "budget": self.budget, "input": self.input, "next_run_at": at}
        if t.kind == "scheduled":
            return ScheduledSchedule(**common)
        if t.kind == "delayed":
            return DelayedSchedule(**common, delay_in_seconds=self.delay_seconds)
        if t.kind == "cron":
            return CronSchedule(**common, cron=t.cron)
        return IntervalSchedule(**common, interval_seconds=t.interval_ms // 1000)


def new_schedule(
    schedule_id: str,
    request: ScheduleRequest,
    *,
    input: str,
    budget: Budget,
    worker_id: str | None,
    now_ms: int,
    allow_past: bool = False,
    first_run_ms: int | None = None,
    upstream_id: str | None = None,
    limits: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Schedule:
    """A new active schedule, its first run computed from ``now_ms``.

    ``first_run_ms`` pins the first run (an imported schedule keeps its upstream next
    run; an interval grid is anchored on it). A ``scheduled`` date not after now is an
    InputError ``when.date`` unless ``allow_past`` (it then fires at once).
    """
    when = request.when
    delay = 0
    if isinstance(when, ScheduledWhen):
        timing = Timing("scheduled", at_ms=to_ms(when.date))
        if timing.at_ms <= now_ms and not allow_past:
            raise InputError("when.date", "is in the past")
    elif isinstance(when, DelayedWhen):
        delay = when.delay_in_seconds
        timing = Timing("delayed", at_ms=first_run_ms or now_ms + delay * 1000)
    elif isinstance(when, IntervalWhen):
        step = when.interval_seconds * 1000
        anchor = first_run_ms - step if first_run_ms is not None else now_ms
        timing = Timing("interval", anchor_ms=anchor, interval_ms=step)
    else:
        assert isinstance(when, CronWhen)
        timing = Timing("cron", cron=when.cron, tz=request.timezone)
    if timing.kind in ONE_SHOT:
        first = timing.at_ms
    elif first_run_ms is not None and timing.kind == "interval":
        first = first_run_ms
    else:
        found = next_after(timing, now_ms)
        assert found is not None
        first = found
    return Schedule(
        id=schedule_id,
        timing=timing,
        input=input,
        budget=budget,
        worker_id=worker_id,
        catch_up=request.catch_up,
        overlap=request.overlap,
        status="active",
        next_run_ms=first,
        created_at=now_ms,
        delay_seconds=delay,
        upstream_id=upstream_id,
        limits=dict(limits or {}),
        tags=dict(tags or {}),
    )
