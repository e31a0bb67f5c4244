"""The schedule run tasks: thin, ids only; the logic is ``schedule_api.run_slot``."""

from __future__ import annotations

import logging
from collections import Counter

import redis
from celery import Task

from orchestrator.celery import app
from orchestrator.errors import InputError
from orchestrator.runtime import get_runtime
from orchestrator.schedule_api import run_slot

log = logging.getLogger(__name__)


@app.task(name="workers.run_schedule", bind=True)
def run_schedule(self: Task, schedule_id: str, slot_ms: int) -> str:
    """Run one slot of a schedule; a repeated delivery of the same slot does nothing."""
    rt = get_runtime()
    try:
        return run_slot(rt, app, schedule_id, int(slot_ms))
    except InputError as exc:
        log.error("dropping run of %s slot %s: %s", schedule_id, slot_ms, exc)
        return "dropped"
    except redis.RedisError as exc:
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
    for i, (schedule_id, slot_ms) in enumerate(runs):
        try:
            verdicts[run_slot(rt, app, str(schedule_id), int(slot_ms))] += 1
        except InputError as exc:
            log.error("dropping run of %s slot %s: %s", schedule_id, slot_ms, exc)
            verdicts["dropped"] += 1
        except redis.RedisError as exc:
            retries = rt.settings.task_max_retries
            rest = runs[i:]
            raise self.retry(args=[rest], countdown=1.0, max_retries=retries, exc=exc) from exc
        except Exception:
            log.exception("run of %s slot %s failed", schedule_id, slot_ms)
            verdicts["error"] += 1
    return dict(verdicts)
