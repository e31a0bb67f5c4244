"""End to end: real `orchestrator beat` and `celery worker` processes, real Redis, the
emulator over HTTP. Each slot fires exactly once with two beats at once, and across a
beat SIGKILL and restart."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.facade import Orchestrator
from orchestrator.schedules.run import send_runs
from orchestrator.schedules.timing import Schedule, plan
from orchestrator.store.jobs import now_ms
from orchestrator.store.schedules import Claim, ScheduleStore, pending_member

from .conftest import Emulator
from .processes import Proc, broker_depth, celery_worker, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def env(env: dict[str, str], emulator: Emulator) -> dict[str, str]:
    emulator.configure(turn_seconds=0, events_per_turn=2)
    return env


def beat(env: dict[str, str], log: Path, *flags: str) -> Proc:
    args = [sys.executable, "-m", "orchestrator", "beat", "--loglevel", "INFO", *flags]
    return Proc(args, env, log, ready_line="beat scheduler ready")


def sent_by(proc: Proc) -> int:
    """Runs a beat sent, from the summary it logs when stopped."""
    found = re.findall(r"'sent': (\d+)", proc.text())
    return int(found[-1]) if found else 0


def all_runs(orch: Orchestrator, sid: str) -> list[dict[str, Any]]:
    return orch.schedules.history(sid, limit=100_000)


def settle(orch: Orchestrator, ids: list[str], env: dict[str, str], timeout: float) -> None:
    """Wait until every claimed slot has been run by the workers (bounded)."""
    ss = ScheduleStore(orch.store)

    state: dict[str, int] = {}

    def done() -> bool:
        state["pending"] = ss.pending()
        state["queued"] = broker_depth(env, ("api",))
        state["claimed"] = sum(s.counts["claimed"] for s in ss.many(ids))
        state["recorded"] = sum(orch.store.r.zcard(orch.store.keys.schedule_slots(i)) for i in ids)
        return (
            not state["pending"] and not state["queued"] and (state["claimed"] == state["recorded"])
        )

    try:
        wait_for(done, timeout, "every claimed slot to be run", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {state}") from None


def assert_each_slot_once(orch: Orchestrator, s: Schedule, runs: list[dict[str, Any]]) -> None:
    """Slots are on the grid, none twice, and every slot before the next run is
    accounted for exactly once: run (fired or skipped for overlap) or missed."""
    slots = [r["slot_ms"] for r in runs]
    assert len(slots) == len(set(slots)), s.id
    step, anchor = s.timing.interval_ms, s.timing.anchor_ms
    assert all((slot - anchor) % step == 0 and slot > anchor for slot in slots), s.id
    assert s.counts["claimed"] == len(slots), (s.id, s.counts)
    grid = (s.next_run_ms - anchor) // step - 1  # slots before the next run
    assert len(slots) + s.counts["missed"] == grid, (s.id, len(slots), s.counts, grid)


def test_two_beats_fire_each_slot_of_200_schedules_once(
    orch: Orchestrator, env: dict[str, str], tmp_path: Path
) -> None:
    worker = celery_worker(env, tmp_path / "worker.log", concurrency=16).start()
    beats = [beat(env, tmp_path / f"beat{i}.log").start() for i in (1, 2)]
    try:
        every = {"type": "interval", "intervalSeconds": 1}
        ids = [orch.schedules.create(None, f"tick {i}", every, budget="low").id for i in range(200)]
        time.sleep(11)
    finally:
        for b in beats:
            b.stop()
    try:
        settle(orch, ids, env, timeout=60)
        schedules = ScheduleStore(orch.store).many(ids)
        total = 0
        for s in schedules:
            runs = all_runs(orch, s.id)
            assert_each_slot_once(orch, s, runs)
            assert s.counts["duplicates"] == 0 and s.counts["missed"] == 0, (s.id, s.counts)
            assert len(runs) >= 9, (s.id, len(runs))
            total += len(runs)
        fired = sum(s.counts["runs"] for s in schedules)
        skipped = sum(s.counts["skipped"] for s in schedules)
        print(f"\n{total} slots over 200 schedules: {fired} runs, {skipped} skipped (overlap)")
        counts = [sent_by(b) for b in beats]
        assert all(counts) and sum(counts) >= total, counts  # both beats did claim work
        # Runs became jobs under the schedule; a sample completes, later runs continue
        # the worker the first run created, and the ledger has the schedule's cost.
        sample = schedules[:5]
        for s in sample:
            jobs = [r["job_id"] for r in all_runs(orch, s.id) if r["job_id"]]
            last = orch.wait(jobs[0], timeout=30)
            assert last.status == "completed" and last.schedule_id == s.id
        kinds = {orch.get(r["job_id"]).kind for r in all_runs(orch, ids[0]) if r["job_id"]}
        assert kinds == {"create", "continue"}
        costs = subprocess.run(
            [sys.executable, "-m", "orchestrator", "costs", "--by", "schedule", "--json"],
            env=env, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        by_schedule = {r["key"]: r["turns"] for r in json.loads(costs.stdout)["rows"]}
        assert all(by_schedule.get(s.id, 0) >= 1 for s in sample)
    finally:
        worker.stop()


def test_a_run_the_broker_lost_is_sent_again_and_runs_once(
    orch: Orchestrator, env: dict[str, str], tmp_path: Path
) -> None:
    """beat sent a run and a worker died as it took the message (kombu pops it before it
    records it unacked): the workers' housekeeping sends it again; it runs once."""
    fast = {**env, "RESEND_AFTER_SECONDS": "1"}
    ss = ScheduleStore(orch.store)
    hourly = {"type": "interval", "intervalSeconds": 3600}
    created = orch.schedules.create(None, "a lost run", hourly, budget="low")
    schedule = ss.get(created.id)
    assert schedule is not None
    slot = schedule.next_run_ms
    send_runs(orch.app, [(schedule.id, slot)])  # as beat does: send, then note it sent
    ss.sent([pending_member(schedule.id, slot)])
    queue, r = orch.store.keys.broker_queue("api"), orch.store.r
    assert r.llen(queue) == 1
    r.delete(queue)  # the broker lost it
    streams = celery_worker(fast, tmp_path / "s.log", queues="streams", name="s").start()
    try:
        wait_for(lambda: r.llen(queue) == 1, 30, "the lost run to be sent again")
    finally:
        streams.stop()
    assert "schedule runs the broker lost" in streams.text()
    worker = celery_worker(fast, tmp_path / "w.log").start()
    try:
        wait_for(lambda: ss.runs(schedule.id), 30, "the run to be recorded")
        wait_for(lambda: ss.untaken(0) == [], 10, "nothing left to watch")
    finally:
        worker.stop()
    (done,) = ScheduleStore(orch.store).many([schedule.id])
    assert [int(run["slot"]) for run in ss.runs(schedule.id)] == [slot]
    assert done.counts["duplicates"] == 0


