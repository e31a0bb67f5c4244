# ruff: noqa: F811  (the schedule fixtures are imported by name)
"""Updating a schedule in place, against a real Redis: only the fields given change,
a refusal changes nothing, a new timing replaces the due entry from now, and no slot
is lost or claimed twice around an update (by the update, a beat before it, or a beat
holding the old timing)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import pytest

from orchestrator.cli import main
from orchestrator.errors import InputError, UnknownIdError
from orchestrator.facade import Orchestrator
from orchestrator.schedules.beat import CONF_GRACE
from orchestrator.schedules.run import RUNS_TASK, run_slot
from orchestrator.schedules.timing import Schedule, cron_instants, plan
from orchestrator.schedules.update import revised
from orchestrator.store.jobs import now_ms
from orchestrator.store.schedules import Claim, ScheduleStore

from .processes import joined
from .test_beat_tick import make_beat, sent  # noqa: F401
from .test_schedule_api import FakeApp, app, cli_environment, orch  # noqa: F401

HOURLY = {"type": "interval", "intervalSeconds": 3600}
ACME = {"tenant": "acme", "team": "x"}


def raw(orch: Orchestrator, sid: str) -> tuple[dict[str, str], float | None]:
    """The schedule's hash and its due score, as stored."""
    r, k = orch.store.r, orch.store.keys
    return r.hgetall(k.schedule(sid)), r.zscore(k.schedules_due, sid)


def made_due(orch: Orchestrator, sid: str, late_ms: int = 1000) -> int:
    """Move an interval schedule's grid so a slot fell due ``late_ms`` ago, unclaimed (as
    when the beat has not ticked yet); that slot."""
    s = orch.schedules.get(sid)
    slot = now_ms() - late_ms
    r, k = orch.store.r, orch.store.keys
    r.hset(k.schedule(sid), mapping={"anchor_ms": slot - s.timing.interval_ms, "next_run_ms": slot})
    r.zadd(k.schedules_due, {sid: slot})
    return slot


def runs_sent(app: FakeApp) -> list[tuple[str, int]]:
    return [(sid, slot) for name, args in app.sent if name == RUNS_TASK for sid, slot in args[0]]


def test_only_the_fields_given_change(orch: Orchestrator, app: FakeApp) -> None:
    s = orch.schedules.create(
        None, "digest", {"type": "cron", "cron": "0 7 * * *"}, timezone="Europe/Berlin",
        budget="low", tags=ACME, overlap="buffer", queue_ttl=30,
    )  # fmt: skip
    before = orch.schedules.get(s.id)
    due_before = raw(orch, s.id)[1]
    after = orch.schedules.update(s.id, input="a new digest")
    assert after.input == "a new digest" and after.updated_at >= before.created_at
    same = ("id", "timing", "next_run_ms", "budget", "tags", "overlap", "catch_up", "limits",
            "created_at", "status", "worker_id", "counts")  # fmt: skip
    assert {n: getattr(after, n) for n in same} == {n: getattr(before, n) for n in same}
    assert raw(orch, s.id)[1] == due_before and after.rev == before.rev + 1
    # Tags given are the whole set; a limit given joins those stored.
    after = orch.schedules.update(s.id, tags={"tenant": "globex"}, budget="high", deadline=60)
    assert (after.tags, after.budget) == ({"tenant": "globex"}, "high")
    assert after.limits == {"queue_ttl": 30, "deadline": 60}
    assert orch.schedules.update(s.id, tags={}).tags == {}
    described = orch.schedules.describe(s.id)
    assert described["updated_at"] and described["input"] == "a new digest"
    assert orch.schedules.get(s.id).timing == before.timing and app.sent == []


def make_schedule(orch: Orchestrator) -> Schedule:
    return orch.schedules.get(orch.schedules.create(None, "x", HOURLY, tags=ACME).id)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"input": "  "}, "input"),
        ({"input": "a\x00b"}, "input"),
        ({"budget": "max"}, "budget"),
        ({"tags": {"Tenant": "acme"}}, "tags"),
        ({"tags": {f"k{i}": "v" for i in range(17)}}, "tags"),
        ({"tags": "tenant=acme"}, "tags"),
        ({"when": {"type": "cron", "cron": "61 * * * *"}}, "when.cron"),
        ({"when": {"type": "interval", "intervalSeconds": 0}}, "when.interval_seconds"),
        ({"when": {"type": "scheduled", "date": "2001-01-01T00:00:00Z"}}, "when.date"),
        ({"when": {"type": "weekly"}}, "when"),
        ({"timezone": "Europe/Berlin"}, "timezone"),  # not a cron schedule
        ({"when": {"type": "cron", "cron": "0 7 * * *"}, "timezone": "Nowhere/City"}, "timezone"),
        ({"catch_up": "always"}, "catch_up"),
        ({"overlap": "queue"}, "overlap"),
        ({"queue_ttl": -1}, "queue_ttl"),
        ({"deadline": 40 * 86_400}, "deadline"),
        # A valid field does not carry a bad one through.
        ({"input": "fine", "budget": "max"}, "budget"),
        ({}, "changes"),
    ],
)
def test_a_refused_update_names_the_field_and_changes_nothing(
    orch: Orchestrator, app: FakeApp, changes: dict[str, Any], field: str
) -> None:
    s = make_schedule(orch)
    before = raw(orch, s.id)
    with pytest.raises(InputError) as err:
        orch.schedules.update(s.id, **changes)
    assert err.value.field == field, err.value
    assert not isinstance(err.value, UnknownIdError)
    assert raw(orch, s.id) == before and app.sent == []


