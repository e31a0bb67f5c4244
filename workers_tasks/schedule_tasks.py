"""The schedule run task: thin, ids only; the logic is ``schedule_api.run_slot``."""

from __future__ import annotations

import logging

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