def test_beat_sigkill_and_restart_loses_and_doubles_nothing(
    orch: Orchestrator, env: dict[str, str], tmp_path: Path
) -> None:
    worker = celery_worker(env, tmp_path / "worker.log").start()
    flags = ("--misfire-grace", "2", "--resend-after", "2")
    first = beat(env, tmp_path / "beat1.log", *flags).start()
    api = orch.schedules
    skip = [api.create(None, f"skip {i}", {"type": "interval", "intervalSeconds": 1}).id
            for i in range(20)]  # fmt: skip
    every5 = {"type": "interval", "intervalSeconds": 5}
    once = [api.create(None, f"once {i}", every5, catch_up="once").id for i in range(10)]
    later = [api.create(None, f"later {i}", {"type": "delayed", "delayInSeconds": 6}).id
             for i in range(5)]  # fmt: skip
    ids = skip + once + later
    try:
        time.sleep(3)
    finally:
        first.kill()
    killed_at = now_ms()
    # A beat that claimed some slots and died before sending them (the claims are all
    # that is left of it): the restarted beat must send those.
    time.sleep(1.5)
    ss = ScheduleStore(orch.store)
    peek = ss.peek(now_ms(), 5, 0, 0)
    timings = ss.timings([sid for sid, _ in peek.due])
    claims = [
        Claim(sid, due, plan(timings[sid][0], due, now_ms(), "skip", 2000)) for sid, due in peek.due
    ]
    orphaned = ss.claim(claims, now_ms())
    assert orphaned and ss.pending() >= len(orphaned)
    time.sleep(4.5)  # down for 6 s in all: more than the 2 s grace
    second = beat(env, tmp_path / "beat2.log", *flags).start()
    restarted_at = now_ms()
    try:
        time.sleep(5)
    finally:
        second.stop()
    try:
        settle(orch, ids, env, timeout=60)
        assert "re-sending" in second.text()
        schedules = {s.id: s for s in ss.many(ids)}
        assert len(schedules) == len(ids)  # nothing lost
        for sid in skip + once:
            assert schedules[sid].status == "active"
            assert_each_slot_once(orch, schedules[sid], all_runs(orch, sid))
        recorded = {(r["slot_ms"], sid) for sid in ids for r in all_runs(orch, sid)}
        for member in orphaned:
            sid, _, slot = member.rpartition("|")
            assert (int(slot), sid) in recorded, member
        # skip: the downtime's slots more than 2 s late were missed, not run.
        assert all(schedules[sid].counts["missed"] >= 2 for sid in skip)
        # once: a run for a slot of the downtime happened (on time or as the catch-up).
        for sid in once:
            slots = [r["slot_ms"] for r in all_runs(orch, sid)]
            assert any(killed_at < slot <= restarted_at + 1000 for slot in slots), sid
        # one-shots due while beat was down fired once, late, and left the due index.
        for sid in later:
            assert schedules[sid].status == "done"
            assert len(all_runs(orch, sid)) == 1 and schedules[sid].counts["claimed"] == 1
        print(
            f"\nmissed (skip): {sum(schedules[s].counts['missed'] for s in skip)}, "
            f"re-sent orphans: {len(orphaned)}, duplicates deduped: "
            f"{sum(s.counts['duplicates'] for s in schedules.values())}"
        )
    finally:
        worker.stop()