def test_unknown_malformed_and_finished_schedules_are_refused(orch: Orchestrator) -> None:
    with pytest.raises(UnknownIdError) as unknown:
        orch.schedules.update("sch_unknown", input="x")
    assert unknown.value.field == "schedule_id"
    with pytest.raises(InputError) as malformed:
        orch.schedules.update("sch_a b", input="x")
    assert malformed.value.field == "schedule_id"
    assert not isinstance(malformed.value, UnknownIdError)
    s = make_schedule(orch)
    orch.schedules.cancel(s.id)
    before = raw(orch, s.id)
    with pytest.raises(InputError, match="cancelled") as over:
        orch.schedules.update(s.id, input="again", when=HOURLY)
    assert over.value.field == "schedule_id" and raw(orch, s.id) == before
    # One id check for jobs too: a job booked to an unknown schedule is a 404 (not_found).
    with pytest.raises(UnknownIdError):
        orch.submit("x", schedule_id="sch_unknown")


def test_a_new_timing_runs_from_now_and_replaces_the_due_entry(orch: Orchestrator) -> None:
    s = make_schedule(orch)
    start = now_ms()
    after = orch.schedules.update(s.id, when={"type": "cron", "cron": "*/5 * * * *"},
                                  timezone="Asia/Kolkata")  # fmt: skip
    first = next(cron_instants("*/5 * * * *", "Asia/Kolkata", start))
    assert (after.kind, after.timing.tz, after.next_run_ms) == ("cron", "Asia/Kolkata", first)
    r, k = orch.store.r, orch.store.keys
    assert r.zrange(k.schedules_due, 0, -1, withscores=True) == [(s.id, float(first))]
    nxt = orch.schedules.describe(s.id)["next_runs"]
    assert len(nxt) == 10 and nxt[0].endswith(("00.000Z", "30.000Z"))
    # The time zone alone re-times a cron schedule; an interval's grid starts now.
    assert orch.schedules.update(s.id, timezone="UTC").timing.tz == "UTC"
    start = now_ms()
    every = orch.schedules.update(s.id, when={"type": "interval", "intervalSeconds": 90})
    assert start <= every.timing.anchor_ms <= now_ms() and every.timing.cron == ""
    assert every.next_run_ms == every.timing.anchor_ms + 90_000
    assert r.zscore(k.schedules_due, s.id) == every.next_run_ms
    # A one-shot "in 10 s" counts from the update.
    once = orch.schedules.update(s.id, when={"type": "delayed", "delayInSeconds": 10})
    assert once.delay_seconds == 10 and once.next_run_ms == once.timing.at_ms
    assert once.updated_at + 10_000 == once.timing.at_ms


def test_a_paused_schedule_stays_paused(orch: Orchestrator) -> None:
    s = make_schedule(orch)
    orch.schedules.pause(s.id)
    after = orch.schedules.update(s.id, when={"type": "interval", "intervalSeconds": 60},
                                  input="later")  # fmt: skip
    assert after.status == "paused" and raw(orch, s.id)[1] is None
    assert orch.schedules.describe(s.id)["next_runs"] == []
    assert orch.schedules.resume(s.id)
    resumed = orch.schedules.get(s.id)
    assert resumed.timing.interval_ms == 60_000 and raw(orch, s.id)[1] == resumed.next_run_ms


