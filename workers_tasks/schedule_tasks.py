"""The schedule run tasks: thin, ids only; the logic is ``schedules.run.run_slot``.
Also the repair of runs the broker lost after beat sent them (``resend_lost_runs``)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from celery import Task

from orchestrator.celery import API_QUEUE, app
from orchestrator.errors import InputError
from orchestrator.runtime import Runtime, get_runtime
from orchestrator.schedules.run import (
    RUN_TASK,
    RUNS_PER_MESSAGE,
    RUNS_TASK,
    run_slot,
    send_runs,
)
from orchestrator.store.connection import StoreError
from orchestrator.store.schedules import ScheduleStore, pending_member

log = logging.getLogger(__name__)


@app.task(name="workers.run_schedule", bind=True)
def run_schedule(self: Task, schedule_id: str, slot_ms: int) -> str:
    """Run one slot of a schedule; a repeated delivery of the same slot does nothing."""
    rt = get_runtime()
    try:
        ScheduleStore(rt.store).begun([(schedule_id, int(slot_ms))])
        return run_slot(rt, app, schedule_id, int(slot_ms))
    except InputError as exc:
        log.error("dropping run of %s slot %s: %s", schedule_id, slot_ms, exc)
        return "dropped"
    except StoreError as exc:
        # Safe to run again: the slot's record and the job's idempotency key dedupe.
        raise self.retry(countdown=1.0, max_retries=rt.settings.task_max_retries, exc=exc) from exc


@app.task(name="workers.run_schedules", bind=True)
def run_schedules(self: Task, runs: list[list[str | int]]) -> dict[str, int]:
    """Run several (schedule id, slot) pairs, as beat sends them; returns verdict counts.

    One slot's failure never stops the others. When Redis is away the task retries with
    the slots not yet run (those already run would only be counted duplicates).
    """
    rt = get_runtime()
    verdicts: Counter[str] = Counter()
    try:
        ScheduleStore(rt.store).begun([(str(s), int(t)) for s, t in runs])
    except StoreError as exc:
        raise self.retry(countdown=1.0, max_retries=rt.settings.task_max_retries, exc=exc) from exc
    for i, (schedule_id, slot_ms) in enumerate(runs):
        try:
            verdicts[run_slot(rt, app, str(schedule_id), int(slot_ms))] += 1
        except InputError as exc:
            log.error("dropping run of %s slot %s: %s", schedule_id, slot_ms, exc)
            verdicts["dropped"] += 1
        except StoreError as exc:
            retries = rt.settings.task_max_retries
            rest = runs[i:]
            raise self.retry(args=[rest], countdown=1.0, max_retries=retries, exc=exc) from exc
        except Exception:
            log.exception("run of %s slot %s failed", schedule_id, slot_ms)
            verdicts["error"] += 1
    return dict(verdicts)


def _runs_of(task: str, args: list[Any]) -> list[tuple[str, int]]:
    if task == RUN_TASK and len(args) == 2:
        return [(str(args[0]), int(args[1]))]
    if task == RUNS_TASK and args:
        return [(str(s), int(t)) for s, t in args[0]]
    return []


def resend_lost_runs(rt: Runtime, older_than_seconds: float) -> int:
    """Send again the runs beat sent that the broker lost (see ``BrokerLayout.lost``); a
    run already recorded is only forgotten, and one sent twice is recorded once."""
    ss = ScheduleStore(rt.store)
    due = ss.untaken(int(older_than_seconds * 1000))
    due = rt.store.broker.lost(
        due, "resend-runs", older_than_seconds, _runs_of, backlog_queue=API_QUEUE
    )
    recorded = ss.recorded(due)
    ss.begun([run for run, done in zip(due, recorded, strict=True) if done])
    lost = [run for run, done in zip(due, recorded, strict=True) if not done]
    for i in range(0, len(lost), RUNS_PER_MESSAGE):
        chunk = lost[i : i + RUNS_PER_MESSAGE]
        log.warning("re-sending %d schedule runs the broker lost, from %s", len(chunk), chunk[0])
        send_runs(app, chunk)
        ss.sent([pending_member(sid, slot) for sid, slot in chunk])
    return len(lost)
