"""The run step of schedules: putting runs on the broker (beat, trigger, the lost-run
repair) and running one slot (the ``workers.run_schedule(s)`` tasks). It needs the
store, the runtime and a Celery app, never the backend facade.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery

from orchestrator.errors import InputError
from orchestrator.jobs.submit import check, enqueue
from orchestrator.runtime import Runtime
from orchestrator.schedules.timing import Schedule, iso
from orchestrator.store.jobs import now_ms
from orchestrator.store.schedules import ScheduleStore

log = logging.getLogger(__name__)

RUN_TASK = "workers.run_schedule"
RUNS_TASK = "workers.run_schedules"
#: Slots one ``workers.run_schedules`` message carries: a burst of 10,000 due slots is
#: 100 publishes, not 10,000, and each message is still a short task.
RUNS_PER_MESSAGE = 100


def send_run(app: Celery, schedule_id: str, slot_ms: int, producer: Any = None) -> None:
    """Put one run of a schedule on the broker (ids only)."""
    app.send_task(
        RUN_TASK,
        args=[schedule_id, slot_ms],
        argsrepr=f"{schedule_id} slot={iso(slot_ms)}",
        producer=producer,
    )


def send_runs(app: Celery, runs: Sequence[tuple[str, int]], producer: Any = None) -> None:
    """Put several runs on the broker as one ``workers.run_schedules`` message (ids only).

    Callers keep a message to ``RUNS_PER_MESSAGE`` runs so each task stays short.
    """
    first = f"{runs[0][0]} slot={iso(runs[0][1])}"
    label = first if len(runs) == 1 else f"{len(runs)} runs from {first}"
    chunk = [[sid, slot] for sid, slot in runs]
    app.send_task(RUNS_TASK, args=[chunk], argsrepr=label, producer=producer)


def run_slot(rt: Runtime, app: Celery, schedule_id: str, slot_ms: int) -> str:
    """Run one slot of a schedule, at most once however often it is delivered.

    Decides overlap from our own job state (the last run's job not terminal: skip, or
    buffer one run), then submits the job through the same path as ``submit`` /
    ``continue_``, with idempotency key ``sched:<id>:<slot>`` so a repeated task maps
    to the same job. A schedule without a worker creates one on its first run and
    continues it afterwards. Returns the verdict (``fired``, ``skipped``, ``buffered``,
    ``wait``, ``duplicate``, ``gone`` or ``error``).
    """
    ss = ScheduleStore(rt.store)
    for _ in range(10):
        schedule = ss.get(schedule_id)
        if schedule is None:
            return "gone"
        schedule = _learn_worker(rt, ss, schedule)
        decision = ss.decide(schedule, slot_ms, now_ms())
        if decision.verdict != "retry":
            break
    else:
        raise RuntimeError(f"schedule {schedule_id}: last run kept changing")
    if decision.verdict != "fire":
        return decision.verdict
    try:
        sub = check(
            rt.settings,
            kind="continue" if schedule.worker_id else "create",
            input=schedule.input,
            budget=schedule.budget,
            tags=dict(schedule.tags),
            worker_id=schedule.worker_id,
            schedule_id=schedule.id,
            idempotency_key=f"sched:{schedule.id}:{slot_ms}",
            priority="batch",  # nobody waits on a screen for a scheduled run
            **schedule.limits,
        )
    except InputError as exc:
        # Only a bad submission is the run's error; a store failure below is the task's.
        ss.set_job(schedule.id, slot_ms, "", str(exc))
        log.error("schedule %s slot %s: %s", schedule.id, slot_ms, exc)
        return "error"
    job = enqueue(app, rt, sub)
    ss.set_job(schedule.id, slot_ms, job.id)
    return "fired"


def _learn_worker(rt: Runtime, ss: ScheduleStore, schedule: Schedule) -> Schedule:
    """A worker-less schedule adopts the worker its previous run's job created."""
    if schedule.worker_id or not schedule.last_job.startswith("job_"):
        return schedule
    job = rt.store.get_job(schedule.last_job)
    if job is None or job.worker_id is None:
        return schedule
    ss.set_worker(schedule.id, job.worker_id)
    return ss.get(schedule.id) or schedule
