"""A turn that ends quickly is relayed and settled by the task that created it.

The create task opens the new worker's stream itself and reads it for at most
``QUICK_RELAY_SECONDS`` (50 ms: instant turns close theirs in a few ms; a longer turn
costs the task this much, once). A turn that ends by then is written and finalized right
there, as a hand-written task would: no follower claim, no second stream, no hop to
another thread. Any other turn is handed to the followers, who resume from the stored
count (updates are stored once whoever relays them: APPEND_UPDATES dedupes on the
index). Tasks stay short: the read is bounded, and a failure of any kind hands over.

The job is submitted (its worker linked, its move to ``submitted``) by the task's first
write, not before the read: an instant turn's submission, updates, post and completion
are then one script (CHAIN), the whole job two round trips with its BEGIN_ATTEMPT. Until
that write the followers do not know the job; once it is written, its follow entry is
held ``HOLD_MS`` ahead while the task reads on. If the task's process dies before the
first write, its unacknowledged task is delivered again (``acks_late``), and should Redis
be away at that write the task retries (NotSubmitted): either way the call is made again
with the same idempotency key, which finds the same worker. After the first write, the
hold lapses and a follower claims the job as it would a dead follower's. A cancel that
lands before the first write ends the job as one whose create was in flight: the write
is refused whole, and the turn is settled by the end sweep.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

from celery import Celery

from orchestrator.errors import APIError
from orchestrator.jobs.model import Job
from orchestrator.jobs.settle import settle_and_complete
from orchestrator.jobs.steps import finalize, finish_turn, submit_refused, submit_turn
from orchestrator.ledger import FigureError
from orchestrator.ops.instruments import EVENTS_RELAYED, QUICK_READS
from orchestrator.runtime import Runtime
from orchestrator.store.batch import REFUSED, Chain
from orchestrator.store.connection import ReplyError, StoreError
from orchestrator.store.jobs import now_ms
from orchestrator.wire.deadline import deadline
from orchestrator.wire.models import Worker

log = logging.getLogger(__name__)

#: An update read is written once the next one finds it this old (else with the rest).
FLUSH_SECONDS = 0.005
#: How long the followers leave a stream to its create task (a lease nobody renews).
HOLD_MS = 5000


class Odds:
    """How often, lately, a create's turn read here ended within QUICK_RELAY_SECONDS: a
    moving average, per process, over about the last ``1 / WEIGHT`` reads.

    A read pays when the turn ends in time: its submission, updates, post and completion
    are one write, with no follower claim, second stream or finalize (~5 ms of CPU
    saved). A turn that runs on costs the task the whole wait, a stream opened twice and
    a hand-over (~2.5 ms of CPU, and a pool thread held QUICK_RELAY_SECONDS). Below
    FLOOR the reads are not worth it and a job goes to the followers at once; one in
    PROBE_EVERY is still read here, so a workload that turns quick is noticed.

    Shared by a process's pool threads without a lock: a lost update only nudges the
    average less."""

    WEIGHT = 1 / 16
    FLOOR = 0.25
    PROBE_EVERY = 16

    def __init__(self) -> None:
        self.rate = 1.0  # until a read says otherwise, turns are taken to end at once
        self._skipped = 0

    def worth_reading(self) -> bool:
        if self.rate >= self.FLOOR:
            return True
        self._skipped += 1
        if self._skipped % self.PROBE_EVERY == 0:
            return True
        QUICK_READS.labels(outcome="skipped").inc()
        return False

    def record(self, ended: bool) -> None:
        self.rate += self.WEIGHT * (float(ended) - self.rate)
        QUICK_READS.labels(outcome="ended" if ended else "ran_on").inc()


#: This process's odds (each prefork child keeps its own from the fork on).
ODDS = Odds()


def reads_here(rt: Runtime, job: Job) -> bool:
    """Whether the create task of ``job`` reads its new turn's stream itself: a create,
    with QUICK_RELAY_SECONDS on, while this process's odds say it pays."""
    return job.kind == "create" and rt.settings.quick_relay_seconds > 0 and ODDS.worth_reading()


class RelayRefused(Exception):
    """The store refused the updates (the job ended here: STOPPED; its records are gone:
    GONE; or a gap); what follows is not this task's to relay."""


