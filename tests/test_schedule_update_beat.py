# ruff: noqa: F811  (the beat fixtures are imported by name)
"""End to end: a schedule updated while a real ``orchestrator beat`` and ``celery worker``
run it. The beat goes on with the new timing (not the one it read before), each slot is
run once, and runs after the update send the new input under the same schedule id."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.facade import Orchestrator
from orchestrator.store.schedules import ScheduleStore

from .processes import celery_worker, wait_for
from .test_beat_e2e import all_runs, beat, env, settle  # noqa: F401

pytestmark = pytest.mark.slow


def test_a_running_schedule_takes_its_new_timing_and_input(
    orch: Orchestrator, env: dict[str, str], tmp_path: Path
) -> None:
    worker = celery_worker(env, tmp_path / "worker.log", concurrency=4).start()
    try:
        running = beat(env, tmp_path / "beat.log").start()
        try:
            every1 = {"type": "interval", "intervalSeconds": 1}
            sid = orch.schedules.create(None, "before", every1, budget="low").id
            old = orch.schedules.get(sid).timing
            wait_for(lambda: len(all_runs(orch, sid)) >= 3, 30, "runs of the first timing")
            every2 = {"type": "interval", "intervalSeconds": 2}
            after = orch.schedules.update(sid, input="after", when=every2)
            new = after.timing

            def later() -> list[int]:
                return [r["slot_ms"] for r in all_runs(orch, sid) if r["slot_ms"] > new.anchor_ms]

            wait_for(lambda: len(later()) >= 3, 30, "runs of the new timing")
        finally:
            running.stop()
        settle(orch, [sid], env, timeout=60)
        (stored,) = ScheduleStore(orch.store).many([sid])
        runs = all_runs(orch, sid)
        slots = sorted(r["slot_ms"] for r in runs)
        assert len(slots) == len(set(slots)) and stored.counts["duplicates"] == 0
        assert stored.counts["claimed"] == len(slots), (stored.counts, slots)
        before = [s for s in slots if s <= new.anchor_ms]
        assert before and all((s - old.anchor_ms) % 1000 == 0 for s in before), before
        # The new grid from its first slot, every slot once: none of the old 1 s grid.
        since = later()
        assert sorted(since) == [new.anchor_ms + 2000 * k for k in range(1, len(since) + 1)]
        fired = [r["job_id"] for r in runs if r["slot_ms"] in since and r["job_id"]]
        assert fired and {orch.get(j).input for j in fired} == {"after"}
        assert {orch.get(j).schedule_id for j in fired} == {sid}
    finally:
        worker.stop()