def test_a_slot_due_at_the_update_runs_once_and_history_stays(
    orch: Orchestrator, app: FakeApp
) -> None:
    s = make_schedule(orch)
    earlier = now_ms() - 5_000
    assert run_slot(orch.rt, app, s.id, earlier) == "fired"  # type: ignore[arg-type]
    slot = made_due(orch, s.id)
    after = orch.schedules.update(s.id, when={"type": "interval", "intervalSeconds": 7200})
    # The old timing's due slot was claimed by the update and sent (not left, not lost).
    assert runs_sent(app) == [(s.id, slot)]
    ss = ScheduleStore(orch.store)
    assert ss.pending() == 0 and after.counts["claimed"] == 1
    assert raw(orch, s.id)[1] == after.next_run_ms > now_ms()
    # Decided once (skipped: the earlier run's job is still queued; overlap "skip").
    assert run_slot(orch.rt, app, s.id, slot) == "skipped"  # type: ignore[arg-type]
    assert run_slot(orch.rt, app, s.id, slot) == "duplicate"  # type: ignore[arg-type]
    assert [r["slot_ms"] for r in orch.schedules.history(s.id)] == [slot, earlier]


@pytest.mark.parametrize(
    ("setting", "beat_flag", "late_ms", "runs"),
    [
        (1, None, 3_000, False),  # SCHEDULE_MISFIRE_GRACE, not the 5 s default: missed
        (10, None, 7_000, True),  # past the default, within the setting: runs
        (1, 10, 7_000, True),  # a beat's --misfire-grace (its app's conf) wins
        (10, 0, 3_000, False),  # and 0 there is a grace of 0, not "unset"
    ],
)
def test_a_retiming_update_claims_the_old_slot_within_the_beats_grace(
    orch: Orchestrator, app: FakeApp, setting: float, beat_flag: float | None, late_ms: int,
    runs: bool,
) -> None:  # fmt: skip
    settings = orch.settings.model_copy(update={"schedule_misfire_grace": setting})
    if beat_flag is not None:
        app.conf[CONF_GRACE] = beat_flag
    with Orchestrator(settings, app=app) as other:  # type: ignore[arg-type]
        s = make_schedule(other)
        slot = made_due(other, s.id, late_ms)
        after = other.schedules.update(s.id, when={"type": "interval", "intervalSeconds": 60})
    assert runs_sent(app) == ([(s.id, slot)] if runs else [])
    assert (after.counts["claimed"], after.counts["missed"]) == ((1, 0) if runs else (0, 1))
    assert ScheduleStore(orch.store).pending() == 0


def test_a_slot_a_beat_claimed_first_stays_claimed_and_is_not_claimed_again(
    orch: Orchestrator, app: FakeApp
) -> None:
    s = make_schedule(orch)
    slot = made_due(orch, s.id)
    ss = ScheduleStore(orch.store)
    now = now_ms()
    timing, catch_up, rev = ss.timings([s.id])[s.id]
    assert ss.claim([Claim(s.id, slot, plan(timing, slot, now, catch_up), rev)], now)
    orch.schedules.update(s.id, when={"type": "interval", "intervalSeconds": 60})
    assert app.sent == [] and ss.pending() == 1  # the beat's claim, for it to send
    assert orch.schedules.get(s.id).counts["claimed"] == 1


def test_an_update_read_before_another_change_is_retried_not_applied(
    orch: Orchestrator,
) -> None:
    s = make_schedule(orch)
    slot = made_due(orch, s.id)
    ss = ScheduleStore(orch.store)
    current, due_ms = ss.read(s.id)
    now = now_ms()
    new, retimed = revised(orch.settings, current, {"when": HOURLY, "input": "mine"}, now)
    # A beat claims the due slot between the update's read and its write.
    timing, catch_up, rev = ss.timings([s.id])[s.id]
    assert ss.claim([Claim(s.id, slot, plan(timing, slot, now, catch_up), rev)], now)
    due = plan(current.timing, slot, now, current.catch_up)
    assert ss.update(current, due_ms, new, now, retimed=retimed, due=due) == ("retry", [])
    assert ss.pending() == 1 and orch.schedules.get(s.id).counts["claimed"] == 1
    # Another update between the read and the write: this one is not applied over it.
    current, due_ms = ss.read(s.id)
    orch.schedules.update(s.id, input="theirs")
    assert ss.update(current, due_ms, new, now, retimed=False, due=None) == ("retry", [])
    assert orch.schedules.get(s.id).input == "theirs"


def test_a_beat_holding_the_old_timing_claims_nothing_with_it(orch: Orchestrator) -> None:
    s = make_schedule(orch)
    slot = made_due(orch, s.id)
    ss = ScheduleStore(orch.store)
    now = now_ms()
    timing, catch_up, rev = ss.timings([s.id])[s.id]
    stale = Claim(s.id, slot, plan(timing, slot, now, catch_up), rev)
    # Not a timing change: the due entry is as the beat read it; only the rev moved.
    orch.schedules.update(s.id, catch_up="once")
    assert raw(orch, s.id)[1] == slot
    assert ss.claim([stale], now) == []
    timing, catch_up, rev = ss.timings([s.id])[s.id]
    assert catch_up == "once"
    assert ss.claim([Claim(s.id, slot, plan(timing, slot, now, catch_up), rev)], now)


