"""Posting an ended turn's cost: the one code path for a turn that completed
(:func:`orchestrator.jobs.steps.finalize`) and for a turn whose job ended here while it
ran upstream (the settle-later sweep of :mod:`orchestrator.jobs.lifecycle`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from orchestrator.controls.budgets import turn_members
from orchestrator.hooks import events as hooks
from orchestrator.jobs.model import Job
from orchestrator.ledger import total_cost_micro
from orchestrator.ops.instruments import COST_ANOMALIES
from orchestrator.runtime import Runtime
from orchestrator.store.batch import Chain
from orchestrator.store.jobs import now_ms
from orchestrator.store.ledger import POST_REFUSALS, posted_deltas, posted_falls
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
    raw_hold = replies[hold_at]
    _posted(rt, job, None if posted_at is None else replies[posted_at], raw_hold)
    return int(replies[relayed_at] or 0), raw_hold


def settle_and_complete(
    rt: Runtime, job: Job, worker: Worker, updates: Sequence[str], *, first: Chain | None = None
) -> tuple[str | None, list[str], int]:
    """:func:`settle_turn` and the turn's completion (``complete_into`` and the release
    of its slots) in one round trip, for a turn whose ``updates`` the caller relayed
    whole. The completion runs in the same script as the post and only after it (CHAIN):
    a refused post leaves the job as :func:`settle_turn` would, nothing completed.

    ``first``: calls to run before the post in the same script (the job's submission
    and its updates, :mod:`orchestrator.jobs.quick`), which write the worker's snapshot
    themselves; an error reply of theirs stops it all and is raised as it came.

    Returns the raw hold (to release), the jobs promoted to the freed slots and the
    count of webhook subscriptions. Raises FigureError (nothing posted, nothing
    completed) for a figure outside the ledger's bounds.
    """
    store, at = rt.store, now_ms()
    batch, chain = store.batch(), first or Chain()
    posted_at = store.settle_chained_into(
        batch, chain, job, worker, at, turn_members(job.tags, at), snapshot=first is None
    )
    hold_at = rt.budgets.hold_into(batch, job.id)
    store.complete_into(chain, job, (job.update_from or 0) + len(updates), updates)
    promoted_at = rt.limits.release_into(chain, job)
    subscribed_at = hooks.subscribed_into(store, batch)
    chain_at = store.chain_into(batch, chain)
    replies = batch.execute(raise_on_error=False)
    ended: Any = replies[chain_at]
    if isinstance(ended, Exception):
        if first is not None and not str(ended).startswith(POST_REFUSALS):
            raise ended  # stopped before the post: nothing of the turn's end ran
        posted_deltas(ended)  # raises FigureError: the post was refused, nothing ran
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply  # the turn is complete: a redelivered finalize gives back the rest
    raw_hold = replies[hold_at]
    _posted(rt, job, None if posted_at is None else ended[posted_at], raw_hold)
    promoted = [str(p) for p in ended[promoted_at]]
    return raw_hold, promoted, int(replies[subscribed_at])


def _posted(rt: Runtime, job: Job, reply: Any, raw_hold: str | None) -> None:
    """Check a POST_TURN reply (FigureError if it refused), report any figure that fell,
    and any overshoot of the job's hold."""
    posted = None if reply is None else posted_deltas(reply)
    for field, fell_by in posted_falls(reply).items():
        log.warning("job %s: upstream %s fell by %d; nothing posted for it", job.id, field, fell_by)
        COST_ANOMALIES.labels(field=field).inc()
    hold = rt.budgets.amount_of(raw_hold)
    if posted is not None and hold is not None and total_cost_micro(posted) > hold:
        rt.budgets.record_overshoot(job, hold, total_cost_micro(posted))