def relay_here(rt: Runtime, app: Celery, job: Job, worker: Worker) -> str | None:
    """Submit and relay the turn that ``worker`` (the create's answer, not yet linked to
    ``job``) runs, and settle it if it ends within ``QUICK_RELAY_SECONDS``: finalize's
    outcome. None when the turn went to the followers (or, refused by the store, to the
    end sweep). Raises only :class:`NotSubmitted` (the task retries)."""
    relay = _Relay(rt, job, worker)
    try:
        ended = relay.read()
        ODDS.record(ended)
        if ended and not relay.submitted:
            return _settle_at_once(rt, app, relay)
        read = relay.flush(hold=ended, read=ended)
    except RelayRefused as exc:
        log.info("stream of %s: %s; not relayed here", job.id, exc)
        if "GAP" in str(exc):
            _hand_over(rt, job)
        return None
    except SubmitRefused:
        _submit_refused(rt, app, job)
        return None
    except Exception as exc:  # Redis away, say: the followers take over
        log.warning("relay of %s here failed (%s); handing it over", job.id, exc)
        return _submit_and_hand_over(rt, app, relay)
    if not ended:
        return None  # submitted claimable at once, or handed over by flush
    return _finalize(rt, app, job, read, relay.whole())


def _settle_at_once(rt: Runtime, app: Celery, relay: _Relay) -> str | None:
    """An ended turn nothing of which is written yet: when the upstream says it is over
    and there are no files to fetch, its submission, updates, post and completion run as
    one script; else they are written and finalize runs as for any relayed turn."""
    job = relay.job
    worker = rt.client.retrieve(relay.worker.id)  # an APIError: handed over by the caller
    if worker.running or worker.status == "running" or (job.fetch_files and worker.files):
        read = relay.flush(hold=True, read=True)
        return _finalize(rt, app, job, read, relay.whole())
    chain = Chain()
    relay.queue_write(chain, worker, hold=True)
    linked = job.model_copy(update={"worker_id": worker.id, "update_from": 0})
    try:
        raw_hold, promoted, subscribed = settle_and_complete(
            rt, linked, worker, relay.pending, first=chain
        )
    except FigureError:
        # Submitted and relayed, nothing posted: finalize fails the job as it would.
        return _finalize(rt, app, job, None, None)
    except StoreError as exc:
        if str(exc).startswith((REFUSED, "GONE", "STOPPED", "GAP")):
            raise relay.refusal(exc) from exc
        raise
    EVENTS_RELAYED.inc(len(relay.pending))
    finish_turn(app, rt, linked, raw_hold, promoted, subscribed)
    return "completed"


def _finalize(
    rt: Runtime, app: Celery, job: Job, read: Job | None, updates: list[str] | None
) -> str | None:
    try:
        return finalize(rt, app, job.id, read=read, updates=updates)
    except Exception as exc:  # the followers replay the stream (nothing new) and settle it
        log.info("finalize of %s failed here (%s); handing it over", job.id, exc)
        _hand_over(rt, job)
        return None


def _submit_refused(rt: Runtime, app: Celery, job: Job) -> None:
    try:
        now = submit_refused(rt, app, job)
    except Exception as exc:  # lost with Redis (InputError), or Redis away
        log.info("job %s not submitted (%s)", job.id, exc)
        return
    log.info("job %s %s before its create was written; not relayed here", job.id, now.status)


class NotSubmitted(Exception):
    """Neither the task's first write nor a plain submission reached the store (Redis
    away, a failover under way): the job is still queued with nothing linked, and the
    create task retries; its call finds the same worker by the idempotency key."""


class SubmitRefused(Exception):
    """The store refused to submit the job: it moved on (ended here) or has no record."""