def test_a_beat_that_ran_the_old_timing_runs_the_new_one(
    orch: Orchestrator, sent: Counter[tuple[str, int]]
) -> None:
    s = orch.schedules.create(None, "x", {"type": "interval", "intervalSeconds": 1})
    beat = make_beat(orch.store)
    first = orch.schedules.get(s.id).next_run_ms
    beat.tick_once(now=first)
    assert sent == Counter({(s.id, first): 1})
    after = orch.schedules.update(s.id, when={"type": "interval", "intervalSeconds": 2})
    beat.tick_once(now=after.next_run_ms)
    # The beat's next run is the new grid's (2 s on), not the old one's (1 s on).
    assert sent[(s.id, after.next_run_ms)] == 1
    assert orch.schedules.get(s.id).next_run_ms == after.next_run_ms + 2000


def test_updates_racing_beats_claim_each_slot_once(orch: Orchestrator, app: FakeApp) -> None:
    sid = orch.schedules.create(None, "x", {"type": "interval", "intervalSeconds": 1}).id
    ss = ScheduleStore(orch.store)
    by_beats: Counter[str] = Counter()
    lock, stop = threading.Lock(), threading.Event()

    def beat_loop() -> None:
        while not stop.is_set():
            now = now_ms()
            due = ss.peek(now, 10, 0, 0).due
            timings = ss.timings([s for s, _ in due])
            claims = [Claim(s, at, plan(timings[s][0], at, now, timings[s][1]), timings[s][2])
                      for s, at in due if s in timings]  # fmt: skip
            won = ss.claim(claims, now)
            with lock:
                by_beats.update(won)

    beats = [threading.Thread(target=beat_loop) for _ in range(3)]
    for t in beats:
        t.start()
    try:
        # Mostly plain changes (each moves the rev a beat checks); a new timing now and
        # then (each re-anchors the grid, claiming what was due).
        for i in range(60):
            when = {"type": "interval", "intervalSeconds": 1} if i % 30 == 29 else None
            orch.schedules.update(sid, input=f"v{i}", when=when)
            stop.wait(0.05)  # pacing the updates, not waiting for an outcome
    finally:
        stop.set()
        for t in beats:
            joined(t)
    by_update = Counter(f"{s}|{slot}" for s, slot in runs_sent(app))
    assert by_beats and max((by_beats + by_update).values()) == 1
    stored = orch.schedules.get(sid)
    assert stored.counts["claimed"] == sum(by_beats.values()) + sum(by_update.values())
    assert stored.rev == 60 and stored.input == "v59"


def test_cli_update_json_errors_and_not_found(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_environment(orch, monkeypatch)
    s = make_schedule(orch)
    argv = ["schedules", "update", s.id, "--input", "new", "--cron", "0 6 * * 1", "--tz",
            "Europe/Paris", "--budget", "high", "--tag", "tenant=globex", "--json"]  # fmt: skip
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["type"], shown["cron"]) == (s.id, "cron", "0 6 * * 1")
    assert (shown["input"], shown["budget"], shown["tags"]) == ("new", "high", {"tenant": "globex"})
    stored = orch.schedules.get(s.id)
    assert (stored.timing.tz, stored.status) == ("Europe/Paris", "active")
    assert main(["schedules", "update", s.id, "--overlap", "buffer"]) == 0
    assert capsys.readouterr().out.startswith(f"{s.id}  cron  updated; next run ")
    before = raw(orch, s.id)
    for bad, field in (
        (["--cron", "61 * * * *"], "when.cron"),
        (["--every", "0"], "when.interval_seconds"),
        (["--at", "2001-01-01T00:00:00Z"], "when.date"),
        (["--tag", "tenant"], "tags"),
        (["--queue-ttl", "-1"], "queue_ttl"),
        ([], "changes"),
    ):
        assert main(["schedules", "update", s.id, *bad, "--json"]) == 2, bad
        out = capsys.readouterr()
        error = json.loads(out.err)["error"]
        assert (error["type"], error["field"]) == ("invalid_request", field), (bad, error)
        assert main(["schedules", "update", s.id, *bad]) == 2
        text = capsys.readouterr().err
        assert text.count("\n") == 1 and "Traceback" not in text, text
    for usage in (["--budget", "max"], ["--every", "60", "--cron", "* * * * *"]):
        assert main(["schedules", "update", s.id, *usage]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert raw(orch, s.id) == before
    assert main(["schedules", "update", "sch_nope", "--input", "x", "--json"]) == 2
    assert json.loads(capsys.readouterr().err)["error"]["type"] == "not_found"
