"""Posting an ended turn's cost: the one code path for a turn that completed
(:func:`orchestrator.jobs.steps.finalize`) and for a turn whose job ended here while it
ran upstream (the settle-later sweep of :mod:`orchestrator.jobs.lifecycle`)."""

from __future__ import annotations

import logging

from orchestrator.controls.budgets import turn_members
from orchestrator.jobs.model import Job
from orchestrator.ledger import total_cost_micro
from orchestrator.ops.instruments import COST_ANOMALIES
from orchestrator.runtime import Runtime
from orchestrator.store.jobs import now_ms
from orchestrator.store.ledger import posted_deltas, posted_falls
from orchestrator.wire.models import Worker

log = logging.getLogger(__name__)


def settle_turn(rt: Runtime, job: Job, worker: Worker) -> tuple[int, str | None]:
    """Post the turn's cost once (POST_TURN is keyed by the job, so a replay adds
    nothing) with the worker's snapshot, in one round trip that also reads the job's
    hold. Returns (updates relayed so far, the raw hold for ``budgets.release_into``).

    Raises :class:`~orchestrator.ledger.FigureError` (nothing posted) for an upstream
    figure outside the ledger's bounds.
    """
    at = now_ms()
    settle = rt.store.batch()
    posted_at, relayed_at = rt.store.settle_into(
        settle, job, worker, at, turn_members(job.tags, at)
    )
    hold_at = rt.budgets.hold_into(settle, job.id)
    replies = settle.execute(raise_on_error=False)
    posted = None if posted_at is None else posted_deltas(replies[posted_at])
    for field, fell_by in posted_falls(
        replies[posted_at] if posted_at is not None else None
    ).items():
        log.warning("job %s: upstream %s fell by %d; nothing posted for it", job.id, field, fell_by)
        COST_ANOMALIES.labels(field=field).inc()
    raw_hold = replies[hold_at]
    hold = rt.budgets.amount_of(raw_hold)
    if posted is not None and hold is not None and total_cost_micro(posted) > hold:
        rt.budgets.record_overshoot(job, hold, total_cost_micro(posted))
    return int(replies[relayed_at] or 0), raw_hold
