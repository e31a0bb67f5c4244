"""A turn that ends quickly is relayed and settled by the task that created it.

The create task opens the new worker's stream itself and reads it for at most
``QUICK_RELAY_SECONDS`` (50 ms: instant turns close theirs in a few ms; a longer turn
costs the task this much, once). A turn that ends by then is written and finalized right
there, as a hand-written task would: no follower claim, no second stream, no hop to
another thread. Any other turn is handed to the followers, who resume from the stored
count (updates are stored once whoever relays them: APPEND_UPDATES dedupes on the
index). Tasks stay short: the read is bounded, and a failure of any kind hands over.

While the task reads, the job's follow entry is held ``HOLD_MS`` ahead (see
``RedisStore.set_submitted``), so no follower takes it; if the task's process dies, the
hold lapses and a follower claims the job as it would a dead follower's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

from celery import Celery

from orchestrator.errors import APIError
from orchestrator.jobs.model import Job
from orchestrator.jobs.steps import finalize
from orchestrator.ops.instruments import EVENTS_RELAYED
from orchestrator.runtime import Runtime
from orchestrator.store.jobs import now_ms
from orchestrator.wire.deadline import deadline

log = logging.getLogger(__name__)

#: An update read is written once the next one finds it this old (else with the rest).
FLUSH_SECONDS = 0.005
#: How long the followers leave a stream to its create task (a lease nobody renews).
HOLD_MS = 5000


class RelayRefused(Exception):
    """The store refused the updates (the job ended here: STOPPED; its records are gone:
    GONE; or a gap); what follows is not this task's to relay."""


def relay_here(rt: Runtime, app: Celery, job: Job) -> str | None:
    """Relay the just-submitted turn of ``job`` (a create, held for this task) and settle
    it if it ends within ``QUICK_RELAY_SECONDS``: finalize's outcome. None when the turn went
    to the followers (or, refused by the store, to the end sweep). Never raises."""
    try:
        ended, read, updates = _relay(rt, job)
    except RelayRefused as exc:
        log.info("stream of %s: %s; not relayed here", job.id, exc)
        if "GAP" in str(exc):
            _hand_over(rt, job)
        return None
    except Exception as exc:  # Redis away, say: the followers take over
        log.warning("relay of %s here failed (%s); handing it over", job.id, exc)
        ended, read, updates = False, None, None
    if not ended:
        _hand_over(rt, job)
        return None
    try:
        return finalize(rt, app, job.id, read=read, updates=updates)
    except Exception as exc:  # the followers replay the stream (nothing new) and settle it
        log.info("finalize of %s failed here (%s); handing it over", job.id, exc)
        _hand_over(rt, job)
        return None


def _relay(rt: Runtime, job: Job) -> tuple[bool, Job | None, list[str] | None]:
    """Read and store the stream for up to QUICK_RELAY_SECONDS; True if it closed by then,
    the job as read with the last write (None if there was none), and the turn's
    updates as stored when the store holds exactly these (finalize folds them without
    reading them back; None: it reads them).

    Updates are written together: when the stream closes or the time is up, or sooner
    when one has waited FLUSH_SECONDS by the time the next arrives. An instant turn's
    updates arrive together and take one write, the job's move to 'running' with it; a
    slower turn's first update waits at most QUICK_RELAY_SECONDS."""
    assert job.worker_id is not None
    pending: list[str] = []
    sent: list[str] = []  # every update written, in order
    stored = 0  # a create's turn is the worker's first: its updates start at 0
    oldest = 0.0
    ended = False
    try:
        with deadline(rt.settings.quick_relay_seconds):
            updates = rt.client.stream_updates(job.worker_id, retry=False)
            with contextlib.closing(updates):
                for update in updates:
                    if not pending:
                        oldest = time.monotonic()
                    pending.append(json.dumps(update.data))
                    if time.monotonic() - oldest >= FLUSH_SECONDS:
                        stored, _ = _write(rt, job, stored, pending, mark_running=stored == 0)
                        sent += pending
                        pending = []
        ended = True
    except APIError as exc:  # cut by the time limit, or a failure: the followers resume
        log.debug("stream of %s not read to its end here: %s", job.id, exc)
    if not pending:
        return ended, None, None
    # The job is read back with the last write: finalize needs it as it is now.
    stored, read = _write(rt, job, stored, pending, mark_running=stored == 0, read=True)
    sent += pending
    # More stored than sent: a follower of a job Redis lost relayed some too.
    return ended, read, sent if stored == len(sent) else None


def _write(
    rt: Runtime, job: Job, first: int, payloads: list[str], *, mark_running: bool,
    read: bool = False,
) -> tuple[int, Job | None]:  # fmt: skip
    """Store updates ``first...`` (and mark the job running first); the stored count,
    and with ``read`` the job as it is after the write."""
    assert job.worker_id is not None
    batch = rt.store.batch()
    if mark_running:
        rt.store.transition_into(batch, job.id, "running", now_ms())
    at = rt.store.append_updates_into(batch, job.worker_id, first, payloads, job.id)
    read_at = rt.store.job_into(batch, job.id) if read else None
    replies = batch.execute(raise_on_error=False)
    if isinstance(replies[at], Exception):
        raise RelayRefused(str(replies[at]))
    stored = int(replies[at])
    # Counted as the followers count: the updates this write added (a duplicate adds none).
    EVENTS_RELAYED.inc(min(len(payloads), max(0, stored - first)))
    return stored, None if read_at is None else rt.store.job_of(replies[read_at])


def _hand_over(rt: Runtime, job: Job) -> None:
    """Put the stream up for the followers at once (else the hold lapses in HOLD_MS)."""
    try:
        rt.store.request_follow(job.id, now=True)
    except Exception as exc:
        log.warning("could not hand %s to the followers (%s); its hold lapses", job.id, exc)