class _Relay:
    """The stream of one just-created turn, read here: what is written, what waits.

    Updates are written together: when the stream closes or the time is up, or sooner
    when one has waited FLUSH_SECONDS by the time the next arrives. The first write
    submits the job, moves it to 'running' and stores the updates, in one script."""

    def __init__(self, rt: Runtime, job: Job, worker: Worker) -> None:
        self.rt, self.job, self.worker = rt, job, worker
        self.pending: list[str] = []
        self.sent: list[str] = []  # every update written, in order
        self.stored = 0  # a create's turn is the worker's first: its updates start at 0
        self.submitted = False

    def read(self) -> bool:
        """Read the stream for up to QUICK_RELAY_SECONDS; True if it closed by then."""
        rt, oldest = self.rt, 0.0
        try:
            with deadline(rt.settings.quick_relay_seconds):
                updates = rt.client.stream_updates(self.worker.id, retry=False)
                with contextlib.closing(updates):
                    for update in updates:
                        if not self.pending:
                            oldest = time.monotonic()
                        self.pending.append(json.dumps(update.data))
                        if time.monotonic() - oldest >= FLUSH_SECONDS:
                            self.flush(hold=True)
            return True
        except APIError as exc:  # cut by the time limit, or a failure: the followers resume
            log.debug("stream of %s not read to its end here: %s", self.job.id, exc)
            return False

    def queue_write(self, chain: Chain, worker: Worker, *, hold: bool) -> None:
        """Queue the next write on ``chain``: the submission first (followers held off
        HOLD_MS with ``hold``, else claimable at once), then the pending updates."""
        store, job = self.rt.store, self.job
        if not self.submitted:
            follow_at = now_ms() + HOLD_MS if hold else 0
            moved_at = store.submit_into(chain, job, worker, follow_at=follow_at)
            chain.guard(moved_at - 1, 1)  # SUBMIT: 0 when the job has no record
            chain.guard(moved_at, 0)  # the move: -1 when the job moved on (ended here)
            chain.guard(store.transition_into(chain, job.id, "running", now_ms()), 0)
        if self.pending:
            store.append_updates_into(chain, worker.id, self.stored, self.pending, job.id)

    def flush(self, *, hold: bool, read: bool = False) -> Job | None:
        """Write what waits (the submission with the first write; without ``hold`` the
        followers may claim the job at once, else it is handed over when submitted
        before); with ``read``, the job as it is after the write."""
        store, job = self.rt.store, self.job
        if self.submitted and not self.pending and not read:
            if not hold:
                _hand_over(self.rt, job)
            return None
        batch, chain = store.batch(), Chain()
        self.queue_write(chain, self.worker, hold=hold)
        chain_at = store.chain_into(batch, chain) if chain.calls else None
        read_at = store.job_into(batch, job.id) if read else None
        replies = batch.execute(raise_on_error=False)
        if chain_at is not None:
            reply = replies[chain_at]
            if isinstance(reply, Exception):
                raise self.refusal(reply)
            if self.pending:
                stored = int(reply[-1])
                # Counted as the followers count: the updates this write added.
                EVENTS_RELAYED.inc(min(len(self.pending), max(0, stored - self.stored)))
                self.stored = stored
        if self.submitted and not hold:
            _hand_over(self.rt, job)
        self.submitted = True
        self.sent += self.pending
        self.pending = []
        return None if read_at is None else store.job_of(replies[read_at])

    def whole(self) -> list[str] | None:
        """The turn's updates as stored, when the store holds exactly those written here
        (finalize folds them without reading them back; None: it reads them). More
        stored than sent: a follower of a job Redis lost relayed some too."""
        return self.sent if self.stored == len(self.sent) else None

    def refusal(self, reply: Exception) -> Exception:
        """What a refused write raises: SubmitRefused for the submission's own refusals
        (the first two guarded calls), else RelayRefused. A reply that is no refusal
        (Redis away: a cluster pipeline returns the error in the reply's place) is
        raised as it came, and the followers take over."""
        if not isinstance(reply, ReplyError):
            return reply
        text = str(reply)
        if not self.submitted and text.startswith((f"{REFUSED} 1 ", f"{REFUSED} 2 ")):
            return SubmitRefused(text)
        return RelayRefused(text)


def _submit_and_hand_over(rt: Runtime, app: Celery, relay: _Relay) -> str | None:
    """After a failure whose writes may or may not have run: submit the job if nothing
    did (claimable at once) and hand its stream over; finish a job that the write ended
    (its hold and slots, as finalize gives back a done job's). Should Redis still be
    away, NotSubmitted: the job is still queued, and the task retries."""
    job = relay.job
    if not relay.submitted:
        try:
            # Read first: a write that failed on the way back may have run, and SUBMIT
            # must not run again on a job that moved on.
            now = rt.store.get_job(job.id)
            if now is not None and now.status == "queued":
                now = submit_turn(rt, app, now, relay.worker)
            elif now is not None and now.done:
                return _finalize(rt, app, now, None, None)
        except Exception as exc:
            raise NotSubmitted(f"the job could not be submitted: {exc}") from exc
        if now is None or now.status not in ("submitted", "running"):
            return None  # lost, or ended here meanwhile: the end sweep settles its turn
    _hand_over(rt, job)
    return None


def _hand_over(rt: Runtime, job: Job) -> None:
    """Put the stream up for the followers at once (else the hold lapses in HOLD_MS)."""
    try:
        rt.store.request_follow(job.id, now=True)
    except Exception as exc:
        log.warning("could not hand %s to the followers (%s); its hold lapses", job.id, exc)
