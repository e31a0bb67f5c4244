"""The outbox relay: sends the first task of the jobs the gateway stores.

The gateway's submit is one Redis call (``CREATE_JOB``, which also pushes the job id on
the wake list) and no Celery publish: the send, a millisecond of CPU in the gateway,
happens here, in a thread of each streams worker. A pop is exclusive, so of several
relays one sends a job; a relay that dies between its pop and the send leaves the job
in the outbox, which the re-send sweep (``sweeps.resend_unsent``) sends after
``RESEND_AFTER_SECONDS``.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from orchestrator import runtime
from orchestrator.jobs.steps import dispatch

log = logging.getLogger(__name__)

#: Longest a pop blocks: how soon the thread notices it is asked to stop.
WAIT_SECONDS = 1.0
#: Ids taken per pop (a burst of submits is sent in batches).
BATCH = 100


def relay_once(app: Celery, rt: runtime.Runtime, timeout: float = WAIT_SECONDS) -> int:
    """Pop what the wake list holds (waiting up to ``timeout`` for it) and send the
    first task of each job still queued and unsent; how many were sent."""
    woken = rt.store.wakes.take(timeout, BATCH)
    if not woken:
        return 0
    sent = 0
    for job in rt.store.wakes.unsent(woken):
        try:
            dispatch(app, rt, job)
        except Exception as exc:
            # The type only: a broker error's text may carry its URL. The rest of the
            # batch stays in the outbox too (the broker is likely away for them all).
            log.warning(
                "relay: first task of %s not sent (%s); the re-send sweep sends it",
                job.id, type(exc).__name__,
            )  # fmt: skip
            break
        sent += 1
    return sent


def run(app: Celery, stop: threading.Event) -> None:
    """Relay until ``stop`` is set (a thread's target)."""
    while not stop.is_set():
        try:
            relay_once(app, runtime.get_runtime())
        except Exception as exc:  # keep going: Redis may be briefly away
            log.warning("relay failed (%s); again in 1 s", type(exc).__name__)
            stop.wait(1.0)


def start(app: Celery) -> tuple[threading.Thread, threading.Event]:
    """The relay in a daemon thread of its own; set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(app, stop), name="outbox-relay", daemon=True)
    thread.start()
    return thread, stop
