"""The beat scheduler: ``celery -A orchestrator beat -S orchestrator.schedules.beat:RedisScheduler``
(or ``orchestrator beat``). Schedules live in Redis, not in this process.

Each tick is one Lua call when nothing is due (O(log N), however many schedules
exist): it reads up to a batch of due schedules by next run, takes over claims that a
dead beat left unsent, and says when the next run is. Due schedules are claimed by
compare-and-advance of their next run in Lua, and each claimed slot is written to a
pending set in the same step; the run task is sent, then the claim is dropped. So any
number of beats may run at once, each slot is claimed once, and a beat killed between
claim and send loses nothing (another beat, or this one restarted, re-sends it after
``resend_after`` seconds; the run task's (schedule, slot) dedupe makes that harmless).
Runs go up to 100 a message, so a burst of 10,000 due slots is 100 publishes.
No leader lock: see ``docs/schedules.md``. Future runs are never sent as ETA tasks.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from types import FrameType
from typing import Any

from celery import Celery
from celery.beat import Scheduler
from kombu.exceptions import OperationalError

from orchestrator.jobs.model import TERMINAL
from orchestrator.ops.instruments import SCHEDULE_LATENESS, SCHEDULE_RUNS
from orchestrator.runtime import store_for
from orchestrator.schedules.run import RUNS_PER_MESSAGE, send_runs
from orchestrator.schedules.timing import MISFIRE_GRACE_MS, plan
from orchestrator.settings import Settings, get_settings
from orchestrator.store.connection import StoreError
from orchestrator.store.jobs import now_ms
from orchestrator.store.schedules import Claim, ScheduleStore, split_member

log = logging.getLogger(__name__)

READY_LINE = "beat scheduler ready"

# Celery configuration keys this scheduler reads (``orchestrator beat`` sets them).
CONF_BATCH = "orchestrator_beat_batch"
CONF_RESEND_AFTER = "orchestrator_beat_resend_after"
CONF_GRACE = "orchestrator_beat_misfire_grace"

# A buffered run may go once its schedule's last job is over, or there was none ("").
TERMINAL_OR_NONE = TERMINAL | {""}


def misfire_grace_ms(conf: Mapping[str, Any], settings: Settings) -> int:
    """How late (ms) a recurring slot may be reached and still run: the beat's
    ``--misfire-grace`` (``CONF_GRACE`` in its Celery conf) if given, else
    ``SCHEDULE_MISFIRE_GRACE``. A beat's claims and a retiming update's use this."""
    given = conf.get(CONF_GRACE)
    return round(float(settings.schedule_misfire_grace if given is None else given) * 1000)


class RedisScheduler(Scheduler):  # type: ignore[misc]
    """A ``celery.beat.Scheduler`` whose schedules are the orchestrator's, in Redis."""

    #: Longest sleep between ticks (seconds); a tick sleeps until the next run if sooner.
    max_interval = 1.0
    #: Due slots claimed and sent per Redis call (bounds the work of one script).
    batch = 500
    #: A claim left unsent this long (seconds) is taken over and sent by a live beat.
    resend_after = 10.0
    #: A recurring slot reached later than this (ms) is missed (see ``plan``); set from
    #: :func:`misfire_grace_ms` when the schedule is set up.
    grace_ms = MISFIRE_GRACE_MS

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        self.schedules: ScheduleStore | None = None
        self.beat_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._buffer_sent: dict[tuple[str, int], float] = {}
        self._bad: set[str] = set()
        self._closed = False
        self._in_tick = False
        self._stop_signal: tuple[Any, int, FrameType | None] | None = None
        self.stats = {"ticks": 0, "claimed": 0, "sent": 0, "resent": 0, "released": 0, "late_ms": 0}
        super().__init__(app, *args, **kwargs)

    # --- celery.beat.Scheduler interface ------------------------------------------

    def setup_schedule(self) -> None:
        """Connect to Redis; refuse a server that may evict keys."""
        conf = self.app.conf
        self.batch = int(conf.get(CONF_BATCH) or self.batch)
        self.resend_after = float(conf.get(CONF_RESEND_AFTER) or self.resend_after)
        settings = get_settings()
        self.grace_ms = misfire_grace_ms(conf, settings)
        store = store_for(settings)
        store.check_eviction_policy()
        self.schedules = ScheduleStore(store)
        self._finish_tick_before_stopping()
        log.info(
            "%s: %s (prefix %s, %d due, batch %d, max interval %.2fs)",
            READY_LINE,
            self.beat_id,
            settings.key_prefix,
            self.schedules.due_count(),
            self.batch,
            self.max_interval,
        )

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Claim and send what is due; return the seconds until the next run (capped)."""
        self._in_tick = True
        try:
            return self.tick_once()
        except (StoreError, OSError, OperationalError) as exc:
            # Redis or the broker is away: nothing was lost (claims are in Redis);
            # try again shortly.
            log.warning("beat tick failed: %s", exc)
            return float(self.max_interval)
        except Exception:
            # Keep beating: whatever this was, claims stay in Redis for a later tick.
            log.exception("beat tick failed")
            return float(self.max_interval)
        finally:
            self._in_tick = False
            if self._stop_signal is not None:
                handler, signum, frame = self._stop_signal
                self._stop_signal = None
                handler(signum, frame)

    def _finish_tick_before_stopping(self) -> None:
        """Defer SIGTERM/SIGINT that arrive mid-tick to the tick's end.

        Celery's handlers stop beat wherever it is; between a claim and its send that
        would leave the claim to be taken over ``resend_after`` seconds later. A tick is
        short, so a stop waits for it instead.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue

            def handler(num: int, frame: FrameType | None, previous: Any = previous) -> None:
                if self._in_tick:
                    self._stop_signal = (previous, num, frame)
                else:
                    previous(num, frame)

            signal.signal(signum, handler)

    def sync(self) -> None:
        """Nothing to write back: every change is in Redis as it happens."""

    def close(self) -> None:
        if self.schedules is not None and not self._closed:
            self._closed = True
            log.info("beat %s stopping: %s", self.beat_id, self.stats)
        super().close()

    @property
    def info(self) -> str:
        return "    . schedules -> Redis (orchestrator.store.schedules)"

    # --- the tick -------------------------------------------------------------------

    def tick_once(self, now: int | None = None) -> float:
        """One pass; returns 0 when a full batch was due (more may wait)."""
        store = self.schedules
        assert store is not None, "setup_schedule() was not called"
        now = now_ms() if now is None else now
        self.stats["ticks"] += 1
        peek = store.peek(now, self.batch, now - int(self.resend_after * 1000), buffered=self.batch)
        if peek.resend:
            log.warning("re-sending %d runs claimed but never known sent", len(peek.resend))
            self.stats["resent"] += len(peek.resend)
            self._send(peek.resend, "resent")
        next_run = peek.next_run_ms
        if peek.due:
            claims = self._plan(peek.due, now)
            won = store.claim(claims, now)
            self.stats["claimed"] += len(won)
            self._send(won, "sent")
            for member in won:  # a slot this beat claimed: how late it went out
                SCHEDULE_LATENESS.observe(max(0, now - split_member(member)[1]) / 1000)
            for c in claims:
                if c.plan.fire:
                    self.stats["late_ms"] = max(self.stats["late_ms"], now - c.plan.fire[0])
                if c.plan.next_ms is not None:
                    next_run = min(next_run or c.plan.next_ms, c.plan.next_ms)
        if peek.buffered:
            self._release_buffered(peek.buffered)
        if len(peek.due) >= self.batch or len(peek.resend) >= self.batch:
            return 0.0
        if next_run is None:
            return float(self.max_interval)
        return max(0.0, min((next_run - now_ms()) / 1000, float(self.max_interval)))

    def _plan(self, due: list[tuple[str, int]], now: int) -> list[Claim]:
        assert self.schedules is not None
        # Read each tick, not cached: an update may change a timing; the claim checks
        # the rev read here, so a timing changed since is not claimed with.
        timings = self.schedules.timings([sid for sid, _ in due])
        claims = []
        for sid, due_ms in due:
            found = timings.get(sid)
            if found is None:
                self.schedules.drop_due(sid)
                continue
            timing, catch_up, rev = found
            try:
                planned = plan(timing, due_ms, now, catch_up, self.grace_ms)
                claims.append(Claim(sid, due_ms, planned, rev))
            except Exception:
                # One bad schedule must not stop the others; it stays due, and is
                # reported once per process.
                if sid not in self._bad:
                    self._bad.add(sid)
                    log.exception("schedule %s: cannot compute its runs", sid)
        return claims

    def _send(self, members: list[str], outcome: str) -> None:
        """Send the claimed runs, then drop their claims (only those really sent);
        counted as ``outcome`` (a new claim's ``sent``, a dead beat's ``resent``)."""
        assert self.schedules is not None
        sent: list[str] = []
        try:
            with self.app.producer_or_acquire() as producer:
                for i in range(0, len(members), RUNS_PER_MESSAGE):
                    chunk = members[i : i + RUNS_PER_MESSAGE]
                    send_runs(self.app, [split_member(m) for m in chunk], producer=producer)
                    sent.extend(chunk)
        finally:
            self.schedules.sent(sent)
            self.stats["sent"] += len(sent)
            SCHEDULE_RUNS.labels(outcome).inc(len(sent))

    def _release_buffered(self, buffered: list[tuple[str, int]]) -> None:
        """Send a buffered run again once its schedule's previous job is over."""
        assert self.schedules is not None
        states = self.schedules.last_jobs([sid for sid, _ in buffered])
        clock = time.monotonic()
        for key in [k for k, at in self._buffer_sent.items() if clock - at > self.resend_after]:
            del self._buffer_sent[key]
        ready = [
            (sid, slot)
            for sid, slot in buffered
            if states.get(sid, "") in TERMINAL_OR_NONE and (sid, slot) not in self._buffer_sent
        ]
        if not ready:
            return
        with self.app.producer_or_acquire() as producer:
            for i in range(0, len(ready), RUNS_PER_MESSAGE):
                chunk = ready[i : i + RUNS_PER_MESSAGE]
                send_runs(self.app, chunk, producer=producer)
                self._buffer_sent.update(dict.fromkeys(chunk, clock))
        self.stats["released"] += len(ready)
        SCHEDULE_RUNS.labels("released").inc(len(ready))
