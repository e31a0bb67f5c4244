"""Pure next-run maths with fixed clocks: each kind, DST both ways, downtime, bad input."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.errors import InputError
from orchestrator.schedules.timing import (
    MISFIRE_GRACE_MS,
    Schedule,
    ScheduleRequest,
    Timing,
    new_schedule,
    next_after,
    plan,
    to_ms,
    upcoming,
)
from orchestrator.store.schedule_hash import schedule_from_hash, schedule_to_hash, timing_from_hash
from orchestrator.wire.routes import validate


def ms(text: str) -> int:
    """Epoch ms of an ISO time with an explicit offset (or Z)."""
    return to_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))


def utc(values: list[int]) -> list[str]:
    return [datetime.fromtimestamp(v / 1000, UTC).strftime("%Y-%m-%dT%H:%M") for v in values]


def cron(expr: str, tz: str = "UTC") -> Timing:
    return Timing("cron", cron=expr, tz=tz)


NOW = ms("2024-06-01T12:00:00Z")


# --- each kind ---------------------------------------------------------------------


def test_interval_grid_is_anchored_on_creation() -> None:
    t = Timing("interval", anchor_ms=NOW, interval_ms=60_000)
    assert next_after(t, NOW) == NOW + 60_000
    assert next_after(t, NOW - 5_000) == NOW + 60_000  # never before the first slot
    assert next_after(t, NOW + 60_000) == NOW + 120_000  # strictly after
    assert next_after(t, NOW + 60_001) == NOW + 120_000
    assert upcoming(t, NOW, 3) == [NOW + 60_000, NOW + 120_000, NOW + 180_000]


def test_one_shots_fire_once() -> None:
    t = Timing("scheduled", at_ms=NOW + 1000)
    assert next_after(t, NOW) == NOW + 1000
    assert next_after(t, NOW + 1000) is None
    assert upcoming(t, NOW, 10) == [NOW + 1000]
    late = plan(t, NOW + 1000, NOW + 3_600_000, "skip")
    assert late.fire == (NOW + 1000,) and late.next_ms is None and late.missed == 0


def test_cron_utc_and_zone() -> None:
    assert utc(upcoming(cron("0 7 * * 1-5"), NOW, 3)) == [
        "2024-06-03T07:00",
        "2024-06-04T07:00",
        "2024-06-05T07:00",
    ]
    # 07:00 in Berlin (summer, UTC+2) is 05:00 UTC.
    assert utc(upcoming(cron("0 7 * * *", "Europe/Berlin"), NOW, 2)) == [
        "2024-06-02T05:00",
        "2024-06-03T05:00",
    ]


def test_new_schedule_first_runs() -> None:
    def make(when: dict[str, object], **kw: object) -> Schedule:
        req = validate(ScheduleRequest, {"when": when, **kw})
        return new_schedule("sch_x", req, input="hi", budget="low", worker_id=None, now_ms=NOW)

    assert make({"type": "delayed", "delayInSeconds": 30}).next_run_ms == NOW + 30_000
    assert make({"type": "interval", "interval_seconds": 5}).next_run_ms == NOW + 5_000
    assert make({"type": "scheduled", "date": "2024-06-02T00:00:00Z"}).next_run_ms == ms(
        "2024-06-02T00:00:00Z"
    )
    s = make({"type": "cron", "cron": "*/10 * * * *"}, timezone="Asia/Kolkata")
    assert s.next_run_ms == NOW + 600_000
    again = schedule_from_hash({k: str(v) for k, v in schedule_to_hash(s).items()})
    assert again.timing == s.timing and again.next_run_ms == s.next_run_ms
    wire = s.wire().to_wire()
    assert wire == {
        "id": "sch_x",
        "budget": "low",
        "input": "hi",
        "nextRunAt": "2024-06-01T12:10:00.000Z",
        "type": "cron",
        "cron": "*/10 * * * *",
    }
    d = make({"type": "delayed", "delay_in_seconds": 30}).wire().to_wire()
    assert d["delayInSeconds"] == 30 and d["nextRunAt"] == "2024-06-01T12:00:30.000Z"


# --- daylight saving time: once per wall-clock slot --------------------------------


def test_berlin_autumn_runs_the_repeated_hour_once() -> None:
    # 2024-10-27: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice.
    t = cron("30 2 * * *", "Europe/Berlin")
    runs = upcoming(t, ms("2024-10-26T12:00:00Z"), 3)
    assert utc(runs) == ["2024-10-27T00:30", "2024-10-28T01:30", "2024-10-29T01:30"]


def test_berlin_spring_runs_a_missing_slot_after_the_gap_once() -> None:
    # 2024-03-31: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day.
    t = cron("30 2 * * *", "Europe/Berlin")
    runs = upcoming(t, ms("2024-03-30T12:00:00Z"), 3)
    # 03:00 CEST = 01:00 UTC; then 02:30 CEST = 00:30 UTC.
    assert utc(runs) == ["2024-03-31T01:00", "2024-04-01T00:30", "2024-04-02T00:30"]


def test_new_york_both_transitions_for_a_130_job() -> None:
    t = cron("30 1 * * *", "America/New_York")
    # Autumn 2024-11-03: 01:30 EDT (05:30Z) runs; 01:30 EST (06:30Z) does not.
    autumn = upcoming(t, ms("2024-11-02T12:00:00Z"), 3)
    assert utc(autumn) == ["2024-11-03T05:30", "2024-11-04T06:30", "2024-11-05T06:30"]
    spring = upcoming(cron("30 2 * * *", "America/New_York"), ms("2024-03-09T12:00:00Z"), 3)
    # 2024-03-10 02:30 does not exist: runs at 03:00 EDT = 07:00Z.
    assert utc(spring) == ["2024-03-10T07:00", "2024-03-11T06:30", "2024-03-12T06:30"]


def test_hourly_through_autumn_skips_the_second_pass_only() -> None:
    runs = upcoming(cron("0 * * * *", "America/New_York"), ms("2024-11-03T03:30:00Z"), 4)
    # 00:00 EDT (04Z), 01:00 EDT (05Z), [01:00 EST (06Z) is the same wall slot], 02:00 EST.
    assert utc(runs) == [
        "2024-11-03T04:00",
        "2024-11-03T05:00",
        "2024-11-03T07:00",
        "2024-11-03T08:00",
    ]


def test_slots_in_a_spring_gap_collapse_to_one_run() -> None:
    runs = upcoming(cron("*/15 * * * *", "Europe/Berlin"), ms("2024-03-31T00:40:00Z"), 3)
    # 01:45 CET (00:45Z); 02:00..02:45 and 03:00 all land on 03:00 CEST (01:00Z), once.
    assert utc(runs) == ["2024-03-31T00:45", "2024-03-31T01:00", "2024-03-31T01:15"]


def test_asking_from_inside_the_repeated_hour() -> None:
    # 01:10 EST, the second pass: today's 01:30 already ran (at 01:30 EDT).
    t = cron("30 1 * * *", "America/New_York")
    assert utc([next_after(t, ms("2024-11-03T06:10:00Z")) or 0]) == ["2024-11-04T06:30"]


def test_plan_over_a_dst_day_fires_each_wall_slot_once() -> None:
    t = cron("30 2 * * *", "Europe/Berlin")
    due = ms("2024-10-27T00:30:00Z")
    p = plan(t, due, due + 1000, "skip")
    assert p.fire == (due,) and utc([p.next_ms or 0]) == ["2024-10-28T01:30"]


# --- downtime ------------------------------------------------------------------------


def every(seconds: int) -> Timing:
    return Timing("interval", anchor_ms=NOW, interval_ms=seconds * 1000)


def test_on_time_and_slightly_late_slots_fire() -> None:
    t = every(1)
    p = plan(t, NOW + 1000, NOW + 1000, "skip")
    assert p == plan(t, NOW + 1000, NOW + 1000, "once")
    assert p.fire == (NOW + 1000,) and p.next_ms == NOW + 2000 and p.missed == 0
    # A tick 2.5 s late: every slot within the grace runs, none is missed.
    p = plan(t, NOW + 1000, NOW + 3500, "skip")
    assert p.fire == (NOW + 1000, NOW + 2000, NOW + 3000) and p.next_ms == NOW + 4000


def test_after_downtime_skip_counts_missed_and_waits_for_the_next_slot() -> None:
    t = every(10)
    down_until = NOW + 106_000  # slots 10 s .. 100 s passed; 100 s is 6 s late
    p = plan(t, NOW + 10_000, down_until, "skip")
    assert p.fire == ()
    assert p.missed == 10
    assert p.next_ms == NOW + 110_000


def test_after_downtime_once_runs_the_latest_missed_slot() -> None:
    t = every(10)
    p = plan(t, NOW + 10_000, NOW + 106_000, "once")
    assert p.fire == (NOW + 100_000,) and p.missed == 9 and p.next_ms == NOW + 110_000


def test_downtime_with_recent_slots_runs_only_those() -> None:
    t = every(2)
    now = NOW + 2000 + 20_000
    p = plan(t, NOW + 2000, now, "once")
    assert all(now - s <= MISFIRE_GRACE_MS for s in p.fire) and len(p.fire) == 3
    assert p.missed == 11 - 3 and p.next_ms == now + 2000


def test_a_year_of_missed_minutes_is_cheap() -> None:
    t = cron("* * * * *")
    start = time.perf_counter()
    year = NOW + 365 * 86_400_000
    p = plan(t, NOW, year + 30_000, "once")
    assert time.perf_counter() - start < 5
    # Every slot was more than the grace late: the latest runs once, the rest are missed
    # (counted up to the cap).
    assert p.fire == (year,) and p.next_ms == year + 60_000
    assert p.missed >= 9_999


# --- bad input -----------------------------------------------------------------------

EVERY_5 = {"type": "interval", "intervalSeconds": 5}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"when": {"type": "cron", "cron": "61 * * * *"}}, "when.cron"),
        ({"when": {"type": "cron", "cron": "* * * *"}}, "when.cron"),
        ({"when": {"type": "cron", "cron": "0 0 31 2 *"}}, "when.cron"),
        ({"when": {"type": "cron", "cron": "0 0 * * * *"}}, "when.cron"),
        ({"when": {"type": "interval", "intervalSeconds": 0}}, "when.interval_seconds"),
        ({"when": {"type": "delayed", "delay_in_seconds": -5}}, "when.delay_in_seconds"),
        ({"when": {"type": "scheduled", "date": "2030-01-01T00:00:00"}}, "when.date"),
        ({"when": {"type": "weekly"}}, "when"),
        ({"when": EVERY_5, "timezone": "Mars/Olympus"}, "timezone"),
        ({"when": EVERY_5, "catch_up": "all"}, "catch_up"),
        ({"when": EVERY_5, "overlap": "queue"}, "overlap"),
    ],
)
def test_bad_requests_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as err:
        validate(ScheduleRequest, data)
    assert err.value.field == field, err.value


def test_a_date_in_the_past_is_refused() -> None:
    req = validate(ScheduleRequest, {"when": {"type": "scheduled", "date": "2024-06-01T11:00:00Z"}})
    with pytest.raises(InputError) as err:
        new_schedule("sch_x", req, input="x", budget="low", worker_id=None, now_ms=NOW)
    assert err.value.field == "when.date"


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        to_ms(datetime(2024, 1, 1))
    assert to_ms(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=1)) == 1000
    assert timing_from_hash({"kind": "interval", "interval_ms": "5"}).interval_ms == 5
